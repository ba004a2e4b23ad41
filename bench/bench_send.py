"""Queue-run speed and memory: ally_smtp's personal path against stock Odoo.

``make bench`` runs it on the harness servers and prints tables; nothing is
asserted about time or memory (tests never do).
"""

import cProfile
import ctypes
import gc
import json
import os
import pstats
import statistics
from collections import Counter, defaultdict
from unittest.mock import patch

from queue_bench import (
    ALICE,
    MAILS,
    ROUNDS,
    PersonalBench,
    QueueBench,
    _print_rows,
    _range,
    _timed,
    queue_mails,
)

from odoo import SUPERUSER_ID, api
from odoo.tests import new_test_user, tagged

from odoo.addons.ally_smtp.models.ally_smtp_delivery import AllySmtpDelivery
from odoo.addons.ally_smtp.tests.common import AllySmtpCase, Mailbox

CONSULTANTS, PER_USER = 20, 100  # the agency-scale run
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
        return queue_mails(self.env, user, self.partner.id, count, attachments)

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
            # as a queue run in a new worker: the attachment is read again
            self.env.invalidate_all()
            with self.live():
                growth = peak_growth(self.env["mail.mail"].process_email_queue)
            size = len(self.smtp.messages()[0]["data"])
            rows.append((label, growth, size))
        Copy = self.env["ally.smtp.sent.copy"]
        self.env.invalidate_all()
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
class BenchQueueRun(PersonalBench):
    """500 mails of one user per queue run; stock Odoo, the personal path, the
    Sent-copy filing and the raw protocol floors, round after round.

    A round sends with the three paths one right after the other, in an
    order that rotates from round to round, and only then files the copies
    and runs the floors: the runs compared are as close in time as they can
    be, and none follows the IMAP work of filing more often than another.
    """

    def test_bench_queue_run(self):
        stock, never, always = (
            "stock Odoo (agency server)",
            "ally_smtp, copies never",
            "ally_smtp, copies always",
        )
        floor, filing, append = (
            "raw smtplib, one connection",
            "ally_smtp Sent-copy cron",
            "raw imaplib APPEND, 1 login",
        )
        bookkeeping = "Sent copy bookkeeping"
        paths = {
            stock: (self.stock_uid, "never"),
            never: (self.personal_uid, "never"),
            always: (self.personal_uid, "always"),
        }
        for uid, copies in paths.values():  # warm the caches
            self._run(uid, copies, 20)
        self._file()
        self.box.purge()
        seconds = defaultdict(list)
        queries, smtp_logins, imap_logins = {}, {}, {}
        raws, filing_runs = None, []
        # what the Sent copy adds to the send transaction, timed from inside
        record, spent = _timed(AllySmtpDelivery, "_ally_smtp_record")

        def send(label):
            nonlocal raws
            uid, copies = paths[label]
            before = sum(spent)
            with record:
                secs, queries[label], smtp_logins[label], sent = self._run(
                    uid, copies, MAILS
                )
            seconds[label].append(secs)
            if label == always:
                raws = sent
                seconds[bookkeeping].append(sum(spent) - before)

        def file_copies():
            secs, queries[filing], logins, runs = self._file_all()
            filing_runs.append(runs)
            imap_logins[filing] = Counter({ALICE: 1}) if runs == 1 else logins
            seconds[filing].append(secs)
            self.box.purge()

        def append_floor():
            secs, imap_logins[append] = self.imap_floor(ALICE, raws)
            seconds[append].append(secs)
            self.box.purge()

        order = [stock, never, always]
        for rnd in range(ROUNDS):
            for label in order[rnd % 3 :] + order[: rnd % 3]:
                send(label)
            # the filing of this round's copies and the APPEND floor of the
            # same messages, one after the other in turns
            steps = [file_copies, append_floor]
            for step in steps if rnd % 2 else steps[::-1]:
                step()
            secs, smtp_logins[floor] = self.smtp_floor(ALICE, raws)
            seconds[floor].append(secs)
        print(
            f"\n{MAILS} mails per queue run (a commit per mail), {ROUNDS} rounds, "
            "fast local SMTP server (no delivery); speed against stock Odoo in the "
            "same round: median (range)\n"
            "%-28s %8s %8s %20s %9s %6s"
            % ("path", "seconds", "mails/s", "vs stock", "queries", "SMTP")
        )
        rows = (floor, stock, never, always)
        _print_rows(rows, seconds, seconds[stock], queries, smtp_logins)
        per_mail = [t / MAILS for t in seconds[stock]]
        shares = [
            a / b for a, b in zip(seconds[bookkeeping], seconds[stock], strict=True)
        ]
        print(
            "Time spent recording whom each mail reached, with its Sent copy, "
            "on the ledger's connection (one INSERT per mail, in the 'always' "
            "runs): %.2f ms per mail, %.1f %% "
            "(%.1f-%.1f) of stock Odoo's %.2f ms per mail in the same round"
            % (
                1000 * statistics.median(seconds[bookkeeping]) / MAILS,
                *(100 * value for value in _range(shares)),
                1000 * statistics.median(per_mail),
            )
        )
        print(
            f"\nFiling the {MAILS} Sent copies of each 'always' round (one cron run) "
            "against a raw APPEND loop of the same messages\n"
            "%-28s %8s %8s %20s %9s %6s"
            % ("path", "seconds", "copies/s", "vs raw APPEND", "queries", "IMAP")
        )
        _print_rows((append, filing), seconds, seconds[append], queries, imap_logins)
        if max(filing_runs) > 1:
            print(
                f"(filing runs per round, stopped at their time budget: {filing_runs})"
            )
        if os.environ.get("ALLY_SMTP_BENCH_ROUNDS_JSON"):
            with open(os.environ["ALLY_SMTP_BENCH_ROUNDS_JSON"], "w") as f:
                json.dump(seconds, f)
        self.assertEqual(dict(smtp_logins[stock]), {"carol@agency.test": 1})
        for label in (never, always, floor):
            self.assertEqual(dict(smtp_logins[label]), {ALICE: 1})
        self.assertEqual(dict(imap_logins[append]), {ALICE: 1})


