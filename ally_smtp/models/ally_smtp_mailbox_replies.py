import logging
import threading
import time
import zlib
from datetime import timedelta

from psycopg2.errors import TransactionRollbackError

from odoo import api, fields, models, modules
from odoo.tools import config

from ..lib import errors, mailbox, replies
from .mail_thread import FROM_SENT, SENT_FOLDER

_logger = logging.getLogger(__name__)

# pg_try_advisory_lock(REPLIES_LOCK, mailbox id): one run reads a mailbox
REPLIES_LOCK = zlib.crc32(b"ally_smtp.replies") & 0x7FFFFFFF
# after a failure a mailbox is read again after this, doubled each time
REPLIES_FIRST_DELAY = timedelta(minutes=5)
REPLIES_LONGEST_DELAY = timedelta(days=1)
# messages passed over (not replies) committed with their watermark at once
PASS_BATCH = 200
# a reply Odoo's mail gateway refuses is tried by this many runs, then passed
IMPORT_TRIES = 3


def _time_budget():
    """Seconds a run may read mailboxes, well inside the cron's time limit."""
    limit = config.get("limit_time_real_cron") or 0
    if limit <= 0:
        limit = config.get("limit_time_real") or 0
    return max(5.0, limit / 12) if limit > 0 else 60.0


def _testing():
    """Tests run in one transaction that must not be committed."""
    return getattr(threading.current_thread(), "testing", False)


