"""Turn what a mail server said into a sentence a consultant can act on."""

import contextlib
import imaplib
import re
import smtplib
import socket
import ssl
from datetime import timedelta

from odoo.exceptions import UserError

from .mailbox import FolderMissing, TooBig
from .pacing import DAY, HOUR

# kinds drive the send path: stop using credentials, retry later, give up, or
# pause the mailbox until the provider's window reopens (a quota)
AUTH, TEMPORARY, PERMANENT, CONFIG = "auth", "temporary", "permanent", "config"
QUOTA = "quota"
# a reply that only reads like a quota (a generic rule below): the mailbox is
# paused all the same, but the mail counts the attempt, so that a per-message
# problem worded so ends in a failure instead of pausing the mailbox forever
QUOTA_UNSURE = "quota_unsure"
QUOTA_KINDS = (QUOTA, QUOTA_UNSURE)
# an OAuth sign-in that only a person can mend: the user's grant is gone
# (they reconnect), or the agency's OAuth app is refused (an admin fixes it);
# the mail waits for them without counting an attempt
RECONNECT, ADMIN = "reconnect", "admin"
WAITING_KINDS = (QUOTA, RECONNECT, ADMIN)
# what a failed Test or sign-in makes of the mailbox's state (its ``state``):
# only a refused password or a lost grant stops its use; any other failure
# (a timeout, no Sent folder) leaves it usable but untested
KIND_STATES = {AUTH: "failed", RECONNECT: "reconnect"}


def state_after(kind):
    """The mailbox ``state`` a failure of ``kind`` leaves the mailbox in."""
    return KIND_STATES.get(kind, "untested")


class MailboxError(UserError):
    """A mailbox, or signing in to it, failed: ``kind`` (one of the kinds
    above) says what follows, ``message`` tells the user what to do.

    A ``UserError`` for the code that catches those; a button lets it reach
    the user through ``shown_to_user()``.
    """

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


@contextlib.contextmanager
def shown_to_user():
    """A ``MailboxError`` leaving a button becomes Odoo's own ``UserError``:
    the web client shows its message only for exception types it knows by
    name, and any other one as a server error with a traceback."""
    try:
        yield
    except MailboxError as exc:
        raise UserError(exc.message) from None


# Replies that mean "this mailbox sent too much": (status code, words that must
# all appear, lower case; the window that must reopen). First match wins.
QUOTAS = [
    # Gmail, "550 5.4.5 Daily user sending limit exceeded" (Google Workspace
    # Admin Help, "Gmail sending limits in Google Workspace", answer 166852)
    ("5.4.5", (), DAY),
    # Microsoft 365, "554 5.2.0 STOREDRV.Submission.Exception:
    # SubmissionQuotaExceededException" (Exchange Online limits, sending limits)
    ("", ("submissionquotaexceeded",), DAY),
    # iCloud, "550 5.7.1 ... daily sending limit" (Apple, "Mail sending limits")
    ("", ("daily", "limit"), DAY),
    # cPanel/Exim (HostGator, KingHost, ...): "550 Domain example.com has
    # exceeded the max emails per hour (500/500 (100%)) allowed"
    ("", ("per hour",), HOUR),
    # Microsoft 365, "432 4.3.2 Concurrent connections limit exceeded" and
    # "... sender thread limit exceeded" (Exchange Online limits: 3 sessions)
    ("4.3.2", (), timedelta(minutes=5)),
    # Gmail, "454 4.7.0 Too many login attempts, please try again later" and
    # "421 4.7.0 ... unusual rate" (Gmail SMTP errors and codes, answer 3726730)
    ("4.7.0", ("too many",), timedelta(minutes=30)),
    ("4.7.0", ("unusual rate",), timedelta(minutes=30)),
    # any other server: its words for a sending quota or rate (GENERIC)
    ("", ("quota",), HOUR),
    ("", ("rate limit",), timedelta(minutes=15)),
    ("", ("sending limit",), HOUR),
    ("", ("limit exceeded",), HOUR),
]
GENERIC = len(QUOTAS) - 4  # the first rule that is no provider's documented reply
# about one message or one recipient's full mailbox ("452 4.2.2 The email
# account that you tried to reach is over quota"), not about the sender
NOT_QUOTA = re.compile(
    r"\b(size|too many recipients)\b"
    r"|(?<![\d.])(4\.2\.2|5\.2\.2|5\.3\.4|4\.5\.3|5\.5\.3)(?![\d.])"
)


