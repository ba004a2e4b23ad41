"""A consultant's own mailbox: the test button, access rules, encryption."""

import logging
from unittest.mock import patch

from cryptography.fernet import Fernet

from odoo.exceptions import AccessError, UserError, ValidationError
from odoo.tests import new_test_user, tagged
from odoo.tools import config, mute_logger

from ..lib import crypto, mailbox
from .common import AllySmtpCase, Mailbox, free_port


@tagged("post_install", "-at_install")
class TestCredentials(AllySmtpCase):
    def test_button_success_names_sent_folder_and_sends_nothing(self):
        self.assertEqual(self.alice.ally_smtp_state, "untested")
        action = self.alice.with_user(self.alice).action_ally_smtp_test()
        self.assertEqual(action["params"]["type"], "success")
        self.assertIn("'Sent'", action["params"]["message"])
        self.assertEqual(self.alice.ally_smtp_state, "ok")
        self.assertEqual(self.alice.ally_smtp_sent_folder, "Sent")
        self.assertTrue(self.alice.ally_smtp_tested_at)
        (session,) = self.smtp.state()["sessions"]
        kinds = [event[0] for event in session["events"]]
        self.assertEqual(kinds, ["ehlo", "auth", "mail", "rcpt", "rset", "quit"])
        self.assertEqual(session["events"][1], ["auth", "alice@agency.test", True])
        self.assertEqual(session["events"][2], ["mail", "alice@agency.test"])
        self.assertEqual(session["events"][3], ["rcpt", "alice@agency.test"])
        self.assertEqual(self.smtp.messages(), [])

    def test_button_over_starttls(self):
        self.company.write(self.company_values("starttls"))
        self.alice.with_user(self.alice).action_ally_smtp_test()
        self.assertEqual(self.alice.ally_smtp_state, "ok")

    def _assert_test_fails(self, *words, user=None):
        user = user or self.alice
        with self.assertRaises(UserError) as caught:
            user.with_user(user).action_ally_smtp_test()
        message = str(caught.exception)
        for word in words:
            self.assertIn(word, message)
        self.assertNotIn(self.harness["mailboxes"][user.ally_smtp_email], message)
        return message

    def test_classified_failures_from_real_servers(self):
        login = "alice@agency.test"
        google = "https://support.google.com/mail/?p="
        replies = [
            (
                (
                    "535-5.7.8 Username and Password not accepted.\r\n"
                    f"535 5.7.8 {google}BadCredentials"
                ),
                ["App Password", "2-Step Verification turned on"],
            ),
            (
                (
                    "534-5.7.9 Application-specific password required.\r\n"
                    f"534 5.7.9 {google}InvalidSecondFactor"
                ),
                ["App Password", "2-Step Verification turned on"],
            ),
            (
                (
                    "535 5.7.139 Authentication unsuccessful, "
                    "SmtpClientAuthentication is disabled for the Tenant."
                ),
                ["Authenticated SMTP", "administrator"],
            ),
            (
                (
                    "535 5.7.139 Authentication unsuccessful, basic authentication "
                    "is disabled."
                ),
                ["no longer accepts a password", "retired"],
            ),
            ("535 Incorrect authentication data", ["refused the password", login]),
        ]
        for reply, words in replies:
            with self.subTest(reply=reply):
                self.smtp.reset()
                self.smtp.fail("AUTH", reply, login=login)
                message = self._assert_test_fails(*words)
                self.assertIn(reply.split()[0][:3], message)
                self.assertNotIn("2-Step Verification off", message)

    def test_wrong_password(self):
        self.alice.with_user(self.alice).ally_smtp_password = "wrong"
        self._assert_test_fails("refused the password", "not your Odoo password")
        self.assertEqual(self.smtp.auth_attempts("alice@agency.test")[0][2], False)

    def test_sender_refused(self):
        self.smtp.fail("MAIL", "550 5.7.1 Sender not allowed")
        self._assert_test_fails("550 5.7.1 Sender not allowed")

    def test_network_and_tls_failures(self):
        cases = [
            ({"ally_smtp_port": self.smtp.ports["starttls"]}, ["465", "587"]),
            ({"ally_smtp_port": free_port()}, ["Nothing answers"]),
            ({"ally_smtp_port": self.smtp.ports["untrusted"]}, ["not trusted"]),
        ]
        for values, words in cases:
            with self.subTest(values=values):
                self.company.write(self.company_values(**values))
                self._assert_test_fails(*words)

    def _test_and_roll_back(self):
        """Press Test; then what the RPC layer's rollback would run."""
        with self.assertRaises(UserError) as caught:
            self.alice.with_user(self.alice).action_ally_smtp_test()
        # Odoo's own type: the web client shows its message only then
        self.assertIs(type(caught.exception), UserError)
        callbacks = list(self.env.cr.postrollback._funcs)
        self.assertEqual(len(callbacks), 1)
        self.env.cr.postrollback.clear()
        # run it as after the rollback, on this test's cursor instead of a new one
        with patch.object(type(self.env.registry), "cursor") as cursor:
            cursor.return_value.__enter__.return_value = self.env.cr
            callbacks[0]()
        self.alice.invalidate_recordset()
        return caught.exception.args[0]

    def test_failure_state_survives_the_rollback(self):
        self.alice.with_user(self.alice).ally_smtp_password = "wrong"
        message = self._test_and_roll_back()
        self.assertEqual(self.alice.ally_smtp_state, "failed")
        self.assertEqual(self.alice.ally_smtp_last_error, message)

    def test_other_failures_do_not_stop_sending(self):
        self.company.write(self.company_values(ally_smtp_port=free_port()))
        message = self._test_and_roll_back()
        self.assertIn("Nothing answers", message)
        self.assertEqual(self.alice.ally_smtp_state, "untested")
        self.assertEqual(self.alice.ally_smtp_last_error, message)

    def test_sent_folder_under_the_personal_namespace(self):
        """cPanel-like hosting: folders under "INBOX.", none flagged \\Sent."""
        cpanel = self.consultant("cpanel@agency.test")
        box = Mailbox(self.harness, "cpanel@agency.test")
        for folder in ("INBOX.Sent Items", "INBOX.Itens Enviados", "INBOX.Enviados"):
            with self.subTest(folder=folder):
                box.reset()
                box.make_folder("INBOX.Drafts")
                box.make_folder(folder)
                action = cpanel.with_user(cpanel).action_ally_smtp_test()
                self.assertIn(f"'{folder}'", action["params"]["message"])
                self.assertEqual(cpanel.ally_smtp_sent_folder, folder)
                with box.connect() as imap:
                    self.assertEqual(mailbox.personal_prefix(imap), "INBOX.")
        box.reset()
        self._assert_test_fails("no Sent folder", user=cpanel)

    def test_imap_failures_get_imap_advice(self):
        port = free_port()
        self.company.ally_smtp_imap_port = port
        message = self._assert_test_fails("IMAP", "993")
        # the advice, without the dead port's number (58779 holds "587")
        advice = message.replace(str(port), "")
        self.assertNotIn("465", advice)
        self.assertNotIn("587", advice)

    def test_without_imap_server_no_copy_is_promised(self):
        self.company.ally_smtp_imap_host = False
        action = self.alice.with_user(self.alice).action_ally_smtp_test()
        self.assertIn("No IMAP server", action["params"]["message"])

    # -- access -------------------------------------------------------------
    def test_password_is_write_only(self):
        secret = self.harness["mailboxes"]["alice@agency.test"]
        as_alice = self.alice.with_user(self.alice)
        self.assertFalse(as_alice.read(["ally_smtp_password"])[0]["ally_smtp_password"])
        self.assertTrue(as_alice.ally_smtp_password_set)
        crypt = self.alice._ally_smtp_mailbox().password_crypt
        self.assertTrue(crypt)
        self.assertNotIn(secret, crypt)
        # writing empty keeps the stored password
        as_alice.write({"ally_smtp_password": False})
        self.assertEqual(self.alice._ally_smtp_mailbox().password_crypt, crypt)
        self.assertEqual(self.alice._ally_smtp_mailbox()._password(), secret)
        # the clear action removes it
        as_alice.action_ally_smtp_clear_password()
        self.assertFalse(as_alice.ally_smtp_password_set)

    def test_access_matrix(self):
        colleague = new_test_user(self.env, login="colleague", groups="base.group_user")
        portal = new_test_user(self.env, login="portal", groups="base.group_portal")
        admin = new_test_user(
            self.env, login="settings", groups="base.group_user,base.group_system"
        )
        for who in (colleague, portal, admin):
            with self.subTest(who=who.login):
                alice = self.alice.with_user(who)
                with self.assertRaises(AccessError):
                    alice.write({"ally_smtp_email": "carol@agency.test"})
                with self.assertRaises(AccessError):
                    alice.write({"ally_smtp_password": "stolen"})
                with self.assertRaises(AccessError):
                    alice._ally_smtp_mailbox().with_user(who).read(["password_crypt"])
                if who != admin:
                    with self.assertRaises(AccessError):
                        alice.write({"ally_smtp_use_own": False})
        self.assertEqual(
            self.alice.with_user(admin).read(["ally_smtp_password"])[0][
                "ally_smtp_password"
            ],
            False,
        )
        # a portal user cannot switch it on for themselves
        with self.assertRaises(AccessError):
            portal.with_user(portal).write({"ally_smtp_use_own": True})
        # the settings admin can switch someone's mailbox off
        self.alice.with_user(admin).write({"ally_smtp_use_own": False})
        self.assertEqual(self.alice.ally_smtp_state, "off")
        self.assertTrue(self.alice._ally_smtp_mailbox().password_crypt)

    def test_changes_make_state_untested(self):
        self.alice.with_user(self.alice).action_ally_smtp_test()
        self.assertEqual(self.alice.ally_smtp_state, "ok")
        self.alice.with_user(self.alice).ally_smtp_password = "new-password"
        self.assertEqual(self.alice.ally_smtp_state, "untested")

    def test_address_and_switch_set_the_state(self):
        """What the state's old compute did is done by the writes themselves."""
        as_alice = self.alice.with_user(self.alice)
        as_alice.action_ally_smtp_test()
        as_alice.write({"ally_smtp_email": "Alice@Agency.test"})
        self.assertEqual(self.alice.ally_smtp_state, "untested")
        as_alice.action_ally_smtp_test()
        as_alice.write({"ally_smtp_use_own": False})
        self.assertEqual(self.alice.ally_smtp_state, "off")
        self.assertEqual(self.alice.ally_smtp_last_error, False)
        as_alice.write({"ally_smtp_use_own": True})
        self.assertEqual(self.alice.ally_smtp_state, "untested")
        created = new_test_user(
            self.env,
            login="erin-state",
            groups="base.group_user",
            ally_smtp_use_own=True,
            ally_smtp_email="erin-state@agency.test",
        )
        self.assertEqual(created.ally_smtp_state, "untested")
        # a copy of a user has no mailbox of its own: not used
        self.assertEqual(self.bob.copy().ally_smtp_state, "off")

    def test_bad_input(self):
        as_alice = self.alice.with_user(self.alice)
        self.company.alias_domain_id = self.env["mail.alias.domain"].create(
            {"name": "agency.test"}
        )
        catchall = self.company.catchall_email
        for address in (
            "alice@agency.test\r\nBcc: x@evil.test",
            "alice@agency.test, bob@agency.test",
            "not an address",
            catchall,
            self.company.default_from_email,
        ):
            with (
                self.subTest(address=address),
                self.assertRaises(ValidationError),
                self.env.cr.savepoint(),
            ):
                as_alice.write({"ally_smtp_email": address})
                as_alice.flush_recordset()
        with self.assertRaises(ValidationError), self.env.cr.savepoint():
            as_alice.write({"ally_smtp_password": "x" * 300})
        self.assertEqual(self.alice.ally_smtp_email, "alice@agency.test")
        self.assertEqual(
            self.alice._ally_smtp_mailbox()._password(),
            self.harness["mailboxes"]["alice@agency.test"],
        )

    def test_use_own_needs_company_integration(self):
        self.company.ally_smtp_enabled = False
        self.assertFalse(self.bob.ally_smtp_available)
        with self.assertRaises(ValidationError):
            self.consultant("carol@agency.test")

    # -- encryption ---------------------------------------------------------
    def test_rotation_and_wrong_key(self):
        secret = self.harness["mailboxes"]["alice@agency.test"]
        old_token = self.alice._ally_smtp_mailbox().password_crypt
        current = crypto._key_file(self.env)  # no key configured: the generated file
        new = Fernet.generate_key().decode()
        with patch.dict(config.options, {"ally_smtp_key": f"{new},{current}"}):
            # the old key still decrypts; rotation re-encrypts with the new one
            self.assertEqual(self.alice._ally_smtp_mailbox()._password(), secret)
            self.env["res.config.settings"].create({}).action_ally_smtp_rotate_keys()
            rotated = self.alice._ally_smtp_mailbox().password_crypt
            self.assertNotEqual(rotated, old_token)
            self.assertEqual(self.alice.ally_smtp_state, "untested")
        with patch.dict(config.options, {"ally_smtp_key": new}):
            self.assertEqual(self.alice._ally_smtp_mailbox()._password(), secret)
        # a wrong key: a clear error naming the option, the ciphertext kept
        other = Fernet.generate_key().decode()
        with patch.dict(config.options, {"ally_smtp_key": other}):
            with self.assertRaises(UserError) as caught:
                self.alice._ally_smtp_mailbox()._password()
            self.assertIn("ally_smtp_key", str(caught.exception))
            with self.assertRaises(UserError) as caught:
                self.alice.with_user(self.alice).action_ally_smtp_test()
            self.assertIn("ally_smtp_key", str(caught.exception))
        with patch.dict(config.options, {"ally_smtp_key": "not-a-key"}):
            with self.assertRaises(UserError) as caught:
                self.alice._ally_smtp_mailbox()._password()
            self.assertIn("ally_smtp_key", str(caught.exception))
        self.assertEqual(self.alice._ally_smtp_mailbox().password_crypt, rotated)

    def test_plaintext_nowhere_in_database_or_logs(self):
        secret = self.harness["mailboxes"]["bob@agency.test"]
        with self.assertLogs("odoo.addons.ally_smtp", logging.DEBUG) as logs:
            logging.getLogger("odoo.addons.ally_smtp").debug("start")
            self.bob.with_user(self.bob).ally_smtp_password = secret
            self.bob.with_user(self.bob).action_ally_smtp_test()
            with mute_logger("odoo.addons.ally_smtp"):
                self.bob.with_user(self.bob).ally_smtp_password = "wrong-" + secret
                with self.assertRaises(UserError) as caught:
                    self.bob.with_user(self.bob).action_ally_smtp_test()
        self.assertNotIn(secret, "\n".join(logs.output))
        self.assertNotIn(secret, str(caught.exception))
        self.env.flush_all()
        cr = self.env.cr
        cr.execute(
            """SELECT table_name, column_name FROM information_schema.columns
                WHERE table_schema = 'public'
                  AND data_type IN ('character varying', 'text', 'jsonb', 'bytea')"""
        )
        columns = cr.fetchall()
        self.assertGreater(len(columns), 100)
        found = []
        for table, column in columns:
            cr.execute(
                f'SELECT 1 FROM "{table}" WHERE "{column}"::text LIKE %s LIMIT 1',
                [f"%{secret}%"],
            )
            if cr.fetchone():
                found.append(f"{table}.{column}")
        self.assertEqual(found, [])
        # exports go through the same record rules: nothing to export
        exporter = new_test_user(
            self.env, login="exporter", groups="base.group_user,base.group_allow_export"
        )
        exported = self.bob.with_user(exporter).export_data(["ally_smtp_email"])
        self.assertEqual(exported["datas"], [[""]])
        with self.assertRaises(AccessError):
            self.bob._ally_smtp_mailbox().with_user(exporter).export_data(["address"])
        exported = self.bob.with_user(exporter).export_data(["ally_smtp_password"])
        self.assertEqual(exported["datas"], [[""]])
