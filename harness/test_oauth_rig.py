"""The OAuth rig behaves like Google and Microsoft: the authorization server
(harness/oauth_server.py), Dovecot's AUTHENTICATE XOAUTH2 and the SMTP server's
AUTH XOAUTH2, with real calls. Run by ``python3 -m harness test
harness/test_oauth_rig.py`` (it needs the servers the harness starts)."""

import base64
import hashlib
import imaplib
import importlib.util
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.parse
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "ally_smtp_servers",
    Path(__file__).resolve().parent.parent / "ally_smtp" / "tests" / "servers.py",
)
servers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(servers)

ALICE, BOB, CAROL = "alice@agency.test", "bob@agency.test", "carol@agency.test"
PROFILES = ["google", "microsoft"]


@pytest.fixture(scope="module")
def info():
    return servers.harness()


def _reset_around(client):
    """``client`` on a server reset before the test and after it."""
    client.reset()
    yield client
    client.reset()


@pytest.fixture
def oauth(info):
    yield from _reset_around(servers.OAuthServer(info))


@pytest.fixture
def smtp(info):
    yield from _reset_around(servers.SmtpServer(info))


def query(location):
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def code_for(oauth, profile, email, challenge="x" * 43, **params):
    """Consent as ``email``: the redirect's query (code, state)."""
    url = oauth.authorize_url(profile, challenge, **params)
    return query(oauth.consent(url, email))


def s256(verifier):
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def refused(call, *args, **kwargs):
    with pytest.raises(servers.OAuthError) as caught:
        call(*args, **kwargs)
    return caught.value


# -- the authorization server -------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_code_flow_with_pkce(oauth, info, profile):
    token = oauth.grant(profile, ALICE, nonce="n-1")
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert token["scope"] == servers.OAUTH_SCOPES[profile]
    assert token["refresh_token"]
    claims = servers.id_token_claims(token["id_token"])
    assert claims["aud"] == info["oauth"][profile]["client_id"]
    assert (claims["email"], claims["nonce"]) == (ALICE, "n-1")
    assert claims["exp"] > claims["iat"]
    if profile == "google":
        assert claims["email_verified"] is True
    else:
        assert claims["preferred_username"] == ALICE
    answer = oauth.introspect(token["access_token"])
    assert answer["active"] is True
    assert (answer["email"], answer["username"]) == (ALICE, ALICE)
    assert answer["client_id"] == info["oauth"][profile]["client_id"]
    assert answer["exp"] > time.time()
    stats = oauth.stats()[profile]
    assert stats["token"] == {"authorization_code": 1}
    assert stats["grants"] == [
        {"email": ALICE, "scope": servers.OAUTH_SCOPES[profile], "active": True}
    ]
    assert stats["live_refresh_tokens"] == {ALICE: [token["refresh_token"]]}
    # a subset of the scopes is granted as asked; no openid, no id_token
    token = oauth.grant(profile, BOB, scope="email")
    assert token["scope"] == "email" and "id_token" not in token


def test_code_is_single_use_and_bound_to_its_redirect(oauth):
    verifier = "v" * 50
    reply = code_for(oauth, "google", ALICE, s256(verifier), state="s-1")
    assert reply["state"] == "s-1"
    exchange = {"grant_type": "authorization_code", "code": reply["code"]}
    exchange["code_verifier"] = verifier
    other = "http://localhost:8070/ally_smtp/oauth/callback"
    error = refused(oauth.token_request, "google", redirect_uri=other, **exchange)
    assert (error.status, error.error) == (400, "invalid_grant")
    assert oauth.token_request("google", redirect_uri=oauth.REDIRECT_URI, **exchange)[
        "access_token"
    ]
    error = refused(
        oauth.token_request, "google", redirect_uri=oauth.REDIRECT_URI, **exchange
    )
    assert error.error == "invalid_grant"


def test_pkce_s256_is_required(oauth):
    for params in ({"code_challenge": None}, {"code_challenge_method": "plain"}):
        url = oauth.authorize_url("microsoft", "c" * 43, state="s-2", **params)
        reply = query(oauth.consent(url, ALICE))
        assert (reply["error"], reply["state"]) == ("invalid_request", "s-2")
    reply = code_for(oauth, "google", ALICE, s256("v" * 50))
    exchange = {"grant_type": "authorization_code", "code": reply["code"]}
    exchange["redirect_uri"] = oauth.REDIRECT_URI
    assert refused(oauth.token_request, "google", **exchange).error == (
        "invalid_request"  # no code_verifier
    )
    error = refused(oauth.token_request, "google", code_verifier="w" * 50, **exchange)
    assert error.error == "invalid_grant"