def quota_rule(reply):
    """``(window, sure)`` for a quota ``reply`` (text of an SMTP reply), else
    ``(None, False)``: the window to wait, and whether a provider documents
    that reply (else only its words read like a quota)."""
    lower = reply.lower()
    if NOT_QUOTA.search(lower):
        return None, False
    for index, (code, words, window) in enumerate(QUOTAS):
        # an enhanced status code, not a piece of an address or a version
        has_code = not code or re.search(
            rf"(?<![\d.]){re.escape(code)}(?![\d.])", reply
        )
        if has_code and all(word in lower for word in words):
            return window, index < GENERIC
    return None, False


def quota_window(reply):
    """The window a quota ``reply`` asks to wait, or None."""
    return quota_rule(reply)[0]


def pause_window(exc):
    """The window an exception from an SMTP server asks to wait, or None."""
    exc = _as_reply(exc)
    if isinstance(exc, smtplib.SMTPResponseException):
        return quota_window(_reply(exc))
    return None


def _as_reply(exc):
    """Every recipient refused: the first reply stands for them all."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, text = next(iter(exc.recipients.values()))
        return smtplib.SMTPResponseException(code, text)
    return exc


def _reply(exc):
    text = exc.smtp_error
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return f"{exc.smtp_code} {text}".replace("\n", " ")


def classify(env, exc, host="", port=0, login="", protocol="smtp"):
    """Return ``(kind, message)`` for an exception raised talking to a server.

    ``protocol`` ("smtp" or "imap") picks the port advice: an IMAP server is
    reached on 993 (SSL/TLS), never on SMTP's 465/587.
    """
    if isinstance(exc, MailboxError):  # already judged: its message says it all
        return exc.kind, exc.message
    exc = _as_reply(exc)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _classify_reply(env, exc, host, login)
    if isinstance(exc, smtplib.SMTPException | imaplib.IMAP4.error):
        return _classify_session(env, exc, host, port, login)
    if protocol == "imap":
        return _classify_imap_network(env, exc, host, port)
    return _classify_network(env, exc, host, port)


def _classify_reply(env, exc, host, login):
    _ = env._
    reply = _reply(exc)
    lower = reply.lower()
    window, sure = quota_rule(reply)
    if window:
        # before the password: "454 4.7.0 Too many login attempts" is no
        # wrong password, and a quota is never the user's fault
        return QUOTA if sure else QUOTA_UNSURE, _(
            "The mailbox %(login)s reached its provider's sending limit "
            "(%(reply)s). Its mail waits and leaves by itself once the limit "
            "allows it again.",
            login=login,
            reply=reply,
        )
    if (
        "5.7.139" in reply
        and "basic authentication is disabled" in lower
        or ("5.7.30" in reply)
    ):
        return AUTH, _(
            "Microsoft no longer accepts a password for this mailbox (%(reply)s). "
            "Password sign-in is being retired by Microsoft: ask your Microsoft "
            "365 administrator, or use the agency server for now.",
            reply=reply,
        )
    if "5.7.139" in reply or "smtpclientauthentication" in lower:
        return AUTH, _(
            "SMTP sign-in is switched off for this mailbox in Microsoft 365 "
            "(%(reply)s). Your Microsoft 365 administrator must enable "
            "'Authenticated SMTP' for the mailbox.",
            reply=reply,
        )
    if (
        "5.7.9" in reply
        or "invalidsecondfactor" in lower
        or ("application-specific password" in lower)
    ):
        return AUTH, _(
            "Google asks for an App Password (%(reply)s). Keep 2-Step "
            "Verification turned on in your Google account, create an App "
            "Password there and enter it here instead of your Google password.",
            reply=reply,
        )
    if exc.smtp_code == 535 and (
        "badcredentials" in lower or "gmail" in lower or "google" in host
    ):
        return AUTH, _(
            "Google refused the password for %(login)s (%(reply)s). With "
            "2-Step Verification turned on in your Google account, create an "
            "App Password and enter it here; your normal Google password does "
            "not work.",
            login=login,
            reply=reply,
        )
    if exc.smtp_code in (534, 535) or (
        isinstance(exc, smtplib.SMTPAuthenticationError) and exc.smtp_code >= 500
    ):
        return AUTH, _(
            "The mailbox refused the password for %(login)s (%(reply)s). Enter "
            "the mailbox password again (not your Odoo password) and test it; "
            "ally_smtp will not try this password again until you do.",
            login=login,
            reply=reply,
        )
    if 400 <= exc.smtp_code < 500:
        return TEMPORARY, _(
            "The mail server is temporarily unavailable (%(reply)s). It will be "
            "tried again.",
            reply=reply,
        )
    return PERMANENT, _("The mail server refused it: %(reply)s", reply=reply)


def _classify_session(env, exc, host, port, login):
    _ = env._
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return CONFIG, _(
            "The server %(host)s does not offer sign-in (AUTH) on port %(port)s. "
            "Check the port and encryption: 465 uses SSL/TLS, 587 uses STARTTLS.",
            host=host,
            port=port,
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TEMPORARY, _(
            "The server %(host)s closed the connection. If this keeps happening, "
            "check the port and encryption (465 uses SSL/TLS, 587 uses STARTTLS).",
            host=host,
        )
    if isinstance(exc, TooBig):
        return PERMANENT, _(
            "The mailbox %(login)s refused the copy for the Sent folder: the "
            "message is larger than the mail provider accepts (%(detail)s). The "
            "mail itself was sent; only its copy in the Sent folder is missing.",
            login=login,
            detail=str(exc),
        )
    if isinstance(exc, FolderMissing):
        return TEMPORARY, _(
            "No Sent folder was found in the mailbox %(login)s. Create a folder "
            "named 'Sent' in your webmail, or press 'Test SMTP configuration'.",
            login=login,
        )
    if isinstance(exc, imaplib.IMAP4.abort):
        return TEMPORARY, _(
            "The IMAP server %(host)s closed the connection (%(detail)s). It "
            "will be tried again.",
            host=host,
            detail=str(exc),
        )
    if isinstance(exc, imaplib.IMAP4.error):
        detail = str(exc)
        if "authenticationfailed" in detail.lower() or "login" in detail.lower():
            return AUTH, _(
                "The IMAP server refused the password for %(login)s (%(detail)s). "
                "Enter the mailbox password again (not your Odoo password).",
                login=login,
                detail=detail,
            )
        return TEMPORARY, _("The IMAP server said: %(detail)s", detail=detail)
    return PERMANENT, str(exc)


def _classify_network(env, exc, host, port):
    _ = env._
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "mismatch" in (exc.verify_message or "") or "match" in str(exc):
            return CONFIG, _(
                "The certificate of %(host)s is issued for another name. Shared "
                "hosting often needs the provider's server name (for example "
                "brNNN.hostgator.com.br) instead of mail.your-domain.",
                host=host,
            )
        return CONFIG, _(
            "The certificate of %(host)s is not trusted (%(detail)s). Use the "
            "provider's official server name, or ask your Odoo administrator.",
            host=host,
            detail=exc.verify_message or str(exc),
        )
    if isinstance(exc, ssl.SSLError):
        return CONFIG, _(
            "The encryption does not match port %(port)s of %(host)s (%(detail)s). "
            "Use SSL/TLS with port 465 and STARTTLS with port 587.",
            host=host,
            port=port,
            detail=exc.reason or str(exc),
        )
    if isinstance(exc, socket.gaierror):
        return CONFIG, _(
            "The server name %(host)s was not found. Check its spelling.",
            host=host,
        )
    if isinstance(exc, ConnectionRefusedError):
        return TEMPORARY, _(
            "Nothing answers on %(host)s port %(port)s. Check the port (465 for "
            "SSL/TLS, 587 for STARTTLS) or try again later.",
            host=host,
            port=port,
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return TEMPORARY, _(
            "%(host)s did not answer on port %(port)s in time. Check the port and "
            "that the encryption matches it (465 uses SSL/TLS, 587 uses STARTTLS).",
            host=host,
            port=port,
        )
    if isinstance(exc, OSError):
        return TEMPORARY, _(
            "Could not reach %(host)s port %(port)s: %(detail)s",
            host=host,
            port=port,
            detail=exc.strerror or str(exc),
        )
    return PERMANENT, str(exc)


def _classify_imap_network(env, exc, host, port):
    """Network failures of the IMAP server: advice about IMAP's port 993."""
    _ = env._
    if isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLCertVerificationError
    ):
        return CONFIG, _(
            "The encryption does not match port %(port)s of the IMAP server "
            "%(host)s (%(detail)s). Odoo reaches IMAP with SSL/TLS, usually on "
            "port 993.",
            host=host,
            port=port,
            detail=exc.reason or str(exc),
        )
    if isinstance(exc, ConnectionRefusedError):
        return TEMPORARY, _(
            "Nothing answers on the IMAP server %(host)s port %(port)s. Check the "
            "IMAP port (usually 993, SSL/TLS) or try again later.",
            host=host,
            port=port,
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return TEMPORARY, _(
            "The IMAP server %(host)s did not answer on port %(port)s in time. "
            "Check the IMAP port (usually 993, SSL/TLS) or try again later.",
            host=host,
            port=port,
        )
    return _classify_network(env, exc, host, port)
