from odoo import fields, models


class ResConfigSettings(models.TransientModel):
    _inherit = "res.config.settings"  # pylint: disable=consider-merging-classes-inherited

    ally_smtp_fetch_replies = fields.Boolean(
        related="company_id.ally_smtp_fetch_replies", readonly=False
    )
