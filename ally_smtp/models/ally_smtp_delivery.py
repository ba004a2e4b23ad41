import binascii
import functools
import io
import logging
import threading
import time
import zlib
from datetime import timedelta

from odoo import api, fields, models, tools

_logger = logging.getLogger(__name__)

# above this size the message is streamed to the database (COPY) instead of
# being passed as one query parameter, which psycopg2 escapes into 4-8 copies
COPY_LARGE = 512 * 1024
# pg_try_advisory_lock(SENDING_LOCK, mail id), held by the ledger's connection
# while a worker sends that mail: no other worker sends it at the same time
SENDING_LOCK = zlib.crc32(b"ally_smtp.sending") & 0x7FFFFFFF
# how long whom a mail reached is kept after it was sent: longer than any
# transaction that may still hold the mail as queued in its snapshot
KEEP_REACHED = timedelta(days=2)
# a process wakes the filing cron at most this often (seconds); the cron looks
# again after each run that found work, for what was sent in between
WAKE_EVERY = 10
_woken = {}  # database name -> time.monotonic() of this process's last wake-up
COLUMNS = (
    "user_id, mail_id, message_id, subject, recipients, cc, sent_at, reached_only, raw"
)
_INSERT = f"""
    INSERT INTO ally_smtp_delivery ({COLUMNS})
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
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


def _testing():
    """Tests run in one transaction that must not be committed."""
    return getattr(threading.current_thread(), "testing", False)


class Ledger:
    """Whom the mails of one personal batch reached, kept as it happens.

    Each SMTP transaction the provider accepted is written at once on a
    cursor of its own and committed (``record``): a worker that dies, or a
    send transaction that Odoo rolls back after sending (a concurrent
    update), loses at most the one transaction in flight. ``claim`` takes
    the batch's mails for this worker: a mail another worker sends now, or
    sent already, is left alone; for the others it reads whom they reached.
    The commits do not wait for the disk (``synchronous_commit``): what they
    protect against is the death of a worker, not of PostgreSQL.

    In tests everything runs on the test's own cursor, never committed.
    """

    def __init__(self, env, own=None):
        self.own = not _testing() if own is None else own
        self.cr = env.cr
        if self.own:
            # each statement its own transaction: a record is one round trip
            self.cr = env.registry.cursor()
            self.cr.connection.autocommit = True
            self.cr.execute("SET synchronous_commit TO OFF")
        self.reached = {}  # mail id -> addresses (normalized) it reached
        self.stored = set()  # (user id, Message-ID) whose bytes are kept

    def close(self):
        """Let go of the claimed mails; once, however often it is called."""
        if not self.own or self.cr.closed:
            return
        try:
            self.cr.execute("SELECT pg_advisory_unlock_all(); RESET synchronous_commit")
            self.cr.connection.autocommit = False
        except Exception:
            # never back to the pool with its locks: closing the connection
            # lets PostgreSQL release them
            self.cr.connection.close()
            raise
        finally:
            self.cr.close()

    def claim(self, mail_ids, hold=None):
        """The ids of ``mail_ids`` this worker sends now, in order.

        A mail is skipped when another worker holds its lock, or when its
        committed state says it is no longer queued (sent or failed by
        another worker since this one read it). A mail not committed yet
        (created in this transaction) is this worker's own. The locks are
        held until ``close()``, or with ``hold`` (a cursor) until its
        transaction ends.
        """
        cr = self.cr
        lock = "pg_try_advisory_lock"
        if hold is not None:
            cr, lock = hold, "pg_try_advisory_xact_lock"
        cr.execute(
            f"SELECT id FROM unnest(%s::int[]) AS id WHERE {lock}(%s, id)",
            [list(mail_ids), SENDING_LOCK],
        )
        locked = {row[0] for row in cr.fetchall()}
        # on the ledger's own connection, each read below sees what was
        # committed once the locks were taken
        cr = self.cr
        cr.execute(
            "SELECT id FROM mail_mail WHERE id = ANY(%s) AND state != 'outgoing'",
            [list(locked)],
        )
        done = {row[0] for row in cr.fetchall()}
        claimed = [mail_id for mail_id in mail_ids if mail_id in locked - done]
        cr.execute(
            "SELECT mail_id, recipients, cc FROM ally_smtp_delivery "
            "WHERE mail_id = ANY(%s)",
            [claimed],
        )
        for mail_id, *values in cr.fetchall():
            self.reached.setdefault(mail_id, set()).update(
                address
                for value in values
                for address in tools.email_normalize_all(value or "")
            )
        skipped = len(mail_ids) - len(claimed)
        if skipped:
            _logger.info(
                "ally_smtp: %s mails left to the worker that sends or sent them",
                skipped,
            )
        return claimed

    def record(self, values, raw):
        """Keep one accepted SMTP transaction: ``values`` of ``COLUMNS`` but
        the last, and the bytes sent (or None). A failure undoes only this
        record: on the ledger's own connection each statement is a
        transaction of its own; in tests a savepoint keeps the test's."""
        if self.own:
            self._insert(values, raw)
        else:
            with self.cr.savepoint(flush=False):
                self._insert(values, raw)

    def _insert(self, values, raw):
        if raw is not None and len(raw) >= COPY_LARGE:
            self.cr.copy_expert(
                f"COPY ally_smtp_delivery ({COLUMNS}) FROM STDIN",
                _CopyRow(values, raw),
                size=1 << 18,
            )
        else:
            self.cr.execute(_INSERT, [*values, raw])


