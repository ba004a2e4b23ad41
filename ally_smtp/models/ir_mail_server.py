import contextlib
import inspect
import logging
import smtplib
import threading

from odoo import _, api, fields, models, modules
from odoo.exceptions import AccessError, ValidationError

from odoo.addons.base.models.ir_mail_server import MailDeliveryException

from ..lib import errors

_logger = logging.getLogger(__name__)


FAILURES = "ally_smtp.failures"
# (database, server id) -> the _Batch that mail.mail routing opened for this
# thread, in granted(); its login grant is taken once by connect()
_GRANTS = threading.local()


class _Batch:
    """One batch of a personal mailbox, from routing to its last send.

    ``ledger`` (an ``ally_smtp_delivery.Ledger``) is open while
    ``mail.mail._send`` sends the batch: whom each mail reached, kept outside
    the send transaction. ``mail_id`` is the mail being sent now. Once
    ``connect()`` has signed in, ``mailbox`` is the sender's
    ``ally.smtp.mailbox`` (``owner_id`` its user's id, read once: the queue
    commits after each mail, and a record would be read again after each
    commit) and ``paused`` why its provider said "too much"
    during this session (the rest of the batch then waits unasked);
    ``copy_wanted`` whether its mail gets Sent copies, ``reply_to`` the
    Reply-To its mail gets (both decided once).
    """

    __slots__ = (
        "copy_wanted",
        "granted",
        "ledger",
        "mail_id",
        "mailbox",
        "owner_id",
        "paused",
        "reply_to",
    )

    def __init__(self):
        self.granted = True
        self.ledger = None
        self.mail_id = None
        self.mailbox = None
        self.owner_id = None
        self.paused = False
        self.reply_to = None
        self.copy_wanted = None


@contextlib.contextmanager
def granted(server):
    """Let ``connect()`` log in to ``server`` once, inside this block only.

    Only ``mail.mail`` routing, after its owner check, opens such a block:
    every other caller of ``connect()`` (RPC, a forged ``mail_server_id``, a
    future Odoo entry point) finds no grant and is refused before any login.
    """
    key = (server.env.cr.dbname, server.id)
    batches = _GRANTS.__dict__.setdefault("batches", {})
    batches[key] = _Batch()
    try:
        yield
    finally:
        batches.pop(key, None)


def sending_batch_of(server):
    """The ``_Batch`` this thread is sending for the personal ``server``
    (inside its ``granted()`` block), else None: known without reading the
    server, which every mail would otherwise do again after each commit."""
    if not server:
        return None
    return _GRANTS.__dict__.get("batches", {}).get((server.env.cr.dbname, server.id))


def _take_grant(server):
    """The batch whose login this is, once; None outside routing's grant."""
    batch = sending_batch_of(server)
    if batch is None or not batch.granted:
        return None
    batch.granted = False
    return batch


def check_mail_server(records):
    """Users may not pick a personal mailbox as a record's mail server."""
    if records.env.su:
        return
    for record in records:
        if record.sudo().mail_server_id.ally_smtp_owner_id:
            raise ValidationError(
                records.env._(
                    "%(server)s is a user's personal mailbox, managed by ally_smtp: "
                    "it only sends its owner's own mail. Leave the outgoing mail "
                    "server empty; mail you write leaves from your own mailbox.",
                    server=record.sudo().mail_server_id.name,
                )
            )


