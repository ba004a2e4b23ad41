from odoo import _, api, fields, models

from ..lib import actions
from ..lib.providers import preset_values
from .res_company import ODOO_CLIENT_PARAMS


class ResConfigSettings(models.TransientModel):
    _inherit = "res.config.settings"

    ally_smtp_enabled = fields.Boolean(
        related="company_id.ally_smtp_enabled", readonly=False
    )
    ally_smtp_provider = fields.Selection(
        related="company_id.ally_smtp_provider", readonly=False
    )
    ally_smtp_host = fields.Char(related="company_id.ally_smtp_host", readonly=False)
    ally_smtp_port = fields.Integer(related="company_id.ally_smtp_port", readonly=False)
    ally_smtp_encryption = fields.Selection(
        related="company_id.ally_smtp_encryption", readonly=False
    )
    ally_smtp_imap_host = fields.Char(
        related="company_id.ally_smtp_imap_host", readonly=False
    )
    ally_smtp_imap_port = fields.Integer(
        related="company_id.ally_smtp_imap_port", readonly=False
    )
    ally_smtp_sent_copy = fields.Selection(
        related="company_id.ally_smtp_sent_copy", readonly=False
    )
    ally_smtp_verify_tls = fields.Boolean(
        related="company_id.ally_smtp_verify_tls", readonly=False
    )
    ally_smtp_fallback = fields.Boolean(
        related="company_id.ally_smtp_fallback", readonly=False
    )
    ally_smtp_limit_minute = fields.Integer(
        related="company_id.ally_smtp_limit_minute", readonly=False
    )
    ally_smtp_limit_hour = fields.Integer(
        related="company_id.ally_smtp_limit_hour", readonly=False
    )
    ally_smtp_limit_day = fields.Integer(
        related="company_id.ally_smtp_limit_day", readonly=False
    )
    ally_smtp_limit_recipients_day = fields.Integer(
        related="company_id.ally_smtp_limit_recipients_day", readonly=False
    )
    ally_smtp_auth_method = fields.Selection(
        related="company_id.ally_smtp_auth_method", readonly=False
    )
    ally_smtp_oauth_client_id = fields.Char(
        related="company_id.ally_smtp_oauth_client_id", readonly=False
    )
    ally_smtp_oauth_client_secret = fields.Char(
        related="company_id.ally_smtp_oauth_client_secret", readonly=False
    )
    ally_smtp_oauth_secret_set = fields.Boolean(
        related="company_id.ally_smtp_oauth_secret_set"
    )
    ally_smtp_oauth_tenant = fields.Char(
        related="company_id.ally_smtp_oauth_tenant", readonly=False
    )
    ally_smtp_oauth_redirect_uri = fields.Char(
        related="company_id.ally_smtp_oauth_redirect_uri"
    )
    ally_smtp_oauth_refused = fields.Text(related="company_id.ally_smtp_oauth_refused")
    ally_smtp_integrated = fields.Boolean(related="company_id.ally_smtp_integrated")
    ally_smtp_integrated_at = fields.Datetime(
        related="company_id.ally_smtp_integrated_at"
    )

    @api.onchange("ally_smtp_provider")
    def _onchange_ally_smtp_provider(self):
        self.update(preset_values(self.ally_smtp_provider))

    @api.onchange("ally_smtp_auth_method")
    def _onchange_ally_smtp_auth_method(self):
        """Odoo's own Gmail / Outlook app, when set up, is the default."""
        names = ODOO_CLIENT_PARAMS.get(self.ally_smtp_auth_method)
        if names and not self.ally_smtp_oauth_client_id:
            get = self.env["ir.config_parameter"].sudo().get_param
            self.ally_smtp_oauth_client_id = get(names[0]) or False

    def action_ally_smtp_rotate_keys(self):
        """Re-encrypt the stored mailbox passwords with the newest key."""
        self.ensure_one()
        actions.check_settings_admin(self.env)
        count = self.env["ally.smtp.mailbox"]._rotate_keys()
        return actions.notify(
            _(
                "%(count)s stored secret(s) re-encrypted with the newest key.",
                count=count,
            )
        )

    def action_ally_smtp_integrate(self):
        self.ensure_one()
        return self.company_id.action_ally_smtp_integrate()
