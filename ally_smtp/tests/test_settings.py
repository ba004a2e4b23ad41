"""Agency integration: presets, the Integrate button, bad input."""

from odoo.exceptions import AccessError, UserError, ValidationError
from odoo.tests import Form, tagged

from ..lib.providers import PRESETS
from .common import AllySmtpCase, free_port


@tagged("post_install", "-at_install")
class TestSettings(AllySmtpCase):
    def test_presets_fill_and_stay_editable(self):
        self.company.ally_smtp_enabled = False
        for provider, (host, port, tls, _imap, imap_port, copy) in PRESETS.items():
            with self.subTest(provider=provider):
                settings = Form(self.env["res.config.settings"])
                settings.ally_smtp_enabled = True
                settings.ally_smtp_provider = provider
                self.assertEqual(settings.ally_smtp_port, port)
                self.assertEqual(settings.ally_smtp_encryption, tls)
                self.assertEqual(settings.ally_smtp_imap_port, imap_port)
                self.assertEqual(settings.ally_smtp_sent_copy, copy)
                self.assertEqual(settings.ally_smtp_host or "", host)
                settings.ally_smtp_host = host or "br123.hostgator.com.br"
                settings.ally_smtp_port = 2525  # every value stays editable
                settings.save().execute()
                self.assertEqual(self.company.ally_smtp_provider, provider)
                self.assertEqual(self.company.ally_smtp_port, 2525)
        # providers that file SMTP mail in Sent themselves get no copy
        for provider in ("gmail", "microsoft365", "outlook"):
            self.assertEqual(PRESETS[provider][5], "never")

    def test_integrate_success_both_tls_modes(self):
        for encryption in ("ssl", "starttls"):
            with self.subTest(encryption=encryption):
                self.company.write(self.company_values(encryption))
                self.assertFalse(self.company.ally_smtp_integrated)
                action = self.company.action_ally_smtp_integrate()
                self.assertEqual(action["params"]["type"], "success")
                self.assertTrue(self.company.ally_smtp_integrated)
                self.assertTrue(self.company.ally_smtp_integrated_at)
                sessions = self.smtp.state()["sessions"]
                self.assertTrue(any(s["events"][0][0] == "ehlo" for s in sessions))
        # changing the server makes the integration unchecked again
        self.company.ally_smtp_port = self.smtp.ports["ssl"]
        self.assertFalse(self.company.ally_smtp_integrated)
        self.assertFalse(self.company.ally_smtp_integrated_at)
        self.company.write(self.company_values())
        for values in (
            {"ally_smtp_imap_port": self.company.ally_smtp_imap_port},
            {"ally_smtp_verify_tls": True},
        ):
            with self.subTest(values=values):
                self.company.action_ally_smtp_integrate()
                self.company.write(values)
                self.assertFalse(self.company.ally_smtp_integrated)
        # what is no server setting leaves it checked
        self.company.action_ally_smtp_integrate()
        self.company.ally_smtp_limit_day = 100
        self.assertTrue(self.company.ally_smtp_integrated)

    def test_integrate_from_settings_screen(self):
        settings = self.env["res.config.settings"].create({})
        settings.action_ally_smtp_integrate()
        self.assertTrue(settings.ally_smtp_integrated)

    def test_integrate_failures_name_the_fix(self):
        dead_port = free_port()
        cases = [
            # (values, words the message must contain)
            ({"ally_smtp_port": self.smtp.ports["starttls"]}, ["465", "587"]),
            (
                {
                    "ally_smtp_encryption": "starttls",
                    "ally_smtp_port": self.smtp.ports["ssl"],
                },
                ["587"],
            ),
            ({"ally_smtp_host": "127.0.0.1"}, ["issued for another name"]),
            ({"ally_smtp_port": self.smtp.ports["untrusted"]}, ["not trusted"]),
            ({"ally_smtp_host": "no-such-host.invalid"}, ["was not found"]),
            ({"ally_smtp_port": dead_port}, ["Nothing answers", str(dead_port)]),
            ({"ally_smtp_imap_port": dead_port}, ["Nothing answers"]),
        ]
        for values, words in cases:
            with self.subTest(values=values):
                self.company.write(self.company_values(**values))
                with self.assertRaises(UserError) as caught:
                    self.company.action_ally_smtp_integrate()
                # Odoo's own type: the web client shows its message only then
                self.assertIs(type(caught.exception), UserError)
                for word in words:
                    self.assertIn(word, str(caught.exception))
                self.assertFalse(self.company.ally_smtp_integrated)

    def test_verification_off_accepts_untrusted_certificate(self):
        self.company.write(
            self.company_values(
                ally_smtp_port=self.smtp.ports["untrusted"],
                ally_smtp_verify_tls=False,
            )
        )
        self.company.action_ally_smtp_integrate()
        self.assertTrue(self.company.ally_smtp_integrated)

    def test_integrate_needs_settings_admin(self):
        with self.assertRaises(AccessError):
            self.company.with_user(self.alice).action_ally_smtp_integrate()

    def test_bad_input_is_rejected(self):
        cases = [
            {"ally_smtp_port": 0},
            {"ally_smtp_port": 65536},
            {"ally_smtp_imap_port": -1},
            {"ally_smtp_host": False},
            {"ally_smtp_host": "smtp.example.com\r\nX: y"},
            {"ally_smtp_host": "http://smtp.example.com"},
        ]
        before = self.company.read(list(self.company_values()))[0]
        for values in cases:
            with (
                self.subTest(values=values),
                self.assertRaises(ValidationError),
                self.env.cr.savepoint(),
            ):
                self.company.write(values)
                self.company.flush_recordset()
        self.company.invalidate_recordset()
        self.assertEqual(self.company.read(list(self.company_values()))[0], before)
