"""Sign in with Google or Microsoft: OAuth 2.0, XOAUTH2, on the harness's
real authorization server (authlib), Dovecot (oauth2 passdb) and SMTP server.

The token refresh commits in a transaction of its own; the tests run in
Odoo's test mode (as HttpCase does), where that transaction is a savepoint of
the test's.
"""

import json
import time
from unittest import mock
from urllib.parse import parse_qs, urlsplit

from odoo import fields
from odoo.exceptions import AccessError, UserError
from odoo.tests import tagged

from ..lib import errors, oauth
from ..models import ally_smtp_oauth_token as oauth_token_module
from .common import AllySmtpCase, Mailbox
from .servers import OAuthServer, oauth_values


def code_and_state(location):
    query = parse_qs(urlsplit(location).query)
    return query.get("code", [None])[0], query.get("state", [None])[0]


@tagged("post_install", "-at_install")
class OAuthCase(AllySmtpCase):
    profile = oauth.GOOGLE

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.registry.enter_test_mode(cls.cr)
        cls.addClassCleanup(cls.registry.leave_test_mode)
        cls.oauth = OAuthServer(cls.harness)
        app = cls.harness["oauth"][cls.profile]
        params = cls.env["ir.config_parameter"].sudo()
        params.set_param(oauth.param(cls.profile), app["base_url"])
        params.set_param("web.base.url", "http://localhost:8069")
        cls.company.write(
            dict(oauth_values(cls.harness, cls.profile), ally_smtp_sent_copy="always")
        )
        cls.student = cls.env["res.partner"].create(
            {"name": "Student One", "email": "student1@school.test"}
        )
        cls.alice_box = Mailbox(cls.harness, "alice@agency.test")

    def setUp(self):
        super().setUp()
        self.oauth.reset()
        self.alice_box.purge()
        self.redirect = self.company.ally_smtp_oauth_redirect_uri

    # -- helpers --------------------------------------------------------------
    def connect(self, user, account=None):
        """Connect as a person would: consent as ``account``, then callback."""
        url, pending = (
            user.with_user(user)
            ._ally_smtp_own_mailbox()
            ._oauth_authorize(self.redirect)
        )
        location = self.oauth.consent(url, account or user.ally_smtp_email)
        code, state = code_and_state(location)
        self.assertEqual(state, pending["state"])
        return (
            user.with_user(user)
            ._ally_smtp_own_mailbox()
            ._oauth_finish(pending, code, self.redirect)
        )

    def token(self, user):
        return user._ally_smtp_mailbox()._oauth_token()

    def due(self, user):
        """Make the stored access token due for a refresh (seen by the
        refresh's own transaction: flushed)."""
        self.token(user).expires_at = time.time() - 1
        self.env.flush_all()

    def stored(self, user):
        return self.token(user)._tokens()

    def token_calls(self, grant_type="refresh_token"):
        return self.oauth.stats()[self.profile]["token"].get(grant_type, 0)

    def send(self, user, subject):
        mail = self.queue(user, subject)
        self.run_queue()
        mail.invalidate_recordset()
        return mail

    def xoauth2_logins(self, login):
        return [
            event
            for event in self.smtp.auth_attempts(login)
            if event[2] and event[3:] == ["XOAUTH2"]
        ]