def test_client_authentication(oauth):
    reply = code_for(oauth, "google", ALICE, s256("v" * 50))
    form = {
        "grant_type": "authorization_code",
        "code": reply["code"],
        "redirect_uri": oauth.REDIRECT_URI,
        "code_verifier": "v" * 50,
    }
    error = refused(oauth.token_request, "google", secret="not-the-secret", **form)
    assert (error.status, error.error) == (401, "invalid_client")
    token = oauth.token_request("google", basic=True, **form)  # client_secret_basic
    oauth.secret("google", "rotated")
    error = refused(oauth.refresh, "google", token["refresh_token"])
    assert (error.status, error.error) == (401, "invalid_client")
    assert oauth.refresh("google", token["refresh_token"], secret="rotated")
    oauth.reset()  # brings the registered secret back
    assert refused(oauth.refresh, "google", token["refresh_token"]).error == (
        "invalid_grant"  # and forgets the grants
    )


def test_consent_page(oauth):
    url = oauth.authorize_url("google", "c" * 43, login_hint=ALICE, state="s-3")
    _status, _headers, page = servers._http(url)
    page = page.decode()
    assert 'method="post"' in page and f'value="{ALICE}"' in page
    assert ">Allow</button>" in page and ">Deny</button>" in page
    with pytest.raises(ValueError, match="No account stranger@example.com"):
        oauth.consent(url, "stranger@example.com")
    reply = query(oauth.consent(url, ALICE, decision="deny"))
    assert (reply["error"], reply["state"]) == ("access_denied", "s-3")
    # an application's redirect URI must be the addon's callback on loopback
    elsewhere = "https://attacker.example/ally_smtp/oauth/callback"
    with pytest.raises(ValueError, match="invalid_request"):
        oauth.consent(oauth.authorize_url("google", "c" * 43, elsewhere), ALICE)
    other_port = "http://localhost:18069/ally_smtp/oauth/callback"
    assert query(
        oauth.consent(oauth.authorize_url("google", "c" * 43, other_port), ALICE)
    )["code"]


def test_google_userinfo_and_unrotated_refresh_token(oauth):
    token = oauth.grant("google", ALICE)
    for _ in range(2):
        again = oauth.refresh("google", token["refresh_token"])
        assert "refresh_token" not in again and again["access_token"]
    assert oauth.stats()["google"]["live_refresh_tokens"] == {
        ALICE: [token["refresh_token"]]
    }
    url = oauth.endpoint("google", "userinfo")
    bearer = {"Authorization": f"Bearer {again['access_token']}"}
    status, _headers, body = servers._http(url, headers=bearer)
    assert status == 200
    assert json.loads(body) == {
        "email": ALICE,
        "verified_email": True,
        "id": json.loads(body)["id"],
    }
    status, _headers, _body = servers._http(url, headers={"Authorization": "Bearer x"})
    assert status == 401
    assert oauth.stats()["google"]["userinfo"] == 2


def test_microsoft_rotates_refresh_tokens_and_refuses_common(oauth, info):
    token = oauth.grant("microsoft", ALICE)
    new = oauth.refresh("microsoft", token["refresh_token"])
    assert new["refresh_token"] != token["refresh_token"]
    assert servers.id_token_claims(new["id_token"])["preferred_username"] == ALICE
    error = refused(oauth.refresh, "microsoft", token["refresh_token"])
    assert (error.status, error.error) == (400, "invalid_grant")
    live = oauth.stats()["microsoft"]["live_refresh_tokens"]
    assert live == {ALICE: [new["refresh_token"]]}
    assert oauth.refresh("microsoft", new["refresh_token"])["refresh_token"]
    # a single-tenant app: /common is refused, at authorize and at token
    tenant = info["oauth"]["microsoft"]["tenant"]
    url = oauth.authorize_url("microsoft", "c" * 43).replace(tenant, "common")
    reply = query(oauth.consent(url, ALICE))
    assert reply["error"] == "invalid_request"
    assert reply["error_description"].startswith("AADSTS50194")
    token_url = oauth.endpoint("microsoft", "token").replace(tenant, "common")
    status, _headers, body = servers._http(token_url, {"grant_type": "refresh_token"})
    assert (status, json.loads(body)["error"]) == (400, "invalid_request")


