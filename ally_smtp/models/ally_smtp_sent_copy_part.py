import binascii
import functools
import io
import logging
import time

from psycopg2.extensions import TRANSACTION_STATUS_INERROR

from odoo import api, fields, models, tools

_logger = logging.getLogger(__name__)

# above this size the message is streamed to the database (COPY) instead of
# being passed as one query parameter, which psycopg2 escapes into 4-8 copies
LARGE = 512 * 1024
# postcommit key: the mail.mail whose SMTP transactions are being sent
SENDING = "ally_smtp.sending"
# a process wakes the filing cron at most this often (seconds); the cron looks
# again after each run that found work, for what was sent in between
WAKE_EVERY = 10
_woken = {}  # database name -> time.monotonic() of this process's last wake-up
COLUMNS = "user_id, mail_id, message_id, subject, recipients, cc, sent_at, raw"
_INSERT = f"""
    SAVEPOINT ally_smtp_part;
    INSERT INTO ally_smtp_sent_copy_part ({COLUMNS})
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s);
    RELEASE SAVEPOINT ally_smtp_part
"""


def _mark_woken(dbname):
    _woken[dbname] = time.monotonic()


def _copy_text(value):
    """``value`` as a field of COPY's text format."""
    if value is None:
        return b"\\N"
    text = str(value).replace("\\", "\\\\").replace("\t", "\\t")
    return text.replace("\n", "\\n").replace("\r", "\\r").encode()


