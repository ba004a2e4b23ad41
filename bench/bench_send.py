"""Queue-run speed and memory: ally_smtp's personal path against stock Odoo.

``make bench`` runs it on the harness servers and prints tables; nothing is
asserted about time or memory (tests never do).
"""

import ctypes
import gc
import statistics
import threading
import time
from unittest.mock import patch

from odoo import SUPERUSER_ID, Command, api, modules
from odoo.tests import TransactionCase, new_test_user, tagged

from odoo.addons.ally_smtp.tests.common import (
    AllySmtpCase,
    Mailbox,
    SmtpServer,
    company_values,
    harness,
)
from odoo.addons.ally_smtp.tests.servers import agency_server_values

MAILS = 500
ROUNDS = 12  # four full rotations of the three paths
BIG = 20 * 1024 * 1024  # the attachment of the memory benchmark


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_growth(function):
    """How far ``function`` raises this process's peak resident memory.

    Large buffers are always mmap'ed (fixed threshold), so that what a
    step frees leaves the process and the next step is measured from zero.
    """
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    gc.collect()
    libc.malloc_trim(0)
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current size
    function()
    return _status("VmHWM") - base


@tagged("post_install", "-at_install")
class BenchMemory(AllySmtpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.agency_server()  # stock Odoo's path: the agency's ir.mail_server
        cls.plain = new_test_user(
            cls.env,
            login="plain",
            groups="base.group_user,base.group_partner_manager",
            email="c@agency.test",
        )
        cls.partner = cls.env["res.partner"].create(
            {"name": "Bench Student", "email": "student2@school.test"}
        )

    def setUp(self):
        super().setUp()
        self.smtp.deliver(False)  # a fast server: what is timed is Odoo
        self.addCleanup(self.smtp.deliver, True)

    def _queue(self, user, count, attachments=()):
        messages = (
            self.env["mail.message"]
            .with_user(user)
            .create(
                [
                    {
                        "model": "res.partner",
                        "res_id": self.partner.id,
                        "body": f"bench {i}",
                        "subject": f"bench {i}",
                        "author_id": user.partner_id.id,
                        "email_from": user.email_formatted,
                        "message_type": "comment",
                    }
                    for i in range(count)
                ]
            )
        )
        return (
            self.env["mail.mail"]
            .with_user(user)
            .sudo()
            .create(
                [
                    {
                        "mail_message_id": message.id,
                        "recipient_ids": [Command.link(self.partner.id)],
                        "body_html": f"<p>{message.body}</p>",
                        "attachment_ids": [Command.set(attachments)],
                    }
                    for message in messages
                ]
            )
        )

    def test_bench_memory(self):
        data = bytes(range(256)) * (BIG // 256)
        attachment = self.env["ir.attachment"].create(
            {"name": "big.bin", "raw": data, "res_model": "res.partner"}
        )
        del data
        self.alice_box = Mailbox(self.harness, "alice@agency.test")
        self.alice_box.purge()
        rows = []
        for label, user, copies in [
            ("stock Odoo: send", self.plain, "never"),
            ("ally_smtp, copies never: send", self.alice, "never"),
            ("ally_smtp, copies always: send", self.alice, "always"),
        ]:
            self.company.ally_smtp_sent_copy = copies
            self.smtp.reset()
            self.smtp.deliver(False)
            mail = self._queue(user, 1, attachment.ids)
            message_id = mail.message_id
            self.env.flush_all()
            with self.live():
                growth = peak_growth(self.env["mail.mail"].process_email_queue)
            size = len(self.smtp.messages()[0]["data"])
            rows.append((label, growth, size))
        Copy = self.env["ally.smtp.sent.copy"]
        with self.live():
            growth = peak_growth(Copy._ally_smtp_process)
        copy = Copy.search([("message_id", "=", message_id)])
        assert copy.state == "done", copy.last_error
        rows.append(("ally_smtp: file the copy", growth, copy.size))
        self.alice_box.purge()
        print(
            f"\nOne mail with a {BIG // 2**20} MB attachment: peak memory growth\n"
            "%-32s %10s %12s %8s" % ("step", "growth MB", "message MB", "ratio")
        )
        for label, growth, size in rows:
            print(
                "%-32s %10.1f %12.1f %7.2fx"
                % (label, growth / 2**20, size / 2**20, growth / size)
            )


@tagged("post_install", "-at_install")
class BenchQueueRun(TransactionCase):
    """500 queued mails sent by the mail cron's method as in production: in a
    thread of its own, committing after every mail (tests never commit)."""

    def setUp(self):
        super().setUp()
        self.info = harness()
        self.smtp = SmtpServer(self.info)
        self.smtp.reset()
        self.smtp.deliver(False)  # a fast server: what is timed is Odoo
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            company = env.ref("base.main_company")
            values = company_values(self.info)
            saved = company.read(list(values))[0]
            saved.pop("id")
            company.write(values)
            server = env["ir.mail_server"].create(
                agency_server_values(self.info, "agency (bench)")
            )
            admin = env.ref("base.user_admin")
            admin.with_user(admin).write(
                {
                    "ally_smtp_use_own": True,
                    "ally_smtp_email": "alice@agency.test",
                    "ally_smtp_password": self.info["mailboxes"]["alice@agency.test"],
                }
            )
            partner = env["res.partner"].create(
                {"name": "Bench Student", "email": "student2@school.test"}
            )
            # stock Odoo's path: mail created by the superuser (no mailbox)
            self.stock_uid, self.personal_uid = SUPERUSER_ID, admin.id
            self.partner_id, ids = partner.id, (server.id, company.id)
        self.addCleanup(self._clean, saved, *ids)

    def _clean(self, saved, server_id, company_id):
        self.smtp.deliver(True)
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            messages = env["mail.message"].search(
                [("model", "=", "res.partner"), ("res_id", "=", self.partner_id)]
            )
            env["mail.mail"].search([("mail_message_id", "in", messages.ids)]).unlink()
            messages.unlink()
            env["ally.smtp.sent.copy.part"].search(
                [("user_id", "=", self.personal_uid)]
            ).unlink()
            env["ally.smtp.sent.copy"].search(
                [("user_id", "=", self.personal_uid)]
            ).unlink()
            env["res.users"].browse(self.personal_uid).write(
                {
                    "ally_smtp_use_own": False,
                    "ally_smtp_email": False,
                    "ally_smtp_password_crypt": False,
                }
            )
            env["ir.mail_server"].browse(server_id).unlink()
            env["res.partner"].browse(self.partner_id).unlink()
            env["res.company"].browse(company_id).write(saved)

    def _run(self, uid, copies, count):
        """Queue ``count`` mails of ``uid``, then time one queue run."""
        result = {}

        def work():
            with self.registry.cursor() as cr:
                env = api.Environment(cr, SUPERUSER_ID, {})
                env.ref("base.main_company").ally_smtp_sent_copy = copies
                user = env["res.users"].browse(uid)
                messages = (
                    env["mail.message"]
                    .with_user(user)
                    .create(
                        [
                            {
                                "model": "res.partner",
                                "res_id": self.partner_id,
                                "body": f"bench {i}",
                                "subject": f"bench {i}",
                                "author_id": user.partner_id.id,
                                "email_from": user.email_formatted,
                                "message_type": "comment",
                            }
                            for i in range(count)
                        ]
                    )
                )
                env["mail.mail"].with_user(user).sudo().create(
                    [
                        {
                            "mail_message_id": message.id,
                            "recipient_ids": [Command.link(self.partner_id)],
                            "body_html": f"<p>{message.body}</p>",
                        }
                        for message in messages
                    ]
                )
                cr.commit()
                queries = cr.sql_log_count
                start = time.perf_counter()
                env["mail.mail"].process_email_queue()
                result["seconds"] = time.perf_counter() - start
                result["queries"] = (cr.sql_log_count - queries) / count

        self.smtp.reset()
        self.smtp.deliver(False)
        thread = threading.Thread(target=work)  # not a test thread: it commits
        with patch.object(modules.module, "current_test", False):
            thread.start()
            thread.join()
        assert len(self.smtp.messages()) == count, len(self.smtp.messages())
        return result["seconds"], result["queries"]

    def test_bench_queue_run(self):
        paths = [
            ("stock Odoo (agency server)", self.stock_uid, "never"),
            ("ally_smtp, copies never", self.personal_uid, "never"),
            ("ally_smtp, copies always", self.personal_uid, "always"),
        ]
        for _label, uid, copies in paths:  # warm the caches
            self._run(uid, copies, 20)
        results = {label: [] for label, _uid, _copies in paths}
        queries = {}
        for rnd in range(ROUNDS):  # the order rotates from round to round
            for label, uid, copies in paths[rnd % 3 :] + paths[: rnd % 3]:
                seconds, queries[label] = self._run(uid, copies, MAILS)
                results[label].append(seconds)
        stock = results[paths[0][0]]
        print(
            f"\n{MAILS} mails per queue run (a commit per mail), {ROUNDS} rounds; "
            "speed against stock Odoo in the same round (median, range)\n"
            "%-28s %9s %9s %20s %12s"
            % ("path", "seconds", "mails/s", "vs stock", "queries/mail")
        )
        for label, _uid, _copies in paths:
            seconds = statistics.median(results[label])
            ratios = sorted(a / b for a, b in zip(stock, results[label], strict=True))
            print(
                "%-28s %9.2f %9.1f %7.2fx (%.2f-%.2f) %12.1f"
                % (
                    label,
                    seconds,
                    MAILS / seconds,
                    statistics.median(ratios),
                    ratios[0],
                    ratios[-1],
                    queries[label],
                )
            )
