"""The agency's OAuth app (Google or Microsoft): its client ID and secret, and
the one place that asks its token endpoint and judges the answer."""

import contextlib
import logging

from odoo import _, fields, models
from odoo.exceptions import UserError

from ..lib import crypto, errors, oauth
from .res_company import AUTH_METHODS, ODOO_CLIENT_PARAMS

_logger = logging.getLogger(__name__)


class ResCompany(models.Model):
    # a second file for res.company on purpose: its SMTP/IMAP integration
    # stays in res_company.py, each concern in a file of its own
    _inherit = "res.company"  # pylint: disable=consider-merging-classes-inherited

    ally_smtp_oauth_client_id = fields.Char(
        "Client ID", help="Of the app the agency registered with Google or Microsoft."
    )
    ally_smtp_oauth_client_secret = fields.Char(
        "Client secret",
        compute="_compute_ally_smtp_oauth_client_secret",
        inverse="_inverse_ally_smtp_oauth_client_secret",
        help="Stored encrypted; it cannot be read back.",
    )
    # Fernet token, as for mailbox passwords
    ally_smtp_oauth_secret_crypt = fields.Char(groups=fields.NO_ACCESS)
    ally_smtp_oauth_secret_set = fields.Boolean(
        "Client secret stored", compute="_compute_ally_smtp_oauth_secret_set"
    )
    ally_smtp_oauth_tenant = fields.Char(
        "Tenant",
        default="organizations",
        help="Microsoft: the directory (tenant) ID of the agency, needed for an "
        "app registered for one organization (the usual case); 'organizations' "
        "for a multi-tenant app, or 'consumers' for Outlook.com. 'common' fails "
        "for an app registered for one organization.",
    )
    ally_smtp_oauth_redirect_uri = fields.Char(
        "Redirect URI", compute="_compute_ally_smtp_oauth_redirect_uri"
    )
    # the provider refused the agency's app (invalid_client): OAuth sending of
    # the company waits for an admin
    ally_smtp_oauth_refused = fields.Text(
        "OAuth app refused", readonly=True, groups="base.group_system"
    )

    def _compute_ally_smtp_oauth_client_secret(self):
        self.ally_smtp_oauth_client_secret = False

    def _inverse_ally_smtp_oauth_client_secret(self):
        for company in self:
            secret = (company.ally_smtp_oauth_client_secret or "").strip()
            if secret:  # the web client sends False for an untouched field
                company.sudo().ally_smtp_oauth_secret_crypt = crypto.encrypt(
                    self.env, secret
                )

    def _compute_ally_smtp_oauth_secret_set(self):
        for company in self:
            company.ally_smtp_oauth_secret_set = bool(
                company.sudo().ally_smtp_oauth_secret_crypt
                or company._ally_smtp_odoo_client()[1]
            )

    def _compute_ally_smtp_oauth_redirect_uri(self):
        base = self.env["ir.config_parameter"].sudo().get_param("web.base.url") or ""
        self.ally_smtp_oauth_redirect_uri = base.rstrip("/") + oauth.CALLBACK

    def _ally_smtp_oauth(self):
        """The OAuth provider users sign in with, or ``False`` (passwords)."""
        self.ensure_one()
        method = self.ally_smtp_auth_method
        return method if method in (oauth.GOOGLE, oauth.MICROSOFT) else False

    def _ally_smtp_odoo_client(self):
        """Odoo's own app for this provider (its system parameters), if set."""
        names = ODOO_CLIENT_PARAMS.get(self._ally_smtp_oauth())
        if not names:
            return False, False
        get = self.env["ir.config_parameter"].sudo().get_param
        return get(names[0]) or False, get(names[1]) or False

    def _ally_smtp_oauth_client(self):
        """``(client id, client secret)``; Odoo's own app fills what is empty."""
        self.ensure_one()
        odoo_id, odoo_secret = self._ally_smtp_odoo_client()
        crypt = self.sudo().ally_smtp_oauth_secret_crypt
        secret = crypto.decrypt(self.env, crypt) if crypt else odoo_secret
        client_id = (self.ally_smtp_oauth_client_id or "").strip() or odoo_id
        if not (client_id and secret):
            raise UserError(
                _(
                    "Enter the client ID and client secret of the agency's app in "
                    "Settings > Integrations > Agency email."
                )
            )
        return client_id, secret

    def _ally_smtp_oauth_problem(self):
        """Why the agency's OAuth app may not be used now, or ``False``."""
        self.ensure_one()
        return self.sudo().ally_smtp_oauth_refused or False

    def _ally_smtp_token_request(self, provider, note_refusal=True, **data):
        """``oauth.token_request`` with the agency's app; a failure is an
        ``oauth.Problem`` (see ``_ally_smtp_token_errors``)."""
        self.ensure_one()
        client_id, secret = self._ally_smtp_oauth_client()
        with self._ally_smtp_token_errors(provider, note_refusal):
            return oauth.token_request(
                self.env,
                provider,
                self.ally_smtp_oauth_tenant,
                client_id,
                secret,
                **data,
            )

    @contextlib.contextmanager
    def _ally_smtp_token_errors(self, provider, note_refusal=True):
        """What the sign-in service answered, judged in one place: inside
        this block, ``oauth.Unreachable`` and ``oauth.OAuthError`` become an
        ``oauth.Problem`` whose kind says what follows.

        ``ADMIN``: the provider refused the agency's app, noted for the
        administrators unless ``note_refusal`` is False (an administrator is
        checking it); ``RECONNECT``: the user's grant is gone; ``TEMPORARY``:
        anything else (no answer, 5xx, 429, ``temporarily_unavailable``).
        """
        _ = self.env._
        name = self.env["ally.smtp.oauth.token"]._provider_name(provider)
        try:
            yield
        except oauth.Unreachable as exc:
            raise oauth.Problem(
                errors.TEMPORARY,
                _(
                    "The sign-in service of %(provider)s did not answer (%(detail)s).",
                    provider=name,
                    detail=str(exc),
                ),
            ) from None
        except oauth.OAuthError as exc:
            if exc.error in oauth.CLIENT_REFUSED:
                kind = errors.ADMIN
                message = (
                    self._ally_smtp_oauth_client_refused(exc)
                    if note_refusal
                    else _(
                        "%(provider)s refused the client ID or client secret "
                        "(%(error)s). Copy them again from the app you registered.",
                        provider=name,
                        error=exc.error,
                    )
                )
            elif exc.error in oauth.GRANT_GONE:
                kind = errors.RECONNECT
                message = _(
                    "%(provider)s no longer accepts this sign-in (%(error)s).",
                    provider=name,
                    error=exc.error,
                )
            else:
                kind = errors.TEMPORARY
                message = _(
                    "The sign-in service of %(provider)s answered %(error)s.",
                    provider=name,
                    error=str(exc),
                )
            raise oauth.Problem(kind, message, exc.error) from None

    def _ally_smtp_oauth_client_refused(self, exc):
        """The provider refused the app itself: an admin's problem, said once."""
        message = _(
            "The %(provider)s app of the agency was refused (%(error)s): its client "
            "ID or client secret is wrong or expired. A settings administrator must "
            "enter a valid one in Settings > Integrations > Agency email; mail "
            "signed in with %(provider)s waits until then.",
            provider=dict(AUTH_METHODS).get(self.ally_smtp_auth_method),
            error=exc.error,
        )
        company = self.sudo()
        if company.ally_smtp_oauth_refused != message:
            company.ally_smtp_oauth_refused = message
            _logger.warning(
                "ally_smtp: OAuth client of company %s refused (%s); its OAuth "
                "sending waits for an administrator",
                self.id,
                exc.error,
            )
            admins = self.env.ref("base.group_system").sudo().users
            for admin in admins.filtered(lambda u: self in u.company_ids):
                self.env["bus.bus"]._sendone(
                    admin.partner_id,
                    "simple_notification",
                    {
                        "type": "danger",
                        "sticky": True,
                        "title": _("Agency email needs an administrator"),
                        "message": message,
                    },
                )
        return message

    def _ally_smtp_check_oauth(self):
        """The token endpoint answers, and accepts the agency's app.

        It is asked to refresh a token that does not exist: 'invalid_grant'
        means it knows the app and its secret, 'invalid_client' that it does
        not.
        """
        provider = self._ally_smtp_oauth()
        if not provider:
            return
        try:
            self._ally_smtp_token_request(
                provider,
                note_refusal=False,
                grant_type="refresh_token",
                refresh_token="ally-smtp-integration-check",
            )
        except oauth.Problem as exc:
            if exc.error != "invalid_grant":
                raise  # a UserError: what the admin reads
        except ValueError as exc:  # an http:// endpoint that is not loopback
            raise UserError(str(exc)) from None