class _CopyRow(io.RawIOBase):
    """One COPY row whose last field, the message, is hex-encoded as it is read,
    so that a 20 MB attachment never exists twice in the sending worker."""

    def __init__(self, values, raw):
        super().__init__()
        self.pending = b"\t".join(_copy_text(v) for v in values) + b"\t\\\\x"
        self.raw = memoryview(raw)
        self.pos = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        if not self.pending and self.pos < len(self.raw):
            chunk = self.raw[self.pos : self.pos + max(len(buffer) // 2, 1)]
            self.pos += len(chunk)
            self.pending = binascii.hexlify(chunk)
            if self.pos >= len(self.raw):
                self.pending += b"\n"
        count = min(len(buffer), len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        return count


class AllySmtpSentCopyPart(models.Model):
    """What one SMTP transaction of a personal mailbox delivered.

    The send path only ever INSERTs these rows: a row that no other chunk,
    worker or the filing cron writes at the same time cannot conflict, so the
    bookkeeping never rolls back (and so never repeats) a send. The filing cron
    gathers the parts of one message into one ``ally.smtp.sent.copy``.
    """

    _name = "ally.smtp.sent.copy.part"
    _description = "Recipients of one SMTP transaction of a Sent folder copy"
    _order = "id"
    _log_access = False

    copy_id = fields.Many2one(
        "ally.smtp.sent.copy", ondelete="cascade", index="btree_not_null"
    )
    user_id = fields.Many2one("res.users", required=True, ondelete="cascade")
    # the mail.mail that sent it; no foreign key: deleting a sent mail must
    # not touch these rows (and the filing cron's locks on them)
    mail_id = fields.Integer(index="btree_not_null")
    message_id = fields.Char("Message-ID", required=True)
    subject = fields.Char()
    recipients = fields.Text("To")
    cc = fields.Text()
    sent_at = fields.Datetime(required=True)
    # ``raw bytea`` (the bytes sent, on the first part of a message in each
    # transaction) is a column but not a field: it is written and read in
    # pieces with SQL, never loaded whole through the ORM or as base64.

    def init(self):
        cr = self.env.cr
        if not tools.sql.column_exists(cr, self._table, "raw"):
            tools.sql.create_column(cr, self._table, "raw", "bytea")
        tools.sql.create_index(
            cr,
            "ally_smtp_sent_copy_part_uncollected_index",
            self._table,
            ["user_id", "message_id"],
            where="copy_id IS NULL",
        )

    @api.model
    def _ally_smtp_record(self, session, message):
        """Keep what the personal ``session`` just sent, for the Sent folder.

        Runs in the send transaction once the server accepted the message, as
        one statement in a savepoint: if it fails anyway, the failure is logged
        and the mail stays sent (its copy is missing, it is never re-sent).
        """
        raw = getattr(session, "ally_smtp_sent", None)
        message_id = (message["Message-Id"] or "").strip()
        try:
            session.ally_smtp_sent = None
            user_id = self._ally_smtp_copy_owner(session)
            if not user_id or raw is None:
                return
            stored = self.env.cr.postcommit.data.setdefault("ally_smtp.raw", set())
            key = (user_id, message_id)
            values = [
                user_id,
                self.env.cr.postcommit.data.get(SENDING),
                message_id,
                str(message["Subject"] or ""),
                str(message["To"] or ""),
                str(message["Cc"] or ""),
                fields.Datetime.now(),
            ]
            self._ally_smtp_insert(values, None if key in stored else raw)
            stored.add(key)
        except Exception:
            self._ally_smtp_forget_insert()
            _logger.exception(
                "ally_smtp: no Sent folder copy of %s; the mail was sent", message_id
            )
            return
        self._ally_smtp_wake()

    @api.model
    def _ally_smtp_reached(self, mail_id):
        """The addresses (normalized) that the mail ``mail_id`` reached."""
        self.env.cr.execute(
            "SELECT recipients, cc FROM ally_smtp_sent_copy_part WHERE mail_id = %s",
            [mail_id],
        )
        return {
            address
            for row in self.env.cr.fetchall()
            for value in row
            for address in tools.email_normalize_all(value or "")
        }

    @api.model
    def _ally_smtp_copy_owner(self, session):
        """The user whose Sent folder gets copies of this session's mail, or 0.

        Read once per SMTP session, i.e. once per user and queue run.
        """
        owner = getattr(session, "ally_smtp_copy_owner", None)
        if owner is None:
            user = session.ally_smtp_owner
            company = user.company_id
            wanted = company.ally_smtp_sent_copy != "never" and bool(
                company.ally_smtp_imap_host
            )
            owner = session.ally_smtp_copy_owner = user.id if wanted else 0
        return owner

    @api.model
    def _ally_smtp_insert(self, values, raw):
        cr = self.env.cr
        if raw is None or len(raw) < LARGE:
            cr.execute(_INSERT, [*values, raw])
            return
        cr.execute("SAVEPOINT ally_smtp_part")
        cr.copy_expert(
            f"COPY ally_smtp_sent_copy_part ({COLUMNS}) FROM STDIN",
            _CopyRow(values, raw),
            size=1 << 18,
        )
        cr.execute("RELEASE SAVEPOINT ally_smtp_part")

    @api.model
    def _ally_smtp_forget_insert(self):
        """Undo a failed insert so that the send transaction goes on."""
        cr = self.env.cr
        if cr.connection.get_transaction_status() == TRANSACTION_STATUS_INERROR:
            cr.execute(
                "ROLLBACK TO SAVEPOINT ally_smtp_part; RELEASE SAVEPOINT ally_smtp_part"
            )

    @api.model
    def _ally_smtp_wake(self):
        """Trigger the filing cron, once per transaction and WAKE_EVERY seconds.

        A queue run sending hundreds of mails thus adds a trigger now and
        then, not one per mail; the cron sweeps again after each run that found
        work, for the parts committed while it ran.
        """
        cr = self.env.cr
        if cr.postcommit.data.get("ally_smtp.woken"):
            return
        last = _woken.get(cr.dbname)
        if last is not None and time.monotonic() - last < WAKE_EVERY:
            return
        cr.postcommit.data["ally_smtp.woken"] = True
        cron = self.env.ref("ally_smtp.ir_cron_sent_copy", raise_if_not_found=False)
        if not cron:
            return
        try:
            with cr.savepoint(flush=False):
                cron.sudo()._trigger()
        except Exception:  # the cron's own schedule files the copy later
            _logger.warning("ally_smtp: cannot wake the Sent copy cron", exc_info=True)
            return
        cr.postcommit.add(functools.partial(_mark_woken, cr.dbname))
