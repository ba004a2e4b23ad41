import imaplib
import logging
import secrets
import smtplib
import time

from psycopg2.errors import TransactionRollbackError

from odoo import _, api, fields, models, tools
from odoo.exceptions import AccessError, UserError, ValidationError
from odoo.tools import email_normalize, email_split

from ..lib import actions, crypto, errors, mailbox, oauth, pacing
from .ally_smtp_oauth_token import RECEIVED

_logger = logging.getLogger(__name__)

MAX_PASSWORD = 256
OWN_FIELDS = ["ally_smtp_use_own", "ally_smtp_email", "ally_smtp_password"]
STATE_FIELDS = [
    "ally_smtp_state",
    "ally_smtp_last_error",
    "ally_smtp_tested_at",
    "ally_smtp_sent_folder",
    "ally_smtp_password_set",
    "ally_smtp_available",
    "ally_smtp_paused_until",
    "ally_smtp_pause_reason",
    "ally_smtp_paused",
    "ally_smtp_auth_method",
    "ally_smtp_oauth_account",
]
# what only ally_smtp itself writes (a Test, a refused login, a server change)
SYSTEM_FIELDS = {
    "ally_smtp_state",
    "ally_smtp_last_error",
    "ally_smtp_tested_at",
    "ally_smtp_sent_folder",
    "ally_smtp_server_key",
    "ally_smtp_password_crypt",
    "ally_smtp_paused_until",
    "ally_smtp_pause_reason",
}
# a user's mailbox data: the owner and settings admins only
PRIVATE_FIELDS = {
    "ally_smtp_use_own",
    "ally_smtp_email",
    "ally_smtp_state",
    "ally_smtp_last_error",
    "ally_smtp_tested_at",
    "ally_smtp_sent_folder",
    "ally_smtp_password_set",
    "ally_smtp_server_key",
    "ally_smtp_paused_until",
    "ally_smtp_pause_reason",
    "ally_smtp_paused",
    "ally_smtp_oauth_account",
}


