"""Sign in with Microsoft against the prefork server: a browser's Connect,
XOAUTH2 sends and Sent copies, two workers refreshing the same sign-in at
once, and colleagues trying the routes with someone else's ids.

An agency of its own ("OAuth Agency", Microsoft accounts, rotating refresh
tokens) so that the other suites keep their password agency.
"""

import re
import subprocess
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import Rpc, servers, subject_of

from harness.rpc import OLGA, OSCAR, Agency


@pytest.fixture(scope="module")
def agency(world):
    return Agency(world)


def refreshes(agency):
    return agency.oauth.stats()["microsoft"]["token"].get("refresh_token", 0)


def test_connect_in_a_browser_then_send_and_file(agency, world):
    _browser, _callback, page = agency.connect("olga", OLGA)
    assert "alert-success" in page.text, page.text[-2000:]
    assert OLGA in page.text
    user = agency.state("olga")
    assert user["ally_smtp_state"] == "ok", user
    assert user["ally_smtp_oauth_account"] == OLGA
    agency.post("olga", "oauth-e2e 1")
    sent = world.delivered("oauth-e2e 1")
    assert {(m["login"], m["mail_from"]) for m in sent} == {(OLGA, OLGA)}
    world.wake("ally_smtp.ir_cron_sent_copy")
    box = servers.Mailbox(world.info, OLGA)
    world.wait(
        lambda: [
            msg
            for _flags, msg in box.messages("Sent")
            if msg["Subject"] == "oauth-e2e 1"
        ],
        "the Sent copy filed over XOAUTH2",
    )


def test_connect_with_an_access_token_shorter_than_the_renewal_margin(agency, world):
    """A tenant policy or a slow consent screen may leave the access token
    less than the 5 minutes after which Odoo renews it: Connect tests the
    token it just received as is (its row is not committed yet, no other
    transaction can renew it), then mail leaves, renewing it as usual."""
    agency.oauth.lifetime("microsoft", 30)
    try:
        for attempt in ("connect", "reconnect"):
            _browser, _callback, page = agency.connect("oscar", OSCAR)
            shown = re.search(
                r"o_ally_smtp_oauth_result[^>]*>(.*?)</", page.text, re.DOTALL
            )
            assert "alert-success" in page.text, (attempt, shown and shown.group(1))
            user = agency.state("oscar")
            assert user["ally_smtp_state"] == "ok", (attempt, user)
            assert user["ally_smtp_oauth_account"] == OSCAR
        before = refreshes(agency)
        agency.post("oscar", "oauth-e2e short-lived token")
        sent = world.delivered("oauth-e2e short-lived token")
        assert {(m["login"], m["mail_from"]) for m in sent} == {(OSCAR, OSCAR)}
        assert refreshes(agency) - before >= 1  # renewed in its own transaction
    finally:
        agency.oauth.lifetime("microsoft", 3600)


def test_answer_replayed_or_for_someone_else_is_refused(agency):
    browser, callback, page = agency.connect("oscar", OSCAR)
    assert "alert-success" in page.text
    replay = browser.get(callback, timeout=30)
    assert "alert-danger" in replay.text
    forged = browser.get(callback.split("state=")[0] + "state=forged", timeout=30)
    assert "alert-danger" in forged.text
    # Olga, in her own browser, opens an answer made for Oscar's Connect
    _start, oscar_callback, _page = None, None, None
    oscar = agency.browser("oscar")
    start = oscar.get(
        f"{agency.world.url}/ally_smtp/oauth/start", allow_redirects=False, timeout=30
    )
    oscar_callback = agency.oauth.consent(start.headers["Location"], OSCAR)
    olga = agency.browser("olga")
    stolen = olga.get(oscar_callback, timeout=30)
    assert "alert-danger" in stolen.text
    assert agency.state("olga")["ally_smtp_oauth_account"] == OLGA


def test_wrong_account_is_refused(agency):
    _browser, _callback, page = agency.connect("oscar", OSCAR, account=OLGA)
    assert "alert-danger" in page.text
    assert OLGA in page.text