class AllySmtpDeliveryError(MailDeliveryException):
    """A personal mailbox failed; its text says what to fix, its ``kind``
    (a ``lib.errors`` kind) what follows."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def _note_failure(mailbox, kind, message, exc=None):
    """Note why ``mailbox``'s mail failed and act on it; return the error.

    ``mail.mail`` post-processing reads the kind back (``FAILURES``); a
    refused password or grant stops the mailbox, and a quota reply (``exc``)
    pauses it for the window it names.
    """
    failures = mailbox.env.cr.postcommit.data.setdefault(FAILURES, {})
    failures[mailbox.user_id.id] = kind
    if kind == errors.AUTH:
        mailbox._auth_failed(message)
    if kind == errors.RECONNECT:
        mailbox._reconnect_needed(message)
    if kind in errors.QUOTA_KINDS and exc is not None:
        mailbox._pause(errors.pause_window(exc), message)
    return AllySmtpDeliveryError(kind, message)


class IrMailServer(models.Model):
    _inherit = "ir.mail_server"

    smtp_authentication = fields.Selection(
        selection_add=[("ally_smtp", "Personal mailbox (ally_smtp)")],
        ondelete={"ally_smtp": "cascade"},
    )
    ally_smtp_owner_id = fields.Many2one(
        "res.users",
        "Personal mailbox of",
        ondelete="cascade",
        index="btree_not_null",
        copy=False,
        readonly=True,
    )

    _sql_constraints = [  # noqa: RUF012 - Odoo's declaration style
        (
            "ally_smtp_owner_unique",
            "UNIQUE(ally_smtp_owner_id)",
            "A user has one personal mail server.",
        )
    ]

    def _compute_smtp_authentication_info(self):
        personal = self.filtered(lambda s: s.smtp_authentication == "ally_smtp")
        personal.smtp_authentication_info = _(
            "Signs in as its owner, with the mailbox password or sign-in they "
            "gave in My Profile (ally_smtp); it only sends its owner's own mail."
        )
        return super(IrMailServer, self - personal)._compute_smtp_authentication_info()

    @api.model_create_multi
    def create(self, vals_list):
        if any(vals.get("ally_smtp_owner_id") for vals in vals_list):
            self._ally_smtp_check_managed()
        return super().create(vals_list)

    def write(self, vals):
        """Personal servers follow their owner's profile, not hand edits."""
        if "ally_smtp_owner_id" in vals or self.filtered("ally_smtp_owner_id"):
            self._ally_smtp_check_managed()
        return super().write(vals)

    def _ally_smtp_check_managed(self):
        if not self.env.su:
            raise AccessError(
                _(
                    "A personal mailbox is managed by ally_smtp: its owner changes "
                    "it in My Profile."
                )
            )

    @api.model
    def _find_mail_server(self, email_from, mail_servers=None):
        """Never pick someone's personal mailbox for other mail (fallbacks)."""
        if mail_servers is None:
            mail_servers = self.sudo().search([], order="sequence, id")
        mail_servers = mail_servers.filtered(lambda s: not s.ally_smtp_owner_id)
        return super()._find_mail_server(email_from, mail_servers=mail_servers)

    def connect(self, *args, **kwargs):
        """Personal servers get a verified-TLS session logged in as their owner.

        Odoo 18 neither verifies certificates nor knows our encrypted passwords,
        so the session of a personal server is opened here, and only for a
        batch that ``mail.mail`` routing granted (its owner's own mail);
        everything else goes to ``super()``.
        """
        # however the caller passes it (by keyword or by position, over RPC too)
        bound = inspect.signature(super().connect).bind_partial(*args, **kwargs)
        server_id = bound.arguments.get("mail_server_id")
        server = self.sudo().browse(server_id).exists() if server_id else self.browse()
        if not server.ally_smtp_owner_id:
            return super().connect(*args, **kwargs)
        batch = _take_grant(server)
        if batch is None:
            _logger.warning(
                "ally_smtp: refused a session with the personal mailbox of user %s "
                "asked by user %s outside its owner's own mail",
                server.ally_smtp_owner_id.id,
                self.env.uid,
            )
            raise AccessError(
                _(
                    "%(server)s is a user's personal mailbox: it only sends its "
                    "owner's own mail.",
                    server=server.name,
                )
            )
        if modules.module.current_test:
            return super().connect(*args, **kwargs)
        return server._ally_smtp_connect(bound.arguments.get("smtp_from"), batch)

    def _ally_smtp_connect(self, smtp_from, batch):
        """A verified-TLS session with the agency's server, signed in as the
        owner of this personal server (``_smtp_login``), for ``batch``."""
        mailbox = self.ally_smtp_owner_id._ally_smtp_mailbox()
        company = mailbox.company_id
        mailbox = batch.mailbox = mailbox.with_context(lang=mailbox.user_id.lang)
        batch.owner_id = mailbox.user_id.id
        kind, blocked = mailbox._unusable()
        if blocked:
            raise _note_failure(mailbox, kind, blocked)
        host, port = company.ally_smtp_host.strip(), company.ally_smtp_port
        try:
            connection = company._ally_smtp_open_smtp()
            try:
                self._smtp_login(connection, self.smtp_user, None)
            except BaseException:
                connection.close()
                raise
        except Exception as exc:  # noqa: BLE001 - every failure gets a message
            kind, message = errors.classify(
                mailbox.env, exc, host, port, self.smtp_user
            )
            _logger.info("ally_smtp: user %s cannot send: %s", mailbox.user_id.id, exc)
            raise _note_failure(mailbox, kind, message, exc) from None
        connection.from_filter = self.from_filter
        connection.smtp_from = smtp_from
        connection.ally_smtp_batch = batch
        return connection

    def _smtp_login(self, connection, smtp_user, smtp_password):
        """A personal server signs in as its owner: their password, or their
        Google/Microsoft grant (XOAUTH2)."""
        if len(self) == 1 and self.smtp_authentication == "ally_smtp":
            mailbox = self.ally_smtp_owner_id._ally_smtp_mailbox()
            return mailbox.with_context(lang=mailbox.user_id.lang)._sign_in_smtp(
                connection
            )
        return super()._smtp_login(connection, smtp_user, smtp_password)

    def send_email(self, message, *args, **kwargs):
        """Keep what a personal session sent, for the Sent folder copy."""
        session = kwargs.get("smtp_session")
        batch = getattr(session, "ally_smtp_batch", None)
        if batch is None:
            return super().send_email(message, *args, **kwargs)
        mailbox = batch.mailbox
        if batch.paused:
            # the provider said "too much" earlier in this session: the rest of
            # the batch waits without asking it again
            raise _note_failure(mailbox, errors.QUOTA, batch.paused)
        try:
            result = super().send_email(message, *args, **kwargs)
        except (MailDeliveryException, smtplib.SMTPServerDisconnected) as exc:
            cause = exc.__context__ or exc
            kind, text = errors.classify(mailbox.env, cause, login=mailbox.address)
            if kind in errors.QUOTA_KINDS:
                batch.paused = text
            raise _note_failure(mailbox, kind, text, cause) from exc
        self.env["ally.smtp.delivery"].sudo()._ally_smtp_record(session, message)
        return result