class TestGoogle(OAuthCase):
    profile = oauth.GOOGLE

    def test_authorize_url_binds_pkce_state_and_login_hint(self):
        alice = self.alice
        url, pending = (
            alice.with_user(alice)
            ._ally_smtp_own_mailbox()
            ._oauth_authorize(self.redirect)
        )
        query = parse_qs(urlsplit(url).query)
        self.assertTrue(url.startswith(self.harness["oauth"]["google"]["base_url"]))
        self.assertEqual(query["login_hint"], ["alice@agency.test"])
        self.assertEqual(query["state"], [pending["state"]])
        self.assertEqual(query["code_challenge_method"], ["S256"])
        self.assertEqual(query["redirect_uri"], [self.redirect])
        self.assertIn("https://mail.google.com/", query["scope"][0])
        self.assertGreaterEqual(len(pending["state"]), 40)
        self.assertEqual(pending["uid"], alice.id)
        # nobody else starts a Connect for Alice
        with self.assertRaises(AccessError):
            alice.with_user(self.bob)._ally_smtp_own_mailbox()._oauth_authorize(
                self.redirect
            )

    def test_connect_send_and_file_over_xoauth2(self):
        connected, message = self.connect(self.alice)
        self.assertTrue(connected, message)
        self.assertIn("alice@agency.test", message)
        self.assertEqual(self.alice.ally_smtp_state, "ok")
        self.assertEqual(self.alice.ally_smtp_oauth_account, "alice@agency.test")
        self.assertEqual(self.alice.ally_smtp_sent_folder, "Sent")
        mail = self.send(self.alice, "Over XOAUTH2")
        self.assertEqual(mail.state, "sent", mail.failure_reason)
        sent = self.smtp.messages()
        self.assertEqual(len(sent), 1)
        self.assertEqual(sent[0]["mail_from"], "alice@agency.test")
        self.assertEqual(len(self.xoauth2_logins("alice@agency.test")), 2)  # Test, send
        with self.live():
            self.env["ally.smtp.sent.copy"]._ally_smtp_process()
        copies = self.alice_box.messages("Sent")
        self.assertEqual(len(copies), 1)
        self.assertEqual(copies[0][1]["Subject"], "Over XOAUTH2")

    def test_wrong_account_is_refused_and_nothing_stored(self):
        connected, message = self.connect(self.alice, account="bob@agency.test")
        self.assertFalse(connected)
        self.assertIn("bob@agency.test", message)
        self.assertIn("alice@agency.test", message)
        self.assertFalse(self.token(self.alice))
        self.assertNotEqual(self.alice.ally_smtp_state, "ok")
        # the token given for the wrong account was revoked at Google
        self.assertEqual(self.oauth.stats()["google"]["revocations"], 1)

    def test_tokens_are_encrypted_and_unreadable(self):
        self.connect(self.alice)
        tokens = self.stored(self.alice)
        self.env.cr.execute("SELECT tokens_crypt FROM ally_smtp_oauth_token")
        stored = self.env.cr.fetchone()[0]
        self.assertNotIn(tokens["access_token"], stored)
        self.assertNotIn(tokens["refresh_token"], stored)
        self.env.cr.execute("SELECT row_to_json(t)::text FROM ally_smtp_oauth_token t")
        row = self.env.cr.fetchone()[0]
        self.assertNotIn(tokens["refresh_token"], row)
        token = self.token(self.alice)
        for user in (self.alice, self.bob):
            with self.assertRaises(AccessError):
                token.with_user(user).read(["tokens_crypt"])
            with self.assertRaises(AccessError):
                self.env["ally.smtp.oauth.token"].with_user(user).search([])
        self.env.cr.execute(
            "SELECT ally_smtp_oauth_secret_crypt FROM res_company WHERE id = %s",
            [self.company.id],
        )
        secret = self.harness["oauth"]["google"]["client_secret"]
        self.assertNotIn(secret, self.env.cr.fetchone()[0])
        self.assertFalse(self.company.ally_smtp_oauth_client_secret)

    def test_expired_access_token_is_refreshed_silently_mid_queue(self):
        self.connect(self.alice)
        self.oauth.expire("alice@agency.test")
        self.due(self.alice)
        before = self.token_calls()
        mails = [self.queue(self.alice, f"Queued {i}") for i in range(3)]
        self.run_queue()
        for mail in mails:
            mail.invalidate_recordset()
            self.assertEqual(mail.state, "sent", mail.failure_reason)
        self.assertEqual(self.token_calls() - before, 1)
        self.assertEqual(len(self.smtp.messages()), 3)
        self.assertEqual(len(self.xoauth2_logins("alice@agency.test")), 2)

    def test_token_the_mailbox_refuses_is_refreshed_once(self):
        """Google refuses a bad token with a 334 challenge, then 535."""
        self.connect(self.alice)
        self.oauth.expire("alice@agency.test")  # the server refuses it early
        mail = self.send(self.alice, "After a refused token")
        self.assertEqual(mail.state, "sent", mail.failure_reason)
        self.assertEqual(self.token_calls(), 1)

    def test_revoked_grant_means_reconnect_and_no_more_calls(self):
        self.connect(self.alice)
        self.oauth.revoke("alice@agency.test")
        mail = self.send(self.alice, "Waits for a reconnect")
        self.assertEqual(mail.state, "outgoing")
        self.assertGreater(mail.scheduled_date, fields.Datetime.now())
        self.assertEqual(mail.ally_smtp_attempts, 0)
        self.assertIn("Reconnect", mail.failure_reason)
        self.assertEqual(self.alice.ally_smtp_state, "reconnect")
        calls = self.token_calls()
        logins = len(self.smtp.auth_attempts("alice@agency.test"))
        # nothing asks the provider or the mailbox again until a reconnect
        self.retry_now(mail)
        with self.assertRaises(UserError):
            self.alice.with_user(self.alice).action_ally_smtp_test()
        self.assertEqual(self.token_calls(), calls)
        self.assertEqual(len(self.smtp.auth_attempts("alice@agency.test")), logins)
        # reconnecting sends the waiting mail
        connected, message = self.connect(self.alice)
        self.assertTrue(connected, message)
        self.run_queue()
        mail.invalidate_recordset()
        self.assertEqual(mail.state, "sent", mail.failure_reason)

    def test_authorization_server_down_keeps_the_mail_queued(self):
        self.connect(self.alice)
        self.due(self.alice)
        self.oauth.fail("google", count=1, status=503)
        mail = self.send(self.alice, "Provider hiccup")
        self.assertEqual(mail.state, "outgoing")
        self.assertEqual(mail.ally_smtp_attempts, 1)
        self.assertEqual(self.alice.ally_smtp_state, "ok")
        self.retry_now(mail)
        self.assertEqual(mail.state, "sent", mail.failure_reason)

    def test_temporary_refusal_of_the_mailbox_is_retried(self):
        """``454 4.7.0`` at AUTH XOAUTH2 says nothing about the token."""
        self.connect(self.alice)
        self.smtp.fail(
            "AUTH",
            "454 4.7.0 Temporary authentication failure",
            times=1,
            mechanism="XOAUTH2",
        )
        mail = self.send(self.alice, "Server busy")
        self.assertEqual(mail.state, "outgoing")
        self.assertEqual(mail.ally_smtp_attempts, 1)
        self.assertEqual(self.alice.ally_smtp_state, "ok")
        self.assertEqual(self.token_calls(), 0)
        self.assertFalse(self.token(self.alice).broken)
        self.retry_now(mail)
        self.assertEqual(mail.state, "sent", mail.failure_reason)

    def test_fallback_asks_once_per_user_whether_the_mailbox_is_blocked(self):
        """With the fallback on, routing asks whether a sign-in is usable (a
        token lookup) once per user, not once per mail."""
        self.connect(self.alice)
        self.company.ally_smtp_fallback = True

        def queries(mails):
            self.env.invalidate_all()
            before = self.env.cr.sql_log_count
            routed = list(mails._split_by_mail_configuration())
            self.assertEqual(sum(len(batch[3]) for batch in routed), len(mails))
            return self.env.cr.sql_log_count - before

        few = self.env["mail.mail"].concat(
            *(self.queue(self.alice, f"few {i}") for i in range(2))
        )
        many = self.env["mail.mail"].concat(
            *(self.queue(self.alice, f"many {i}") for i in range(12))
        )
        queries(few)  # warm the caches that do not depend on the mails
        self.assertEqual(queries(few), queries(many))

    def test_refused_client_is_an_admin_problem(self):
        self.connect(self.alice)
        self.due(self.alice)
        self.oauth.secret("google", "rotated-by-the-admin")
        self.addCleanup(
            self.oauth.secret,
            "google",
            self.harness["oauth"]["google"]["client_secret"],
        )
        mail = self.send(self.alice, "App refused")
        self.assertEqual(mail.state, "outgoing")
        self.assertEqual(mail.ally_smtp_attempts, 0)
        self.assertIn("administrator", mail.failure_reason)
        self.company.invalidate_recordset()
        self.assertIn("administrator", self.company.ally_smtp_oauth_refused)
        self.assertNotEqual(self.alice.ally_smtp_state, "reconnect")
        calls = self.oauth.stats()["google"]["token"].get("refresh_token", 0)
        self.retry_now(mail)  # paused for the company: no further calls
        self.assertEqual(
            self.oauth.stats()["google"]["token"].get("refresh_token", 0), calls
        )
        # the admin enters the new secret: the waiting mail goes
        self.company.ally_smtp_oauth_client_secret = "rotated-by-the-admin"
        self.env.flush_all()  # what the refresh's own transaction reads
        self.assertFalse(self.company.ally_smtp_oauth_refused)
        self.run_queue()
        mail.invalidate_recordset()
        self.assertEqual(mail.state, "sent", mail.failure_reason)

    def test_disconnect_revokes_and_forgets(self):
        self.connect(self.alice)
        refresh = self.stored(self.alice)["refresh_token"]
        self.alice.with_user(self.alice).action_ally_smtp_oauth_disconnect()
        self.assertFalse(self.token(self.alice))
        self.assertFalse(self.alice.ally_smtp_oauth_account)
        self.assertNotIn(
            refresh,
            json.dumps(self.oauth.stats()["google"].get("live_refresh_tokens", {})),
        )
        mail = self.send(self.alice, "Not connected")
        self.assertEqual(mail.state, "outgoing")
        self.assertEqual(self.smtp.messages(), [])
        with self.assertRaises(AccessError):
            self.alice.with_user(self.bob).action_ally_smtp_oauth_disconnect()

    def test_integrate_checks_the_app(self):
        self.company.action_ally_smtp_integrate()
        self.assertTrue(self.company.ally_smtp_integrated)
        self.company.ally_smtp_oauth_client_secret = "not-the-secret"
        with self.assertRaisesRegex(UserError, "client"):
            self.company.action_ally_smtp_integrate()

    def test_token_endpoint_failures_are_judged_in_one_place(self):
        cases = [
            (oauth.Unreachable("HTTP 503"), errors.TEMPORARY, "did not answer"),
            (oauth.OAuthError("slow_down"), errors.TEMPORARY, "slow_down"),
            (oauth.OAuthError("invalid_grant"), errors.RECONNECT, "invalid_grant"),
            (oauth.OAuthError("invalid_client"), errors.ADMIN, "client secret"),
        ]
        for exc, kind, words in cases:
            with (
                self.subTest(exc=exc),
                self.assertRaises(oauth.Problem) as caught,
                self.company._ally_smtp_token_errors("google", note_refusal=False),
            ):
                raise exc
            self.assertEqual(caught.exception.kind, kind)
            self.assertIn(words, caught.exception.message)
            self.assertIn("Google", caught.exception.message)
            self.assertEqual(caught.exception.error, getattr(exc, "error", ""))
        self.assertFalse(self.company.ally_smtp_oauth_refused)  # not noted
        # connecting: each failure asks to press Connect again
        for fault, words in (
            ({"status": 503}, "did not answer"),
            ({"status": 400, "error": "invalid_grant"}, "invalid_grant"),
        ):
            with self.subTest(fault=fault):
                self.oauth.fail("google", count=1, **fault)
                connected, message = self.connect(self.alice)
                self.assertFalse(connected)
                self.assertIn(words, message)
                self.assertIn("Press Connect again", message)
                self.assertFalse(self.token(self.alice))

    def test_endpoints_are_https_or_loopback(self):
        params = self.env["ir.config_parameter"].sudo()
        params.set_param(oauth.param("google"), "http://auth.example.com")
        with self.assertRaises(ValueError):
            oauth.endpoint(self.env, "google", "/token")
        params.set_param(oauth.param("google"), False)
        self.assertEqual(
            oauth.endpoint(self.env, "google", "/token"),
            "https://oauth2.googleapis.com/token",
        )
        self.assertEqual(
            oauth.endpoint(self.env, "microsoft", "/oauth2/v2.0/token", "consumers"),
            "https://login.microsoftonline.com/consumers/oauth2/v2.0/token",
        )

    def test_presets_pick_the_sign_in_method(self):
        settings = self.env["res.config.settings"].create({})
        for provider, method, tenant in (
            ("gmail", "google", None),
            ("microsoft365", "microsoft", "organizations"),
            ("outlook", "microsoft", "consumers"),
            ("locaweb", "password", None),
        ):
            settings.ally_smtp_provider = provider
            settings._onchange_ally_smtp_provider()
            self.assertEqual(settings.ally_smtp_auth_method, method)
            if tenant:
                self.assertEqual(settings.ally_smtp_oauth_tenant, tenant)

    def test_odoo_gmail_app_is_the_default(self):
        params = self.env["ir.config_parameter"].sudo()
        params.set_param("google_gmail_client_id", "odoo-gmail-app")
        params.set_param("google_gmail_client_secret", "odoo-gmail-secret")
        company = self.env["res.company"].create(
            {"name": "Other agency", "ally_smtp_auth_method": "google"}
        )
        self.assertEqual(
            company._ally_smtp_oauth_client(), ("odoo-gmail-app", "odoo-gmail-secret")
        )
        self.assertTrue(company.ally_smtp_oauth_secret_set)


