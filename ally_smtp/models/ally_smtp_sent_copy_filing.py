import email.utils
import logging
import re
import time
from datetime import timedelta, timezone

from psycopg2.extensions import TransactionRollbackError

from odoo import _, api, fields, models
from odoo.tools import SQL

from ..lib import errors, mailbox
from .ally_smtp_sent_copy import _READY, _condition, _merge

_logger = logging.getLogger(__name__)

FILING_MAX_ATTEMPTS = 8
FILING_FIRST_DELAY = timedelta(minutes=2)
READ_CHUNK = 1024 * 1024  # bytes of a message read per query
# copies a run claims, files and commits at once: 1, then twice as many each
# time, up to CLAIM_MOST, and half as many after a batch longer than BATCH_TIME
CLAIM_MOST = 16
BATCH_TIME = 0.5
# read with the lock; a message no larger is APPENDed together with others
HEAD_CHUNK = 64 * 1024
# headers of the SMTP transaction that a mail client's Sent copy does not carry
_DROP = re.compile(
    rb"^(To|Cc|Return-Path|X-Forge-To|X-Msg-To-Add):[^\r\n]*\r\n([ \t][^\r\n]*\r\n)*",
    re.IGNORECASE | re.MULTILINE,
)
# lock the claimed copies (still this run's) and read the start of their messages
_LOAD = """
    SELECT c.id, d.id, octet_length(d.raw), substring(d.raw FROM 1 FOR %s)
      FROM ally_smtp_sent_copy c
      JOIN unnest(%s::int[], %s::int[]) AS mine(id, attempts)
        ON mine.id = c.id AND mine.attempts = c.attempts
      LEFT JOIN LATERAL (
            SELECT id, raw FROM ally_smtp_delivery
             WHERE copy_id = c.id AND raw IS NOT NULL
             ORDER BY id LIMIT 1
      ) d ON TRUE
     WHERE c.state = 'filing'
     ORDER BY c.id
       FOR UPDATE OF c
"""


class _Filed(list):
    """``(copy id, state)`` filed since the last commit; the first ``written``
    are marked so in the database (not committed yet)."""

    written = 0


def _header(name, pairs):
    value = ",\r\n ".join(email.utils.formataddr(p, charset="utf-8") for p in pairs)
    return b"\r\n" + name + b": " + value.encode()


