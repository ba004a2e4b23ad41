import logging

from psycopg2.errors import TransactionRollbackError

from odoo import _, api, fields, models, tools
from odoo.exceptions import AccessError, UserError, ValidationError
from odoo.tools import email_normalize, email_split

from ..lib import actions, crypto, errors, pacing

_logger = logging.getLogger(__name__)

MAX_PASSWORD = 256
# what its owner writes; the rest is written by ally_smtp itself (a Test, a
# refused login, a quota), as superuser
OWNER_FIELDS = {"use_own", "address", "password"}
STATES = [
    ("off", "Not used"),
    ("untested", "Not tested"),
    ("ok", "Working"),
    ("failed", "Failed"),
    ("reconnect", "Reconnect needed"),
]


class AllySmtpMailbox(models.Model):
    """A user's own mailbox: where their mail leaves from, how ally_smtp signs
    in to it, and what it knows of it (its state, its Sent folder, a pause).

    One per user. Only its owner and settings administrators see it (record
    rules); the owner sets it up from My Profile (``res.users`` shows these
    fields under their ``ally_smtp_*`` names), ally_smtp writes the rest.
    Sign-in, the Test and Connect are in ``ally_smtp_mailbox_sign_in.py``.
    """

    _name = "ally.smtp.mailbox"
    _description = "Personal mailbox"
    _rec_name = "address"
    _order = "address, id"

    user_id = fields.Many2one(
        "res.users", required=True, ondelete="cascade", index=True, readonly=True
    )
    company_id = fields.Many2one(related="user_id.company_id", store=True, index=True)
    use_own = fields.Boolean("Use my own SMTP configuration")
    address = fields.Char(
        "SMTP email",
        help="Your mailbox address: mail you write in Odoo is sent from it.",
    )
    password = fields.Char(
        "SMTP password",
        compute="_compute_password",
        inverse="_inverse_password",
        help="The password of your mailbox (for Gmail, an App Password), never "
        "your Odoo password. It is stored encrypted and cannot be read back.",
    )
    # Fernet token; only code running as superuser reads it (auth_totp style).
    password_crypt = fields.Char(groups=fields.NO_ACCESS)
    password_set = fields.Boolean(
        "SMTP password stored", compute="_compute_password_set"
    )
    # a fingerprint of the agency server the password was given or tested for
    # (``res.company._ally_smtp_server_fingerprint``): a new server needs a Test
    server_fingerprint = fields.Char("Server the password is for", readonly=True)
    state = fields.Selection(
        STATES,
        "SMTP status",
        default="off",
        required=True,
        readonly=True,
    )
    last_error = fields.Text("SMTP error", readonly=True)
    tested_at = fields.Datetime("SMTP tested on", readonly=True)
    sent_folder = fields.Char("Sent folder", readonly=True)
    # the provider said the mailbox sent too much: its mail waits until then
    paused_until = fields.Datetime("Sending paused until", readonly=True)
    pause_reason = fields.Text("Why sending is paused", readonly=True)
    paused = fields.Boolean(
        "Sending paused", compute="_compute_paused", search="_search_paused"
    )
    oauth_account = fields.Char("Connected as", compute="_compute_oauth_account")

    _sql_constraints = [  # noqa: RUF012 - Odoo's declaration style
        ("user_uniq", "UNIQUE(user_id)", "A user has one mailbox.")
    ]

    def init(self):
        # one owner per mailbox and company, also under concurrent writes
        tools.create_unique_index(
            self.env.cr,
            "ally_smtp_mailbox_address_company_uniq",
            self._table,
            ["company_id", "lower(trim(address))"],
        )

    # -- what the owner writes --------------------------------------------------
    @api.model_create_multi
    def create(self, vals_list):
        for vals in vals_list:
            _normalize_address(vals)
            user = self.env["res.users"].browse(vals["user_id"])
            self._check_address_free(vals.get("address"), user.company_id.id)
        mailboxes = super().create(vals_list)
        # users show their mailbox (``ally_smtp_mailbox_id``) from now on
        self.env["res.users"].invalidate_model(["ally_smtp_mailbox_id"])
        mailboxes.filtered("use_own")._set_state("untested")
        mailboxes._sync_server()
        return mailboxes

    def write(self, vals):
        if not self.env.su:
            if vals.keys() - OWNER_FIELDS:
                raise AccessError(
                    _("A mailbox's status is set by its owner's Test, not by hand.")
                )
            if vals.keys() != {"use_own"} or vals["use_own"]:
                self.user_id._ally_smtp_check_self()
        _normalize_address(vals)
        for mailbox in self:
            mailbox._check_address_free(
                vals.get("address"), mailbox.company_id.id, mailbox
            )
        result = super().write(vals)
        if {"use_own", "address"} & vals.keys():
            # new credentials are untested; the Test and the send path say more
            on = self.filtered("use_own")
            on._set_state("untested")
            (self - on)._set_state("off")
            self._sync_server()
        return result

    def unlink(self):
        """A mailbox deleted takes its personal mail server along."""
        servers = (
            self.env["ir.mail_server"]
            .sudo()
            .with_context(active_test=False)
            .search([("ally_smtp_owner_id", "in", self.user_id.ids)])
        )
        result = super().unlink()
        self.env["res.users"].invalidate_model(["ally_smtp_mailbox_id"])
        servers.unlink()
        return result

    def _check_address_free(self, address, company_id, mailbox=None):
        """One owner per mailbox and company (the unique index backs it)."""
        if not address:
            return
        taken = self.sudo().search_count(
            [
                ("id", "!=", mailbox.id if mailbox else False),
                ("company_id", "=", company_id),
                ("address", "=", address.strip().lower()),
            ],
            limit=1,
        )
        if taken:
            raise ValidationError(
                _(
                    "%(address)s is already another user's mailbox. Each mailbox "
                    "has one owner: enter your own address.",
                    address=address,
                )
            )

    @api.constrains("use_own", "address")
    def _check_address(self):
        for mailbox in self.sudo():
            if not mailbox.use_own and not mailbox.address:
                continue
            address = mailbox.address or ""
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
            company = mailbox.company_id
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
            if mailbox.use_own and not company._ally_smtp_ready():
                raise ValidationError(
                    _(
                        "Your company has no agency email (SMTP) integration yet. "
                        "Ask your administrator to set it up in Settings."
                    )
                )

    def _compute_password(self):
        self.password = False

    def _inverse_password(self):
        for mailbox in self:
            password = mailbox.password
            # The web client sends False for an untouched empty field.
            if not password:
                continue
            if len(password) > MAX_PASSWORD or any(c in password for c in "\r\n\0"):
                raise ValidationError(
                    _(
                        "This does not look like a mailbox password: at most "
                        "%(max)s characters on one line.",
                        max=MAX_PASSWORD,
                    )
                )
            # given for the server configured now; a new one needs a Test
            server = mailbox.company_id._ally_smtp_server_fingerprint()
            mailbox._set_state(
                "untested",
                values={
                    "password_crypt": crypto.encrypt(self.env, password),
                    "server_fingerprint": server,
                },
            )
            _logger.info(
                "ally_smtp: mailbox password changed for user %s", mailbox.user_id.id
            )

    @api.depends("password_crypt")
    def _compute_password_set(self):
        for mailbox in self:
            mailbox.password_set = bool(mailbox.sudo().password_crypt)

    def _compute_oauth_account(self):
        for mailbox in self:
            mailbox.oauth_account = mailbox._oauth_token().account or False

    def _oauth_token(self):
        """The owner's OAuth grant (``ally.smtp.oauth.token``), sudo, or empty."""
        tokens = self.env["ally.smtp.oauth.token"].sudo()
        return tokens.search([("user_id", "=", self.user_id.id)]) if self else tokens

    # -- the state ---------------------------------------------------------------
    def _set_state(self, state, error=None, tested=False, values=None):
        """The one writer of ``state`` (each change of state is one of these
        calls, where it happens).

        ``error`` is the ``last_error`` to note (``False`` clears it; ``None``
        keeps it), ``tested`` notes now as the time of the Test or sign-in
        that decided, and ``values`` are other fields written with it.
        """
        values = dict(values or {}, state=state)
        if error is not None:
            values["last_error"] = error or False
        if tested:
            values["tested_at"] = fields.Datetime.now()
        if self:
            self.sudo().write(values)

    def _stop(self, state, message, title):
        """No more logins until the owner acts: note why, and tell them."""
        self.ensure_one()
        self._set_state(state, message, tested=True)
        self._notify_owner("danger", title, message)

    def _auth_failed(self, message):
        """The mailbox refused the password: stop using it and tell its owner."""
        self._stop("failed", message, self.env._("Your mail could not be sent"))

    def _reconnect_needed(self, message):
        """The OAuth grant no longer works: say so to the owner, once."""
        if self.state == "reconnect" and self.last_error == message:
            return
        self._stop("reconnect", message, self.env._("Reconnect your mailbox"))

    def _notify_owner(self, kind, title, message):
        self.env["bus.bus"]._sendone(
            self.user_id.partner_id,
            "simple_notification",
            {"type": kind, "sticky": True, "title": title, "message": message},
        )

    def _unusable(self):
        """``(kind, why)`` the stored credentials may not be used now, or
        ``(False, False)``; a kind of ``errors.WAITING_KINDS`` keeps the mail
        waiting for a person instead of failing it."""
        self.ensure_one()
        mailbox = self.sudo()
        company = mailbox.company_id
        if company._ally_smtp_oauth():
            token = mailbox._oauth_token()
            if mailbox.state == "reconnect" or token.broken or not token:
                return errors.RECONNECT, (
                    token.broken or mailbox.last_error or token._disconnected()
                )
            if company._ally_smtp_oauth_problem():
                return errors.ADMIN, company._ally_smtp_oauth_problem()
        if mailbox.state == "failed":
            return errors.PERMANENT, self.env._(
                "Not sent: the mailbox %(address)s refused its password earlier "
                "(%(error)s). Enter the password again in My Profile and press "
                "'Test SMTP configuration'; the mail can then be resent.",
                address=mailbox.address,
                error=mailbox.last_error or "",
            )
        if mailbox.server_fingerprint != company._ally_smtp_server_fingerprint():
            return errors.PERMANENT, self.env._(
                "Not sent: the agency's mail server changed after the password of "
                "%(address)s was entered, and it is not sent to a new server "
                "unasked. Press 'Test SMTP configuration' in My Profile; the mail "
                "can then be resent.",
                address=mailbox.address,
            )
        return False, False

    # -- the personal mail server ------------------------------------------------
    def _sync_server(self):
        """Keep one personal ``ir.mail_server`` per mailbox in use: mail.mail
        routes its owner's mail to it, and ``ir.mail_server`` signs in to it
        as its owner (``smtp_authentication`` ``ally_smtp``)."""
        Server = self.env["ir.mail_server"].sudo().with_context(active_test=False)
        for mailbox in self.sudo():
            user, company = mailbox.user_id, mailbox.company_id
            server = Server.search([("ally_smtp_owner_id", "=", user.id)])
            if not (mailbox.use_own and mailbox.address and company._ally_smtp_ready()):
                server.unlink()
                continue
            values = {
                "name": self.env._("Mailbox of %(name)s", name=user.name),
                "smtp_host": company.ally_smtp_host.strip(),
                "smtp_port": company.ally_smtp_port,
                "smtp_encryption": company.ally_smtp_encryption,
                "smtp_authentication": "ally_smtp",
                "smtp_user": mailbox.address,
                "smtp_pass": False,
                "from_filter": mailbox.address,
                "sequence": 1000,
                "active": True,
                "ally_smtp_owner_id": user.id,
            }
            if server:
                server.write(values)
            else:
                Server.create(values)

    # -- pauses: the provider's quota ----------------------------------------------
    @api.depends("paused_until")
    def _compute_paused(self):
        now = fields.Datetime.now()
        for mailbox in self:
            mailbox.paused = bool(mailbox.paused_until and mailbox.paused_until > now)

    def _search_paused(self, operator, value):
        if operator not in ("=", "!=") or not isinstance(value, bool):
            raise UserError(_("Unsupported search on 'Sending paused'."))
        now = fields.Datetime.now()
        if (operator == "=") == value:
            return [("paused_until", ">", now)]
        # never paused (no date) or paused until a time now past
        return ["|", ("paused_until", "=", False), ("paused_until", "<=", now)]

    def action_resume(self):
        """Admins: send a paused mailbox's waiting mail now."""
        actions.check_settings_admin(self.env)
        mailboxes = self.sudo()
        mailboxes.write({"paused_until": False, "pause_reason": False})
        mailboxes._send_waiting_now()
        return True

    def _send_waiting_now(self):
        """Send the mail of these mailboxes' owners that waits (a pause, a
        reconnect) now."""
        mails = (
            self.env["mail.mail"]
            .sudo()
            .search(
                [
                    ("state", "=", "outgoing"),
                    ("mail_message_id.create_uid", "in", self.user_id.ids),
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

    def _pause(self, window, reason):
        """The provider says the mailbox sent too much: wait for its window.

        A window of up to an hour is waited whole. A day is waited until the
        oldest mail ally_smtp sent in it leaves it, counting only mail sent
        over an hour ago, and at least an hour: the provider also counts mail
        sent from elsewhere, and asking again once an hour is no loop.
        """
        self.ensure_one()
        now = fields.Datetime.now()
        until = now + min(window, pacing.HOUR)
        history = self.env["ally.smtp.send.log"]._ally_smtp_history(self.user_id, now)
        older = [row[0] for row in history if row[0] <= now - pacing.HOUR]
        if older and window > pacing.HOUR:
            until = max(until, older[0] + window)
        try:
            # a worker that met the same quota at once may have paused it
            # already: its pause stands, and this send transaction goes on
            with self.env.cr.savepoint():
                self.sudo().write({"paused_until": until, "pause_reason": reason})
        except TransactionRollbackError:
            self.invalidate_recordset(["paused_until", "pause_reason"])
        _logger.info(
            "ally_smtp: mailbox of user %s paused until %s", self.user_id.id, until
        )
        owner = self.with_context(lang=self.user_id.lang)
        owner._notify_owner(
            "warning",
            owner.env._("Your mail is waiting"),
            owner.env._(
                "%(reason)s Sending resumes at about %(time)s.",
                reason=reason,
                time=self._local_time(until),
            ),
        )
        return until

    def _pacing_reason(self, limits, until):
        """Why the owner's mail waits for the mailbox's ``limits``."""
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
            address=self.sudo().address,
            limits=", ".join(described),
            time=self._local_time(until),
        )

    def _local_time(self, when):
        """``when`` as the owner reads it: HH:MM in their time zone."""
        user = self.user_id
        local = fields.Datetime.context_timestamp(
            user.with_context(tz=user.tz or "UTC"), when
        )
        return local.strftime("%H:%M")

    # -- keys ------------------------------------------------------------------------
    @api.model
    def _rotate_keys(self):
        """Re-encrypt every stored secret with the newest key."""
        rotated = 0
        for model, field in (
            ("ally.smtp.mailbox", "password_crypt"),
            ("ally.smtp.oauth.token", "tokens_crypt"),
            ("res.company", "ally_smtp_oauth_secret_crypt"),
        ):
            for record in self.env[model].sudo().search([(field, "!=", False)]):
                token = crypto.rotate(self.env, record[field])
                if token:
                    record[field] = token
                    rotated += 1
                else:
                    _logger.warning(
                        "ally_smtp: a secret of %s %s cannot be decrypted with any "
                        "configured key; left as it is",
                        model,
                        record.id,
                    )
        return rotated


def _normalize_address(vals):
    """Store mailbox addresses normalized, so that one address has one owner."""
    address = vals.get("address")
    if address and email_normalize(address, strict=True) == address.strip().lower():
        vals["address"] = address.strip().lower()
