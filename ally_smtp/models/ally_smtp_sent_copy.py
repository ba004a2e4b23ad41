import email.utils
import logging
import time
import zlib
from collections import defaultdict
from datetime import timedelta

from psycopg2.extensions import TransactionRollbackError

from odoo import api, fields, models, modules
from odoo.tools import SQL, config

from .ally_smtp_delivery import WAKE_EVERY, _testing

_logger = logging.getLogger(__name__)

KEEP_DONE = timedelta(days=7)
# a message is filed once none of its mail.mail chunks waits to be sent, or
# when its first chunk left this long ago (a chunk stuck in the queue)
WAIT_FOR_CHUNKS = timedelta(hours=1)
RECHECK = timedelta(minutes=1)
_COLLECT_LOCK = zlib.crc32(b"ally_smtp.sent_copy.collect")
# a chunk (mail.mail) of the copy's message still waits to be sent
_OUTGOING = """
    EXISTS (
        SELECT 1
          FROM mail_mail mm
          JOIN mail_message m ON m.id = mm.mail_message_id
         WHERE m.message_id = c.message_id AND mm.state = 'outgoing'
    )
"""
# the copy is due and its message is sent completely (or waited long enough)
_READY = f"""
    c.state IN ('pending', 'filing') AND c.next_try <= %(now)s
    AND (c.first_sent < %(bound)s OR NOT {_OUTGOING})
"""
_WAITING = f"""
    c.state = 'pending' AND c.next_try <= %(now)s
    AND c.first_sent >= %(bound)s AND {_OUTGOING}
"""


def _condition(condition):
    now = fields.Datetime.now()
    return SQL(condition, now=now, bound=now - WAIT_FOR_CHUNKS)


def _merge(values):
    """The addresses of ``values`` (header values), each once, in order."""
    seen, result = set(), []
    for name, address in email.utils.getaddresses([v for v in values if v]):
        key = address.strip().lower()
        if key and key not in seen:
            seen.add(key)
            result.append((name, address.strip()))
    return result


