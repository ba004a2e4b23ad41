import logging

from odoo import _, api, fields, models
from odoo.exceptions import UserError, ValidationError

from ..lib import actions, errors, mailbox, oauth

_logger = logging.getLogger(__name__)

# what the users' personal ir.mail_server records are made of
SERVER_FIELDS = {
    "ally_smtp_enabled",
    "ally_smtp_host",
    "ally_smtp_port",
    "ally_smtp_encryption",
}
# where the users' passwords go: a change needs each owner's Test first (the
# IMAP port is left out: the same host, and its outage is not a move)
TRUST_FIELDS = SERVER_FIELDS | {
    "ally_smtp_imap_host",
    "ally_smtp_verify_tls",
    "ally_smtp_auth_method",
}
# what an admin's Integrate checked: a change of any makes it unchecked again
INTEGRATION_FIELDS = SERVER_FIELDS | {
    "ally_smtp_imap_host",
    "ally_smtp_imap_port",
    "ally_smtp_verify_tls",
}
PROVIDERS = [
    ("gmail", "Gmail / Google Workspace"),
    ("microsoft365", "Microsoft 365"),
    ("outlook", "Outlook.com / Hotmail"),
    ("yahoo", "Yahoo"),
    ("zoho", "Zoho Mail"),
    ("icloud", "iCloud"),
    ("locaweb", "Locaweb"),
    ("hostgator", "HostGator"),
    ("kinghost", "KingHost"),
    ("uolhost", "UOL Host"),
    ("hostinger", "Hostinger"),
    ("titan", "Titan"),
    ("cpanel", "cPanel hosting"),
    ("custom", "Other (custom server)"),
]
AUTH_METHODS = [
    ("password", "Mailbox password / App Password"),
    (oauth.GOOGLE, "Google account (OAuth)"),
    (oauth.MICROSOFT, "Microsoft account (OAuth)"),
]
# what a change of makes the agency's OAuth app worth trying again
OAUTH_FIELDS = {
    "ally_smtp_auth_method",
    "ally_smtp_oauth_client_id",
    "ally_smtp_oauth_secret_crypt",
    "ally_smtp_oauth_tenant",
}
# Odoo's own Gmail / Outlook apps (google_gmail, microsoft_outlook): defaults
ODOO_CLIENT_PARAMS = {
    oauth.GOOGLE: ("google_gmail_client_id", "google_gmail_client_secret"),
    oauth.MICROSOFT: ("microsoft_outlook_client_id", "microsoft_outlook_client_secret"),
}


