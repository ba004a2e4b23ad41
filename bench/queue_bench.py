"""The machinery of the queue-run benches of ``bench_send.py``: mail queued
and sent as the mail cron sends it, each path's rounds timed and counted.
"""

import imaplib
import os
import re
import smtplib
import ssl
import statistics
import threading
import time
from collections import Counter
from unittest.mock import patch

from odoo import SUPERUSER_ID, Command, api, modules, sql_db
from odoo.tests import TransactionCase

from odoo.addons.ally_smtp.tests.common import (
    Mailbox,
    SmtpServer,
    company_values,
    harness,
)
from odoo.addons.ally_smtp.tests.servers import agency_server_values

# ALLY_SMTP_BENCH_MAILS / _ROUNDS: a shorter run while working on the bench
MAILS = int(os.environ.get("ALLY_SMTP_BENCH_MAILS", "500"))
ROUNDS = int(os.environ.get("ALLY_SMTP_BENCH_ROUNDS", "24"))  # rotations of 3 paths
ALICE = "alice@agency.test"


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
            env["res.users"].browse(self.personal_uid)._ally_smtp_mailbox().unlink()
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
