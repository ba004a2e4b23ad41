"""The screens, walked like a person in a real browser (English and pt_BR).

Odoo's own test runner runs these (``make test`` does it): pytest-odoo does
not host the HTTP server and browser that tours need.
"""

import base64
import contextlib
import json
import os
from pathlib import Path
from unittest.mock import patch

from odoo.tests import HttpCase, new_test_user, tagged
from odoo.tests.common import ChromeBrowser
from odoo.tools import mute_logger

from .common import AllySmtpMixin

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
                self.assertEqual(carol.ally_smtp_state, "ok")
                # the refusal is a UserError, which odoo.http logs as a warning
                with mute_logger("odoo.http"):
                    self.tour(
                        "/odoo", "ally_smtp_preferences_wrong_password", carol, lang
                    )
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
