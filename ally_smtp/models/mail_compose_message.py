from odoo import api, fields, models

from .ir_mail_server import check_mail_server


class MailComposeMessage(models.TransientModel):
    _inherit = "mail.compose.message"

    mail_server_id = fields.Many2one(domain=[("ally_smtp_owner_id", "=", False)])

    @api.constrains("mail_server_id")
    def _check_ally_smtp_mail_server(self):
        check_mail_server(self)