class AllySmtpSentCopy(models.Model):
    """One message for its author's Sent folder, made of the deliveries the
    send path recorded (one per SMTP transaction) and filed by a cron.

    This file holds the copy and its gathering; the IMAP filing run (claim,
    file, finish, back off) is in ``ally_smtp_sent_copy_filing.py``.
    """

    _name = "ally.smtp.sent.copy"
    _description = "Copy of a sent mail for the author's Sent folder"
    _order = "id desc"
    _rec_name = "subject"

    user_id = fields.Many2one(
        "res.users", required=True, index=True, ondelete="cascade", readonly=True
    )
    message_id = fields.Char("Message-ID", required=True, readonly=True)
    subject = fields.Char(readonly=True)
    recipients = fields.Text(readonly=True)
    cc = fields.Text(readonly=True)
    first_sent = fields.Datetime("Sent on", readonly=True)
    size = fields.Integer("Size (bytes)", readonly=True)
    delivery_ids = fields.One2many("ally.smtp.delivery", "copy_id", readonly=True)
    state = fields.Selection(
        [
            ("pending", "Pending"),
            ("filing", "Being filed"),
            ("done", "In the Sent folder"),
            ("skipped", "Already filed by the provider"),
            ("failed", "Failed"),
        ],
        default="pending",
        required=True,
        index=True,
        readonly=True,
    )
    attempts = fields.Integer(readonly=True)
    next_try = fields.Datetime(default=fields.Datetime.now, readonly=True)
    look_first = fields.Boolean(
        "Look for it first",
        readonly=True,
        help="An earlier attempt may have reached the folder: the next one "
        "looks for the Message-ID there before adding the copy.",
    )
    last_error = fields.Text(readonly=True)

    _sql_constraints = [  # noqa: RUF012 - Odoo's declaration style
        (
            "user_message_unique",
            "UNIQUE(user_id, message_id)",
            "One Sent copy per user and message.",
        )
    ]

    # -- the cron -----------------------------------------------------------
    @api.model
    def _ally_smtp_process(self):
        """Cron: file the copies whose message is sent completely.

        Each copy is claimed (state 'filing', committed) before its APPEND and
        marked done, committed, right after: a run that is killed or stopped by
        the cron time limit never files again what it filed, and a copy left
        'filing' by a dead run is looked for in the folder before it is added.
        A run ends by itself after a time budget and tells the cron what is
        left, so that a backlog converges however slow the provider is.
        """
        if modules.module.current_test:  # other modules' tests stay offline
            return
        deadline = time.monotonic() + self._ally_smtp_time_budget()
        collected = self._ally_smtp_collect()
        done = 0
        for user in self._ally_smtp_due_users():
            if done and time.monotonic() >= deadline:
                break
            done += self._ally_smtp_file_user(user, deadline)
        remaining = self._ally_smtp_count(_condition(_READY))
        self.env["ir.cron"]._notify_progress(done=done, remaining=remaining)
        self._ally_smtp_schedule(worked=bool(collected or done))

    @api.model
    def _ally_smtp_time_budget(self):
        """Seconds a run may file, well inside the cron's time limit.

        The cron runs the job up to 10 times in a row while work remains, all
        within one time limit (``limit_time_real_cron``, else
        ``limit_time_real``).
        """
        limit = config.get("limit_time_real_cron") or 0
        if limit <= 0:
            limit = config.get("limit_time_real") or 0
        return max(5.0, limit / 12) if limit > 0 else 60.0

    @api.model
    def _ally_smtp_sql(self, query, params=None):
        """Run SQL on what the ORM wrote so far (copies are also written by
        the ORM, and tests never commit, which would flush)."""
        self.env.flush_all()
        self.env.cr.execute(query, params)

    @api.model
    def _ally_smtp_commit(self):
        """End a unit of work; in tests (one transaction) there is nothing to do."""
        if not _testing():
            self.env.cr.commit()  # pylint: disable=invalid-commit

    @api.model
    def _ally_smtp_rollback(self):
        if not _testing():
            self.env.cr.rollback()

    @api.model
    def _ally_smtp_collect(self):
        """Gather the deliveries the send path left into one copy per message.

        Returns how many deliveries were gathered. Runs under a transaction lock so
        that two runs never create the same copy; the loser of a conflict
        leaves the work to the next run.
        """
        cr = self.env.cr
        now = fields.Datetime.now()
        try:
            self._ally_smtp_sql("SELECT pg_try_advisory_xact_lock(%s)", [_COLLECT_LOCK])
            if not cr.fetchone()[0]:
                return 0
            self._ally_smtp_sql(
                """
                INSERT INTO ally_smtp_sent_copy
                    (user_id, message_id, subject, first_sent, state, attempts,
                     next_try, look_first,
                     create_uid, create_date, write_uid, write_date)
                SELECT d.user_id, d.message_id, min(d.subject), min(d.sent_at),
                       'pending', 0, %(now)s, false, %(uid)s, %(now)s, %(uid)s, %(now)s
                  FROM ally_smtp_delivery d
                 WHERE d.copy_id IS NULL AND d.reached_only IS NOT TRUE
                   AND NOT EXISTS (
                        SELECT 1 FROM ally_smtp_sent_copy c
                         WHERE c.user_id = d.user_id AND c.message_id = d.message_id)
                 GROUP BY d.user_id, d.message_id
                ON CONFLICT (user_id, message_id) DO NOTHING
                """,
                {"now": now, "uid": self.env.uid},
            )
            self._ally_smtp_sql(
                """
                UPDATE ally_smtp_delivery d
                   SET copy_id = c.id
                  FROM ally_smtp_sent_copy c
                 WHERE d.copy_id IS NULL AND d.reached_only IS NOT TRUE
                   AND c.user_id = d.user_id AND c.message_id = d.message_id
             RETURNING c.id, c.state
                """
            )
            rows = cr.fetchall()
            self.env.invalidate_all()
            pending = {copy_id for copy_id, state in rows if state == "pending"}
            self._ally_smtp_summarize(sorted(pending))
            self._ally_smtp_commit()
        except TransactionRollbackError as exc:
            self._ally_smtp_rollback()
            _logger.info("ally_smtp: Sent copies gathered by another run (%s)", exc)
            return 0
        return len(rows)

    @api.model
    def _ally_smtp_summarize(self, copy_ids):
        """Show what pending copies hold so far (one query for all of them);
        ``_ally_smtp_merge`` makes the exact list when a copy is filed."""
        if copy_ids:
            self._ally_smtp_sql(
                """UPDATE ally_smtp_sent_copy c
                      SET recipients = s.recipients, cc = s.cc, size = s.size
                     FROM (SELECT copy_id,
                                  string_agg(DISTINCT NULLIF(recipients, ''), ', ')
                                      AS recipients,
                                  string_agg(DISTINCT NULLIF(cc, ''), ', ') AS cc,
                                  max(octet_length(raw)) AS size
                             FROM ally_smtp_delivery
                            WHERE copy_id = ANY(%s)
                            GROUP BY copy_id) s
                    WHERE c.id = s.copy_id""",
                [copy_ids],
            )
            self.browse(copy_ids).invalidate_recordset(["recipients", "cc", "size"])

    def _ally_smtp_merge(self, values=None):
        """Every recipient of every delivery, each once; the size of the message.

        Takes the deliveries sent since the copy was gathered too, in the snapshot
        that found the message sent completely. A few queries for any number
        of copies; ``values`` (``{copy id: values}``) are written with them.
        """
        if not self:
            return
        cr = self.env.cr
        self._ally_smtp_sql(
            """UPDATE ally_smtp_delivery d SET copy_id = c.id
                 FROM ally_smtp_sent_copy c
                WHERE c.id = ANY(%s) AND d.copy_id IS NULL
                  AND d.reached_only IS NOT TRUE
                  AND d.user_id = c.user_id AND d.message_id = c.message_id""",
            [self.ids],
        )
        self._ally_smtp_sql(
            """SELECT copy_id, recipients, cc, sent_at, octet_length(raw)
                 FROM ally_smtp_delivery
                WHERE copy_id = ANY(%s) ORDER BY id""",
            [self.ids],
        )
        deliveries = defaultdict(list)
        for row in cr.fetchall():
            deliveries[row[0]].append(row[1:])
        self.env["ally.smtp.delivery"].invalidate_model(["copy_id"])
        self.invalidate_recordset(["delivery_ids"])
        for copy in self:
            merged = dict((values or {}).get(copy.id, {}))
            rows = deliveries.get(copy.id)
            if rows:
                to = _merge([row[0] for row in rows])
                cc = _merge([row[1] for row in rows])
                sizes = [row[3] for row in rows if row[3] is not None]
                merged.update(
                    recipients=", ".join(email.utils.formataddr(p) for p in to),
                    cc=", ".join(email.utils.formataddr(p) for p in cc),
                    first_sent=min(row[2] for row in rows),
                    size=sizes[0] if sizes else 0,
                )
            if merged:
                copy.write(merged)

    @api.model
    def _ally_smtp_count(self, condition):
        """How many copies meet ``condition`` (on ``c``) for usable users."""
        self._ally_smtp_sql(
            SQL(
                """SELECT count(*)
                     FROM ally_smtp_sent_copy c
                     LEFT JOIN ally_smtp_mailbox m ON m.user_id = c.user_id
                    WHERE COALESCE(m.state, '') NOT IN ('failed', 'reconnect')
                      AND %s""",
                condition,
            )
        )
        return self.env.cr.fetchone()[0]

    @api.model
    def _ally_smtp_due_users(self):
        """Users with copies to file; a refused password waits for its owner."""
        self._ally_smtp_sql(
            """SELECT DISTINCT user_id FROM ally_smtp_sent_copy
                WHERE state IN ('pending', 'filing') AND next_try <= %s""",
            [fields.Datetime.now()],
        )
        users = self.env["res.users"].browse([r[0] for r in self.env.cr.fetchall()])
        return users.filtered(lambda u: not u._ally_smtp_mailbox()._unusable()[1])

    @api.model
    def _ally_smtp_schedule(self, worked):
        """Trigger the cron again for what this run left for later."""
        now = fields.Datetime.now()
        moments = []
        if worked:  # deliveries committed while this run was busy
            moments.append(now + timedelta(seconds=WAKE_EVERY))
        if self._ally_smtp_count(_condition(_WAITING)):
            moments.append(now + RECHECK)
        self._ally_smtp_sql(
            """SELECT min(next_try) FROM ally_smtp_sent_copy
                WHERE state IN ('pending', 'filing') AND next_try > %s""",
            [now],
        )
        later = self.env.cr.fetchone()[0]
        if later:
            moments.append(later)
        cron = self.env.ref("ally_smtp.ir_cron_sent_copy", raise_if_not_found=False)
        if moments and cron:
            cron._trigger(min(moments))

    # -- actions --------------------------------------------------------------
    def action_retry(self):
        self.write(
            {
                "state": "pending",
                "next_try": fields.Datetime.now(),
                "attempts": 0,
                "look_first": True,
            }
        )
        self.env.ref("ally_smtp.ir_cron_sent_copy")._trigger()

    @api.autovacuum
    def _gc_done_copies(self):
        self.search(
            [
                ("state", "in", ("done", "skipped")),
                ("write_date", "<", fields.Datetime.now() - KEEP_DONE),
            ]
        ).unlink()