class TestMicrosoft(OAuthCase):
    profile = oauth.MICROSOFT

    def test_connect_checks_the_id_token_account(self):
        connected, message = self.connect(self.alice)
        self.assertTrue(connected, message)
        connected, message = self.connect(self.alice, account="bob@agency.test")
        self.assertFalse(connected)
        self.assertIn("bob@agency.test", message)
        # the earlier connection stays as it was
        self.assertEqual(self.alice.ally_smtp_oauth_account, "alice@agency.test")

    def test_rotated_refresh_token_is_kept(self):
        """Microsoft rotates the refresh token on each use: the new one is
        stored (committed at once; e2e/test_oauth.py proves it outlives a
        rolled-back request)."""
        self.connect(self.alice)
        old = self.stored(self.alice)["refresh_token"]
        self.due(self.alice)
        self.smtp.fail("DATA", "554 5.6.0 Message refused", times=1)
        failed = self.send(self.alice, "Refused, after a refresh")
        self.assertEqual(failed.state, "exception")
        self.token(self.alice).invalidate_recordset()
        new = self.stored(self.alice)["refresh_token"]
        self.assertNotEqual(new, old)
        live = self.oauth.stats()["microsoft"]["live_refresh_tokens"]
        self.assertIn(new, live.get("alice@agency.test", []))
        self.assertNotIn(old, live.get("alice@agency.test", []))
        # and the next send, once the access token is due again, works
        self.due(self.alice)
        mail = self.send(self.alice, "After the rotation")
        self.assertEqual(mail.state, "sent", mail.failure_reason)

    def test_connect_tests_a_short_lived_token_as_received(self):
        """An access token that lives less than the renewal margin (a tenant
        policy, a slow consent screen) is tested as received: the new grant
        is not committed yet, so no transaction of its own may renew it
        (e2e/test_oauth.py connects so through the prefork server)."""
        self.oauth.lifetime(self.profile, 30)
        connected, message = self.connect(self.alice)
        self.assertTrue(connected, message)
        self.assertEqual(self.alice.ally_smtp_state, "ok")
        self.assertEqual(self.token_calls(), 0)
        self.assertEqual(len(self.xoauth2_logins("alice@agency.test")), 1)
        received = self.stored(self.alice)["refresh_token"]
        mail = self.send(self.alice, "After a short-lived token")
        self.assertEqual(mail.state, "sent", mail.failure_reason)
        (sent,) = self.smtp.messages()
        self.assertEqual(sent["mail_from"], "alice@agency.test")
        # renewed before the send, and the rotated refresh token kept
        self.assertEqual(self.token_calls(), 1)
        self.token(self.alice).invalidate_recordset()
        rotated = self.stored(self.alice)["refresh_token"]
        self.assertNotEqual(rotated, received)
        live = self.oauth.stats()["microsoft"]["live_refresh_tokens"]
        self.assertEqual(live["alice@agency.test"], [rotated])

    def test_connect_with_a_token_run_out_keeps_the_grant(self):
        """A received access token that ran out before the test is not
        renewed in Connect's transaction either: the grant is kept, the
        test says so, and mail leaves with a renewed token."""
        self.oauth.lifetime(self.profile, 30)
        later = mock.Mock(time=lambda: time.time() + 60)
        with mock.patch.object(oauth_token_module, "time", later):
            connected, message = self.connect(self.alice)
        self.assertFalse(connected)
        self.assertIn("ran out", message)
        self.assertEqual(self.token_calls(), 0)
        self.assertEqual(self.alice.ally_smtp_state, "untested")
        self.assertEqual(self.alice.ally_smtp_oauth_account, "alice@agency.test")
        mail = self.send(self.alice, "After a token that ran out")
        self.assertEqual(mail.state, "sent", mail.failure_reason)
        self.assertEqual(self.token_calls(), 1)

    def test_microsoft_style_refusal_then_reconnect(self):
        self.smtp.xoauth2_style("microsoft")
        self.connect(self.alice)
        self.oauth.revoke("alice@agency.test")
        mail = self.send(self.alice, "Refused")
        self.assertEqual(mail.state, "outgoing")
        self.assertEqual(self.alice.ally_smtp_state, "reconnect")

    def test_common_tenant_is_explained_at_integrate(self):
        self.company.ally_smtp_oauth_tenant = "common"
        with self.assertRaises(UserError):
            self.company.action_ally_smtp_integrate()
