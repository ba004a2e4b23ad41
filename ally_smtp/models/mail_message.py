from odoo import api, models

from .ir_mail_server import check_mail_server
from .mail_mail import CONTENT_FIELDS


class MailMessage(models.Model):
    _inherit = "mail.message"

    @api.constrains("mail_server_id")
    def _check_ally_smtp_mail_server(self):
        check_mail_server(self)

    def write(self, vals):
        """A message someone but its author changes is not the author's own."""
        if CONTENT_FIELDS & vals.keys() and not self.env.su:
            foreign = self.sudo().filtered(lambda m: m.create_uid != self.env.user)
            if foreign:
                self.env["mail.mail"].sudo().search(
                    [("mail_message_id", "in", foreign.ids)]
                ).ally_smtp_foreign_edit = True
        return super().write(vals)
