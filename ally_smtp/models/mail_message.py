from odoo import api, models

from .ir_mail_server import check_mail_server


class MailMessage(models.Model):
    _inherit = "mail.message"

    @api.constrains("mail_server_id")
    def _check_ally_smtp_mail_server(self):
        check_mail_server(self)
