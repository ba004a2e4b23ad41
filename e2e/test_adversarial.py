"""A colleague, a portal user, an anonymous caller and a settings admin try
every route to Ana's mailbox over XML-RPC; only Ana's own mail signs in as
her, counted on the SMTP server."""

import time
import xmlrpc.client

import pytest
from conftest import Rpc, subject_of

ANA = "alice@agency.test"


def ana_sessions(world):
    """Subjects sent by every SMTP session that signed in as Ana."""
    state = world.smtp.state()
    ids = {
        session["id"]
        for session in state["sessions"]
        for event in session["events"]
        if event[0] == "auth" and event[1] == ANA
    }
    return [subject_of(m) for m in state["messages"] if m["session"] in ids], ids


def assert_only_anas_own_mail(world):
    time.sleep(1)  # a post that got through is sent right after its commit
    subjects, sessions = ana_sessions(world)
    assert all(s.startswith("ana-own") for s in subjects), subjects
    # every session that signed in as Ana sent Ana's own mail (no bare logins)
    assert len(sessions) <= len({s for s in subjects}), (sessions, subjects)


def box(w):
    """Ana's ``ally.smtp.mailbox`` id."""
    return w.admin("ally.smtp.mailbox", "search", [("user_id", "=", w.users["ana"])])


def refused(call):
    with pytest.raises(xmlrpc.client.Fault) as caught:
        call()
    return caught.value.faultString


def test_owner_mail_leaves_from_her_mailbox(world):
    world.post("ana", "ana-own 1")
    sent = world.delivered("ana-own 1")
    assert {(m["login"], m["mail_from"]) for m in sent} == {(ANA, ANA)}
    assert "student1@school.test" in {r for m in sent for r in m["rcpt_tos"]}
    assert_only_anas_own_mail(world)


ROUTES = {
    "post naming her server": lambda w, who: w.post(
        who, "forged 1", mail_server_id=w.ana_server
    ),
    "post as her, naming her server": lambda w, who: w.post(
        who, "forged 2", mail_server_id=w.ana_server, author_id=w.partner["ana"]
    ),
    "mass mail composer naming her server": lambda w, who: w.rpc[who](
        "mail.compose.message",
        "create",
        {
            "composition_mode": "mass_mail",
            "model": "res.partner",
            "res_ids": [w.student],
            "subject": "forged 3",
            "body": "forged 3",
            "mail_server_id": w.ana_server,
        },
    ),
    "template naming her server": lambda w, who: w.rpc[who](
        "mail.template",
        "create",
        {
            "name": "forged 4",
            "model_id": w.admin("ir.model", "search", [("model", "=", "res.partner")])[
                0
            ],
            "mail_server_id": w.ana_server,
        },
    ),
    "mail.mail created directly": lambda w, who: w.rpc[who](
        "mail.mail",
        "create",
        {"subject": "forged 5", "email_to": "student1@school.test"},
    ),
    "connect() to her server": lambda w, who: w.rpc[who](
        "ir.mail_server", "connect", mail_server_id=w.ana_server
    ),
    "connect() to her server, by position": lambda w, who: w.rpc[who](
        "ir.mail_server", "connect", [], *([False] * 9), w.ana_server
    ),
    "set her status to Working": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "write", box(w), {"state": "ok"}
    ),
    "point her password at the current server": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox",
        "write",
        box(w),
        {"server_fingerprint": "localhost|1|ssl|localhost|True"},
    ),
    "give her mailbox to someone else": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "write", box(w), {"user_id": w.users[who]}
    ),
    "edit her server": lambda w, who: w.rpc[who](
        "ir.mail_server", "write", [w.ana_server], {"smtp_user": "x@agency.test"}
    ),
    "test_smtp_connection on her server": lambda w, who: w.rpc[who](
        "ir.mail_server", "test_smtp_connection", [w.ana_server]
    ),
    "read her server": lambda w, who: w.rpc[who](
        "ir.mail_server", "read", [w.ana_server], ["smtp_user"]
    ),
    "read her mailbox": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "read", box(w), ["address", "state", "last_error"]
    ),
    "read her Sent folder": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "read", box(w), ["sent_folder"]
    ),
    "read the password ciphertext": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "read", box(w), ["password_crypt"]
    ),
    "search by the ciphertext": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "search", [("password_crypt", "!=", False)]
    ),
    "export her address": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "export_data", box(w), ["address"]
    ),
    "write her address": lambda w, who: w.rpc[who](
        "res.users", "write", [w.users["ana"]], {"ally_smtp_email": "x@agency.test"}
    ),
    "write her password": lambda w, who: w.rpc[who](
        "res.users", "write", [w.users["ana"]], {"ally_smtp_password": "stolen"}
    ),
    "press Test for her": lambda w, who: w.rpc[who](
        "res.users", "action_ally_smtp_test", [w.users["ana"]]
    ),
    "clear her password": lambda w, who: w.rpc[who](
        "res.users", "action_ally_smtp_clear_password", [w.users["ana"]]
    ),
    "claim her address": lambda w, who: w.rpc[who](
        "res.users", "write", [w.users[who]], {"ally_smtp_email": ANA.upper()}
    ),
    "read her sending pause": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox",
        "read",
        box(w),
        ["paused", "paused_until", "pause_reason"],
    ),
    "pause her mailbox": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox",
        "write",
        box(w),
        {"paused_until": "2100-01-01 00:00:00"},
    ),
    "resume her mailbox": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "action_resume", box(w)
    ),
    "read what her mailbox sent": lambda w, who: w.rpc[who](
        "ally.smtp.send.log", "search_read", [("user_id", "=", w.users["ana"])]
    ),
}
# a settings admin is trusted with settings, not with Ana's mailbox
ADMIN_MAY = {
    "mail.mail created directly",
    "read her server",
    "read her mailbox",
    "read her Sent folder",
    "export her address",
    "read her sending pause",
    "resume her mailbox",
    "read what her mailbox sent",
}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("who", ["bob", "paula", "sam"])
def test_route_is_refused(world, who, route):
    before = len(world.smtp.auth_attempts(ANA))
    if who == "sam" and route in ADMIN_MAY:
        ROUTES[route](world, who)
    else:
        refused(lambda: ROUTES[route](world, who))
    assert_only_anas_own_mail(world)
    # not one login attempt as Ana, even a failed one, for this route
    assert len(world.smtp.auth_attempts(ANA)) == before