@pytest.mark.parametrize(
    "method",
    ["action_ally_smtp_oauth_connect", "action_ally_smtp_oauth_disconnect"],
)
def test_colleague_cannot_act_on_someone_elses_sign_in(agency, method):
    fault = None
    try:
        agency.rpc["oscar"]("res.users", method, [agency.users["olga"]])
    except xmlrpc.client.Fault as exc:
        fault = exc.faultString
    assert fault, f"{method} on Olga's id was accepted for Oscar"
    assert agency.state("olga")["ally_smtp_oauth_account"] == OLGA
    (olgas,) = agency.world.admin(
        "ally.smtp.mailbox", "search", [("user_id", "=", agency.users["olga"])]
    )
    for model, ids, private in (
        ("res.users", [agency.users["olga"]], "_ally_smtp_own_mailbox"),
        ("ally.smtp.mailbox", [olgas], "_oauth_finish"),
        ("ally.smtp.mailbox", [olgas], "_oauth_authorize"),
    ):
        with pytest.raises(xmlrpc.client.Fault):
            agency.rpc["oscar"](model, private, ids, {}, "x", "y")
    with pytest.raises(xmlrpc.client.Fault):
        agency.rpc["oscar"](
            "ally.smtp.oauth.token", "search_read", [], ["account", "tokens_crypt"]
        )


def test_two_workers_refresh_the_same_sign_in_at_once(agency, world):
    """Microsoft rotates the refresh token: two workers refreshing Olga's at
    once must leave the one live refresh token stored."""
    agency.oauth.expire(OLGA)  # the mailbox refuses her access token now
    before = refreshes(agency)

    def test(_i):  # a connection of its own per thread, as two browsers
        rpc = Rpc(world.url, world.db, "olga", "olga-odoo")
        return rpc("res.users", "action_ally_smtp_test", [agency.users["olga"]])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(test, range(2)))
    assert all(r for r in results), results
    assert agency.state("olga")["ally_smtp_state"] == "ok"
    assert refreshes(agency) - before == 1
    # the stored refresh token is the live one: the next refresh works
    agency.oauth.expire(OLGA)
    time.sleep(1)
    agency.post("olga", "oauth-e2e after the race")
    sent = world.delivered("oauth-e2e after the race")
    assert {m["login"] for m in sent} == {OLGA}
    assert refreshes(agency) - before == 2
    assert subject_of(sent[0]) == "oauth-e2e after the race"


def test_no_secret_in_a_database_dump(agency, world):
    """pg_dump of the whole database holds no token and no client secret."""
    info = world.info
    live = agency.oauth.stats()["microsoft"]["live_refresh_tokens"]
    secrets_ = [t for tokens in live.values() for t in tokens]
    assert secrets_, live
    secrets_.append(info["oauth"]["microsoft"]["client_secret"])
    dump = subprocess.run(
        [
            f"{info['pg_bin']}/pg_dump",
            "-h",
            info["db"]["host"],
            "-p",
            str(info["db"]["port"]),
            "-U",
            info["db"]["user"],
            world.db,
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert b"ally_smtp_oauth_token" in dump
    for secret in secrets_:
        assert secret.encode() not in dump


def test_rotated_refresh_token_survives_a_rolled_back_request(agency, world):
    """Olga's Test signs in to SMTP (refreshing: Microsoft rotates the refresh
    token), then IMAP fails and the whole request rolls back. The new refresh
    token was committed on its own: the next refresh works."""
    admin = world.admin
    (company,) = admin("res.company", "read", [agency.company], ["ally_smtp_imap_port"])
    dead = servers.free_port()
    agency.oauth.expire(OLGA)
    before = refreshes(agency)
    live_before = set(agency.oauth.stats()["microsoft"]["live_refresh_tokens"][OLGA])
    admin("res.company", "write", [agency.company], {"ally_smtp_imap_port": dead})
    try:
        with pytest.raises(xmlrpc.client.Fault) as caught:
            agency.rpc["olga"](
                "res.users", "action_ally_smtp_test", [agency.users["olga"]]
            )
        assert "IMAP" in caught.value.faultString
    finally:
        admin(
            "res.company",
            "write",
            [agency.company],
            {"ally_smtp_imap_port": company["ally_smtp_imap_port"]},
        )
    assert refreshes(agency) - before == 1
    # one refresh token was rotated: the old one died, a new one lives
    live = set(agency.oauth.stats()["microsoft"]["live_refresh_tokens"][OLGA])
    assert len(live - live_before) == 1
    assert len(live_before - live) == 1
    agency.oauth.expire(OLGA)
    agency.post("olga", "oauth-e2e after a rollback")
    sent = world.delivered("oauth-e2e after a rollback")
    assert {m["login"] for m in sent} == {OLGA}
    assert refreshes(agency) - before == 2
    assert agency.state("olga")["ally_smtp_state"] != "reconnect"
