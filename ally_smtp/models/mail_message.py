from odoo import api, models

from .ir_mail_server import check_mail_server
from .mail_mail import note_foreign_edit


class MailMessage(models.Model):
    _inherit = "mail.message"

    @api.constrains("mail_server_id")
    def _check_ally_smtp_mail_server(self):
        check_mail_server(self)

    def write(self, vals):
        """A message someone but its author changes is not the author's own."""
        note_foreign_edit(self, vals)
        return super().write(vals)
