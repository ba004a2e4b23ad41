"""Replies come home, in Odoo as agencies run it (two workers, two cron
threads): a student's answer delivered into the consultant's INBOX by the
harness SMTP server lands once on the student's record, unread in the
mailbox; a private mail never reaches Odoo; the consultant's answer from
their mail client is theirs on the record; killed and concurrent runs bring
each reply once."""

import collections
import email.policy
import email.utils
import os
import signal
import smtplib
import ssl
import threading
import time
import xmlrpc.client

from conftest import Rpc, servers

message = servers.message
from test_production import cron_workers, set_cron_active

ALICE = "alice@agency.test"
STUDENT = "student1@school.test"
CRON = "ally_smtp.ir_cron_replies"
PDF = b"%PDF-1.4 passport scan\n%%EOF\n"


def smtp_send(world, login, msg):
    """``login`` sends ``msg`` through the harness provider, which delivers it
    into the recipients' INBOX."""
    info = world.info
    context = ssl.create_default_context(cafile=info["ca_file"])
    with smtplib.SMTP_SSL(
        info["smtp"]["host"], info["smtp"]["ports"]["ssl"], context=context
    ) as smtp:
        smtp.login(login, info["mailboxes"][login])
        smtp.send_message(msg)


def ready(world):
    """Ana's mailbox passed its Test (the replies are read of working ones)."""
    world.rpc["ana"]("res.users", "action_ally_smtp_test", [world.users["ana"]])
    world.admin(
        "res.company", "write", [world.company], {"ally_smtp_fetch_replies": True}
    )


def on_record(world, message_ids):
    return world.admin(
        "mail.message",
        "search_read",
        [("message_id", "in", [str(m) for m in message_ids])],
        ["message_id", "model", "res_id", "author_id", "attachment_ids", "body"],
    )


def flags_of(box, folder, message_id):
    """The flags kept on the message (``\\Recent`` is the session's)."""
    return [set(flags) - {b"\\Recent"} for flags, _msg in box.find(folder, message_id)]


def run(world, rpc=None, wait=True):
    """One run of the replies cron that starts now, in this request; while a
    cron worker runs the job, Odoo refuses it: wait for that run to end and
    ask again (``wait=False``: be refused). ``rpc``: a connection of its own,
    for another thread."""
    deadline = time.monotonic() + 120
    while True:
        try:
            (rpc or world.admin)(
                "ir.cron", "method_direct_trigger", [world.xmlid(CRON)]
            )
            return True
        except xmlrpc.client.Fault as fault:
            if "currently being executed" not in fault.faultString:
                raise
            if not wait or time.monotonic() > deadline:
                return False
        time.sleep(0.5)


def test_a_student_reply_lands_once_unread_and_private_mail_stays_out(world):
    ready(world)
    box = servers.Mailbox(world.info, ALICE)
    subject = "replies: your visa appointment"
    posted = world.post("ana", subject)
    (sent,) = [m for m in world.delivered(subject) if STUDENT in m["rcpt_tos"]]
    reply_to = email.message_from_string(sent["data"])["Reply-To"]
    assert email.utils.parseaddr(reply_to)[1] == ALICE, reply_to
    thread = [world.message_id(posted)]
    answer = message(
        STUDENT,
        ALICE,
        f"Re: {subject}",
        "Monday is fine; my passport is attached.",
        answers=thread,
        attachment=("passport.pdf", PDF),
    )
    private = message(
        "student2@school.test", ALICE, "Lunch?", "A private note, not for Odoo."
    )
    smtp_send(world, STUDENT, answer)
    smtp_send(world, "student2@school.test", private)
    for msg in (answer, private):
        world.wait(
            lambda msg=msg: box.find("INBOX", msg["Message-ID"]),
            "the harness to deliver into Ana's INBOX",
            timeout=30,
        )
    own = message(
        ALICE,
        STUDENT,
        f"Re: {subject}",
        "Great, see you Monday (sent from Thunderbird).",
        answers=[*thread, answer["Message-ID"]],
    )
    with box.connect() as imap:
        imap.append('"Sent"', r"(\Seen)", None, own.as_bytes())
    world.smtp.reset()
    for _ in range(2):  # the second run finds nothing new
        run(world)
    found = on_record(world, [answer["Message-ID"], own["Message-ID"]])
    by_id = collections.Counter(m["message_id"] for m in found)
    assert by_id == {answer["Message-ID"]: 1, own["Message-ID"]: 1}, by_id
    student = {m["message_id"]: m for m in found}[answer["Message-ID"]]
    assert (student["model"], student["res_id"]) == ("res.partner", world.student)
    author = world.admin("res.partner", "read", [student["author_id"][0]], ["email"])
    assert author[0]["email"] == STUDENT
    attachments = world.admin(
        "ir.attachment", "read", student["attachment_ids"], ["name"]
    )
    assert [a["name"] for a in attachments] == ["passport.pdf"]
    theirs = {m["message_id"]: m for m in found}[own["Message-ID"]]
    assert theirs["author_id"][0] == world.partner["ana"]
    assert (theirs["model"], theirs["res_id"]) == ("res.partner", world.student)
    # nobody was mailed Ana's answer again
    assert not [m for m in world.smtp.messages() if "Thunderbird" in m["data"]]
    # the private mail is nowhere in Odoo
    assert not on_record(world, [private["Message-ID"]])
    assert not world.admin(
        "mail.message", "search", [("subject", "=", str(private["Subject"]))]
    )
    # nothing in the mailbox was marked read
    for msg in (answer, private):
        assert flags_of(box, "INBOX", msg["Message-ID"]) == [set()], msg["Subject"]
    (user,) = world.admin(
        "res.users",
        "read",
        [world.users["ana"]],
        ["ally_smtp_replies_checked_at", "ally_smtp_replies_error"],
    )
    assert user["ally_smtp_replies_checked_at"] and not user["ally_smtp_replies_error"]


def test_killed_and_concurrent_runs_bring_each_reply_once(world):
    """kill -9 of the cron workers while they bring in 80 replies, then two
    runs at once: every reply is on the record exactly once."""
    ready(world)
    box = servers.Mailbox(world.info, ALICE)
    posted = world.post("ana", "replies: the backlog")
    thread = [world.message_id(posted)]
    run(world)  # the watermark is where the INBOX is now
    set_cron_active(world, CRON, False)
    try:
        answers = [
            message(STUDENT, ALICE, f"Re: backlog {n}", f"Answer {n}", answers=thread)
            for n in range(80)
        ]
        with box.connect() as imap:
            for msg in answers:
                imap.append('"INBOX"', None, None, msg.as_bytes())
    finally:
        set_cron_active(world, CRON, True)
    ids = [str(msg["Message-ID"]) for msg in answers]

    def imported():
        return world.admin("mail.message", "search_count", [("message_id", "in", ids)])

    world.wake(CRON)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not imported():
        time.sleep(0.05)
    killed = cron_workers()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    at_kill = imported()
    assert killed, "no cron worker to kill"
    assert 0 < at_kill < len(ids), f"{at_kill} replies brought in when killed"
    time.sleep(3)  # the master starts new cron workers
    # two runs at once: a cron worker's and one in a request
    world.wake(CRON)
    admin = Rpc(world.url, world.db, "admin", "admin")
    other = threading.Thread(target=run, args=(world, admin, False))
    other.start()
    run(world, wait=False)
    other.join()
    world.wait(lambda: imported() == len(ids), "every reply after the kill")
    run(world)
    counts = collections.Counter(m["message_id"] for m in on_record(world, ids))
    assert set(counts.values()) == {1} and len(counts) == len(ids), counts