class AllySmtpDelivery(models.Model):
    """What one SMTP transaction of a personal mailbox delivered.

    The send path only ever INSERTs these rows, through the batch's
    ``Ledger``, committed as soon as the provider accepted the transaction:
    they tell every later attempt of the mail whom it reached, whatever
    became of the send transaction. The filing cron gathers the deliveries
    of one message into one ``ally.smtp.sent.copy`` (all but the
    ``reached_only`` ones), and drops their bytes once filed; the rows
    themselves are kept ``KEEP_REACHED``.
    """

    _name = "ally.smtp.delivery"
    _description = "SMTP transaction accepted by a personal mailbox's provider"
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
    # kept only as the record of whom the mail reached (no Sent copy wanted)
    reached_only = fields.Boolean()
    # ``raw bytea`` (the bytes sent, on the first delivery of a message in
    # each transaction) is a column but not a field: it is written and read in
    # pieces with SQL, never loaded whole through the ORM or as base64.

    def init(self):
        cr = self.env.cr
        if not tools.sql.column_exists(cr, self._table, "raw"):
            tools.sql.create_column(cr, self._table, "raw", "bytea")
        tools.sql.create_index(
            cr,
            "ally_smtp_delivery_to_collect_index",
            self._table,
            ["user_id", "message_id"],
            where="copy_id IS NULL AND reached_only IS NOT TRUE",
        )

    @api.model
    def _ally_smtp_record(self, session, message):
        """Keep whom the personal ``session`` just reached, and for the Sent
        folder what it sent.

        Runs once the server accepted the message, on the batch's ledger
        (committed at once, outside the send transaction). If it fails
        anyway, the failure is logged and the mail stays sent: its copy is
        missing and a later attempt may send it again to these recipients.
        """
        raw = getattr(session, "ally_smtp_sent", None)
        message_id = (message["Message-Id"] or "").strip()
        batch = session.ally_smtp_batch
        ledger = batch.ledger or Ledger(self.env, own=False)
        try:
            session.ally_smtp_sent = None
            wanted = self._ally_smtp_copy_wanted(batch)
            key = (batch.owner_id, message_id)
            values = [
                batch.owner_id,
                batch.mail_id,
                message_id,
                str(message["Subject"] or ""),
                str(message["To"] or ""),
                str(message["Cc"] or ""),
                fields.Datetime.now(),
                not wanted,
            ]
            keep = wanted and raw is not None and key not in ledger.stored
            ledger.record(values, raw if keep else None)
            if keep:
                ledger.stored.add(key)
        except Exception:
            _logger.exception(
                "ally_smtp: whom %s reached was not recorded; the mail was sent",
                message_id,
            )
            return
        if wanted:
            self._ally_smtp_wake()

    @api.model
    def _ally_smtp_copy_wanted(self, batch):
        """Whether the mail of ``batch`` gets a copy in its owner's Sent folder.

        Read once per batch, i.e. once per SMTP session.
        """
        if batch.copy_wanted is None:
            company = batch.mailbox.company_id
            batch.copy_wanted = company.ally_smtp_sent_copy != "never" and bool(
                company.ally_smtp_imap_host
            )
        return batch.copy_wanted

    @api.autovacuum
    def _gc_reached(self):
        """Forget whom mails reached once they are long sent (or gone), and
        their copy, if any, is filed."""
        self.env.cr.execute(
            """DELETE FROM ally_smtp_delivery delivery
                WHERE delivery.sent_at < %s
                  AND (
                      delivery.reached_only
                      OR EXISTS (
                          SELECT 1 FROM ally_smtp_sent_copy copy
                           WHERE copy.id = delivery.copy_id
                             AND copy.state IN ('done', 'skipped')))
                  AND NOT EXISTS (
                      SELECT 1 FROM mail_mail mail
                       WHERE mail.id = delivery.mail_id
                         AND mail.state IN ('outgoing', 'exception', 'cancel'))""",
            [fields.Datetime.now() - KEEP_REACHED],
        )

    @api.model
    def _ally_smtp_wake(self):
        """Trigger the filing cron, once per transaction and WAKE_EVERY seconds.

        A queue run sending hundreds of mails thus adds a trigger now and
        then, not one per mail; the cron sweeps again after each run that found
        work, for the deliveries committed while it ran.
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
