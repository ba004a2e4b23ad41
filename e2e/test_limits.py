"""Sending limits in Odoo as agencies run it (two workers, two cron threads):
a mailbox never sends over its limit; a quota reply pauses that mailbox only;
nothing is lost, failed or sent twice. Counted on the SMTP server."""

import collections

from conftest import subject_of

ANA, BOB = "alice@agency.test", "bob@agency.test"


def sent(world, prefix):
    """``[(login, subject, time)]`` of the messages whose subject starts so."""
    return [
        (m["login"], subject_of(m), m["at"])
        for m in world.smtp.messages()
        if subject_of(m).startswith(prefix)
    ]


def lone_students(world, count, tag):
    """New students, each written to by one consultant only."""
    return world.students(count, tag, context={"mail_create_nosubscribe": True})


def failed(world):
    return world.admin("mail.mail", "search_count", [("state", "=", "exception")])


def test_a_mailbox_is_paced_in_the_cron(world):
    company = world.company
    world.admin("res.company", "write", [company], {"ally_smtp_limit_minute": 6})
    try:
        before = failed(world)
        *students, other = lone_students(world, 7, "paced")
        for n, student in enumerate(students):
            world.post("ana", f"paced {n}", partner_ids=[student], force_send=False)
        world.post("bob", "paced bob", partner_ids=[other], force_send=False)
        world.wake("mail.ir_cron_mail_scheduler_action")
        world.delivered("paced bob")
        addresses = {
            p["email"] for p in world.admin("res.partner", "read", students, ["email"])
        }
        world.wait(
            lambda: (
                addresses <= {r for m in world.smtp.messages() for r in m["rcpt_tos"]}
            ),
            "Ana's 6 posts, 6 messages a minute",
            timeout=300,
        )
        world.wait(world.queue_empty, "the queue to empty")
        deliveries = [
            (subject_of(m), rcpt, m["login"], m["at"])
            for m in world.smtp.messages()
            if subject_of(m).startswith("paced ")
            for rcpt in m["rcpt_tos"]
        ]
        twice = collections.Counter(d[:2] for d in deliveries)
        assert max(twice.values()) == 1, twice
        times = sorted(at for _s, _r, login, at in deliveries if login == ANA)
        assert len(times) > 6, times  # more than one window's worth
        # never more than 6 of Ana's within a minute (what a batch takes to
        # leave after its window opened is the only slack)
        assert all(times[i + 6] - times[i] > 55 for i in range(len(times) - 6)), times
        assert failed(world) == before
    finally:
        world.admin("res.company", "write", [company], {"ally_smtp_limit_minute": 0})


def test_a_quota_pauses_one_mailbox_and_loses_nothing(world):
    before = failed(world)
    world.smtp.fail(
        "DATA", "550 5.4.5 Daily user sending limit exceeded", times=1, login=BOB
    )
    bobs, anas = lone_students(world, 2, "quota")
    world.post("bob", "quota bob", partner_ids=[bobs], force_send=False)
    world.post("ana", "quota ana", partner_ids=[anas], force_send=False)
    world.wake("mail.ir_cron_mail_scheduler_action")
    world.delivered("quota ana")
    bob = world.users["bob"]
    world.wait(
        lambda: world.admin(
            "res.users", "search", [("id", "=", bob), ("ally_smtp_paused", "=", True)]
        ),
        "Bob's mailbox to be paused",
    )
    (waiting,) = world.admin(
        "mail.mail",
        "search_read",
        [("subject", "=", "quota bob"), ("recipient_ids", "in", [bobs])],
        ["state", "failure_reason", "ally_smtp_attempts"],
    )
    assert waiting["state"] == "outgoing", waiting
    assert "5.4.5" in waiting["failure_reason"], waiting
    assert waiting["ally_smtp_attempts"] == 0, waiting
    assert not sent(world, "quota bob")
    # Bob's own profile says why, and until when
    (profile,) = world.rpc["bob"](
        "res.users", "read", [bob], ["ally_smtp_paused", "ally_smtp_pause_reason"]
    )
    assert profile["ally_smtp_paused"], profile
    assert "5.4.5" in profile["ally_smtp_pause_reason"], profile

    world.admin(
        "ally.smtp.mailbox",
        "action_resume",
        world.admin("ally.smtp.mailbox", "search", [("user_id", "=", bob)]),
    )
    world.delivered("quota bob")
    world.wait(world.queue_empty, "the queue to empty")
    received = [
        m["rcpt_tos"] for m in world.smtp.messages() if subject_of(m) == "quota bob"
    ]
    student = world.admin("res.partner", "read", [bobs], ["email"])[0]["email"]
    assert [r for rcpts in received for r in rcpts].count(student) == 1, received
    assert failed(world) == before