@tagged("post_install", "-at_install")
class BenchAgency(QueueBench):
    """An agency's queue: 20 consultants x 100 mails in one queue run, copies
    'always', then one filing run: one SMTP and one IMAP login per consultant."""

    def setUp(self):
        super().setUp()
        self.boxes = [f"consultant{i:02}@agency.test" for i in range(1, 21)]
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            env.ref("base.main_company").ally_smtp_sent_copy = "always"
            params = env["ir.config_parameter"]
            saved = params.get_param("mail.mail.queue.batch.size")
            # one queue run takes all 2,000 mails (Odoo takes 1,000 by default)
            params.set_param("mail.mail.queue.batch.size", CONSULTANTS * PER_USER)
            users = env["res.users"]
            for box in self.boxes:
                user = new_test_user(
                    env,
                    login=box.split("@")[0],
                    groups="base.group_user,base.group_partner_manager",
                    email=box,
                )
                self._personal(env, user, box)
                users |= user
            self.user_ids = users.ids
        self.addCleanup(self._clean, saved)

    def _clean(self, saved):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            env["ir.config_parameter"].set_param("mail.mail.queue.batch.size", saved)
            users = env["res.users"].browse(self.user_ids)
            users._ally_smtp_mailbox().unlink()
            users.active = False
        for box in self.boxes:
            Mailbox(self.info, box).purge()

    def test_bench_agency(self):
        def queue(env):
            for user in env["res.users"].browse(self.user_ids):
                self._queue(env, user, PER_USER)
            return CONSULTANTS * PER_USER

        mails = CONSULTANTS * PER_USER
        seconds, queries, smtp = self._send(queue)
        sent = len(self.smtp.messages())
        # one cron run given the time for the whole backlog (with Odoo's
        # default limit_time_real a run stops after 10 s and the cron goes on)
        Copy = type(self.env["ally.smtp.sent.copy"])
        with patch.object(Copy, "_ally_smtp_time_budget", lambda self: 300):
            filing, filed, per_copy, imap = self._file()
        print(
            f"\nAgency scale: {CONSULTANTS} consultants x {PER_USER} mails in one "
            "queue run (copies 'always'), then one Sent-copy cron run\n"
            "%-28s %8s %8s %8s %9s %6s"
            % ("step", "mails", "seconds", "per s", "queries", "logins")
        )
        print(
            "%-28s %8d %8.2f %8.1f %9.1f %6d"
            % ("send (SMTP)", sent, seconds, sent / seconds, queries, smtp.total())
        )
        print(
            "%-28s %8d %8.2f %8.1f %9.1f %6d"
            % (
                "file the copies (IMAP)",
                filed,
                filing,
                filed / filing,
                per_copy,
                imap.total(),
            )
        )
        self.assertEqual(sent, mails)
        self.assertEqual(filed, mails)
        self.assertEqual(dict(smtp), dict.fromkeys(self.boxes, 1))
        self.assertEqual(dict(imap), dict.fromkeys(self.boxes, 1))


