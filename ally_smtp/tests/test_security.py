"""Only the owner's own mail ever signs in to the owner's mailbox."""

import email
import json
import os
import tempfile
import threading
from datetime import timedelta
from unittest.mock import patch

from cryptography.fernet import Fernet

from odoo import Command, fields
from odoo.exceptions import AccessError, UserError, ValidationError
from odoo.tests import new_test_user, tagged
from odoo.tools import config, mute_logger

from ..lib import crypto
from .common import AllySmtpCase


@tagged("post_install", "-at_install")
class TestSecurity(AllySmtpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.student = cls.env["res.partner"].create(
            {"name": "Student One", "email": "student1@school.test"}
        )
        cls.company_server = cls.agency_server()
        cls.alice_server = cls.env["ir.mail_server"].search(
            [("ally_smtp_owner_id", "=", cls.alice.id)]
        )
        cls.admin = new_test_user(
            cls.env, login="settings-admin", groups="base.group_user,base.group_system"
        )

    def alice_logins(self):
        return self.smtp.auth_attempts("alice@agency.test")

    def test_forged_server_on_a_post_is_refused(self):
        for values in ({}, {"author_id": self.alice.partner_id.id}):
            with self.subTest(**values), self.assertRaises(ValidationError):
                self.student.with_user(self.bob).message_post(
                    body="Forged by Bob",
                    partner_ids=self.student.ids,
                    mail_server_id=self.alice_server.id,
                    subtype_xmlid="mail.mt_comment",
                    **values,
                )

    def test_forged_server_reaching_the_queue_takes_the_agency_path(self):
        """Code that posts as superuser skips the check: routing still holds."""
        with self.live(), mute_logger("odoo.addons.ally_smtp.models.mail_mail"):
            self.student.with_user(self.bob).sudo().message_post(
                body="Forged by Bob",
                subject="Forged by Bob",
                author_id=self.alice.partner_id.id,
                partner_ids=self.student.ids,
                mail_server_id=self.alice_server.id,
                subtype_xmlid="mail.mt_comment",
            )
        (sent,) = self.smtp.messages()
        self.assertEqual(sent["login"], "carol@agency.test")
        self.assertEqual(self.alice_logins(), [])

    def test_mail_on_someone_elses_message_does_not_use_their_mailbox(self):
        message = self.student.with_user(self.alice).message_post(
            body="Alice's own words", subtype_xmlid="mail.mt_note"
        )
        # bob's code makes a mail for alice's message, with his own text
        self.env["mail.mail"].with_user(self.bob).sudo().create(
            {
                "mail_message_id": message.id,
                "recipient_ids": [Command.link(self.student.id)],
                "body_html": "<p>Forged by Bob</p>",
            }
        )
        self.run_queue()
        (sent,) = self.smtp.messages()
        self.assertEqual(sent["login"], "carol@agency.test")
        self.assertEqual(self.alice_logins(), [])

    def test_mail_changed_by_someone_else_leaves_the_mailbox(self):
        """A colleague who may write the message (he may write the record)
        changes Alice's queued mail: it is no longer hers to send as her."""
        message = self.queue(self.alice, "Alice's words").mail_message_id
        message.with_user(self.bob).write({"subject": "Forged by Bob"})
        self.run_queue()
        (sent,) = self.smtp.messages()
        self.assertEqual(sent["login"], "carol@agency.test")
        self.assertEqual(self.alice_logins(), [])

    def test_mail_record_changed_by_someone_else_leaves_the_mailbox(self):
        """The same when an administrator edits the queued mail itself; the
        author's own edit and the system's leave it hers."""
        mail = self.queue(self.alice, "Alice's words")
        mail.with_user(self.alice).sudo().write({"subject": "System edit"})
        mail.write({"subject": "Superuser edit"})
        self.assertFalse(mail.ally_smtp_foreign_edit)
        mail.with_user(self.admin).write({"body_html": "<p>Forged</p>"})
        self.assertTrue(mail.ally_smtp_foreign_edit)
        self.run_queue()
        (sent,) = self.smtp.messages()
        self.assertEqual(sent["login"], "carol@agency.test")
        self.assertEqual(self.alice_logins(), [])

    def test_own_mail_still_uses_the_mailbox(self):
        with self.live():
            self.student.with_user(self.alice).message_post(
                body="Alice writes",
                partner_ids=self.student.ids,
                subtype_xmlid="mail.mt_comment",
            )
        (sent,) = self.smtp.messages()
        self.assertEqual(sent["login"], "alice@agency.test")
        self.assertEqual(sent["mail_from"], "alice@agency.test")

    def schedule(self, user, body, server):
        """A message ``user`` schedules on the student whose notification
        parameters name ``server``, come due."""
        scheduled = (
            self.env["mail.scheduled.message"]
            .with_user(user)
            .create(
                {
                    "model": "res.partner",
                    "res_id": self.student.id,
                    "author_id": user.partner_id.id,
                    "body": body,
                    "partner_ids": [Command.link(self.student.id)],
                    "scheduled_date": fields.Datetime.now() + timedelta(hours=1),
                    "notification_parameters": json.dumps(
                        {"mail_server_id": server.id}
                    ),
                }
            )
        )
        scheduled.flush_recordset()
        self.env.cr.execute(  # the hour passed (the date may not be in the past)
            "UPDATE mail_scheduled_message SET scheduled_date = %s WHERE id = %s",
            [fields.Datetime.now() - timedelta(minutes=1), scheduled.id],
        )
        scheduled.invalidate_recordset()
        return scheduled

    def test_scheduled_message_naming_a_personal_server_is_posted_without_it(self):
        """Odoo's scheduled-post cron posts as the message's creator, who may
        not name a personal mailbox: it drops the server, and the post goes
        out by the ordinary routing (the creator's own mailbox)."""
        logger = "odoo.addons.ally_smtp.models.mail_scheduled_message"
        cases = (  # creator, named server, expected SMTP login
            (self.alice, self.alice_server, "alice@agency.test"),
            (self.bob, self.alice_server, "bob@agency.test"),
            (self.bob, self.company_server, "carol@agency.test"),
        )
        for user, server, login in cases:
            with self.subTest(user=user.login, server=server.name):
                self.smtp.reset()
                scheduled = self.schedule(user, f"Scheduled by {user.name}", server)
                personal = bool(server.ally_smtp_owner_id)
                logs = (
                    self.assertLogs(logger, "WARNING")
                    if personal
                    else self.assertNoLogs(logger, "WARNING")
                )
                with self.live(), logs:
                    self.env["mail.scheduled.message"]._post_messages_cron()
                self.assertFalse(scheduled.exists())
                message = self.env["mail.message"].search(
                    [("model", "=", "res.partner"), ("res_id", "=", self.student.id)],
                    limit=1,
                )
                self.assertIn(f"Scheduled by {user.name}", message.body)
                self.assertEqual(message.create_uid, user)
                self.assertEqual(message.mail_server_id.id, not personal and server.id)
                sent = self.smtp.messages()
                self.assertEqual({m["login"] for m in sent}, {login})
                (to_student,) = [
                    m for m in sent if m["rcpt_tos"] == ["student1@school.test"]
                ]
                headers = email.message_from_string(to_student["data"])
                self.assertEqual(headers["Message-Id"], message.message_id)
                if personal:
                    self.assertEqual(to_student["mail_from"], login)
                    self.assertEqual({e[1] for e in self.smtp.auth_attempts()}, {login})

    def test_connect_to_a_personal_server_is_refused_before_any_login(self):
        for who in (self.bob, self.admin, self.alice):
            with self.subTest(who=who.login), self.live():
                Server = self.env["ir.mail_server"].with_user(who)
                with (
                    mute_logger("odoo.addons.ally_smtp.models.ir_mail_server"),
                    self.assertRaises(AccessError),
                ):
                    Server.connect(mail_server_id=self.alice_server.id)
                positional = [None] * 9 + [self.alice_server.id]
                with (
                    mute_logger("odoo.addons.ally_smtp.models.ir_mail_server"),
                    self.assertRaises(AccessError),
                ):
                    Server.connect(*positional)
        self.assertEqual(self.smtp.state()["sessions"], [])

    def test_personal_servers_cannot_be_chosen(self):
        editor = new_test_user(
            self.env,
            login="editor",
            groups="base.group_user,mail.group_mail_template_editor",
        )
        model = self.env["ir.model"]._get("res.partner")
        with self.assertRaises(ValidationError):
            self.env["mail.template"].with_user(editor).create(
                {
                    "name": "forged",
                    "model_id": model.id,
                    "mail_server_id": self.alice_server.id,
                }
            )
        with self.assertRaises(ValidationError):
            self.env["mail.compose.message"].with_user(editor).create(
                {
                    "composition_mode": "mass_mail",
                    "model": "res.partner",
                    "res_ids": self.student.ids,
                    "body": "forged",
                    "mail_server_id": self.alice_server.id,
                }
            )
        # and nobody but settings admins sees those servers at all
        for who in (self.bob, editor):
            with self.assertRaises(AccessError):
                self.env["ir.mail_server"].with_user(who).search([])

    def test_admins_cannot_set_a_mailbox_status_or_edit_its_server(self):
        for view in (
            self.alice._ally_smtp_mailbox().with_user(self.admin),
            self.alice._ally_smtp_mailbox().with_user(self.alice),
        ):
            for field, value in (
                ("state", "ok"),
                ("server_fingerprint", "elsewhere|465|ssl||True"),
                ("sent_folder", "Trash"),
                ("paused_until", False),
                ("pause_reason", "none"),
                ("password_crypt", "x"),
                ("user_id", self.bob.id),
            ):
                with self.subTest(field=field), self.assertRaises(AccessError):
                    view.write({field: value})
        with self.assertRaises(AccessError):
            self.alice_server.with_user(self.admin).write({"smtp_user": "x@y.test"})
        with self.assertRaises(AccessError):
            self.company_server.with_user(self.admin).write(
                {"ally_smtp_owner_id": self.alice.id}
            )

    def test_one_owner_per_mailbox(self):
        for address in ("alice@agency.test", "ALICE@Agency.test "):
            with self.subTest(address=address), self.assertRaises(ValidationError):
                self.bob.with_user(self.bob).write({"ally_smtp_email": address})
        self.assertEqual(self.bob.ally_smtp_email, "bob@agency.test")
        # addresses are stored normalized
        self.bob.with_user(self.bob).write({"ally_smtp_email": " Bob@Agency.Test"})
        self.assertEqual(self.bob.ally_smtp_email, "bob@agency.test")

    def test_colleagues_do_not_see_each_others_mailbox(self):
        Users = self.env["res.users"]
        self.bob.groups_id += self.env.ref("base.group_allow_export")
        for field in (
            "ally_smtp_email",
            "ally_smtp_state",
            "ally_smtp_last_error",
            "ally_smtp_paused_until",
            "ally_smtp_pause_reason",
        ):
            with self.subTest(field=field):
                # a colleague reads, searches and exports them empty
                (seen,) = self.alice.with_user(self.bob).read([field])
                empty = "off" if field == "ally_smtp_state" else False
                self.assertEqual(seen[field], empty)
                found = Users.with_user(self.bob).search([(field, "!=", False)])
                self.assertNotIn(self.alice, found)
                exported = self.alice.with_user(self.bob).export_data([field])
                self.assertEqual(exported["datas"], [["Not used" if empty else ""]])
        # and the mailbox itself is out of reach (record rules)
        mailbox = self.alice._ally_smtp_mailbox()
        Mailbox = self.env["ally.smtp.mailbox"].with_user(self.bob)
        self.assertEqual(Mailbox.search([]), self.bob._ally_smtp_mailbox())
        with self.assertRaises(AccessError):
            mailbox.with_user(self.bob).read(["address"])
        with self.assertRaises(AccessError):
            mailbox.with_user(self.bob).write({"use_own": False})
        (own,) = self.alice.with_user(self.alice).read(["ally_smtp_email"])
        self.assertEqual(own["ally_smtp_email"], "alice@agency.test")
        (seen,) = self.alice.with_user(self.admin).read(["ally_smtp_email"])
        self.assertEqual(seen["ally_smtp_email"], "alice@agency.test")

    def test_new_server_gets_no_password_until_its_owner_tests(self):
        self.alice.with_user(self.alice).action_ally_smtp_test()
        self.assertEqual(self.alice.ally_smtp_state, "ok")
        self.smtp.reset()
        self.company.write(self.company_values("starttls"))
        self.assertEqual(self.alice.ally_smtp_state, "untested")
        with self.live():
            self.student.with_user(self.alice).message_post(
                body="After the move",
                partner_ids=self.student.ids,
                subtype_xmlid="mail.mt_comment",
            )
        self.assertEqual(self.smtp.state()["sessions"], [])
        mail = self.env["mail.mail"].search([("body_html", "ilike", "After the move")])
        self.assertEqual(mail.state, "exception")
        self.assertIn("Test SMTP configuration", mail.failure_reason)
        # the owner tests the new server, then the mail goes out
        self.alice.with_user(self.alice).action_ally_smtp_test()
        mail.mark_outgoing()
        self.run_queue()
        (sent,) = self.smtp.messages()
        self.assertEqual(
            (sent["login"], sent["listener"]), (self.alice.ally_smtp_email, "starttls")
        )

    def test_a_new_password_is_given_for_the_current_server(self):
        self.company.write(self.company_values("starttls"))
        self.alice.with_user(self.alice).ally_smtp_password = self.harness["mailboxes"][
            "alice@agency.test"
        ]
        self.assertEqual(self.alice._ally_smtp_mailbox()._unusable(), (False, False))

    def test_no_new_key_while_passwords_are_stored(self):
        with (
            tempfile.TemporaryDirectory() as data_dir,
            patch.dict(config.options, {"data_dir": data_dir, "ally_smtp_key": ""}),
            patch.dict(os.environ, {"ALLY_SMTP_KEY": ""}),
            mute_logger("odoo.addons.ally_smtp.lib.crypto"),
        ):
            with self.assertRaises(UserError) as caught:
                self.alice._ally_smtp_mailbox()._password()
            self.assertIn("ally_smtp_key", str(caught.exception))
            self.assertEqual(os.listdir(data_dir), [])
        self.assertTrue(self.alice._ally_smtp_mailbox().password_crypt)

    def test_key_file_is_whole_for_every_reader(self):
        with tempfile.TemporaryDirectory() as data_dir:
            path = os.path.join(data_dir, crypto.KEY_FILE)
            seen, start = [], threading.Barrier(8)

            def race():
                start.wait()
                if not os.path.exists(path):
                    crypto.create_key_file(path)
                with open(path, "rb") as f:
                    seen.append(f.read())

            threads = [threading.Thread(target=race) for _i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            self.assertEqual(len(set(seen)), 1)
            Fernet(seen[0])  # a valid key, not an empty or partial file
            self.assertEqual(os.listdir(data_dir), [crypto.KEY_FILE])
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