def test_revocation(oauth):
    token = oauth.grant("google", ALICE)
    url = oauth.endpoint("google", "revoke")
    status, _headers, _body = servers._http(url, {"token": token["access_token"]})
    assert status == 200  # the whole grant goes, refresh token included
    assert refused(oauth.refresh, "google", token["refresh_token"]).error == (
        "invalid_grant"
    )
    for value in (token["access_token"], token["refresh_token"]):
        assert oauth.introspect(value) == {"active": False}
    stats = oauth.stats()["google"]
    assert stats["revocations"] == 1 and stats["live_refresh_tokens"] == {}
    # the control route revokes every grant of the account, in both profiles
    google, microsoft = oauth.grant("google", BOB), oauth.grant("microsoft", BOB)
    oauth.revoke(BOB)
    for profile, token in (("google", google), ("microsoft", microsoft)):
        assert refused(oauth.refresh, profile, token["refresh_token"]).error == (
            "invalid_grant"
        )
        assert oauth.introspect(token["access_token"]) == {"active": False}
    status, _headers, _body = servers._http(
        oauth.endpoint("microsoft", "token").replace("/token", "/revoke"),
        {"token": "x"},
    )
    assert status == 404  # Microsoft has no revocation endpoint


def test_lifetime_and_expire(oauth):
    oauth.lifetime("microsoft", 1)
    token = oauth.grant("microsoft", ALICE)
    assert token["expires_in"] == 1
    assert oauth.introspect(token["access_token"])["active"] is True
    time.sleep(1.2)
    assert oauth.introspect(token["access_token"]) == {"active": False}
    token = oauth.grant("google", ALICE)  # other profile: default lifetime
    assert token["expires_in"] == 3600
    oauth.expire(ALICE)
    assert oauth.introspect(token["access_token"]) == {"active": False}
    fresh = oauth.refresh("google", token["refresh_token"])
    assert oauth.introspect(fresh["access_token"])["active"] is True


def test_fail_and_down(oauth):
    token = oauth.grant("google", ALICE)
    oauth.fail("google", count=2, status=503)
    for _ in range(2):
        assert refused(oauth.refresh, "google", token["refresh_token"]).status == 503
    assert oauth.refresh("google", token["refresh_token"])["access_token"]
    oauth.fail("google", error="invalid_grant", hang=1)
    started = time.monotonic()
    error = refused(oauth.refresh, "google", token["refresh_token"])
    assert time.monotonic() - started >= 1
    assert (error.status, error.error) == (400, "invalid_grant")
    stats = oauth.stats()["google"]
    assert stats["token"]["refresh_token"] == 4 and stats["failed"] == 3
    # down: the connection is accepted, the request never answered
    oauth.down(30)
    form = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        servers._http(oauth.endpoint("google", "token"), form, timeout=1)
    assert oauth.stats()["google"]["token"]["refresh_token"] == 5  # control works
    assert oauth.introspect(token["access_token"])["active"] is True
    oauth.up()
    assert oauth.refresh("google", token["refresh_token"])["access_token"]


# -- Dovecot: AUTHENTICATE XOAUTH2 ---------------------------------------------
def imap_xoauth2(info, login, access_token, mechanism="XOAUTH2"):
    """Sign in to IMAP with XOAUTH2 (or OAUTHBEARER, RFC 7628); the
    challenges Dovecot sent."""
    response = servers.xoauth2(login, access_token)
    if mechanism == "OAUTHBEARER":
        response = f"n,a={login},\x01auth=Bearer {access_token}\x01\x01"
    context = ssl.create_default_context(cafile=info["ca_file"])
    imap = imaplib.IMAP4_SSL(
        info["imap"]["host"], info["imap"]["port"], ssl_context=context, timeout=10
    )
    challenges = []

    def answer(challenge):
        challenges.append(challenge)
        return response.encode() if len(challenges) == 1 else b""

    with imap:
        imap.authenticate(mechanism, answer)
        typ, _data = imap.select("INBOX")
        assert typ == "OK"
    return challenges[1:]