# what a colleague may call, and finds nothing of Ana's mailbox in
LOOKS = {
    "her profile's mailbox fields": lambda w, who: w.rpc[who](
        "res.users",
        "read",
        [w.users["ana"]],
        ["ally_smtp_email", "ally_smtp_state", "ally_smtp_sent_folder"],
    ),
    "users by her address": lambda w, who: w.rpc[who](
        "res.users", "search", [("ally_smtp_email", "=", ANA)]
    ),
    "users by their mailbox": lambda w, who: w.rpc[who](
        "res.users", "search", [("ally_smtp_mailbox_id.address", "=", ANA)]
    ),
    "her profile exported": lambda w, who: w.rpc[who](
        "res.users", "export_data", [w.users["ana"]], ["ally_smtp_email"]
    ),
    "mailboxes by her address": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "search_read", [("address", "=", ANA)], ["address"]
    ),
    "mailboxes grouped by state": lambda w, who: w.rpc[who](
        "ally.smtp.mailbox", "read_group", [], ["state"], ["state"]
    ),
}


@pytest.mark.parametrize("look", sorted(LOOKS))
@pytest.mark.parametrize("who", ["bob", "paula"])
def test_colleague_finds_nothing_of_her_mailbox(world, who, look):
    try:
        result = LOOKS[look](world, who)
    except xmlrpc.client.Fault:
        return  # refused outright (a portal user has no access to mailboxes)
    assert ANA not in repr(result), result
    if look.startswith("users by"):
        assert world.users["ana"] not in result, result
    if look == "mailboxes grouped by state":
        assert sum(group["state_count"] for group in result) <= 1, result


def test_anonymous_caller_gets_nothing(world):
    for login, password in (("ana", "wrong"), ("", ""), ("public", "")):
        assert not Rpc(world.url, world.db, login, password).uid
    stranger = Rpc(world.url, world.db, "ana", "wrong")
    stranger.uid = world.users["ana"]  # a guessed id without a password
    refused(lambda: stranger("res.users", "read", [world.users["ana"]], ["name"]))
    assert_only_anas_own_mail(world)


def test_posting_as_her_goes_through_the_agency(world):
    """Odoo lets a colleague set any author; Ana's mailbox is never used."""
    world.post("bob", "as-ana by bob", author_id=world.partner["ana"])
    sent = world.delivered("as-ana by bob")
    assert {m["login"] for m in sent} == {"carol@agency.test"}
    assert_only_anas_own_mail(world)


def test_sent_copies_are_the_owners_only(world):
    world.post("ana", "ana-own 2")
    world.delivered("ana-own 2")
    world.wait(
        lambda: world.admin(
            "ally.smtp.sent.copy", "search", [("subject", "=", "ana-own 2")]
        ),
        "Ana's Sent copy record",
    )
    seen = world.rpc["bob"]("ally.smtp.sent.copy", "search_read", [], ["subject"])
    assert not [c for c in seen if c["subject"].startswith("ana-own")]
    refused(lambda: world.rpc["paula"]("ally.smtp.sent.copy", "search_read", []))
    for who in ("bob", "paula"):
        refused(lambda w=who: world.rpc[w]("ally.smtp.delivery", "search", []))
    assert_only_anas_own_mail(world)


def test_fields_get_hides_the_ciphertext(world):
    fields = world.rpc["bob"]("ally.smtp.mailbox", "fields_get", [], ["string"])
    assert "password_crypt" not in fields
    fields = world.rpc["bob"]("res.users", "fields_get", [], ["string"])
    assert not [name for name in fields if "crypt" in name], fields