class ResUsers(models.Model):
    _inherit = "res.users"

    ally_smtp_use_own = fields.Boolean(
        "Use my own SMTP configuration", copy=False, prefetch="ally_smtp"
    )
    ally_smtp_email = fields.Char(
        "SMTP email",
        copy=False,
        prefetch="ally_smtp",
        help="Your mailbox address: mail you write in Odoo is sent from it.",
    )
    ally_smtp_password = fields.Char(
        "SMTP password",
        compute="_compute_ally_smtp_password",
        inverse="_inverse_ally_smtp_password",
        copy=False,
        help="The password of your mailbox (for Gmail, an App Password), never "
        "your Odoo password. It is stored encrypted and cannot be read back.",
    )
    # Fernet token; only code running as superuser reads it (auth_totp style).
    ally_smtp_password_crypt = fields.Char(copy=False, groups=fields.NO_ACCESS)
    ally_smtp_password_set = fields.Boolean(
        "SMTP password stored", compute="_compute_ally_smtp_password_set"
    )
    ally_smtp_state = fields.Selection(
        [
            ("off", "Not used"),
            ("untested", "Not tested"),
            ("ok", "Working"),
            ("failed", "Failed"),
            ("reconnect", "Reconnect needed"),
        ],
        "SMTP status",
        default="off",
        copy=False,
        readonly=True,
        prefetch="ally_smtp",
    )
    ally_smtp_last_error = fields.Text(
        "SMTP error", copy=False, readonly=True, prefetch="ally_smtp"
    )
    ally_smtp_tested_at = fields.Datetime(
        "SMTP tested on", copy=False, readonly=True, prefetch="ally_smtp"
    )
    ally_smtp_sent_folder = fields.Char(
        "Sent folder", copy=False, readonly=True, prefetch="ally_smtp"
    )
    ally_smtp_available = fields.Boolean(compute="_compute_ally_smtp_available")
    # the provider said the mailbox sent too much: its mail waits until then
    ally_smtp_paused_until = fields.Datetime(
        "Sending paused until", copy=False, readonly=True, prefetch="ally_smtp"
    )
    ally_smtp_pause_reason = fields.Text(
        "Why sending is paused", copy=False, readonly=True, prefetch="ally_smtp"
    )
    ally_smtp_paused = fields.Boolean(
        "Sending paused",
        compute="_compute_ally_smtp_paused",
        search="_search_ally_smtp_paused",
    )
    ally_smtp_auth_method = fields.Selection(related="company_id.ally_smtp_auth_method")
    ally_smtp_oauth_account = fields.Char(
        "Connected as", compute="_compute_ally_smtp_oauth_account"
    )
    # the agency server the password was given or tested for (see res.company)
    ally_smtp_server_key = fields.Char(
        "Server the password is for", copy=False, groups="base.group_system"
    )

    def init(self):
        result = super().init()
        # one owner per mailbox and company, also under concurrent writes
        tools.create_unique_index(
            self.env.cr,
            "res_users_ally_smtp_email_company_uniq",
            self._table,
            ["company_id", "lower(trim(ally_smtp_email))"],
        )
        return result

    @property
    def SELF_READABLE_FIELDS(self):
        return super().SELF_READABLE_FIELDS + OWN_FIELDS + STATE_FIELDS

    @property
    def SELF_WRITEABLE_FIELDS(self):
        return super().SELF_WRITEABLE_FIELDS + OWN_FIELDS

    @api.model
    def check_field_access_rights(self, operation, field_names):
        """Colleagues neither read nor search anyone's mailbox data."""
        may_see = (
            self.env.su
            or (self and all(user._origin == self.env.user for user in self))
            or self.env.user._is_system()
        )
        if field_names and PRIVATE_FIELDS.intersection(field_names) and not may_see:
            raise AccessError(
                _("Only its owner and settings administrators see a user's mailbox.")
            )
        result = super().check_field_access_rights(operation, field_names)
        if not field_names and not may_see:
            result = [name for name in result if name not in PRIVATE_FIELDS]
        return result

    @api.constrains("ally_smtp_use_own", "ally_smtp_email")
    def _check_ally_smtp_email(self):
        for user in self.sudo():
            if not user.ally_smtp_use_own and not user.ally_smtp_email:
                continue
            address = user.ally_smtp_email or ""
            if (
                any(c in address for c in "\r\n")
                or len(email_split(address)) != 1
                or email_normalize(address, strict=True) != address.strip().lower()
            ):
                raise ValidationError(
                    _(
                        "'%(address)s' is not one valid mailbox address. Enter a "
                        "single address such as ana@agency.com.br.",
                        address=address,
                    )
                )
            company = user.company_id.sudo()
            reserved = {
                email_normalize(a)
                for a in (company.default_from_email, company.catchall_email)
                if a
            }
            if email_normalize(address) in reserved:
                raise ValidationError(
                    _(
                        "%(address)s is the agency's notification or reply address; "
                        "use your own mailbox.",
                        address=address,
                    )
                )
            if user.ally_smtp_use_own and not company._ally_smtp_ready():
                raise ValidationError(
                    _(
                        "Your company has no agency email (SMTP) integration yet. "
                        "Ask your administrator to set it up in Settings."
                    )
                )

    def _compute_ally_smtp_password(self):
        self.ally_smtp_password = False

    def _inverse_ally_smtp_password(self):
        for user in self:
            password = user.ally_smtp_password
            # The web client sends False for an untouched empty field.
            if not password:
                continue
            user._ally_smtp_check_self()
            if len(password) > MAX_PASSWORD or any(c in password for c in "\r\n\0"):
                raise ValidationError(
                    _(
                        "This does not look like a mailbox password: at most "
                        "%(max)s characters on one line.",
                        max=MAX_PASSWORD,
                    )
                )
            user._ally_smtp_set_state(
                "untested",
                values={
                    "ally_smtp_password_crypt": crypto.encrypt(self.env, password),
                    # given for the server configured now; a new one needs a Test
                    "ally_smtp_server_key": user.company_id._ally_smtp_server_key(),
                },
            )
            _logger.info("ally_smtp: mailbox password changed for user %s", user.id)

    def _compute_ally_smtp_oauth_account(self):
        tokens = self.env["ally.smtp.oauth.token"].sudo()
        for user in self:
            user.ally_smtp_oauth_account = (
                tokens.search([("user_id", "=", user.id)]).account or False
            )

    def _ally_smtp_oauth_token(self):
        """The user's OAuth grant (``ally.smtp.oauth.token``), sudo, or empty."""
        self.ensure_one()
        return (
            self.env["ally.smtp.oauth.token"].sudo().search([("user_id", "=", self.id)])
        )

    @api.depends("ally_smtp_password_crypt")
    def _compute_ally_smtp_password_set(self):
        for user in self:
            user.ally_smtp_password_set = bool(user.sudo().ally_smtp_password_crypt)

    @api.depends("company_id.ally_smtp_enabled", "company_id.ally_smtp_host")
    def _compute_ally_smtp_available(self):
        for user in self:
            user.ally_smtp_available = user.company_id.sudo()._ally_smtp_ready()

    @api.model_create_multi
    def create(self, vals_list):
        for vals in vals_list:
            _normalize_address(vals)
            company = vals.get("company_id") or self.env.company.id
            self._ally_smtp_check_address_free(vals.get("ally_smtp_email"), company)
        users = super().create(vals_list)
        for user, vals in zip(users, vals_list, strict=True):
            if vals.get("ally_smtp_use_own") and "ally_smtp_state" not in vals:
                user._ally_smtp_set_state("untested")
        return users

    def write(self, vals):
        if SYSTEM_FIELDS & vals.keys() and not self.env.su:
            raise AccessError(
                _("A mailbox's status is set by its owner's Test, not by hand.")
            )
        if {"ally_smtp_email", "ally_smtp_password"} & vals.keys() or vals.get(
            "ally_smtp_use_own"
        ):
            self._ally_smtp_check_self()
        _normalize_address(vals)
        for user in self:
            address = vals.get("ally_smtp_email")
            if "company_id" in vals and "ally_smtp_email" not in vals:
                address = user.sudo().ally_smtp_email  # moving to another company
            self._ally_smtp_check_address_free(
                address, vals.get("company_id") or user.company_id.id, user
            )
        result = super().write(vals)
        if {"ally_smtp_use_own", "ally_smtp_email"} & vals.keys() and (
            "ally_smtp_state" not in vals
        ):
            # new credentials are untested; the Test and the send path say more
            on = self.sudo().filtered("ally_smtp_use_own")
            on._ally_smtp_set_state("untested")
            (self.sudo() - on)._ally_smtp_set_state("off")
        if {"ally_smtp_use_own", "ally_smtp_email", "company_id", "name"} & vals.keys():
            self._ally_smtp_sync_server()
        return result

    def _ally_smtp_check_address_free(self, address, company_id, user=None):
        """One owner per mailbox and company (the unique index backs it)."""
        if not address:
            return
        taken = (
            self.sudo()
            .with_context(active_test=False)
            .search_count(
                [
                    ("id", "!=", user.id if user else False),
                    ("company_id", "=", company_id),
                    ("ally_smtp_email", "=", address.strip().lower()),
                ],
                limit=1,
            )
        )
        if taken:
            raise ValidationError(
                _(
                    "%(address)s is already another user's mailbox. Each mailbox "
                    "has one owner: enter your own address.",
                    address=address,
                )
            )

    def _ally_smtp_sync_server(self):
        """Keep one personal ``ir.mail_server`` per user with a mailbox."""
        Server = self.env["ir.mail_server"].sudo().with_context(active_test=False)
        for user in self.sudo():
            server = Server.search([("ally_smtp_owner_id", "=", user.id)])
            company = user.company_id
            if not (
                user.ally_smtp_use_own
                and user.ally_smtp_email
                and company._ally_smtp_ready()
            ):
                server.unlink()
                continue
            address = user.ally_smtp_email.strip().lower()
            values = {
                "name": self.env._("Mailbox of %(name)s", name=user.name),
                "smtp_host": company.ally_smtp_host.strip(),
                "smtp_port": company.ally_smtp_port,
                "smtp_encryption": company.ally_smtp_encryption,
                "smtp_authentication": "login",
                "smtp_user": address,
                "smtp_pass": False,
                "from_filter": address,
                "sequence": 1000,
                "active": True,
                "ally_smtp_owner_id": user.id,
            }
            if server:
                server.write(values)
            else:
                Server.create(values)

    def _ally_smtp_auth_failed(self, message):
        """The mailbox refused the password: stop using it and tell the user."""
        self._ally_smtp_stop(
            "failed", message, self.env._("Your mail could not be sent")
        )

    def _ally_smtp_reconnect_needed(self, message):
        """The OAuth grant no longer works: say so to the user, once."""
        user = self.sudo()
        if user.ally_smtp_state == "reconnect" and user.ally_smtp_last_error == message:
            return
        self._ally_smtp_stop("reconnect", message, self.env._("Reconnect your mailbox"))

    def _ally_smtp_stop(self, state, message, title):
        """No more logins until the user acts: note why, and tell them."""
        self.ensure_one()
        self._ally_smtp_set_state(state, message, tested=True)
        self.env["bus.bus"]._sendone(
            self.partner_id,
            "simple_notification",
            {"type": "danger", "sticky": True, "title": title, "message": message},
        )

    @api.depends("ally_smtp_paused_until")
    def _compute_ally_smtp_paused(self):
        now = fields.Datetime.now()
        for user in self:
            until = user.sudo().ally_smtp_paused_until
            user.ally_smtp_paused = bool(until and until > now)

    def _search_ally_smtp_paused(self, operator, value):
        if operator not in ("=", "!=") or not isinstance(value, bool):
            raise UserError(_("Unsupported search on 'Sending paused'."))
        paused = [("ally_smtp_paused_until", ">", fields.Datetime.now())]
        if (operator == "=") == value:
            return paused
        return ["!", *paused]

    def action_ally_smtp_resume(self):
        """Admins: send a paused mailbox's waiting mail now."""
        actions.check_settings_admin(self.env)
        users = self.sudo()
        users.write({"ally_smtp_paused_until": False, "ally_smtp_pause_reason": False})
        users._ally_smtp_release()
        return True

    def _ally_smtp_release(self):
        """Send these users' mail that waits (a pause, a reconnect) now."""
        users = self.sudo()
        mails = (
            self.env["mail.mail"]
            .sudo()
            .search(
                [
                    ("state", "=", "outgoing"),
                    ("mail_message_id.create_uid", "in", users.ids),
                    ("scheduled_date", ">", fields.Datetime.now()),
                    ("ally_smtp_attempts", "=", 0),
                ]
            )
        )
        if mails:
            mails.write(
                {"scheduled_date": fields.Datetime.now(), "failure_reason": False}
            )
            self.env.ref("mail.ir_cron_mail_scheduler_action").sudo()._trigger()

    def _ally_smtp_pause(self, window, reason):
        """The provider says the mailbox sent too much: wait for its window.

        A window of up to an hour is waited whole. A day is waited until the
        oldest mail ally_smtp sent in it leaves it, counting only mail sent
        over an hour ago, and at least an hour: the provider also counts mail
        sent from elsewhere, and asking again once an hour is no loop.
        """
        self.ensure_one()
        now = fields.Datetime.now()
        until = now + min(window, pacing.HOUR)
        history = self.env["ally.smtp.send.log"]._ally_smtp_history(self, now)
        older = [row[0] for row in history if row[0] <= now - pacing.HOUR]
        if older and window > pacing.HOUR:
            until = max(until, older[0] + window)
        try:
            # a worker that met the same quota at once may have paused it
            # already: its pause stands, and this send transaction goes on
            with self.env.cr.savepoint():
                self.sudo().write(
                    {"ally_smtp_paused_until": until, "ally_smtp_pause_reason": reason}
                )
        except TransactionRollbackError:
            self.invalidate_recordset(
                ["ally_smtp_paused_until", "ally_smtp_pause_reason"]
            )
        _logger.info("ally_smtp: mailbox of user %s paused until %s", self.id, until)
        user = self.with_context(lang=self.lang, tz=self.tz or "UTC")
        self.env["bus.bus"]._sendone(
            self.partner_id,
            "simple_notification",
            {
                "type": "warning",
                "sticky": True,
                "title": user.env._("Your mail is waiting"),
                "message": user.env._(
                    "%(reason)s Sending resumes at about %(time)s.",
                    reason=reason,
                    time=user._ally_smtp_local_time(until),
                ),
            },
        )
        return until

    def _ally_smtp_pacing_reason(self, limits, until):
        """Why this user's mail waits for its mailbox's ``limits``."""
        _ = self.env._
        names = {
            "minute": lambda count: _("%(count)s messages per minute", count=count),
            "hour": lambda count: _("%(count)s messages per hour", count=count),
            "day": lambda count: _("%(count)s messages per day", count=count),
            "recipients_day": lambda count: _(
                "%(count)s recipients per day", count=count
            ),
        }
        described = [names[name](count) for name, count in limits.items() if count]
        return _(
            "Waiting for the sending limits of the mailbox %(address)s (%(limits)s): "
            "it leaves by itself at about %(time)s.",
            address=self.sudo().ally_smtp_email,
            limits=", ".join(described),
            time=self._ally_smtp_local_time(until),
        )

    def _ally_smtp_local_time(self, when):
        """``when`` as the user reads it: HH:MM in their time zone."""
        local = fields.Datetime.context_timestamp(
            self.with_context(tz=self.tz or "UTC"), when
        )
        return local.strftime("%H:%M")

    def _ally_smtp_check_self(self):
        """Only the user sets up their own mailbox; admins may only turn it off."""
        if self.env.su:
            return
        if any(user != self.env.user or not user._is_internal() for user in self):
            raise AccessError(
                _(
                    "Only internal users set up their own mailbox, each their own. "
                    "An administrator can only turn it off."
                )
            )

    # -- OAuth: connect, disconnect -------------------------------------------
    def action_ally_smtp_oauth_connect(self):
        """Send the browser to the provider's sign-in (see controllers)."""
        self.ensure_one()
        self._ally_smtp_check_self()
        if not self.company_id._ally_smtp_oauth():
            raise UserError(_("Your agency signs in to mailboxes with passwords."))
        if not self.ally_smtp_email:
            raise UserError(_("Enter your SMTP email first."))
        return {
            "type": "ir.actions.act_url",
            "url": "/ally_smtp/oauth/start",
            "target": "self",
        }

    def action_ally_smtp_oauth_disconnect(self):
        """Forget the user's grant, revoking it where the provider offers it."""
        self.ensure_one()
        self._ally_smtp_check_self()
        token = self._ally_smtp_oauth_token()
        if token:
            try:
                tokens = token._tokens()
            except UserError:  # encrypted with a key that is gone
                tokens = {}
            grant = tokens.get("refresh_token") or tokens.get("access_token")
            if grant:
                oauth.revoke(self.env, token.provider, grant)
            token.unlink()
            _logger.info("ally_smtp: user %s disconnected their mailbox", self.id)
        self._ally_smtp_set_state("untested", error=False)
        return actions.notify(
            _("Your mailbox is disconnected. Odoo no longer sends from it."),
            reload=True,
        )

    def _ally_smtp_oauth_authorize(self, redirect_uri):
        """``(url, pending)``: where to send the browser, and what the callback
        must find in the session to accept its answer (single use)."""
        self.ensure_one()
        self._ally_smtp_check_self()
        company = self.company_id
        provider = company._ally_smtp_oauth()
        if not provider:
            raise UserError(_("Your agency signs in to mailboxes with passwords."))
        client_id, _secret = company._ally_smtp_oauth_client()
        verifier, challenge = oauth.pkce()
        pending = {
            "state": secrets.token_urlsafe(32),
            "nonce": secrets.token_urlsafe(16),
            "verifier": verifier,
            "uid": self.id,
            "provider": provider,
            "company": company.id,
            "expires": time.time() + 600,
        }
        url = oauth.authorize_url(
            self.env,
            provider,
            company.ally_smtp_oauth_tenant,
            client_id,
            redirect_uri,
            state=pending["state"],
            nonce=pending["nonce"],
            code_challenge=challenge,
            login_hint=self.ally_smtp_email.strip(),
        )
        return url, pending

    def _ally_smtp_oauth_finish(self, pending, code, redirect_uri):
        """Exchange ``code``, check the account, keep the tokens, test them.

        Returns ``(connected, message)``; a refusal stores nothing.
        """
        self.ensure_one()
        self._ally_smtp_check_self()
        user = self.sudo()
        company = user.company_id
        provider = pending["provider"]
        if provider != company._ally_smtp_oauth() or pending["company"] != company.id:
            return False, _(
                "The sign-in method changed meanwhile. Press Connect again."
            )
        try:
            tokens = company._ally_smtp_token_request(
                provider,
                grant_type="authorization_code",
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=pending["verifier"],
            )
            with company._ally_smtp_token_errors(provider):
                account, verified = oauth.signed_in_account(self.env, provider, tokens)
        except oauth.Problem as exc:
            if exc.kind == errors.ADMIN:  # the administrators are told
                return False, exc.message
            return False, _("%(problem)s Press Connect again.", problem=exc.message)
        claims = oauth.id_token_claims(tokens.get("id_token") or "")
        expected = user.ally_smtp_email.strip().lower()
        if (
            account != expected
            or not verified
            or claims.get("nonce", pending["nonce"]) != pending["nonce"]
        ):
            oauth.revoke(
                self.env,
                provider,
                tokens.get("refresh_token") or tokens["access_token"],
            )
            _logger.info(
                "ally_smtp: user %s signed in with another account; nothing kept",
                self.id,
            )
            return False, _(
                "You signed in as %(account)s, but your SMTP email is %(address)s. "
                "Press Connect again and choose the account %(address)s; nothing "
                "was stored.",
                account=account or _("an unknown account"),
                address=expected,
            )
        if not tokens.get("refresh_token"):
            return False, _(
                "The provider gave no lasting access (no refresh token). Press "
                "Connect again and accept every permission asked."
            )
        grant = self.env["ally.smtp.oauth.token"]._ally_smtp_store(
            user, provider, tokens, account
        )
        user._ally_smtp_set_state(
            "untested",
            error=False,
            values={"ally_smtp_server_key": company._ally_smtp_server_key()},
        )
        _logger.info("ally_smtp: user %s connected their mailbox", self.id)
        try:
            with self.env.cr.savepoint():
                # tested with the token just received: the grant is not
                # committed yet, so no transaction of its own may renew it
                folder = user.with_context(**{RECEIVED: grant.id})._ally_smtp_probe()
        except errors.MailboxError as exc:
            message = exc.message
            user._ally_smtp_set_state(
                errors.state_after(exc.kind), message, tested=True
            )
            return False, _(
                "Connected as %(account)s, but the test failed: %(message)s",
                account=account,
                message=message,
            )
        user._ally_smtp_sync_server()
        user._ally_smtp_set_state(
            "ok", tested=True, values={"ally_smtp_sent_folder": folder}
        )
        user._ally_smtp_release()
        return True, _(
            "Connected as %(account)s. Your mailbox works: mail you write in Odoo "
            "leaves from it.",
            account=account,
        )

    def action_ally_smtp_clear_password(self):
        self.ensure_one()
        self._ally_smtp_check_self()
        self.sudo().write({"ally_smtp_password_crypt": False})

    def action_ally_smtp_test(self):
        """Sign in to SMTP and IMAP as the user; nothing is sent."""
        self.ensure_one()
        self._ally_smtp_check_self()
        user = self.sudo()
        try:
            folder = user._ally_smtp_probe()
        except errors.MailboxError as exc:
            message = exc.message
            state = errors.state_after(exc.kind)
            # The UserError rolls the transaction back; keep the outcome anyway.
            self.env.cr.postrollback.add(
                lambda: user._ally_smtp_record_after_rollback(state, message)
            )
            raise UserError(message) from None
        user._ally_smtp_sync_server()
        user._ally_smtp_set_state(
            "ok",
            error=False,
            tested=True,
            values={
                "ally_smtp_server_key": user.company_id._ally_smtp_server_key(),
                "ally_smtp_sent_folder": folder,
            },
        )
        if folder:
            message = _(
                "Your mailbox works. Mail you write in Odoo leaves from "
                "%(address)s and a copy goes to your folder '%(folder)s'.",
                address=user.ally_smtp_email,
                folder=folder,
            )
        else:
            message = _(
                "Your mailbox works. Mail you write in Odoo leaves from "
                "%(address)s. No IMAP server is set up for the agency, so Odoo "
                "adds no copy to your Sent folder.",
                address=user.ally_smtp_email,
            )
        notification = actions.notify(message, _("SMTP configuration works"))
        # reopen My Profile so it shows the new status
        notification["params"]["next"] = dict(self.action_get(), res_id=self.id)
        return notification

    def _ally_smtp_record_after_rollback(self, state, message):
        with self.env.registry.cursor() as cr:
            self.with_env(self.env(cr=cr))._ally_smtp_set_state(
                state, message, tested=True
            )

    def _ally_smtp_set_state(self, state, error=None, tested=False, values=None):
        """The one writer of ``ally_smtp_state`` (a plain field: each change
        of state is one of these calls, where it happens).

        ``error`` is the ``ally_smtp_last_error`` to note (``False`` clears
        it; ``None`` keeps it), ``tested`` notes now as the time of the Test
        or sign-in that decided, and ``values`` are other mailbox fields
        written with it.
        """
        values = dict(values or {}, ally_smtp_state=state)
        if error is not None:
            values["ally_smtp_last_error"] = error or False
        if tested:
            values["ally_smtp_tested_at"] = fields.Datetime.now()
        if self:
            self.sudo().write(values)

    @api.model
    def _ally_smtp_rotate_keys(self):
        """Re-encrypt every stored password with the newest key."""
        users = (
            self.sudo()
            .with_context(active_test=False)
            .search([("ally_smtp_password_crypt", "!=", False)])
        )
        rotated = 0
        for user in users:
            token = crypto.rotate(self.env, user.ally_smtp_password_crypt)
            if token:
                user.ally_smtp_password_crypt = token
                rotated += 1
            else:
                _logger.warning(
                    "ally_smtp: the password of user %s cannot be decrypted with "
                    "any configured key; left as it is",
                    user.id,
                )
        # OAuth sign-ins and the agency apps' client secrets
        for model, field in (
            ("ally.smtp.oauth.token", "tokens_crypt"),
            ("res.company", "ally_smtp_oauth_secret_crypt"),
        ):
            for record in self.env[model].sudo().search([(field, "!=", False)]):
                token = crypto.rotate(self.env, record[field])
                if token:
                    record[field] = token
                    rotated += 1
        return rotated

    def _ally_smtp_blocked(self):
        """Why the stored credentials may not be used now, or ``False``."""
        return self._ally_smtp_block()[1]

    def _ally_smtp_block(self):
        """``(kind, why)`` the stored credentials may not be used now, or
        ``(False, False)``; a kind of ``errors.WAITING_KINDS`` keeps the mail
        waiting for a person instead of failing it."""
        self.ensure_one()
        user = self.sudo()
        if user.company_id._ally_smtp_oauth():
            token = user._ally_smtp_oauth_token()
            if user.ally_smtp_state == "reconnect" or token.broken or not token:
                return errors.RECONNECT, (
                    token.broken or user.ally_smtp_last_error or token._disconnected()
                )
            if user.company_id._ally_smtp_oauth_problem():
                return errors.ADMIN, user.company_id._ally_smtp_oauth_problem()
        return errors.PERMANENT, user._ally_smtp_password_blocked()

    def _ally_smtp_password_blocked(self):
        user = self.sudo()
        if user.ally_smtp_state == "failed":
            return self.env._(
                "Not sent: the mailbox %(address)s refused its password earlier "
                "(%(error)s). Enter the password again in My Profile and press "
                "'Test SMTP configuration'; the mail can then be resent.",
                address=user.ally_smtp_email,
                error=user.ally_smtp_last_error or "",
            )
        if user.ally_smtp_server_key != user.company_id._ally_smtp_server_key():
            return self.env._(
                "Not sent: the agency's mail server changed after the password of "
                "%(address)s was entered, and it is not sent to a new server "
                "unasked. Press 'Test SMTP configuration' in My Profile; the mail "
                "can then be resent.",
                address=user.ally_smtp_email,
            )
        return False

    def _ally_smtp_password(self):
        """The decrypted mailbox password; call as superuser only."""
        self.ensure_one()
        assert self.env.su, "mailbox passwords are read as superuser only"
        if not self.ally_smtp_password_crypt:
            raise UserError(_("Enter your SMTP password first."))
        return crypto.decrypt(self.env, self.ally_smtp_password_crypt)

    def _ally_smtp_sign_in_smtp(self, connection):
        """Log ``connection`` in as the user: password, or XOAUTH2."""
        login = self.ally_smtp_email.strip()
        if not self.company_id._ally_smtp_oauth():
            return connection.login(login, self._ally_smtp_password())
        connection.ehlo_or_helo_if_needed()
        return self._ally_smtp_with_token(
            lambda token: connection.auth(
                "XOAUTH2", oauth.Xoauth2(login, token), initial_response_ok=True
            ),
            smtplib.SMTPAuthenticationError,
        )

    def _ally_smtp_sign_in_imap(self, imap):
        """Log ``imap`` in as the user: password, or XOAUTH2."""
        login = self.ally_smtp_email.strip()
        if not self.company_id._ally_smtp_oauth():
            return imap.login(login, self._ally_smtp_password())
        return self._ally_smtp_with_token(
            lambda token: imap.authenticate(
                "XOAUTH2", oauth.Xoauth2(login, token).imap
            ),
            imaplib.IMAP4.error,
        )

    def _ally_smtp_with_token(self, sign_in, refused):
        """``sign_in(access token)``; a refused token is refreshed once, and a
        refused fresh one means the grant no longer works (reconnect)."""
        token = self._ally_smtp_oauth_token()
        if not token:
            raise oauth.Problem(errors.RECONNECT, token._disconnected())
        access, fresh = token._ally_smtp_access_token()
        try:
            return sign_in(access)
        except refused as exc:
            if _not_about_the_token(exc):
                raise
            if fresh:
                raise oauth.Problem(
                    errors.RECONNECT, token._ally_smtp_break(_reply_text(exc))
                ) from None
            _logger.info("ally_smtp: mailbox refused the token of user %s", self.id)
        access, _fresh = token._ally_smtp_access_token(force_refresh=True)
        try:
            return sign_in(access)
        except refused as exc:
            if _not_about_the_token(exc):
                raise
            raise oauth.Problem(
                errors.RECONNECT, token._ally_smtp_break(_reply_text(exc))
            ) from None

    def _ally_smtp_probe(self):
        """Log in to SMTP (MAIL FROM/RCPT TO then RSET) and IMAP; return Sent.

        Every failure is an ``errors.MailboxError`` whose kind says what it
        makes of the mailbox.
        """
        company = self.company_id
        if not (self.ally_smtp_use_own and company._ally_smtp_ready()):
            raise errors.MailboxError(
                errors.CONFIG, _("Turn on 'Use my own SMTP configuration' first.")
            )
        if not self.ally_smtp_email:
            raise errors.MailboxError(errors.CONFIG, _("Enter your SMTP email first."))
        if company._ally_smtp_oauth() and not self._ally_smtp_oauth_token():
            raise errors.MailboxError(
                errors.CONFIG, self._ally_smtp_oauth_token()._disconnected()
            )
        login = self.ally_smtp_email.strip()
        host, port = company.ally_smtp_host.strip(), company.ally_smtp_port
        try:
            connection = company._ally_smtp_open_smtp()
            try:
                self._ally_smtp_sign_in_smtp(connection)
                for code, reply in (connection.mail(login), connection.rcpt(login)):
                    if code >= 400:
                        raise smtplib.SMTPResponseException(code, reply)
                connection.rset()
                connection.quit()
            finally:
                connection.close()
        except Exception as exc:  # noqa: BLE001 - every failure gets a message
            company._ally_smtp_fail(exc, host, port, login)
        if not company.ally_smtp_imap_host:
            return False
        host, port = company.ally_smtp_imap_host.strip(), company.ally_smtp_imap_port
        try:
            with company._ally_smtp_open_imap() as imap:
                self._ally_smtp_sign_in_imap(imap)
                folder = mailbox.find_sent(imap)
        except Exception as exc:  # noqa: BLE001
            company._ally_smtp_fail(exc, host, port, login, protocol="imap")
        if not folder:
            raise errors.MailboxError(
                errors.TEMPORARY,
                _(
                    "Signing in works, but no Sent folder was found in your mailbox. "
                    "Create a folder named 'Sent' in your webmail."
                ),
            )
        return folder


def _reply_text(exc):
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        return f"{exc.smtp_code} {text}"
    return str(exc)


def _not_about_the_token(exc):
    """Whether a refused sign-in is no judgement on the token: a temporary
    refusal (SMTP 4xx such as ``454 4.7.0``, IMAP ``[UNAVAILABLE]``), or
    Microsoft 365 refusing a good token because 'Authenticated SMTP' is off
    for the mailbox. ``lib.errors`` says what those mean."""
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code < 500:
        return True
    text = _reply_text(exc).lower()
    return (
        "[unavailable]" in text
        or "5.7.139" in text
        or "smtpclientauthentication" in text
    )


def _normalize_address(vals):
    """Store mailbox addresses normalized, so that one address has one owner."""
    address = vals.get("ally_smtp_email")
    if address and email_normalize(address, strict=True) == address.strip().lower():
        vals["ally_smtp_email"] = address.strip().lower()