@tagged("post_install", "-at_install")
class BenchFiling(PersonalBench):
    """Only the filing: the copies of one 'always' queue run of 500 mails are
    filed again round after round (their deliveries restored as the send path
    left them), in turns with the raw APPEND loop of the same messages: in mode
    'always', and in mode 'auto' where each copy is looked for first (the
    provider filed none of them).

    ALLY_SMTP_BENCH_PROFILE=<file> also profiles one more filing run (cProfile,
    'always') and writes its statistics there.
    """

    def _save_deliveries(self):
        with self.registry.cursor() as cr:
            cr.execute(
                # the deliveries the send path just left: filed ones stay, without
                # their bytes, as the record of whom their mail reached
                "CREATE TABLE ally_smtp_bench_deliveries AS "
                "SELECT * FROM ally_smtp_delivery WHERE copy_id IS NULL"
            )
        self.addCleanup(self._drop_deliveries)

    def _drop_deliveries(self):
        with self.registry.cursor() as cr:
            cr.execute("DROP TABLE IF EXISTS ally_smtp_bench_deliveries")

    def _restore_deliveries(self, mode):
        """The copies as the send path left them: deliveries only, none gathered."""
        with self.registry.cursor() as cr:
            cr.execute(
                "DELETE FROM ally_smtp_sent_copy; DELETE FROM ally_smtp_delivery;"
                "INSERT INTO ally_smtp_delivery "
                "SELECT * FROM ally_smtp_bench_deliveries"
            )
            env = api.Environment(cr, SUPERUSER_ID, {})
            env.ref("base.main_company").ally_smtp_sent_copy = mode
        self.box.purge()

    def _profile(self, path):
        self._restore_deliveries("always")

        def work(env):
            profile = cProfile.Profile()
            profile.runcall(env["ally.smtp.sent.copy"]._ally_smtp_process)
            profile.dump_stats(path)
            return profile

        stats = pstats.Stats(self._in_thread(work))
        print(f"\nOne filing run of {MAILS} copies under cProfile ({path}):")
        stats.sort_stats("tottime").print_stats(25)
        self.box.purge()

    def test_bench_filing(self):
        append = "raw imaplib APPEND, 1 login"
        modes = {"Sent-copy cron, 'always'": "always", "Sent-copy cron, 'auto'": "auto"}
        self._run(self.personal_uid, "always", 20)  # warm the caches
        self._file()
        self.box.purge()
        *_sent, raws = self._run(self.personal_uid, "always", MAILS)
        self._save_deliveries()
        seconds = defaultdict(list)
        queries, logins, runs = {}, {}, []
        steps = [append, *modes]
        for rnd in range(ROUNDS):  # the order rotates from round to round
            for step in steps[rnd % 3 :] + steps[: rnd % 3]:
                if step in modes:
                    self._restore_deliveries(modes[step])
                    secs, queries[step], logins[step], count = self._file_all()
                    runs.append(count)
                else:
                    secs, logins[append] = self.imap_floor(ALICE, raws)
                seconds[step].append(secs)
                self.box.purge()
        print(
            f"\nFiling {MAILS} Sent copies (one cron run) against a raw APPEND loop "
            f"of the same messages, {ROUNDS} rounds\n"
            "%-28s %8s %8s %20s %9s %6s"
            % ("path", "seconds", "copies/s", "vs raw APPEND", "queries", "IMAP")
        )
        for step in modes:
            logins[step] = Counter({ALICE: max(runs)})
        _print_rows((append, *modes), seconds, seconds[append], queries, logins)
        if max(runs) > 1:
            print(f"(filing runs per round, stopped at their time budget: {runs})")
        if os.environ.get("ALLY_SMTP_BENCH_PROFILE"):
            self._profile(os.environ["ALLY_SMTP_BENCH_PROFILE"])
