"""Queue-run speed and memory: ally_smtp's personal path against stock Odoo.

``make bench`` runs it on the harness servers and prints tables; nothing is
asserted about time or memory (tests never do).
"""

import cProfile
import ctypes
import gc
import imaplib
import json
import os
import pstats
import re
import smtplib
import ssl
import statistics
import threading
import time
from collections import Counter, defaultdict
from unittest.mock import patch

from odoo import SUPERUSER_ID, Command, api, modules, sql_db
from odoo.tests import TransactionCase, new_test_user, tagged

from odoo.addons.ally_smtp.models.ally_smtp_delivery import AllySmtpDelivery
from odoo.addons.ally_smtp.tests.common import (
    AllySmtpCase,
    Mailbox,
    SmtpServer,
    company_values,
    harness,
)
from odoo.addons.ally_smtp.tests.servers import agency_server_values

# ALLY_SMTP_BENCH_MAILS / _ROUNDS: a shorter run while working on the bench
MAILS = int(os.environ.get("ALLY_SMTP_BENCH_MAILS", "500"))
ROUNDS = int(os.environ.get("ALLY_SMTP_BENCH_ROUNDS", "24"))  # rotations of 3 paths
CONSULTANTS, PER_USER = 20, 100  # the agency-scale run
ALICE = "alice@agency.test"
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


class QueueBench(TransactionCase):
    """Mail queued and sent by the mail cron's method as in production: in a
    thread of its own, committing after every mail (tests never commit), the
    data it needs committed before and removed after."""

    def setUp(self):
        super().setUp()
        self.info = harness()
        self.smtp = SmtpServer(self.info)
        self.smtp.reset()
        self.smtp.deliver(False)  # a fast server: what is timed is Odoo
        self.addCleanup(self.smtp.deliver, True)
        self.dovecot = DovecotLog(self.info)
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            company = env.ref("base.main_company")
            values = company_values(self.info)
            saved = company.read(list(values))[0]
            saved.pop("id")
            company.write(values)
            partner = env["res.partner"].create(
                {"name": "Bench Student", "email": "student2@school.test"}
            )
            self.partner_id = partner.id
        self.addCleanup(self._restore_company, saved)
        self.addCleanup(self._remove_mail)

    def _restore_company(self, saved):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            env.ref("base.main_company").write(saved)
            env["res.partner"].browse(self.partner_id).unlink()

    def _remove_mail(self):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            messages = env["mail.message"].search(
                [("model", "=", "res.partner"), ("res_id", "=", self.partner_id)]
            )
            env["mail.mail"].search([("mail_message_id", "in", messages.ids)]).unlink()
            messages.unlink()
            env["ally.smtp.delivery"].search([]).unlink()
            env["ally.smtp.sent.copy"].search([]).unlink()

    def _personal(self, env, user, mailbox):
        user.with_user(user).write(
            {
                "ally_smtp_use_own": True,
                "ally_smtp_email": mailbox,
                "ally_smtp_password": self.info["mailboxes"][mailbox],
            }
        )

    def _in_thread(self, function):
        """Run ``function(env)`` as the cron would: its own cursor, committing."""
        result = {}

        def work():
            with self.registry.cursor() as cr:
                env = api.Environment(cr, SUPERUSER_ID, {})
                result["value"] = function(env)

        thread = threading.Thread(target=work)  # not a test thread: it commits
        with patch.object(modules.module, "current_test", False):
            thread.start()
            thread.join()
        return result.get("value")

    def _queue(self, env, user, count):
        queue_mails(env, user, self.partner_id, count)

    def _send(self, queue):
        """Queue with ``queue(env)``, commit, then time one queue run:
        ``(seconds, queries per mail, SMTP logins)``."""

        def work(env):
            count = queue(env)
            env.cr.commit()
            # every cursor's queries: the ledger's are on a cursor of its own
            queries = sql_db.sql_counter
            start = time.perf_counter()
            env["mail.mail"].process_email_queue()
            seconds = time.perf_counter() - start
            return seconds, (sql_db.sql_counter - queries) / count

        self.smtp.reset()
        self.smtp.deliver(False)
        seconds, queries = self._in_thread(work)
        return seconds, queries, self.smtp_logins()

    def _file(self):
        """One run of the Sent-copy cron: ``(seconds, copies filed, queries per
        copy, IMAP logins)``."""

        def work(env):
            Copy = env["ally.smtp.sent.copy"]
            before = Copy.search_count([("state", "=", "done")])
            queries = env.cr.sql_log_count
            start = time.perf_counter()
            Copy._ally_smtp_process()
            seconds = time.perf_counter() - start
            queries = env.cr.sql_log_count - queries
            filed = Copy.search_count([("state", "=", "done")]) - before
            return seconds, filed, queries / max(filed, 1)

        mark = self.dovecot.mark()
        seconds, filed, queries = self._in_thread(work)
        return seconds, filed, queries, self.dovecot.logins(mark)

    def smtp_logins(self):
        """{login: successful AUTHs} the SMTP server saw since its reset."""
        return Counter(login for _auth, login, ok in self.smtp.auth_attempts() if ok)

    def _context(self):
        return ssl.create_default_context(cafile=self.info["ca_file"])

    def smtp_floor(self, login, raws):
        """Raw smtplib: ``raws`` on one connection and login; seconds."""
        self.smtp.reset()
        self.smtp.deliver(False)
        start = time.perf_counter()
        port = self.info["smtp"]["ports"]["ssl"]
        host = self.info["smtp"]["host"]
        with smtplib.SMTP_SSL(host, port, context=self._context(), timeout=30) as s:
            s.login(login, self.info["mailboxes"][login])
            for raw in raws:
                s.sendmail(login, ["student2@school.test"], raw)
        seconds = time.perf_counter() - start
        assert len(self.smtp.messages()) == len(raws)
        return seconds, self.smtp_logins()

    def imap_floor(self, login, raws):
        """Raw imaplib: APPEND ``raws`` to Sent over one login; seconds."""
        mark = self.dovecot.mark()
        start = time.perf_counter()
        imap = self.info["imap"]
        with imaplib.IMAP4_SSL(
            imap["host"], imap["port"], ssl_context=self._context(), timeout=30
        ) as client:
            client.login(login, self.info["mailboxes"][login])
            for raw in raws:
                typ, data = client.append("Sent", r"(\Seen)", time.time(), raw)
                assert typ == "OK", data
        return time.perf_counter() - start, self.dovecot.logins(mark)


