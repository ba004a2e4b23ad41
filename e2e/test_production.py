"""Odoo as agencies run it: two workers, two cron threads, the mail queue and
the Sent-copy filing at once. Counts are taken on the SMTP server and in the
mailboxes: every recipient gets a mail once, every message has one copy in
its author's Sent folder, listing every recipient."""

import collections
import email.utils
import os
import signal
import time
import xmlrpc.client
from pathlib import Path

from conftest import servers

MAILBOXES = {"ana": "alice@agency.test", "bob": "bob@agency.test"}


def sent_copies(world, login, message_id):
    box = servers.Mailbox(world.info, MAILBOXES[login])
    return [msg for _flags, msg in box.find("Sent", message_id)]


def settle(world, message_ids):
    """Wait until the queue is empty and the deliveries stop changing; what a
    failed run left queued is sent by the next cron run, woken here."""

    def emptied():
        if world.queue_empty():
            return True
        time.sleep(5)
        world.wake("mail.ir_cron_mail_scheduler_action")
        return False

    world.wait(emptied, "the mail queue to empty")
    before = None
    while True:
        now = [len(world.deliveries(m)) for m in message_ids]
        if now == before:
            return
        before = now
        time.sleep(3)


def test_big_posts_from_two_consultants_reach_everyone_once(world):
    """Posts of more than 50 recipients are split into several mails that
    share one Message-ID; the mail cron sends them while the Sent-copy cron
    files in the other cron thread."""
    posts = {}
    for login in ("ana", "bob"):
        for n in range(2):
            students = world.students(120, f"{login}{n}")
            message = world.post(
                login,
                f"big {login} {n}",
                partner_ids=students,
                force_send=False,
            )
            posts[world.message_id(message)] = (login, students)
    world.wake("mail.ir_cron_mail_scheduler_action")
    settle(world, list(posts))
    for message_id, (login, students) in posts.items():
        addresses = {
            a["email"] for a in world.admin("res.partner", "read", students, ["email"])
        }
        counts = collections.Counter(world.deliveries(message_id))
        assert addresses <= set(counts), addresses - set(counts)
        twice = {rcpt: n for rcpt, n in counts.items() if n > 1}
        assert not twice, f"{len(twice)} recipients got {login}'s mail twice"
        copies = world.wait(
            lambda m=message_id, u=login: sent_copies(world, u, m),
            f"{login}'s Sent copy of {message_id}",
        )
        time.sleep(2)
        copies = sent_copies(world, login, message_id)
        assert len(copies) == 1, f"{len(copies)} copies of {message_id}"
        listed = {
            a.lower() for _n, a in email.utils.getaddresses(copies[0].get_all("To"))
        }
        assert addresses <= listed, f"{len(addresses - listed)} missing in To"


def test_imap_outage_delays_the_copy_and_never_resends(world):
    port = world.info["imap"]["port"]
    company = world.company
    dead = servers.free_port()
    world.admin("res.company", "write", [company], {"ally_smtp_imap_port": dead})
    try:
        message = world.post("ana", "during the outage")
        message_id = world.message_id(message)
        world.wait(lambda: world.deliveries(message_id), "the mail to be delivered")
        copy = world.wait(
            lambda: world.admin(
                "ally.smtp.sent.copy",
                "search_read",
                [("message_id", "=", message_id), ("last_error", "!=", False)],
                ["state", "last_error"],
            ),
            "the filing to fail",
        )
        assert copy[0]["state"] == "pending", copy
    finally:
        world.admin("res.company", "write", [company], {"ally_smtp_imap_port": port})
    world.admin(
        "ally.smtp.sent.copy",
        "write",
        [copy[0]["id"]],
        {"next_try": "2000-01-01 00:00:00"},
    )
    world.wake("ally_smtp.ir_cron_sent_copy")
    world.wait(lambda: sent_copies(world, "ana", message_id), "the copy after it")
    assert len(world.deliveries(message_id)) == len(set(world.deliveries(message_id)))
    assert len(sent_copies(world, "ana", message_id)) == 1


def cron_workers():
    """The prefork server's cron worker processes (Odoo names them so)."""
    master = os.environ["ALLY_SMTP_E2E_PID"]
    found = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            title = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if ppid == master and b"WorkerCron" in title:
            found.append(int(proc.name))
    return found


def set_cron_active(world, xmlid, active):
    cron = world.xmlid(xmlid)
    world.wait(
        lambda: _try(world, "ir.cron", "write", [cron], {"active": active}),
        f"{xmlid} to stop running",
    )


def _try(world, *args):
    try:
        return world.admin(*args)
    except xmlrpc.client.Fault as fault:
        if "currently being executed" in fault.faultString:
            return False
        raise


def test_filing_killed_mid_backlog_files_each_copy_once(world):
    """kill -9 of the cron workers while they file a backlog: nothing filed
    twice (mode "always", where no provider copy hides a duplicate), and the
    rest is filed by the next run."""
    company = world.company
    world.admin("res.company", "write", [company], {"ally_smtp_sent_copy": "always"})
    world.xmlid("ally_smtp.ir_cron_sent_copy")
    set_cron_active(world, "ally_smtp.ir_cron_sent_copy", False)  # a backlog
    try:
        message_ids = [
            world.message_id(world.post("ana", f"backlog {n}", force_send=False))
            for n in range(150)
        ]
        world.wake("mail.ir_cron_mail_scheduler_action")
        settle(world, message_ids)
    finally:
        set_cron_active(world, "ally_smtp.ir_cron_sent_copy", True)
    box = servers.Mailbox(world.info, MAILBOXES["ana"])
    with box.connect() as imap:
        world.wake("ally_smtp.ir_cron_sent_copy")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _typ, data = imap.status("Sent", "(MESSAGES)")
            if int(data[0].split()[-1].strip(b")")):
                break
            time.sleep(0.02)
        killed = cron_workers()
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        _typ, data = imap.status("Sent", "(MESSAGES)")
        at_kill = int(data[0].split()[-1].strip(b")"))
    assert killed, "no cron worker to kill"
    assert 0 < at_kill < len(message_ids), f"{at_kill} filed when killed"
    time.sleep(3)  # the master starts new cron workers
    world.wake("ally_smtp.ir_cron_sent_copy")

    def all_filed():
        copies = world.admin(
            "ally.smtp.sent.copy",
            "search_read",
            [("message_id", "in", message_ids)],
            ["state"],
        )
        return len(copies) == len(message_ids) and all(
            c["state"] in ("done", "skipped") for c in copies
        )

    world.wait(all_filed, "every copy to be filed after the kill")
    subjects = collections.Counter(
        msg["Subject"] for _flags, msg in box.messages("Sent")
    )
    twice = {n: subjects[f"backlog {n}"] for n in range(150)}
    assert set(twice.values()) == {1}, {n: c for n, c in twice.items() if c != 1}
    world.admin("res.company", "write", [company], {"ally_smtp_sent_copy": "auto"})
