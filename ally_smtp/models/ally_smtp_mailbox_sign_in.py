import imaplib
import logging
import secrets
import smtplib
import time

from odoo import _, models
from odoo.exceptions import UserError

from ..lib import crypto, errors, mailbox, oauth
from .ally_smtp_oauth_token import RECEIVED

_logger = logging.getLogger(__name__)


class AllySmtpMailbox(models.Model):
    """Signing in to a mailbox as its owner: with the password, or with the
    owner's Google/Microsoft grant (XOAUTH2); the Test, and Connect."""

    _inherit = "ally.smtp.mailbox"  # pylint: disable=consider-merging-classes-inherited

    def _password(self):
        """The decrypted mailbox password; call as superuser only."""
        self.ensure_one()
        assert self.env.su, "mailbox passwords are read as superuser only"
        if not self.password_crypt:
            raise UserError(_("Enter your SMTP password first."))
        return crypto.decrypt(self.env, self.password_crypt)

    def _sign_in_smtp(self, connection):
        """Log ``connection`` in as the owner: password, or XOAUTH2."""
        login = self.address.strip()
        if not self.company_id._ally_smtp_oauth():
            return connection.login(login, self._password())
        connection.ehlo_or_helo_if_needed()
        return self._with_token(
            lambda token: connection.auth(
                "XOAUTH2", oauth.Xoauth2(login, token), initial_response_ok=True
            ),
            smtplib.SMTPAuthenticationError,
        )

    def _sign_in_imap(self, imap):
        """Log ``imap`` in as the owner: password, or XOAUTH2."""
        login = self.address.strip()
        if not self.company_id._ally_smtp_oauth():
            return imap.login(login, self._password())
        return self._with_token(
            lambda token: imap.authenticate(
                "XOAUTH2", oauth.Xoauth2(login, token).imap
            ),
            imaplib.IMAP4.error,
        )

    def _with_token(self, sign_in, refused):
        """``sign_in(access token)``; a refused token is refreshed once, and a
        refused fresh one means the grant no longer works (reconnect)."""
        token = self._oauth_token()
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
            _logger.info(
                "ally_smtp: mailbox refused the token of user %s", self.user_id.id
            )
        access, _fresh = token._ally_smtp_access_token(force_refresh=True)
        try:
            return sign_in(access)
        except refused as exc:
            if _not_about_the_token(exc):
                raise
            raise oauth.Problem(
                errors.RECONNECT, token._ally_smtp_break(_reply_text(exc))
            ) from None

    def _probe(self):
        """Log in to SMTP (MAIL FROM/RCPT TO then RSET) and IMAP; return Sent.

        Every failure is an ``errors.MailboxError`` whose kind says what it
        makes of the mailbox.
        """
        company = self.company_id
        if not (self.use_own and company._ally_smtp_ready()):
            raise errors.MailboxError(
                errors.CONFIG, _("Turn on 'Use my own SMTP configuration' first.")
            )
        if not self.address:
            raise errors.MailboxError(errors.CONFIG, _("Enter your SMTP email first."))
        if company._ally_smtp_oauth() and not self._oauth_token():
            raise errors.MailboxError(
                errors.CONFIG, self._oauth_token()._disconnected()
            )
        login = self.address.strip()
        host, port = company.ally_smtp_host.strip(), company.ally_smtp_port
        try:
            connection = company._ally_smtp_open_smtp()
            try:
                self._sign_in_smtp(connection)
                for code, reply in (connection.mail(login), connection.rcpt(login)):
                    if code >= 400:
                        raise smtplib.SMTPResponseException(code, reply)
                connection.rset()
                connection.quit()
            finally:
                connection.close()
        except Exception as exc:  # noqa: BLE001 - every failure gets a message
            company._ally_smtp_raise_classified(exc, host, port, login)
        if not company.ally_smtp_imap_host:
            return False
        host, port = company.ally_smtp_imap_host.strip(), company.ally_smtp_imap_port
        try:
            with company._ally_smtp_open_imap() as imap:
                self._sign_in_imap(imap)
                folder = mailbox.find_sent(imap)
        except Exception as exc:  # noqa: BLE001
            company._ally_smtp_raise_classified(exc, host, port, login, protocol="imap")
        if not folder:
            raise errors.MailboxError(
                errors.TEMPORARY,
                _(
                    "Signing in works, but no Sent folder was found in your mailbox. "
                    "Create a folder named 'Sent' in your webmail."
                ),
            )
        return folder

    def _test(self):
        """Sign in to SMTP and IMAP as the owner; nothing is sent. Returns
        what to tell the owner; a failure is a ``UserError`` saying why."""
        self.ensure_one()
        box = self.sudo()
        try:
            folder = box._probe()
        except errors.MailboxError as exc:
            message = exc.message
            state = errors.state_after(exc.kind)
            # The UserError rolls the transaction back; keep the outcome anyway.
            self.env.cr.postrollback.add(
                lambda: box._record_after_rollback(state, message)
            )
            raise UserError(message) from None
        box._sync_server()
        box._set_state(
            "ok",
            error=False,
            tested=True,
            values={
                "server_fingerprint": box.company_id._ally_smtp_server_fingerprint(),
                "sent_folder": folder,
            },
        )
        if folder:
            return _(
                "Your mailbox works. Mail you write in Odoo leaves from "
                "%(address)s and a copy goes to your folder '%(folder)s'.",
                address=box.address,
                folder=folder,
            )
        return _(
            "Your mailbox works. Mail you write in Odoo leaves from "
            "%(address)s. No IMAP server is set up for the agency, so Odoo "
            "adds no copy to your Sent folder.",
            address=box.address,
        )

    def _record_after_rollback(self, state, message):
        with self.env.registry.cursor() as cr:
            # kept in a variable: the cursor's commit flushes the writes of the
            # environments still alive, and a temporary one may be gone by then
            mailbox = self.with_env(self.env(cr=cr))
            mailbox._set_state(state, message, tested=True)

    # -- OAuth: connect, disconnect -------------------------------------------
    def _oauth_disconnect(self):
        """Forget the owner's grant, revoking it where the provider offers it."""
        self.ensure_one()
        token = self._oauth_token()
        if token:
            try:
                tokens = token._tokens()
            except UserError:  # encrypted with a key that is gone
                tokens = {}
            grant = tokens.get("refresh_token") or tokens.get("access_token")
            if grant:
                oauth.revoke(self.env, token.provider, grant)
            token.unlink()
            _logger.info(
                "ally_smtp: user %s disconnected their mailbox", self.user_id.id
            )
        self._set_state("untested", error=False)

    def _oauth_authorize(self, redirect_uri):
        """``(url, pending)``: where to send the browser, and what the callback
        must find in the session to accept its answer (single use)."""
        self.ensure_one()
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
            "uid": self.user_id.id,
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
            login_hint=self.address.strip(),
        )
        return url, pending

    def _oauth_finish(self, pending, code, redirect_uri):
        """Exchange ``code``, check the account, keep the tokens, test them.

        Returns ``(connected, message)``; a refusal stores nothing.
        """
        self.ensure_one()
        box = self.sudo()
        company = box.company_id
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
        expected = box.address.strip().lower()
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
                box.user_id.id,
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
            box.user_id, provider, tokens, account
        )
        box._set_state(
            "untested",
            error=False,
            values={"server_fingerprint": company._ally_smtp_server_fingerprint()},
        )
        _logger.info("ally_smtp: user %s connected their mailbox", box.user_id.id)
        try:
            with self.env.cr.savepoint():
                # tested with the token just received: the grant is not
                # committed yet, so no transaction of its own may renew it
                folder = box.with_context(**{RECEIVED: grant.id})._probe()
        except errors.MailboxError as exc:
            box._set_state(errors.state_after(exc.kind), exc.message, tested=True)
            return False, _(
                "Connected as %(account)s, but the test failed: %(message)s",
                account=account,
                message=exc.message,
            )
        box._sync_server()
        box._set_state("ok", tested=True, values={"sent_folder": folder})
        box._send_waiting_now()
        return True, _(
            "Connected as %(account)s. Your mailbox works: mail you write in Odoo "
            "leaves from it.",
            account=account,
        )


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
