"""Replies come home, at agency scale: 20 consultants, each with 2,000
unrelated messages already in INBOX, then 10 new ones of which 2 are replies.

Prints the IMAP logins (Dovecot's log), the bytes read per unrelated message
(what the FETCH replies carried), the bodies read and the time per
consultant of the run that finds the new messages, and of the next one.
Asserted: one login per consultant and run, no unrelated body read, exactly
the 40 replies imported, and nothing old read by the next run.
"""

import email.utils
import os
import threading
import time
from collections import Counter
from email.message import EmailMessage
from unittest.mock import patch

from queue_bench import DovecotLog

from odoo import SUPERUSER_ID, api, modules
from odoo.tests import TransactionCase, new_test_user, tagged

from odoo.addons.ally_smtp.lib import mailbox, replies
from odoo.addons.ally_smtp.tests.common import Mailbox, SmtpServer, company_values
from odoo.addons.ally_smtp.tests.servers import harness

CONSULTANTS = 20
OLD = int(os.environ.get("ALLY_SMTP_BENCH_OLD", "2000"))  # unrelated, already there
NEW, REPLIES = 10, 2  # new messages per INBOX, and how many of them are replies
STUDENT = "student2@school.test"


def _message(sender, to, subject, answers=None):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.split("@")[1])
    if answers:
        msg["In-Reply-To"] = msg["References"] = answers
    msg.set_content(f"{subject}\n" + "A line of an ordinary private mail.\n" * 40)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class _Reads:
    """What the replies code reads from IMAP: header FETCH bytes and messages,
    bodies fetched (counted around ``lib/replies.Folder``, the real calls)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.header_bytes = self.headers = self.bodies = self.body_bytes = 0
        headers, body = replies.Folder.headers, replies.Folder.body
        reads = self

        def counted_headers(folder, start):
            typ_data = []
            fetch = folder.imap.uid

            def uid(*args):
                typ, data = fetch(*args)
                typ_data.append(data)
                return typ, data

            folder.imap.uid = uid
            try:
                result = headers(folder, start)
            finally:
                del folder.imap.uid
            size = sum(
                len(part)
                for data in typ_data
                for item in data or []
                for part in (item if isinstance(item, tuple) else (item,))
                if isinstance(part, bytes)
            )
            with reads.lock:
                reads.header_bytes += size
                reads.headers += len(result)
            return result

        def counted_body(folder, uid):
            raw = body(folder, uid)
            with reads.lock:
                reads.bodies += 1
                reads.body_bytes += len(raw or b"")
            return raw

        self.patches = [
            patch.object(replies.Folder, "headers", counted_headers),
            patch.object(replies.Folder, "body", counted_body),
        ]

    def __enter__(self):
        for p in self.patches:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self.patches:
            p.stop()


@tagged("post_install", "-at_install")
class BenchReplies(TransactionCase):
    def setUp(self):
        super().setUp()
        self.info = harness()
        self.smtp = SmtpServer(self.info)
        self.dovecot = DovecotLog(self.info)
        self.boxes = [f"consultant{i:02}@agency.test" for i in range(1, 21)]
        for box in self.boxes:
            Mailbox(self.info, box).purge()
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            company = env.ref("base.main_company")
            values = dict(company_values(self.info), ally_smtp_fetch_replies=True)
            saved = company.read(list(values))[0]
            saved.pop("id")
            company.write(values)
            student = env["res.partner"].create(
                {"name": "Bench Student", "email": STUDENT}
            )
            self.student_id = student.id
            users = env["res.users"]
            self.threads = {}
            for box in self.boxes:
                user = new_test_user(
                    env,
                    login=f"replies-{box.split('@')[0]}",
                    groups="base.group_user,base.group_partner_manager",
                    email=box,
                )
                user.with_user(user).write(
                    {
                        "ally_smtp_use_own": True,
                        "ally_smtp_email": box,
                        "ally_smtp_password": self.info["mailboxes"][box],
                    }
                )
                users |= user
                # what the consultant wrote to the student from Odoo
                message = student.with_user(user)._message_log(
                    body=f"Sent from Odoo by {box}", message_type="comment"
                )
                self.threads[box] = message.message_id
            self.user_ids = users.ids
        live = patch.object(modules.module, "current_test", False)
        with live, self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            for user in env["res.users"].browse(self.user_ids):
                user._ally_smtp_mailbox()._test()
        self.addCleanup(self._clean, saved)

    def _clean(self, saved):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            env.ref("base.main_company").write(saved)
            messages = env["mail.message"].search(
                [("model", "=", "res.partner"), ("res_id", "=", self.student_id)]
            )
            env["mail.mail"].search([("mail_message_id", "in", messages.ids)]).unlink()
            messages.unlink()
            users = env["res.users"].browse(self.user_ids)
            users._ally_smtp_mailbox().unlink()
            users.active = False
            env["res.partner"].browse(self.student_id).unlink()
        for box in self.boxes:
            Mailbox(self.info, box).purge()

    def _fill(self, box, raws):
        """APPEND ``raws`` to the INBOX of ``box`` as deliveries (unread), 500
        at once (MULTIAPPEND)."""
        imap = mailbox.imap_connect(
            self.info["imap"]["host"], self.info["imap"]["port"], timeout=60
        )
        try:
            imap.login(box, self.info["mailboxes"][box])
            for i in range(0, len(raws), 500):
                now = time.time()
                typ, data = imap.multiappend(
                    '"INBOX"', "()", [(raw, now) for raw in raws[i : i + 500]]
                )
                assert typ == "OK", data
        finally:
            imap.logout()

    def _run(self):
        """One run of the replies cron as the cron runs it (a thread of its
        own, committing): ``(seconds, reads, logins)``."""
        result = {}

        def work():
            with self.registry.cursor() as cr:
                env = api.Environment(cr, SUPERUSER_ID, {})
                start = time.perf_counter()
                env["ally.smtp.mailbox"]._ally_smtp_fetch_replies()
                result["seconds"] = time.perf_counter() - start

        mark = self.dovecot.mark()
        with _Reads() as reads, patch.object(modules.module, "current_test", False):
            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
        return result["seconds"], reads, self.dovecot.logins(mark)

    def _imported(self):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            return env["mail.message"].search_count(
                [
                    ("model", "=", "res.partner"),
                    ("res_id", "=", self.student_id),
                    ("message_type", "=", "email"),
                ]
            )

    def _unseen(self, box):
        with Mailbox(self.info, box).connect() as imap:
            imap.select("INBOX", readonly=True)
            _typ, data = imap.uid("SEARCH", "SEEN")
        return not data[0]

    def test_bench_replies(self):
        started = time.perf_counter()
        for n, box in enumerate(self.boxes):
            old = [
                _message("someone@else.test", box, f"old {n}-{i}") for i in range(OLD)
            ]
            self._fill(box, old)
        fill = time.perf_counter() - started
        # the first run ever: a bounded window of each INBOX, then the marks
        first, first_reads, first_logins = self._run()
        self.assertEqual(first_reads.bodies, 0)
        self.assertLessEqual(first_reads.headers, CONSULTANTS * replies.RESCAN)
        for box in self.boxes:
            new = [
                _message("someone@else.test", box, f"new {i}")
                for i in range(NEW - REPLIES)
            ]
            new += [
                _message(STUDENT, box, f"Re: reply {i}", answers=self.threads[box])
                for i in range(REPLIES)
            ]
            self._fill(box, new)
        seconds, reads, logins = self._run()
        imported = self._imported()
        again, again_reads, again_logins = self._run()
        unrelated = reads.headers - reads.bodies
        print(
            f"\nReplies: {CONSULTANTS} consultants x {OLD} unrelated messages in "
            f"INBOX (filled in {fill:.1f} s), then {NEW} new each, {REPLIES} of "
            "them replies\n"
            "%-34s %7s %8s %8s %8s %9s %9s"
            % (
                "run",
                "logins",
                "headers",
                "bodies",
                "seconds",
                "s/consult",
                "hdr B/msg",
            )
        )
        for label, secs, rd, lg in (
            ("first run (window of each INBOX)", first, first_reads, first_logins),
            ("run with the new messages", seconds, reads, logins),
            ("next run (nothing new)", again, again_reads, again_logins),
        ):
            per = (rd.header_bytes / rd.headers) if rd.headers else 0
            print(
                "%-34s %7d %8d %8d %8.2f %9.3f %9.0f"
                % (
                    label,
                    sum(lg.values()),
                    rd.headers,
                    rd.bodies,
                    secs,
                    secs / CONSULTANTS,
                    per,
                )
            )
        print(
            f"imported: {imported} replies; bodies read: {reads.body_bytes} bytes "
            f"for {reads.bodies} replies; header FETCH replies: "
            f"{reads.header_bytes} bytes for {reads.headers} messages "
            f"({unrelated} unrelated)"
        )
        self.assertEqual(dict(logins), dict.fromkeys(self.boxes, 1))
        self.assertEqual(dict(again_logins), dict.fromkeys(self.boxes, 1))
        # no unrelated body read; the new messages' headers only
        self.assertEqual(reads.bodies, CONSULTANTS * REPLIES)
        self.assertEqual(reads.headers, CONSULTANTS * NEW)
        self.assertEqual(imported, CONSULTANTS * REPLIES)
        # the next run reads nothing old
        self.assertEqual((again_reads.headers, again_reads.bodies), (0, 0))
        self.assertEqual(self._imported(), imported)
        self.assertTrue(all(self._unseen(box) for box in self.boxes))
        self.assertFalse(Counter(first_logins) - Counter(dict.fromkeys(self.boxes, 1)))