class AllySmtpSentCopyFiling(models.Model):
    """The filing run of the Sent copies: claim the ready copies of a user,
    APPEND them over one IMAP session, mark them filed, and back off after a
    failure. ``_ally_smtp_process`` (the cron) calls it for each user."""

    _inherit = "ally.smtp.sent.copy"

    # -- filing one user's copies ---------------------------------------------
    @api.model
    def _ally_smtp_file_user(self, user, deadline):
        """File ``user``'s ready copies over one IMAP session; return how many.

        Files at least one copy, then stops at ``deadline``. Copies are claimed
        a few at a time (1, 2, 4, ... up to ``CLAIM_MOST``), locked and read in
        one query, APPENDed several in one command where the server allows it,
        and what a batch filed is committed at its end: a run that dies in a
        batch leaves its copies 'filing', looked for in the folder before they
        are added again.
        """
        company, box = user.company_id, user._ally_smtp_mailbox()
        host = (company.ally_smtp_imap_host or "").strip()
        port = company.ally_smtp_imap_port
        done, copy, imap, folder = 0, self.browse(), None, None
        size, claimed, filed = 1, self.browse(), _Filed()
        try:
            while not done or time.monotonic() < deadline:
                started = time.monotonic()
                claimed = self._ally_smtp_claim(user, size)
                if not claimed:
                    break
                if folder is None:
                    copy = claimed[0]  # the copy a failure to log in is noted on
                    if not host:
                        raise mailbox.FolderMissing(
                            _("No IMAP server is set up for the agency.")
                        )
                    imap = company._ally_smtp_open_imap()
                    box._sign_in_imap(imap)
                    folder = mailbox.SentFolder(imap, box.sent_folder)
                loaded = claimed._ally_smtp_lock()
                claimed = claimed.browse(list(loaded))  # those still ours
                groups = claimed._ally_smtp_groups(loaded)
                while groups:
                    copy = groups.pop(0)
                    if done and time.monotonic() >= deadline:
                        break
                    try:
                        alone = copy._ally_smtp_file(
                            folder, company.ally_smtp_sent_copy, loaded, filed
                        )
                    except mailbox.TooBig as exc:  # this copy only; go on
                        copy._ally_smtp_filing_failed(user, exc, host, port)
                        alone = self.browse()
                    groups[:0] = list(alone)
                    done += len(copy - alone)
                    claimed -= copy - alone
                copy = self.browse()
                self._ally_smtp_finish(filed)
                claimed._ally_smtp_unclaim()
                self._ally_smtp_commit()
                filed, claimed = _Filed(), self.browse()
                self._ally_smtp_remember(box, folder.name)
                if time.monotonic() - started < BATCH_TIME:
                    size = min(2 * size, CLAIM_MOST)
                else:
                    size = max(size // 2, 1)
        except TransactionRollbackError as exc:
            self._ally_smtp_rollback()  # another run files this user's copies
            _logger.info("ally_smtp: Sent copies of user %s: %s", user.id, exc)
        except Exception as exc:  # noqa: BLE001 - retried, then shown to the user
            self._ally_smtp_rollback()
            try:
                # what reached the folder before the failure stays filed
                filed.written = 0
                self._ally_smtp_finish(filed)
                (claimed - copy)._ally_smtp_unclaim()
                kind, message = copy._ally_smtp_filing_failed(user, exc, host, port)
                if kind == errors.AUTH:
                    box._auth_failed(message)
                elif kind == errors.RECONNECT:
                    box._reconnect_needed(message)
                self._ally_smtp_back_off(user, message)
                self._ally_smtp_commit()
            except TransactionRollbackError:  # another run noted it meanwhile
                self._ally_smtp_rollback()
        finally:
            if imap is not None:
                try:
                    imap.logout()
                except Exception:  # noqa: BLE001 - what was filed stays filed
                    imap.shutdown()
        return done

    @api.model
    def _ally_smtp_remember(self, box, folder):
        """Keep the folder found (maybe again, after a rename) for next time."""
        if folder == box.sent_folder:
            return
        try:
            with self.env.cr.savepoint():
                box.sent_folder = folder
        except TransactionRollbackError:  # another run remembered it meanwhile
            box.invalidate_recordset(["sent_folder"])
        self._ally_smtp_commit()

    @api.model
    def _ally_smtp_claim(self, user, limit=1):
        """Take the next ready copies of ``user`` (at most ``limit``) for this
        run, or nothing.

        ``FOR UPDATE SKIP LOCKED`` keeps two runs off the same copy; the
        claim ('filing', the next attempt number, a retry time) is committed
        before anything is sent to IMAP. The copies come back with their
        attempt numbers in their context: the run that files one must still
        own it.
        """
        cr = self.env.cr
        now = fields.Datetime.now()
        while True:
            self._ally_smtp_commit()  # a fresh snapshot sees the others' claims
            self._ally_smtp_sql(
                SQL(
                    """SELECT c.id, c.state, c.attempts FROM ally_smtp_sent_copy c
                        WHERE c.user_id = %s AND %s
                        ORDER BY c.id
                        LIMIT %s
                          FOR UPDATE OF c SKIP LOCKED""",
                    user.id,
                    _condition(_READY),
                    limit,
                )
            )
            rows = cr.fetchall()
            if not rows:
                self._ally_smtp_commit()
                return self.browse()
            self.browse([row[0] for row in rows]).invalidate_recordset()
            copies = self.browse()
            interrupted = {r[0] for r in rows if r[1] == "filing"}
            for copy_id, state, attempts in rows:
                copy = self.browse(copy_id)
                if state == "filing" and attempts >= FILING_MAX_ATTEMPTS:
                    copy._ally_smtp_tired()
                else:
                    copies |= copy
            if not copies:
                self._ally_smtp_commit()
                continue
            attempts = {r[0]: r[2] for r in rows if r[0] in copies.ids}
            copies._ally_smtp_merge(
                {
                    copy.id: {
                        "state": "filing",
                        "attempts": attempts[copy.id] + 1,
                        "next_try": now + FILING_FIRST_DELAY * 2 ** attempts[copy.id],
                        "look_first": copy.look_first or copy.id in interrupted,
                    }
                    for copy in copies
                }
            )
            self._ally_smtp_commit()
            claimed = tuple((copy_id, n + 1) for copy_id, n in attempts.items())
            return copies.with_context(ally_smtp_attempts=claimed)

    def _ally_smtp_tired(self):
        """A copy whose filing was interrupted too often is given up."""
        _logger.warning(
            "ally_smtp: Sent copy %s for user %s not filed: interrupted %s times",
            self.message_id,
            self.user_id.id,
            self.attempts,
        )
        self.write(
            {
                "state": "failed",
                "last_error": _(
                    "Filing this copy was interrupted %(count)s times.",
                    count=self.attempts,
                ),
            }
        )

    def _ally_smtp_unclaim(self):
        """Give back claimed copies this run did not get to (time is up)."""
        if self:
            self._ally_smtp_sql(
                """UPDATE ally_smtp_sent_copy
                      SET state = 'pending', attempts = attempts - 1, next_try = %s
                    WHERE id = ANY(%s) AND state = 'filing'""",
                [fields.Datetime.now(), self.ids],
            )
            self.invalidate_recordset(["state", "attempts", "next_try"])

    def _ally_smtp_lock(self):
        """Lock the claimed copies that are still this run's and read the start
        of their messages: ``{copy id: (delivery id, size, head)}``.

        The row locks keep another run from taking a copy over while it is
        APPENDed (its claim query skips locked rows); a copy another run took
        over meanwhile is left out.
        """
        attempts = dict(self.env.context.get("ally_smtp_attempts", ()))
        self._ally_smtp_sql(
            _LOAD, [HEAD_CHUNK, self.ids, [attempts.get(i) for i in self.ids]]
        )
        return {row[0]: row[1:] for row in self.env.cr.fetchall()}

    def _ally_smtp_groups(self, loaded):
        """These copies in the groups they are APPENDed in: each run of
        messages read whole with the lock together, any other one alone."""
        groups, group = [], self.browse()
        for copy in self:
            delivery_id, size, _head = loaded[copy.id]
            if delivery_id is not None and size <= HEAD_CHUNK:
                group |= copy
                continue
            groups += [group, copy] if group else [copy]
            group = self.browse()
        return groups + [group] if group else groups

    def _ally_smtp_file(self, folder, mode, loaded, filed):
        """APPEND these claimed, locked copies, in one command when there are
        several; return those to add one at a time (the server refused them
        together, which adds none of them).

        The copies an earlier attempt may have filed (``look_first``), or that the
        provider may have filed itself (``auto``), are looked for first, all
        at once. ``filed`` gets the ``(copy id, state)`` of each copy filed.
        """
        look = self.filtered(lambda c: mode == "auto" or c.look_first)
        found = folder.find(look.mapped("message_id")) if look else set()
        messages = []
        for copy in self:
            if copy in look and copy.message_id in found:
                filed.append((copy.id, "done" if copy.look_first else "skipped"))
                continue
            date = copy.first_sent or fields.Datetime.now()
            raw = copy._ally_smtp_load(*loaded[copy.id])
            messages.append((copy, raw, date.replace(tzinfo=timezone.utc)))
        if len(messages) == 1:
            folder.append(*messages[0][1:])
        elif messages and not folder.append_many([m[1:] for m in messages]):
            return self.browse([m[0].id for m in messages])
        filed.extend((m[0].id, "done") for m in messages)
        return self.browse()

    @api.model
    def _ally_smtp_finish_sql(self, filed):
        """Mark what ``filed`` did not write yet as filed; drop their bytes."""
        now = fields.Datetime.now()
        todo, filed.written = filed[filed.written :], len(filed)
        queries = []
        for state in ("done", "skipped"):
            ids = [copy_id for copy_id, s in todo if s == state]
            if ids:
                queries.append(
                    SQL(
                        """UPDATE ally_smtp_sent_copy
                              SET state = %s, last_error = NULL,
                                  write_date = %s, write_uid = %s
                            WHERE id = ANY(%s)""",
                        state,
                        now,
                        self.env.uid,
                        ids,
                    )
                )
        ids = [copy_id for copy_id, _s in todo]
        # the bytes go; whom each delivery reached stays for later attempts of
        # its mail (``Ledger``), until ``_gc_reached``
        queries.append(
            SQL(
                """UPDATE ally_smtp_delivery SET raw = NULL
                    WHERE copy_id = ANY(%s) AND raw IS NOT NULL""",
                ids,
            )
        )
        self.invalidate_model(["state", "last_error", "write_date", "write_uid"])
        self.env["ally.smtp.delivery"].invalidate_model()
        self.invalidate_model(["delivery_ids"])
        return SQL("; ").join(queries)

    @api.model
    def _ally_smtp_finish(self, filed):
        if filed.written < len(filed):
            self._ally_smtp_sql(self._ally_smtp_finish_sql(filed))

    def _ally_smtp_filing_failed(self, user, exc, host, port):
        """Note why these copies (if any) were not filed: ``(kind, message)``.

        Those of them marked filed meanwhile (found in the folder, or added
        before the failure) stay so.
        """
        env = user.with_context(lang=user.lang).env
        kind, message = errors.classify(
            env, exc, host, port, user.sudo().ally_smtp_email, protocol="imap"
        )
        _logger.info("ally_smtp: Sent copy for user %s delayed: %s", user.id, exc)
        self.invalidate_recordset()
        for copy in self.filtered(lambda c: c.state == "filing"):
            given_up = kind == errors.PERMANENT or copy.attempts >= FILING_MAX_ATTEMPTS
            if given_up:
                _logger.warning(
                    "ally_smtp: Sent copy %s for user %s not filed: %s",
                    copy.message_id,
                    user.id,
                    exc,
                )
            copy.write(
                {
                    "state": "failed" if given_up else "pending",
                    "last_error": message,
                    # the APPEND may have reached the folder before the failure
                    "look_first": True,
                }
            )
        return kind, message

    @api.model
    def _ally_smtp_back_off(self, user, message):
        """After a failure of the mailbox itself, its other copies wait too."""
        now = fields.Datetime.now()
        self.search(
            [
                ("user_id", "=", user.id),
                ("state", "=", "pending"),
                ("next_try", "<=", now),
            ]
        ).write({"next_try": now + FILING_FIRST_DELAY, "last_error": message})

    def _ally_smtp_load(self, delivery_id, size, head):
        """The bytes to file: as sent, with every recipient in To and Cc.

        ``head`` is the start of the message (delivery ``delivery_id``, ``size``
        bytes). The rest is read from the database in pieces straight into
        its place, so that the message exists once in memory (imaplib makes
        one more copy).
        """
        cr = self.env.cr
        if delivery_id is None:
            raise mailbox.FolderMissing(_("The content of this copy was not kept."))

        def read(start, length):
            self._ally_smtp_sql(
                """SELECT substring(raw FROM %s FOR %s)
                     FROM ally_smtp_delivery WHERE id = %s""",
                [start + 1, length, delivery_id],
            )
            return cr.fetchone()[0]

        head = bytearray(head)
        pos = len(head)
        end = head.find(b"\r\n\r\n")
        while end < 0 and pos < size:
            head += read(pos, HEAD_CHUNK)
            pos = len(head)
            end = head.find(b"\r\n\r\n")
        if end < 0:
            end = len(head)
        header = _DROP.sub(b"", bytes(head[:end]) + b"\r\n").rstrip(b"\r\n")
        header += _header(b"To", _merge([self.recipients]))
        if self.cc:
            header += _header(b"Cc", _merge([self.cc]))
        message = bytearray(len(header) + size - end)
        message[: len(header)] = header
        filled = len(header) + len(head) - end
        message[len(header) : filled] = head[end:]
        del head
        while pos < size:
            chunk = read(pos, READ_CHUNK)
            message[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            pos += len(chunk)
        return message