class ResCompany(models.Model):
    _inherit = "res.company"

    ally_smtp_enabled = fields.Boolean(
        "Agency email (SMTP)",
        help="Let users send from their own mailbox on this provider.",
    )
    ally_smtp_provider = fields.Selection(
        PROVIDERS, "Mail provider", default="custom", required=True
    )
    ally_smtp_host = fields.Char("SMTP server")
    ally_smtp_port = fields.Integer("SMTP port", default=465)
    ally_smtp_encryption = fields.Selection(
        [("ssl", "SSL/TLS"), ("starttls", "STARTTLS")],
        "Encryption",
        default="ssl",
        required=True,
        help="SSL/TLS encrypts from the start (usually port 465); STARTTLS "
        "switches to encryption after connecting (usually port 587).",
    )
    ally_smtp_imap_host = fields.Char("IMAP server")
    ally_smtp_imap_port = fields.Integer("IMAP port", default=993)
    ally_smtp_sent_copy = fields.Selection(
        [
            ("auto", "When the provider did not file it"),
            ("always", "Always"),
            ("never", "Never (the provider files it)"),
        ],
        "Copy to the Sent folder",
        default="auto",
        required=True,
        help="'When the provider did not file it' looks for the message in the "
        "Sent folder first and adds a copy only when it is missing.",
    )
    ally_smtp_verify_tls = fields.Boolean(
        "Verify server certificates",
        default=True,
        help="Turn off only for a server whose certificate cannot be fixed: "
        "passwords could then be read by whoever answers on that address.",
    )
    ally_smtp_fallback = fields.Boolean(
        "If a personal mailbox fails, send from the agency server instead",
        help="Off by default: a mail whose author's mailbox refused its password "
        "waits for the author. On: it leaves from the agency's server, and the "
        "record's chatter says so.",
    )
    # a mailbox's sending limits at the provider (0: none); ally_smtp paces
    # each mailbox within them
    ally_smtp_limit_minute = fields.Integer(
        "Messages per minute", help="Per mailbox. 0: no limit."
    )
    ally_smtp_limit_hour = fields.Integer(
        "Messages per hour", help="Per mailbox. 0: no limit."
    )
    ally_smtp_limit_day = fields.Integer(
        "Messages per day",
        help="Per mailbox, over the last 24 hours. 0: no limit. A free Gmail "
        "account allows about 500 (the Gmail preset's figure), Google Workspace "
        "2,000.",
    )
    ally_smtp_limit_recipients_day = fields.Integer(
        "Recipients per day",
        help="Per mailbox, over the last 24 hours. 0: no limit. Microsoft 365 "
        "allows 10,000.",
    )
    ally_smtp_auth_method = fields.Selection(
        AUTH_METHODS,
        "Sign-in method",
        default="password",
        required=True,
        help="How each user signs in to their mailbox: with its password (or an "
        "App Password), or with their Google or Microsoft account (OAuth), "
        "which Microsoft 365 requires from the end of December 2026.",
    )
    ally_smtp_integrated = fields.Boolean("Integrated", readonly=True)
    ally_smtp_integrated_at = fields.Datetime("Integrated on", readonly=True)

    @api.constrains(
        "ally_smtp_limit_minute",
        "ally_smtp_limit_hour",
        "ally_smtp_limit_day",
        "ally_smtp_limit_recipients_day",
    )
    def _check_ally_smtp_limits(self):
        for company in self:
            if min(company._ally_smtp_limits().values()) < 0:
                raise ValidationError(
                    _("A sending limit is a number of messages, or 0 for none.")
                )

    def _ally_smtp_limits(self):
        """``{limit name: number}`` as ``lib.pacing`` reads them."""
        self.ensure_one()
        return {
            "minute": self.ally_smtp_limit_minute,
            "hour": self.ally_smtp_limit_hour,
            "day": self.ally_smtp_limit_day,
            "recipients_day": self.ally_smtp_limit_recipients_day,
        }

    @api.constrains(
        "ally_smtp_enabled",
        "ally_smtp_host",
        "ally_smtp_port",
        "ally_smtp_imap_port",
    )
    def _check_ally_smtp(self):
        for company in self:
            for port in (company.ally_smtp_port, company.ally_smtp_imap_port):
                if not 1 <= port <= 65535:
                    raise ValidationError(
                        _(
                            "A port is a number from 1 to 65535, not %(port)s.",
                            port=port,
                        )
                    )
            host = (company.ally_smtp_host or "").strip()
            if company.ally_smtp_enabled and not host:
                raise ValidationError(
                    _("Enter the SMTP server of the agency's mail provider.")
                )
            for value in (host, company.ally_smtp_imap_host or ""):
                if any(c.isspace() for c in value.strip()) or "/" in value:
                    raise ValidationError(
                        _("%(host)s is not a server name.", host=value)
                    )

    def write(self, vals):
        keys = {company: company._ally_smtp_server_fingerprint() for company in self}
        if OAUTH_FIELDS & vals.keys() or vals.get("ally_smtp_oauth_client_secret"):
            vals = dict(vals, ally_smtp_oauth_refused=False)
            refused = self.sudo().filtered("ally_smtp_oauth_refused")
        else:
            refused = self.browse()
        result = super().write(vals)
        if INTEGRATION_FIELDS & vals.keys() and "ally_smtp_integrated" not in vals:
            # any change of the server makes the integration unchecked again
            self._ally_smtp_set_integrated(False)
        if refused:  # an admin changed the app: its waiting mail goes again
            self.env["ally.smtp.mailbox"].sudo().search(
                [("company_id", "in", refused.ids), ("use_own", "=", True)]
            )._send_waiting_now()
        if TRUST_FIELDS & vals.keys():
            mailboxes = (
                self.env["ally.smtp.mailbox"]
                .sudo()
                .search([("company_id", "in", self.ids), ("use_own", "=", True)])
            )
            moved = mailboxes.filtered(
                lambda m: (
                    keys[m.company_id] != m.company_id._ally_smtp_server_fingerprint()
                )
            )
            if moved:
                moved._set_state("untested")
                _logger.info(
                    "ally_smtp: mail server changed; %s mailbox(es) wait for their "
                    "owner's Test",
                    len(moved),
                )
            if SERVER_FIELDS & vals.keys():
                mailboxes._sync_server()
        return result

    def action_ally_smtp_integrate(self):
        """Check that the SMTP and IMAP servers answer as configured."""
        self.ensure_one()
        actions.check_settings_admin(self.env)
        if not self.ally_smtp_enabled:
            raise UserError(_("Turn on 'Agency email (SMTP)' first."))
        with errors.shown_to_user():
            self._ally_smtp_check_smtp()
            self._ally_smtp_check_imap()
            self._ally_smtp_check_oauth()
        self._ally_smtp_set_integrated(True)
        return actions.notify(
            _(
                "The agency's mail server %(host)s is integrated. Each user "
                "can now enter their mailbox in My Profile.",
                host=self.ally_smtp_host,
            ),
            reload=True,
        )

    def _ally_smtp_set_integrated(self, integrated):
        """The one writer of ``ally_smtp_integrated`` and its date."""
        self.sudo().write(
            {
                "ally_smtp_integrated": integrated,
                "ally_smtp_integrated_at": integrated and fields.Datetime.now(),
            }
        )

    def _ally_smtp_raise_classified(self, exc, host, port, login="", protocol="smtp"):
        """Raise ``exc`` from talking to ``host`` as the ``errors.MailboxError``
        that says what it means and what it makes of the mailbox."""
        kind, message = errors.classify(self.env, exc, host, port, login, protocol)
        _logger.info("ally_smtp: %s:%s refused: %s", host, port, exc)
        raise errors.MailboxError(kind, message) from None

    def _ally_smtp_check_smtp(self):
        host, port = self.ally_smtp_host.strip(), self.ally_smtp_port
        try:
            connection = self._ally_smtp_open_smtp()
            try:
                connection.ehlo_or_helo_if_needed()
                offered = connection.has_extn("auth")
                mechanisms = (connection.esmtp_features.get("auth") or "").upper()
            finally:
                connection.close()
        except Exception as exc:  # noqa: BLE001 - every failure gets a message
            self._ally_smtp_raise_classified(exc, host, port)
        if not offered:
            raise UserError(
                _(
                    "%(host)s answers but offers no sign-in (AUTH) on port %(port)s.",
                    host=host,
                    port=port,
                )
            )
        if self._ally_smtp_oauth() and "XOAUTH2" not in mechanisms.split():
            raise UserError(
                _(
                    "%(host)s does not offer sign-in with an account (AUTH XOAUTH2) "
                    "on port %(port)s. Check the server, or choose the sign-in "
                    "method 'Mailbox password / App Password'.",
                    host=host,
                    port=port,
                )
            )

    def _ally_smtp_check_imap(self):
        host = (self.ally_smtp_imap_host or "").strip()
        if not host:
            return
        port = self.ally_smtp_imap_port
        try:
            with self._ally_smtp_open_imap() as imap:
                imap.capability()
        except Exception as exc:  # noqa: BLE001
            self._ally_smtp_raise_classified(exc, host, port, protocol="imap")

    def _ally_smtp_server_fingerprint(self):
        """Which servers the users' passwords are sent to, as one string."""
        self.ensure_one()
        return "|".join(
            str(value)
            for value in (
                (self.ally_smtp_host or "").strip().lower(),
                self.ally_smtp_port,
                self.ally_smtp_encryption,
                (self.ally_smtp_imap_host or "").strip().lower(),
                self.ally_smtp_verify_tls,
            )
        ) + (f"|{self._ally_smtp_oauth()}" if self._ally_smtp_oauth() else "")

    def _ally_smtp_ready(self):
        self.ensure_one()
        return self.ally_smtp_enabled and bool(self.ally_smtp_host)

    def _ally_smtp_open_smtp(self):
        """An SMTP session with the agency's server, TLS as configured."""
        return mailbox.smtp_connect(
            self.ally_smtp_host.strip(),
            self.ally_smtp_port,
            self.ally_smtp_encryption,
            self.ally_smtp_verify_tls,
            self._ally_smtp_timeout(),
        )

    def _ally_smtp_open_imap(self):
        """An IMAP session with the agency's server (implicit TLS)."""
        return mailbox.imap_connect(
            self.ally_smtp_imap_host.strip(),
            self.ally_smtp_imap_port,
            self.ally_smtp_verify_tls,
            self._ally_smtp_timeout(),
        )

    def _ally_smtp_timeout(self):
        param = self.env["ir.config_parameter"].sudo().get_param("ally_smtp.timeout")
        return float(param or mailbox.TIMEOUT)