def test_imap_xoauth2(oauth, info):
    token = oauth.grant("google", ALICE)
    assert imap_xoauth2(info, ALICE, token["access_token"]) == []
    assert imap_xoauth2(info, ALICE, token["access_token"], "OAUTHBEARER") == []
    # another account's token, a password as token: refused (the password
    # passdb is not asked for XOAUTH2)
    for login, secret in (
        (BOB, token["access_token"]),
        (CAROL, info["mailboxes"][CAROL]),
    ):
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap_xoauth2(info, login, secret)
    oauth.revoke(ALICE)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_xoauth2(info, ALICE, token["access_token"])
    token = oauth.grant("microsoft", ALICE)  # ~2 kB, like Microsoft's
    assert len(token["access_token"]) > 2000
    imap_xoauth2(info, ALICE, token["access_token"])
    oauth.expire(ALICE)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_xoauth2(info, ALICE, token["access_token"])
    with servers.Mailbox(info, CAROL).connect() as imap:  # passwords still work
        assert imap.state == "AUTH"


# -- the SMTP server: AUTH XOAUTH2 ---------------------------------------------
def smtp_xoauth2(info, login, access_token, initial_response=True):
    """AUTH XOAUTH2 as smtplib does; ``(reply, challenges, connection)``, the
    challenges being what smtplib passed to the answering function (None for
    the initial response)."""
    context = ssl.create_default_context(cafile=info["ca_file"])
    connection = smtplib.SMTP_SSL(
        "localhost", info["smtp"]["ports"]["ssl"], context=context, timeout=10
    )
    connection.ehlo()
    challenges = []

    def answer(challenge=None):
        challenges.append(challenge)
        return servers.xoauth2(login, access_token) if len(challenges) == 1 else ""

    try:
        reply = connection.auth("XOAUTH2", answer, initial_response_ok=initial_response)
    except smtplib.SMTPAuthenticationError as exc:
        reply = (exc.smtp_code, exc.smtp_error)
    return reply, challenges, connection


def test_smtp_xoauth2(oauth, smtp, info):
    token = oauth.grant("microsoft", BOB)  # ~2 kB: the AUTH line is ~2.8 kB
    for initial_response in (True, False):
        reply, challenges, connection = smtp_xoauth2(
            info, BOB, token["access_token"], initial_response
        )
        with connection:
            assert "XOAUTH2" in connection.esmtp_features["auth"].split()
            assert reply[0] == 235
            assert challenges == ([None] if initial_response else [b""])
            connection.sendmail(BOB, ["student1@school.test"], b"Subject: x\r\n\r\nx")
    assert [m["login"] for m in smtp.messages()] == [BOB, BOB]
    assert smtp.auth_attempts(BOB) == [["auth", BOB, True, "XOAUTH2"]] * 2
    assert smtp.auth_attempts(mechanism="XOAUTH2") == smtp.auth_attempts(BOB)


def test_smtp_xoauth2_refusals(oauth, smtp, info):
    token = oauth.grant("google", ALICE)
    # Google: a 334 challenge with a JSON error, an empty answer, then 535
    oauth.revoke(ALICE)
    reply, challenges, connection = smtp_xoauth2(info, ALICE, token["access_token"])
    connection.close()
    assert reply == (535, b"5.7.8 Username and Password not accepted")
    assert [json.loads(c) for c in challenges[1:]] == [
        {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}
    ]
    # Microsoft: 535 at once
    smtp.xoauth2_style("microsoft")
    token = oauth.grant("google", BOB)
    reply, challenges, connection = smtp_xoauth2(info, ALICE, token["access_token"])
    connection.close()
    assert (reply, challenges) == ((535, b"5.7.3 Authentication unsuccessful"), [None])
    assert smtp.auth_attempts(ALICE) == [["auth", ALICE, False, "XOAUTH2"]] * 2
    # a fault for XOAUTH2 only: 454, while passwords sign in
    smtp.fail("AUTH", "454 4.7.0 Temporary authentication failure", mechanism="XOAUTH2")
    reply, _challenges, connection = smtp_xoauth2(info, BOB, token["access_token"])
    with connection:
        assert reply == (454, b"4.7.0 Temporary authentication failure")
        connection.login(CAROL, info["mailboxes"][CAROL])
    smtp.reset()  # back to the Google style, faults gone
    reply, _challenges, connection = smtp_xoauth2(info, BOB, token["access_token"])
    connection.close()
    assert reply[0] == 235