class DovecotLog:
    """Successful IMAP logins, read from the harness Dovecot's log."""

    def __init__(self, info):
        self.path = os.path.join(info["dir"], "dovecot", "dovecot.log")

    def mark(self):
        return os.path.getsize(self.path)

    def logins(self, mark):
        """{user: logins} logged after ``mark`` (the log is written a moment
        after the login: read until it stops growing)."""
        size = None
        while size != os.path.getsize(self.path):
            size = os.path.getsize(self.path)
            time.sleep(0.3)
        with open(self.path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        return Counter(re.findall(r"imap-login: Info: Login: user=<([^>]*)>", text))


def queue_mails(env, user, partner_id, count, attachments=()):
    """``count`` mails written by ``user`` to the partner, left in the queue."""
    messages = (
        env["mail.message"]
        .with_user(user)
        .create(
            [
                {
                    "model": "res.partner",
                    "res_id": partner_id,
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
        env["mail.mail"]
        .with_user(user)
        .sudo()
        .create(
            [
                {
                    "mail_message_id": message.id,
                    "recipient_ids": [Command.link(partner_id)],
                    "body_html": f"<p>{message.body}</p>",
                    "attachment_ids": [Command.set(attachments)],
                }
                for message in messages
            ]
        )
    )


def _print_rows(labels, seconds, base, queries, logins):
    """One line per path: median time and rate, speed against ``base`` round
    by round (median and range), queries per mail and logins."""
    for label in labels:
        runs = seconds[label]
        ratios = [a / b for a, b in zip(base[-len(runs) :], runs, strict=True)]
        print(
            "%-28s %8.2f %8.1f %7.2fx (%.2f-%.2f) %9s %6s"
            % (
                label,
                statistics.median(runs),
                MAILS / statistics.median(runs),
                *_range(ratios),
                "%.1f" % queries[label] if label in queries else "-",
                sum(logins[label].values()),
            )
        )


def _timed(cls, name):
    """``(patcher, spent)``: while the patcher is active, every call of
    ``cls.name`` runs as before and adds the seconds it took to ``spent``.
    Instrumentation only: nothing is replaced."""
    spent = []
    original = getattr(cls, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    return patch.object(cls, name, timed), spent


def _range(values):
    values = sorted(values)
    return statistics.median(values), values[0], values[-1]


class PersonalBench(QueueBench):
    """The admin sends through ALICE's mailbox; an agency server for stock Odoo."""

    def setUp(self):
        super().setUp()
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            server = env["ir.mail_server"].create(
                agency_server_values(self.info, "agency (bench)")
            )
            admin = env.ref("base.user_admin")
            self._personal(env, admin, ALICE)
            # stock Odoo's path: mail created by the superuser (no mailbox)
            self.stock_uid, self.personal_uid = SUPERUSER_ID, admin.id
            server_id = server.id
        self.addCleanup(self._clean, server_id)
        self.box = Mailbox(self.info, ALICE)
        self.box.purge()

    def _clean(self, server_id):
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            env["res.users"].browse(self.personal_uid).write(
                {
                    "ally_smtp_use_own": False,
                    "ally_smtp_email": False,
                    "ally_smtp_password_crypt": False,
                }
            )
            env["ir.mail_server"].browse(server_id).unlink()
        self.box.purge()

    def _run(self, uid, copies, count):
        def queue(env):
            env.ref("base.main_company").ally_smtp_sent_copy = copies
            self._queue(env, env["res.users"].browse(uid), count)
            return count

        seconds, queries, logins = self._send(queue)
        messages = self.smtp.messages()
        assert len(messages) == count, len(messages)
        raws = [m["data"].encode("utf-8", "surrogateescape") for m in messages]
        return seconds, queries, logins, raws

    def _file_all(self):
        """Cron runs until the round's copies are filed (one, unless a run
        stops at its time budget): seconds, queries per copy, logins, runs."""
        secs, filed, queries, logins = self._file()
        runs = 1
        while filed < MAILS:  # the cron runs again, with a login of its own
            more = self._file()
            assert more[1], "a filing run filed nothing"
            secs, filed, runs = secs + more[0], filed + more[1], runs + 1
            logins += more[3]
        self.assertEqual(dict(logins), {ALICE: runs})  # one login per run
        return secs, queries, logins, runs


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
            env["res.users"].browse(self.user_ids).write(
                {
                    "ally_smtp_use_own": False,
                    "ally_smtp_email": False,
                    "ally_smtp_password_crypt": False,
                    "active": False,
                }
            )
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