class AllySmtpMailbox(models.Model):
    """Replies come home: the answers to mail sent from a consultant's
    mailbox, found in its INBOX (the student's) and its Sent folder (the
    consultant's own, written in their mail client), are handed to Odoo's
    mail gateway, which threads them on their record.

    Nothing else of the mailbox is read: folders are EXAMINEd (read-only),
    only three headers of each new message are read, and a body only when
    In-Reply-To/References name a message Odoo has on a record. A watermark
    per folder (``ally.smtp.reply.mark``) makes each message looked at once.
    """

    _inherit = "ally.smtp.mailbox"  # pylint: disable=consider-merging-classes-inherited

    reply_status_ids = fields.One2many(
        "ally.smtp.reply.status", "mailbox_id", readonly=True
    )
    replies_checked_at = fields.Datetime(
        "Replies last checked", compute="_compute_replies"
    )
    replies_error = fields.Text(
        "Replies: why the last check failed", compute="_compute_replies"
    )
    replies_error_kind = fields.Char(compute="_compute_replies")
    replies_failures = fields.Integer(compute="_compute_replies")
    replies_imported = fields.Integer("Replies brought in", compute="_compute_replies")
    reply_mark_ids = fields.One2many(
        "ally.smtp.reply.mark", "mailbox_id", readonly=True
    )

    @api.depends(
        "reply_status_ids.checked_at",
        "reply_status_ids.error",
        "reply_status_ids.error_kind",
        "reply_status_ids.failures",
        "reply_status_ids.imported",
    )
    def _compute_replies(self):
        for box in self:
            status = box.sudo().reply_status_ids[:1]
            box.replies_checked_at = status.checked_at
            box.replies_error = status.error
            box.replies_error_kind = status.error_kind
            box.replies_failures = status.failures
            box.replies_imported = status.imported

    # -- the cron ----------------------------------------------------------------
    @api.model
    def _ally_smtp_fetch_replies(self):
        """Cron: bring the new replies of every mailbox in use into Odoo, one
        IMAP session per mailbox, until a time budget is spent."""
        if modules.module.current_test:  # other modules' tests stay offline
            return
        deadline = time.monotonic() + _time_budget()
        boxes = self._replies_due()
        for position, box in enumerate(boxes):
            if position and time.monotonic() >= deadline:
                self.env["ir.cron"]._notify_progress(
                    done=position, remaining=len(boxes) - position
                )
                return
            box._replies_run()

    @api.model
    def _replies_due(self):
        """Mailboxes whose replies are read now: in use and working, not
        paused, of a company that asked for it; after a failure, once its
        delay passed (a refused password: once the owner tested it again)."""
        now = fields.Datetime.now()
        boxes = self.sudo().search(
            [
                ("use_own", "=", True),
                ("state", "=", "ok"),
                "|",
                ("paused_until", "=", False),
                ("paused_until", "<=", now),
                ("company_id.ally_smtp_fetch_replies", "=", True),
                ("company_id.ally_smtp_imap_host", "!=", False),
            ],
        )
        boxes = boxes.filtered(
            lambda box: box._replies_ready(now) and not box._unusable()[1]
        )
        # the longest unchecked first: a run cut short by its time budget
        # leaves the others for the next one
        return boxes.sorted(lambda box: (box.replies_checked_at or now.min, box.id))

    def _replies_ready(self, now):
        if not self.replies_failures:
            return True
        if self.replies_error_kind in (errors.AUTH, errors.RECONNECT):
            # never again with a refused password (many refused logins get
            # the agency's server blocked) until its owner's Test or Connect
            return bool(self.tested_at and self.tested_at >= self.replies_checked_at)
        delay = min(
            REPLIES_FIRST_DELAY * 2 ** (self.replies_failures - 1),
            REPLIES_LONGEST_DELAY,
        )
        return self.replies_checked_at + delay <= now

    def _replies_run(self):
        """Read this mailbox's new messages once, under its lock: INBOX, then
        the Sent folder. Returns how many messages were brought in, or
        ``None`` when another run holds the mailbox."""
        self.ensure_one()
        box = self.sudo()
        cr = self.env.cr
        cr.execute("SELECT pg_try_advisory_lock(%s, %s)", [REPLIES_LOCK, box.id])
        if not cr.fetchone()[0]:
            return None
        # this transaction's snapshot may predate the commits of the run that
        # held the mailbox until now (a new mark, a moved watermark): the
        # session lock stays, the snapshot starts afresh
        self._replies_commit()
        company = box.company_id
        imap, imported = None, 0
        try:
            imap = company._ally_smtp_open_imap()
            box._sign_in_imap(imap)
            folders = [("INBOX", False)]
            sent = box.sent_folder or mailbox.find_sent(imap)
            if sent:
                folders.append((sent, True))
            for name, own in folders:
                imported += box._replies_folder(imap, name, own)
            box._replies_note(imported=imported)
        except TransactionRollbackError as exc:
            self._replies_rollback()
            _logger.info("ally_smtp: replies of user %s: %s", box.user_id.id, exc)
        except Exception as exc:  # noqa: BLE001 - noted on the mailbox, retried
            self._replies_rollback()
            box._replies_failed(exc, imported)
        finally:
            if imap is not None:
                try:
                    imap.logout()
                except Exception:  # noqa: BLE001 - what was imported stays
                    imap.shutdown()
            cr.execute("SELECT pg_advisory_unlock(%s, %s)", [REPLIES_LOCK, box.id])
        return imported

    def _replies_folder(self, imap, name, own):
        """Bring in the replies among ``name``'s messages since its mark;
        ``own``: the Sent folder, whose replies are the owner's."""
        Mark = self.env["ally.smtp.reply.mark"].sudo()
        mark = Mark.search([("mailbox_id", "=", self.id), ("folder", "=", name)])
        try:
            folder = replies.Folder(imap, name)
        except replies.FolderGone:
            if name == "INBOX":
                raise
            return 0  # a Sent folder gone: found again at the next Test
        start = folder.start(mark.uidvalidity, mark.last_uid or None)
        if mark.uidvalidity and mark.uidvalidity != folder.uidvalidity:
            _logger.info(
                "ally_smtp: folder %s of user %s was renumbered (UIDVALIDITY); "
                "its last %s messages are looked at again",
                name,
                self.user_id.id,
                replies.RESCAN,
            )
        headers = folder.headers(start)
        if not headers:
            if mark.uidvalidity != folder.uidvalidity:  # new, or renumbered
                last = max(start, folder.uidnext) - 1
                self._replies_mark(mark, name, folder.uidvalidity, last)
                self._replies_commit()
            return 0
        known, existing = self._replies_known(headers)
        Thread = self.env["mail.thread"].sudo()
        if own:
            Thread = Thread.with_context(**{FROM_SENT: SENT_FOLDER})
        imported = passed = 0
        for uid, message_id, answers in headers:
            if message_id not in existing and known.intersection(answers):
                raw = folder.body(uid)
                problem = raw and self._replies_import(Thread, raw)
                if problem and not self._replies_give_up(
                    mark, name, folder.uidvalidity, uid, problem
                ):
                    # the mark stays before it: the next run tries it again
                    self._replies_commit()
                    raise errors.MailboxError(errors.TEMPORARY, problem)
                imported += bool(raw and not problem)
                passed = PASS_BATCH  # committed with this message
            mark = self._replies_mark(mark, name, folder.uidvalidity, uid)
            passed += 1
            if passed >= PASS_BATCH:
                self._replies_commit()
                passed = 0
        self._replies_commit()
        return imported

    def _replies_known(self, headers):
        """``(answered, existing)``: the Message-IDs named by ``headers`` that
        are messages on a record, and the messages' own Message-IDs that Odoo
        has already (its own mail, filed in Sent; a reply it got before)."""
        named = {m for _uid, _own, answers in headers for m in answers}
        own = {message_id for _uid, message_id, _answers in headers if message_id}
        Message = self.env["mail.message"].sudo().with_context(active_test=False)
        answered = set(
            Message.search(
                [
                    ("message_id", "in", list(named)),
                    ("model", "!=", False),
                    ("res_id", "!=", False),
                ]
            ).mapped("message_id")
            if named
            else ()
        )
        existing = set(
            Message.search([("message_id", "in", list(own))]).mapped("message_id")
            if own
            else ()
        )
        return answered, existing

    def _replies_import(self, Thread, raw):
        """Hand one message to Odoo's mail gateway, which threads it on its
        record by In-Reply-To/References and skips a Message-ID it has.
        Returns why it failed, or ``False``."""
        try:
            with self.env.cr.savepoint():
                Thread.message_process(False, raw)
        except TransactionRollbackError:
            raise
        except Exception as exc:  # noqa: BLE001 - noted, tried again
            return self.env._(
                "A reply could not be brought into Odoo: %(error)s", error=exc
            )
        return False

    def _replies_give_up(self, mark, folder, uidvalidity, uid, problem):
        """Whether to pass over message ``uid``, refused ``IMPORT_TRIES``
        times; else note one more refusal on the mark (saved by the caller)."""
        tries = mark.stuck_tries + 1 if mark.stuck_uid == str(uid) else 1
        if tries >= IMPORT_TRIES:
            _logger.warning(
                "ally_smtp: message %s of folder %s of user %s passed over after "
                "%s attempts: %s",
                uid,
                folder,
                self.user_id.id,
                tries,
                problem,
            )
            if mark:
                mark.write({"stuck_uid": False, "stuck_tries": 0})
            return True
        if not mark:
            mark = self._replies_mark(mark, folder, uidvalidity, uid - 1)
        mark.write({"stuck_uid": str(uid), "stuck_tries": tries})
        return False

    def _replies_mark(self, mark, folder, uidvalidity, uid):
        values = {"uidvalidity": uidvalidity, "last_uid": str(uid)}
        if mark:
            mark.write(values)
            return mark
        return mark.create({"mailbox_id": self.id, "folder": folder, **values})

    def _replies_note(self, imported=0, error=False, kind=False):
        """Note the end of a look at this mailbox, on its status row."""
        status = self.sudo().reply_status_ids[:1]
        values = {
            "checked_at": fields.Datetime.now(),
            "error": error,
            "error_kind": kind,
            "failures": status.failures + 1 if error else 0,
            "imported": status.imported + imported,
        }
        if status:
            status.write(values)
        else:
            status.create({"mailbox_id": self.id, **values})
        self._replies_commit()

    def _replies_failed(self, exc, imported):
        """Note why the mailbox could not be read; sending goes on as it is."""
        company = self.company_id
        user = self.user_id
        env = self.with_context(lang=user.lang).env
        kind, message = errors.classify(
            env,
            exc,
            (company.ally_smtp_imap_host or "").strip(),
            company.ally_smtp_imap_port,
            self.address,
            protocol="imap",
        )
        _logger.info("ally_smtp: replies of user %s not read: %s", user.id, message)
        self.invalidate_recordset()
        self._replies_note(imported=imported, error=message, kind=kind)

    def _replies_commit(self):
        if not _testing():
            self.env.cr.commit()  # pylint: disable=invalid-commit

    def _replies_rollback(self):
        if not _testing():
            self.env.cr.rollback()
