"""The screens, walked like a person in a real browser (English and pt_BR).

Odoo's own test runner runs these (``make test`` does it): pytest-odoo does
not host the HTTP server and browser that tours need.
"""

import base64
import contextlib
import json
import os
import re
from pathlib import Path
from unittest.mock import patch

from odoo.tests import HttpCase, new_test_user, tagged
from odoo.tests.common import ChromeBrowser
from odoo.tools import mute_logger

from .common import AllySmtpMixin, free_port
from .servers import OAuthServer, oauth_values

LANGS = {"en_US": "en", "pt_BR": "pt_BR"}


@tagged("post_install", "-at_install", "ally_smtp_tours")
class TestTours(AllySmtpMixin, HttpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.load_portuguese([("state", "=", "installed")])  # whole screens
        cls.student = cls.env["res.partner"].create(
            {"name": "Student One", "email": "student1@school.test"}
        )
        # students follow their own record: chatter messages reach them
        cls.student.message_subscribe(cls.student.ids)

    def tour(self, url, name, user, lang, values=None, screenshot=None):
        user.lang = lang
        code = (
            f"window.allySmtpTour = {json.dumps(dict(values or {}, lang=lang))}; "
            f"odoo.startTour({json.dumps(name)}, "
            f"{json.dumps({'stepDelay': 0, 'startUrl': url})})"
        )
        folder = os.environ.get("ALLY_SMTP_SCREENSHOTS")
        with self.live(), self._screenshot_at_stop(folder, screenshot, lang):
            # the browser's requests really talk to the harness servers
            self.start_tour(url, name, login=user.login, code=code, timeout=180)

    @contextlib.contextmanager
    def _screenshot_at_stop(self, folder, name, lang):
        """``make screenshots``: keep what the browser shows when the tour ends."""
        if not (folder and name):
            yield
            return
        stop = ChromeBrowser.stop

        def capture_then_stop(browser):
            shot = browser._websocket_send(
                "Page.captureScreenshot", with_future=True
            ).result(timeout=30)
            path = Path(folder) / f"{name}.{LANGS[lang]}.png"
            path.write_bytes(base64.b64decode(shot["data"]))
            return stop(browser)

        with patch.object(ChromeBrowser, "stop", capture_then_stop):
            yield

    def test_admin_integrates_the_agency_server(self):
        admin = self.env.ref("base.user_admin")
        for lang in LANGS:
            with self.subTest(lang=lang):
                self.company.write(self.company_values(ally_smtp_host="smtp.invalid"))
                self.assertFalse(self.company.ally_smtp_integrated)
                self.tour(
                    "/odoo/settings",
                    "ally_smtp_settings",
                    admin,
                    lang,
                    None,
                    "settings",
                )
                self.assertEqual(self.company.ally_smtp_host, "localhost")
                self.assertTrue(self.company.ally_smtp_integrated)

    def test_consultant_sets_up_and_tests_their_mailbox(self):
        carol = new_test_user(
            self.env,
            login="carol",
            name="Carol Consultant",
            groups="base.group_user,base.group_partner_manager",
        )
        mailbox = "carol@agency.test"
        values = {"email": mailbox, "password": self.harness["mailboxes"][mailbox]}
        for lang in LANGS:
            with self.subTest(lang=lang):
                self.smtp.reset()
                self.tour(
                    "/odoo", "ally_smtp_preferences", carol, lang, values, "preferences"
                )
                self.env.invalidate_all()  # what the browser's requests wrote
                self.assertEqual(carol.ally_smtp_state, "ok")
                # the refusal is a UserError, which odoo.http logs as a warning
                with mute_logger("odoo.http"):
                    self.tour(
                        "/odoo", "ally_smtp_preferences_wrong_password", carol, lang
                    )
                self.env.invalidate_all()
                self.assertEqual(carol.ally_smtp_email, mailbox)
                self.assertTrue(carol.ally_smtp_use_own)
                # the good password signed in, then the wrong one was refused
                self.assertEqual(
                    [a[2] for a in self.smtp.auth_attempts(mailbox)][:1], [True]
                )
                self.assertFalse(self.smtp.auth_attempts(mailbox)[-1][2])
                self.assertEqual(carol.ally_smtp_state, "failed")

    def test_consultant_writes_to_a_student(self):
        for lang in LANGS:
            with self.subTest(lang=lang):
                self.smtp.reset()
                self.tour(
                    f"/odoo/res.partner/{self.student.id}",
                    "ally_smtp_student_message",
                    self.alice,
                    lang,
                )
                self.env.invalidate_all()
                message = self.student.message_ids[0]
                # Test cursors drop Odoo's after-commit send: the queue sends it
                with self.live():
                    self.env["mail.mail"].process_email_queue()
                self.assertEqual(message.notification_ids.res_partner_id, self.student)
                (sent,) = self.smtp.messages()
                self.assertEqual(sent["login"], "alice@agency.test")
                self.assertEqual(sent["rcpt_tos"], ["student1@school.test"])
                self.assertIn("Hello from your consultant", message.body)
                self.assertEqual(message.notification_ids.notification_status, "sent")

    # -- sign in with Google or Microsoft (OAuth) --------------------------------
    def oauth_company(self, profile):
        app = self.harness["oauth"][profile]
        params = self.env["ir.config_parameter"].sudo()
        params.set_param(f"ally_smtp.oauth_{profile}_base_url", app["base_url"])
        params.set_param("web.base.url", self.base_url())
        self.company.write(oauth_values(self.harness, profile))

    def test_admin_chooses_microsoft_sign_in(self):
        admin = self.env.ref("base.user_admin")
        for lang in LANGS:
            with self.subTest(lang=lang):
                self.company.write(
                    {
                        "ally_smtp_auth_method": "password",
                        "ally_smtp_oauth_client_id": False,
                    }
                )
                self.tour(
                    "/odoo/settings",
                    "ally_smtp_settings_oauth",
                    admin,
                    lang,
                    None,
                    "settings_oauth",
                )
                self.assertEqual(self.company.ally_smtp_auth_method, "microsoft")
                self.assertEqual(
                    self.company.ally_smtp_oauth_tenant, "contoso.onmicrosoft.com"
                )

    def test_consultant_connects_their_google_account(self):
        self.oauth_company("google")
        mailbox = "consultant01@agency.test"
        dave = new_test_user(
            self.env,
            login="dave",
            name="Dave Consultant",
            groups="base.group_user,base.group_partner_manager",
        )
        dave.with_user(dave).write(
            {"ally_smtp_use_own": True, "ally_smtp_email": mailbox}
        )
        oauth_server = OAuthServer(self.harness)
        for lang in LANGS:
            with self.subTest(lang=lang):
                dave._ally_smtp_mailbox()._oauth_token().unlink()
                self.tour(
                    "/odoo",
                    "ally_smtp_preferences_oauth_connect",
                    dave,
                    lang,
                    {"email": mailbox},
                    "preferences_oauth_connect",
                )
                # the browser's way: Connect, the provider's consent, back
                self.authenticate("dave", "dave")
                with self.live():
                    start = self.url_open(
                        "/ally_smtp/oauth/start", allow_redirects=False
                    )
                    self.assertEqual(start.status_code, 303, start.text[:300])
                    callback = oauth_server.consent(start.headers["Location"], mailbox)
                    self.assertTrue(callback.startswith(self.base_url()), callback)
                    page = self.url_open(callback)
                    self.assertIn("o_ally_smtp_oauth_result", page.text)
                    self.assertIn(mailbox, page.text)
                    self.assertIn("alert-success", page.text)
                    # the same answer again, or a forged one: refused
                    replay = self.url_open(callback)
                    forged = self.url_open(callback.split("state=")[0] + "state=forged")
                for refused in (replay, forged):
                    self.assertIn("alert-danger", refused.text)
                self.env.invalidate_all()
                self.assertEqual(dave.ally_smtp_state, "ok")
                self.assertEqual(dave.ally_smtp_oauth_account, mailbox)
                self.tour(
                    "/odoo",
                    "ally_smtp_preferences_oauth_connected",
                    dave,
                    lang,
                    {"email": mailbox},
                    "preferences_oauth_connected",
                )
                # the result page's "Back to My Profile" opens the preferences
                link = re.search(r'href="(/odoo/action-[^"]+)"', page.text).group(1)
                self.tour(
                    link, "ally_smtp_my_profile_link", dave, lang, {"email": mailbox}
                )

    def test_callback_of_another_user_is_refused(self):
        self.oauth_company("google")
        mailbox = "consultant02@agency.test"
        erin = new_test_user(
            self.env, login="erin", groups="base.group_user", name="Erin Consultant"
        )
        erin.with_user(erin).write(
            {"ally_smtp_use_own": True, "ally_smtp_email": mailbox}
        )
        oauth_server = OAuthServer(self.harness)
        self.authenticate("erin", "erin")
        start = self.url_open("/ally_smtp/oauth/start", allow_redirects=False)
        callback = oauth_server.consent(start.headers["Location"], mailbox)
        # Bob, in his own browser session, opens Erin's answer
        self.authenticate(self.bob.login, self.bob.login)
        page = self.url_open(callback)
        self.assertIn("alert-danger", page.text)
        self.env.invalidate_all()
        self.assertFalse(erin._ally_smtp_mailbox()._oauth_token())
        self.assertFalse(self.bob._ally_smtp_mailbox()._oauth_token())

    # -- replies come home (#19) ---------------------------------------------------
    def test_admin_sees_the_replies_setting(self):
        admin = self.env.ref("base.user_admin")
        for lang in LANGS:
            with self.subTest(lang=lang):
                self.company.ally_smtp_fetch_replies = True
                self.tour(
                    "/odoo/settings",
                    "ally_smtp_replies_settings",
                    admin,
                    lang,
                    None,
                    "settings_replies",
                )
                self.assertFalse(self.company.ally_smtp_fetch_replies)

    def test_consultant_sees_when_replies_were_checked(self):
        self.company.ally_smtp_fetch_replies = True
        with self.live():
            self.alice._ally_smtp_mailbox()._test()
        box = self.alice._ally_smtp_mailbox()
        port = self.company.ally_smtp_imap_port
        for lang in LANGS:
            with self.subTest(lang=lang):
                self.alice.lang = lang
                box.sudo().reply_status_ids.unlink()
                # the IMAP server does not answer: the reason is noted
                self.company.ally_smtp_imap_port = free_port()
                with self.live():
                    self.env["ally.smtp.mailbox"]._ally_smtp_fetch_replies()
                self.company.ally_smtp_imap_port = port
                self.assertTrue(box.replies_checked_at)
                self.assertTrue(box.replies_error)
                self.tour(
                    "/odoo",
                    "ally_smtp_replies_preferences",
                    self.alice,
                    lang,
                    {"error": box.replies_error[:40]},
                    "preferences_replies",
                )
