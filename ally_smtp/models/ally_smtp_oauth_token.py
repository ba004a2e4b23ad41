import json
import logging
import time

from psycopg2.errors import LockNotAvailable, SerializationFailure

from odoo import api, fields, models

from ..lib import crypto, errors, oauth

_logger = logging.getLogger(__name__)

# context key: the id of the grant the running transaction has just stored
# (Connect), whose access token is used as received
RECEIVED = "ally_smtp_oauth_received"


class AllySmtpOAuthToken(models.Model):
    """A user's OAuth grant for their mailbox, encrypted; no one reads it.

    One row per user, apart from ``res.users``: a token refresh commits it in
    a transaction of its own, at once (Microsoft rotates the refresh token on
    every use), holding only this row's lock.
    """

    _name = "ally.smtp.oauth.token"
    _description = "Mailbox sign-in (OAuth) of a user"

    user_id = fields.Many2one(
        "res.users", required=True, ondelete="cascade", index=True, readonly=True
    )
    provider = fields.Selection(
        [(oauth.GOOGLE, "Google"), (oauth.MICROSOFT, "Microsoft")],
        required=True,
        readonly=True,
    )
    account = fields.Char("Connected as", readonly=True)
    # Fernet token of {"access_token", "refresh_token", "expires_at"}
    tokens_crypt = fields.Char(groups=fields.NO_ACCESS)
    expires_at = fields.Float(readonly=True)
    # why the grant may not be used again until its owner reconnects
    broken = fields.Text(readonly=True)

    _sql_constraints = [  # noqa: RUF012 - Odoo's declaration style
        ("user_uniq", "UNIQUE(user_id)", "A user has one mailbox sign-in.")
    ]

    # -- storing --------------------------------------------------------------
    @api.model
    def _ally_smtp_store(self, user, provider, tokens, account):
        """Keep ``tokens`` (a token endpoint reply) for ``user``, encrypted."""
        values = {
            "provider": provider,
            "account": account,
            "tokens_crypt": self._encrypt(tokens),
            "expires_at": tokens["expires_at"],
            "broken": False,
        }
        row = self.sudo().search([("user_id", "=", user.id)])
        if row:
            row.write(values)
        else:
            row = self.sudo().create(dict(values, user_id=user.id))
        return row

    def _encrypt(self, tokens):
        kept = {
            key: tokens.get(key)
            for key in ("access_token", "refresh_token", "expires_at")
        }
        return crypto.encrypt(self.env, json.dumps(kept))

    def _tokens(self):
        self.ensure_one()
        return json.loads(crypto.decrypt(self.env, self.sudo().tokens_crypt))

    # -- using ----------------------------------------------------------------
    def _ally_smtp_access_token(self, force_refresh=False):
        """A live access token; refreshed (and committed at once) when needed.

        ``force_refresh``: the mail server refused the current one.
        Returns ``(token, fresh)``; raises ``oauth.Problem``.
        """
        self.ensure_one()
        row = self.sudo()
        if row.broken:
            raise oauth.Problem(errors.RECONNECT, row.broken)
        if self.env.context.get(RECEIVED) == row.id:
            return row._ally_smtp_received_token()
        if not force_refresh and row.expires_at - time.time() > oauth.REFRESH_MARGIN:
            return row._tokens()["access_token"], False
        return row._ally_smtp_refresh(force_refresh and row.expires_at)

    def _ally_smtp_received_token(self):
        """The access token this transaction has just received, as is.

        Until this transaction commits, the refresh's own transaction cannot
        see a new grant (or waits for the lock on a reconnected one), and
        there is nothing to renew: the token was just issued, however short
        it lives. A refusal of it is a judgement on the grant.
        """
        if self.expires_at > time.time():
            return self._tokens()["access_token"], True
        raise oauth.Problem(
            errors.TEMPORARY,
            self.env._(
                "The access given by %(provider)s ran out before it could be "
                "tested. Your mailbox is connected: press 'Test SMTP "
                "configuration' in My Profile.",
                provider=self._provider_name(),
            ),
        )

    def _ally_smtp_refresh(self, refused_expiry=False):
        """Refresh in a transaction of its own, under this row's lock.

        A second worker refreshing the same user waits for the lock, then
        finds the new tokens (its snapshot is too old to see them: the update
        is a serialization failure, and it reads again) and uses them.
        """
        for _attempt in range(5):
            with self.env.registry.cursor() as cr:
                row = self.with_env(self.env(cr=cr, su=True))
                try:
                    cr.execute("SET LOCAL lock_timeout = '30s'")
                    cr.execute(
                        "SELECT id FROM ally_smtp_oauth_token WHERE id = %s "
                        "FOR NO KEY UPDATE",
                        [self.id],
                    )
                    if not cr.fetchone():
                        raise oauth.Problem(errors.RECONNECT, self._disconnected())
                    result = row._ally_smtp_refresh_locked(refused_expiry)
                except SerializationFailure:
                    cr.rollback()
                    continue
                except LockNotAvailable:
                    cr.rollback()
                    result = oauth.Problem(
                        errors.TEMPORARY,
                        self.env._(
                            "Another Odoo worker is signing in to this mailbox; "
                            "the mail will be tried again."
                        ),
                    )
                except oauth.Problem as exc:
                    result = exc  # what it noted (a broken grant) is kept
                # the new tokens (or the broken grant) outlive this request
                cr.commit()  # pylint: disable=invalid-commit
            self.invalidate_recordset()
            if isinstance(result, oauth.Problem):
                raise result
            return result
        raise oauth.Problem(
            errors.TEMPORARY,
            self.env._("Another Odoo worker is signing in to this mailbox."),
        )

    def _ally_smtp_refresh_locked(self, refused_expiry):
        if self.broken:
            raise oauth.Problem(errors.RECONNECT, self.broken)
        tokens = self._tokens()
        left = self.expires_at - time.time()
        if refused_expiry is False and left > oauth.REFRESH_MARGIN:
            return tokens["access_token"], False  # refreshed by another worker
        if refused_expiry and self.expires_at != refused_expiry and left > 0:
            return tokens["access_token"], True  # the same, after a refusal
        user = self.user_id
        company = user.company_id.sudo()
        problem = company._ally_smtp_oauth_problem()
        if problem:
            raise oauth.Problem(errors.ADMIN, problem)
        try:
            new = company._ally_smtp_token_request(
                self.provider,
                grant_type="refresh_token",
                refresh_token=tokens["refresh_token"],
            )
        except oauth.Problem as exc:
            _logger.info(
                "ally_smtp: token refresh for user %s failed: %s", user.id, exc.message
            )
            if exc.kind == errors.RECONNECT:
                message = self._ally_smtp_break(exc.error, own_transaction=False)
                raise oauth.Problem(errors.RECONNECT, message) from None
            if exc.kind == errors.TEMPORARY:
                message = self.env._(
                    "%(problem)s The mail waits and is tried again.",
                    problem=exc.message,
                )
                raise oauth.Problem(errors.TEMPORARY, message) from None
            raise
        # Microsoft sends a new refresh token each time; Google keeps the old
        new.setdefault("refresh_token", tokens["refresh_token"])
        self.write(
            {"tokens_crypt": self._encrypt(new), "expires_at": new["expires_at"]}
        )
        _logger.info("ally_smtp: access token refreshed for user %s", user.id)
        return new["access_token"], True

    def _ally_smtp_break(self, reason, own_transaction=True):
        """The grant is gone: no further token or login until a reconnect.

        Committed at once in a transaction of its own (a failed send or Test
        rolls this one back), unless this one holds the row (it wrote it:
        then it notes it itself).
        """
        self.ensure_one()
        message = self.env._(
            "Your %(provider)s sign-in for %(address)s no longer works "
            "(%(reason)s). Press 'Reconnect' in My Profile; your mail waits "
            "until you do.",
            provider=self._provider_name(),
            address=self.account or self.user_id.sudo().ally_smtp_email,
            reason=reason,
        )
        if own_transaction:
            try:
                with self.env.registry.cursor() as cr:
                    cr.execute("SET LOCAL lock_timeout = '2s'")
                    row = self.with_env(self.env(cr=cr, su=True)).exists()
                    row.write({"broken": message})
                if row:
                    return message
            except LockNotAvailable:  # this transaction holds the row: noted below
                _logger.debug(
                    "ally_smtp: grant of user %s noted in this transaction",
                    self.user_id.id,
                )
        self.sudo().write({"broken": message})
        return message

    def _provider_name(self, provider=None):
        """The name of ``provider`` (by default this grant's) as users read it."""
        provider = provider or self.provider
        return dict(self._fields["provider"]._description_selection(self.env)).get(
            provider, provider
        )

    def _disconnected(self):
        return self.env._(
            "Your mailbox is not connected. Press 'Connect' in My Profile."
        )
