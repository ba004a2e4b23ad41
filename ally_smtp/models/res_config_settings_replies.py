from odoo import fields, models


class ResConfigSettings(models.TransientModel):
    _inherit = "res.config.settings"

    ally_smtp_fetch_replies = fields.Boolean(
        related="company_id.ally_smtp_fetch_replies", readonly=False
    )
