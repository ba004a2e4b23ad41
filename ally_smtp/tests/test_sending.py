"""Mail a consultant writes leaves from their own mailbox, one Sent copy."""

import collections
import email
import email.policy
import email.utils
import logging
import smtplib
from datetime import timedelta
from email.message import EmailMessage
from unittest import mock

from odoo import fields
from odoo.tests import new_test_user, tagged

from ..lib import mailbox
from ..models.ally_smtp_delivery import SENDING_LOCK
from .common import AllySmtpCase, Mailbox, free_port


@tagged("post_install", "-at_install")
class TestSending(AllySmtpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.student = cls.env["res.partner"].create(
            {"name": "Student One", "email": "student1@school.test"}
        )
        cls.student2 = cls.env["res.partner"].create(
            {"name": "Student Two", "email": "student2@school.test"}
        )
        # the agency's ordinary server, for everything that is not personal
        cls.company_server = cls.agency_server()
        cls.alice_box = Mailbox(cls.harness, "alice@agency.test")
        cls.bob_box = Mailbox(cls.harness, "bob@agency.test")

    def setUp(self):
        super().setUp()
        self.alice_box.purge()
        self.bob_box.purge()

    def post(self, user, body="Hello", partners=None):
        with self.live():
            return self.student.with_user(user).message_post(
                body=body,
                partner_ids=(partners or self.student).ids,
                message_type="comment",
                subtype_xmlid="mail.mt_comment",
            )

    def file_copies(self):
        with self.live():
            self.env["ally.smtp.sent.copy"]._ally_smtp_process()
        stuck = self.env["ally.smtp.sent.copy"].search([("last_error", "!=", False)])
        return stuck.mapped("last_error")

    def assert_from_alice(self, sent):
        self.assertEqual(sent["login"], "alice@agency.test")
        self.assertEqual(sent["mail_from"], "alice@agency.test")
        headers = email.message_from_string(sent["data"])
        self.assertEqual(headers["From"], '"Alice Consultant" <alice@agency.test>')
        self.assertIsNone(headers["Bcc"])
        return headers

    # -- routing ------------------------------------------------------------
    def test_chatter_post_leaves_from_consultant_with_one_sent_copy(self):
        message = self.post(self.alice)
        (sent,) = self.smtp.messages()
        headers = self.assert_from_alice(sent)
        self.assertEqual(sent["rcpt_tos"], ["student1@school.test"])
        self.assertEqual(self.file_copies(), [])
        copies = self.env["ally.smtp.sent.copy"].search([])
        self.assertEqual(copies.mapped("state"), ["done"], copies.read())
        self.assertEqual(headers["Message-Id"], message.message_id)
        self.assertIn("student1@school.test", headers["To"])
        self.assertEqual(message.notification_ids.notification_status, "sent")
        # the student received it
        student_box = Mailbox(self.harness, "student1@school.test")
        self.assertEqual(len(student_box.find("INBOX", message.message_id)), 1)
        self.file_copies()
        ((flags, copy),) = self.alice_box.find("Sent", message.message_id)
        self.assertIn(b"\\Seen", flags)
        self.assertEqual(copy["From"], '"Alice Consultant" <alice@agency.test>')
        self.assertIn("student1@school.test", copy["To"])
        self.assertEqual(copy["Subject"], headers["Subject"])
        self.assertEqual(copy["Date"], headers["Date"])
        self.assertIsNone(copy["Return-Path"])
        html = [p for p in copy.walk() if p.get_content_type() == "text/html"]
        self.assertIn(b"<p>Hello</p>", html[0].get_payload(decode=True))
        self.file_copies()  # nothing more on a second run
        self.assertEqual(len(self.alice_box.find("Sent", message.message_id)), 1)

    def test_composer_with_template(self):
        template = self.env["mail.template"].create(
            {
                "name": "Welcome",
                "model_id": self.env.ref("base.model_res_partner").id,
                "subject": "Welcome {{ object.name }}",
                "partner_to": "{{ object.id }}",
                "body_html": "<p>Welcome to the agency</p>",
            }
        )
        composer = (
            self.env["mail.compose.message"]
            .with_user(self.alice)
            .with_context(default_model="res.partner", default_res_ids=self.student.ids)
            .create({"template_id": template.id})
        )
        with self.live():
            composer._action_send_mail()
        (sent,) = self.smtp.messages()
        headers = self.assert_from_alice(sent)
        self.assertEqual(headers["Subject"], "Welcome Student One")

    def test_queued_mail_sent_by_cron_as_superuser(self):
        mail = self.queue(self.alice, "queued")
        self.run_queue()
        (sent,) = self.smtp.messages()
        self.assert_from_alice(sent)
        self.assertEqual(mail.state, "sent", mail.failure_reason)

    def test_others_take_odoos_normal_path(self):
        plain_user = new_test_user(
            self.env,
            login="plain",
            groups="base.group_user,base.group_partner_manager",
            email="plain@agency.test",
        )
        self.post(plain_user)
        # a system notification: authored by OdooBot, created by the superuser
        root = self.env.ref("base.partner_root")
        with self.live():
            self.student.message_post(
                body="system",
                author_id=root.id,
                partner_ids=self.student.ids,
                message_type="comment",
                subtype_xmlid="mail.mt_comment",
            )
        sent = self.smtp.messages()
        self.assertEqual({m["login"] for m in sent}, {"carol@agency.test"})
        self.assertEqual(
            [m["rcpt_tos"] for m in sent if "student1@school.test" in m["rcpt_tos"]],
            [["student1@school.test"]] * 2,
        )
        # a mail created by alice but authored by someone else is not hers
        mail = self.queue(self.alice, "not hers")
        mail.mail_message_id.author_id = root
        self.run_queue()
        self.assertEqual(self.smtp.messages()[-1]["login"], "carol@agency.test")

    def test_one_session_per_user_per_run(self):
        for i in range(3):
            self.queue(self.alice, f"alice {i}")
        for i in range(2):
            self.queue(self.bob, f"bob {i}")
        self.run_queue()
        sessions = [s for s in self.smtp.state()["sessions"] if s["events"]]
        by_login = {}
        for session in sessions:
            logins = {e[1] for e in session["events"] if e[0] == "auth"}
            datas = [e for e in session["events"] if e[0] == "data"]
            (login,) = logins
            by_login.setdefault(login, []).append(len(datas))
        self.assertEqual(by_login, {"alice@agency.test": [3], "bob@agency.test": [2]})

    # -- the Sent copy ------------------------------------------------------
    def test_sent_copy_modes(self):
        cases = [("auto", True, 1), ("always", False, 1), ("never", False, 0)]
        for mode, autosave, expected in cases:
            with self.subTest(mode=mode, autosave=autosave):
                self.smtp.reset()
                self.alice_box.purge()
                self.smtp.autosave(autosave)
                self.company.ally_smtp_sent_copy = mode
                message = self.post(self.alice, body=f"mode {mode}")
                self.file_copies()
                copies = self.alice_box.find("Sent", message.message_id)
                self.assertEqual(len(copies), expected)

    def test_multi_recipient_post_one_copy_with_everyone(self):
        message = self.post(self.alice, partners=self.student | self.student2)
        sent = self.smtp.messages()
        self.assertEqual(len(sent), 2)  # Odoo: one SMTP transaction per partner
        self.file_copies()
        ((_flags, copy),) = self.alice_box.find("Sent", message.message_id)
        self.assertIn("student1@school.test", copy["To"])
        self.assertIn("student2@school.test", copy["To"])

    def test_imap_down_delays_the_copy_and_never_resends(self):
        imap_port = self.company.ally_smtp_imap_port
        self.company.ally_smtp_imap_port = free_port()
        message = self.post(self.alice)
        self.file_copies()
        copy = self.env["ally.smtp.sent.copy"].search(
            [("message_id", "=", message.message_id)]
        )
        self.assertEqual(copy.state, "pending")
        self.assertEqual(copy.attempts, 1)
        self.assertIn("Nothing answers", copy.last_error)
        self.company.ally_smtp_imap_port = imap_port
        copy.next_try = fields.Datetime.now() - timedelta(seconds=1)
        self.file_copies()
        self.assertEqual(copy.state, "done")
        self.assertEqual(len(self.alice_box.find("Sent", message.message_id)), 1)
        self.assertEqual(len(self.smtp.messages()), 1)

    # -- failures -----------------------------------------------------------
    def test_auth_failure_stops_using_the_password(self):
        self.smtp.fail("AUTH", "535 Incorrect authentication data", login=None)
        first = self.queue(self.alice, "first")
        self.run_queue()
        self.assertEqual(first.state, "exception")
        self.assertIn("refused the password", first.failure_reason)
        self.assertEqual(self.alice.ally_smtp_state, "failed")
        attempts = len(self.smtp.auth_attempts("alice@agency.test"))
        self.assertTrue(attempts)
        second = self.queue(self.alice, "second")
        self.run_queue()
        self.assertEqual(second.state, "exception")
        self.assertIn("Not sent", second.failure_reason)
        self.assertEqual(len(self.smtp.auth_attempts("alice@agency.test")), attempts)
        self.assertEqual(self.smtp.messages(), [])
        # a new password makes the mailbox usable again
        self.smtp.reset()
        self.alice.with_user(self.alice).ally_smtp_password = self.harness["mailboxes"][
            "alice@agency.test"
        ]
        second.mark_outgoing()
        self.run_queue()
        self.assertEqual(second.state, "sent")

    def test_temporary_failure_is_retried_and_sent_once(self):
        self.smtp.fail("RCPT", "451 4.3.0 Try again later", times=1)
        mail = self.queue(self.alice, "retry me")
        mail_logger = "odoo.addons.mail.models.mail_mail"
        with self.assertLogs(mail_logger, logging.INFO) as logs:
            self.run_queue()
        # an expected retry: noted at INFO, without a traceback
        failure = logs.records[0]
        self.assertIn("451", failure.getMessage())
        self.assertEqual({r.levelno for r in logs.records}, {logging.INFO})
        self.assertEqual({r.exc_info for r in logs.records}, {None})
        self.assertEqual(mail.state, "outgoing")
        self.assertEqual(mail.ally_smtp_attempts, 1)
        self.assertGreater(mail.scheduled_date, fields.Datetime.now())
        self.assertIn("451", mail.failure_reason)
        self.run_queue()  # not due yet
        self.assertEqual(self.smtp.messages(), [])
        self.retry_now(mail)
        self.assertEqual(mail.state, "sent", mail.failure_reason)
        self.assertEqual(len(self.smtp.messages()), 1)

    def queue_chunk_failing_at(self, after):
        """A mail to 50 students (50 SMTP transactions, as Odoo sends it)
        whose transaction ``after + 1`` meets a 4xx: it stays queued."""
        students = self.env["res.partner"].create(
            [
                {"name": f"Chunk {i}", "email": f"chunk.{i}@school.test"}
                for i in range(50)
            ]
        )
        mail = self.queue(self.alice, "chunk", partner=students[0])
        mail.recipient_ids = students
        self.notify(mail, students)
        self.smtp.fail("DATA", "451 4.3.0 Try again later", times=1, after=after)
        self.run_queue()
        self.assertEqual(mail.state, "outgoing", mail.failure_reason)
        self.assertEqual(len(self.smtp.messages()), after)
        return mail, set(students.mapped("email"))

    def retry_and_count(self, mail, addresses):
        self.retry_now(mail)
        self.assertEqual(mail.state, "sent", mail.failure_reason)
        received = collections.Counter(
            rcpt for sent in self.smtp.messages() for rcpt in sent["rcpt_tos"]
        )
        self.assertEqual(set(received), addresses)
        twice = sorted(rcpt for rcpt, count in received.items() if count > 1)
        self.assertEqual(twice, [], f"{len(twice)} students got the mail twice")

    def test_retried_chunk_skips_the_recipients_it_reached(self):
        mail, addresses = self.queue_chunk_failing_at(20)
        self.retry_and_count(mail, addresses)
        self.file_copies()
        ((_flags, copy),) = self.alice_box.find("Sent", mail.message_id)
        listed = {a for _name, a in email.utils.getaddresses(copy.get_all("To"))}
        self.assertEqual(listed, addresses)

    def test_retried_chunk_skips_the_reached_without_sent_copies(self):
        """With no Sent copy (the provider files it), each accepted SMTP
        transaction is still recorded, for whom the mail reached only: the
        retry leaves them out, and no copy is ever made of them."""
        self.company.ally_smtp_sent_copy = "never"
        mail, addresses = self.queue_chunk_failing_at(20)
        deliveries = self.env["ally.smtp.delivery"].search([])
        self.assertEqual(len(deliveries), 20)
        self.assertEqual(set(deliveries.mapped("reached_only")), {True})
        self.assertEqual(set(deliveries.mapped("mail_id")), {mail.id})
        notifications = self.env["mail.notification"].search(
            [("mail_mail_id", "=", mail.id)]
        )
        statuses = collections.Counter(notifications.mapped("notification_status"))
        self.assertEqual(statuses, {"sent": 20, "ready": 30})
        self.retry_and_count(mail, addresses)
        self.assertEqual(set(notifications.mapped("notification_status")), {"sent"})
        self.file_copies()
        self.assertFalse(self.env["ally.smtp.sent.copy"].search([]))

    def test_lost_send_transaction_still_skips_the_reached(self):
        """A worker killed mid-mail, or a send Odoo rolled back after it went
        out, leaves the mail queued as if never tried: no attempt counted, no
        notification sent. Whom it reached is in the ledger, recorded
        outside the send transaction, and the next run leaves them out."""
        for mode in ("never", "always"):
            with self.subTest(mode=mode):
                self.company.ally_smtp_sent_copy = mode
                self.smtp.reset()
                mail, addresses = self.queue_chunk_failing_at(20)
                # what the lost send transaction would not have committed
                mail.write({"ally_smtp_partly_sent": False, "ally_smtp_attempts": 0})
                self.env["mail.notification"].search(
                    [("mail_mail_id", "=", mail.id)]
                ).notification_status = "ready"
                self.retry_and_count(mail, addresses)

    def test_mail_another_worker_sends_is_left_to_it(self):
        """A mail whose send lock another connection holds (a second worker
        sending it now) is neither sent nor touched; once the lock is free
        it leaves once."""
        mail = self.queue(self.alice, "claimed elsewhere")
        with self.registry.cursor() as other:
            other.execute("SELECT pg_advisory_lock(%s, %s)", [SENDING_LOCK, mail.id])
            self.run_queue()
            self.assertEqual(len(self.smtp.messages()), 0)
            self.assertEqual(mail.state, "outgoing")
            self.assertFalse(mail.ally_smtp_partly_sent)
            other.execute("SELECT pg_advisory_unlock_all()")
        self.run_queue()
        self.assertEqual(mail.state, "sent")
        self.assertEqual(len(self.smtp.messages()), 1)

    def test_retry_after_the_copy_was_filed_still_skips_the_reached(self):
        """The copy of a message whose chunk waits over an hour is filed
        without it; whom that chunk reached is kept for its retry."""
        mail, addresses = self.queue_chunk_failing_at(30)
        self.file_copies()
        copy = self.env["ally.smtp.sent.copy"].search(
            [("message_id", "=", mail.message_id)]
        )
        copy.first_sent = fields.Datetime.now() - timedelta(hours=2)
        self.file_copies()
        self.assertEqual(copy.state, "done")
        self.retry_and_count(mail, addresses)

    def test_giving_up_on_temporary_failures_is_a_warning(self):
        self.smtp.fail("RCPT", "451 4.3.0 Try again later", times=1)
        mail = self.queue(self.alice, "tired")
        mail.ally_smtp_attempts = 4
        with self.assertLogs("odoo.addons.ally_smtp", logging.WARNING) as logs:
            self.run_queue()
        self.assertEqual(mail.state, "exception")
        self.assertIn("not sent after 5 attempts", logs.output[0])

    def test_dropped_connection_loses_and_duplicates_nothing(self):
        mails = [self.queue(self.alice, f"drop {i}") for i in range(3)]
        self.smtp.fail("RCPT", "drop", times=1)
        self.run_queue()
        self.assertEqual({m.state for m in mails}, {"outgoing"})
        self.retry_now(*mails)
        self.assertEqual({m.state for m in mails}, {"sent"})
        ids = [m["message_id"] for m in self.smtp.messages()]
        self.assertEqual(len(ids), 3)
        self.assertEqual(len(set(ids)), 3)

    def test_permanent_refusal_of_one_mail_keeps_the_others(self):
        bad, good = self.queue(self.alice, "bad"), self.queue(self.alice, "good")
        self.smtp.fail("DATA", "554 5.7.1 Message rejected as spam", times=1)
        self.run_queue()
        self.assertEqual(bad.state, "exception")
        self.assertIn("554 5.7.1", bad.failure_reason)
        self.assertEqual(good.state, "sent")

    def test_drop_at_quit_does_not_abort_the_run(self):
        self.smtp.fail("QUIT", "drop", login="alice@agency.test")
        alice_mail, bob_mail = self.queue(self.alice, "a"), self.queue(self.bob, "b")
        self.run_queue()
        self.assertEqual(alice_mail.state, "sent")
        self.assertEqual(bob_mail.state, "sent")

    def test_optional_fallback_to_the_agency_server(self):
        self.company.ally_smtp_fallback = True
        self.smtp.fail("AUTH", "535 Incorrect authentication data", login=None)
        first = self.queue(self.alice, "first")
        self.run_queue()
        self.assertEqual(first.state, "exception")  # the refusal itself
        self.smtp.reset()
        second = self.queue(self.alice, "second")
        self.run_queue()
        self.assertEqual(second.state, "sent", second.failure_reason)
        (sent,) = self.smtp.messages()
        self.assertEqual(sent["login"], "carol@agency.test")
        self.assertEqual(self.smtp.auth_attempts("alice@agency.test"), [])
        note = self.student.message_ids.filtered(
            lambda m: "agency's mail server" in (m.body or "")
        )
        self.assertEqual(len(note), 1)

    def test_refused_imap_password_stops_the_copies(self):
        message = self.post(self.alice)
        # the password changes after the send: IMAP refuses the stored one
        self.alice.with_user(self.alice).ally_smtp_password = "changed-elsewhere"
        self.file_copies()
        copy = self.env["ally.smtp.sent.copy"].search(
            [("message_id", "=", message.message_id)]
        )
        self.assertEqual(copy.state, "pending")
        self.assertEqual(copy.attempts, 1)
        self.assertEqual(self.alice.ally_smtp_state, "failed")
        # no new login with that password, however often the cron runs
        copy.next_try = fields.Datetime.now() - timedelta(seconds=1)
        self.file_copies()
        self.assertEqual(copy.attempts, 1)
        # the right password again: the copy is filed once (Dovecot, like many
        # providers, answers the next login slowly after a refused one)
        self.env["ir.config_parameter"].sudo().set_param("ally_smtp.timeout", "20")
        self.alice.with_user(self.alice).ally_smtp_password = self.harness["mailboxes"][
            "alice@agency.test"
        ]
        self.file_copies()
        self.assertEqual(copy.state, "done", copy.last_error)
        self.assertEqual(len(self.alice_box.find("Sent", message.message_id)), 1)

    def test_no_imap_server_no_copy(self):
        self.company.ally_smtp_imap_host = False
        message = self.post(self.alice)
        copies = self.env["ally.smtp.sent.copy"].search(
            [("message_id", "=", message.message_id)]
        )
        self.assertFalse(copies)

    def test_retry_by_hand_restores_the_attempts(self):
        mail = self.queue(self.alice, "tired")
        mail.write({"state": "exception", "ally_smtp_attempts": 4})
        mail.action_retry()
        self.assertEqual((mail.state, mail.ally_smtp_attempts), ("outgoing", 0))

    def test_routing_costs_the_same_queries_for_many_mails(self):
        def queries(mails):
            mails.invalidate_recordset()
            self.env.invalidate_all()
            before = self.env.cr.sql_log_count
            list(mails._split_by_mail_configuration())
            return self.env.cr.sql_log_count - before

        few = self.env["mail.mail"].concat(
            *(self.queue(user, "few") for user in (self.alice, self.bob))
        )
        many = self.env["mail.mail"].concat(
            *(
                self.queue(user, f"many {i}")
                for i in range(10)
                for user in (self.alice, self.bob)
            )
        )
        queries(few)  # warm the caches that do not depend on the mails
        self.assertEqual(queries(few), queries(many))

    def _sessions(self):
        """smtplib's own session, then a personal one, to the same server."""
        info, login = self.harness, "alice@agency.test"
        host, port = info["smtp"]["host"], info["smtp"]["ports"]["ssl"]
        context = mailbox.tls_context()
        context.load_verify_locations(info["ca_file"])
        for session_class in (smtplib.SMTP_SSL, mailbox.SMTP_SSL):
            with session_class(host, port, context=context, timeout=10) as session:
                session.login(login, info["mailboxes"][login])
                yield session

    def test_large_message_data_is_what_smtplib_sends(self):
        """A large message's DATA goes in pieces: the server gets the same
        bytes as from smtplib's own DATA (dot-stuffing, terminator)."""
        lines = [b".starts with a dot", b"..two", b"plain line", b"", b"."]
        raw = b"Subject: big\r\nMessage-Id: <big@agency.test>\r\n\r\n"
        raw += b"\r\n".join(lines * 60000) + b"\r\n.end without a line break"
        self.assertGreater(len(raw), 2 * mailbox.LARGE)
        self.smtp.deliver(False)
        self.addCleanup(self.smtp.deliver, True)
        for session in self._sessions():
            session.sendmail("alice@agency.test", ["student2@school.test"], raw)
        stdlib, ours = (m["data"] for m in self.smtp.messages())
        self.assertEqual(ours, stdlib)
        self.assertTrue(stdlib.startswith(raw.decode()))

    def test_large_attachment_is_sent_as_the_standard_library_makes_it(self):
        """A large attachment is encoded and flattened in pieces: the same
        bytes as the standard library's, on the wire and in the Sent copy,
        and the message is left as it was."""
        data = bytes(range(256)) * (12 * 1024) + b"odd end"  # 3 MB
        message = EmailMessage(policy=email.policy.SMTP)
        message["From"], message["To"] = "alice@agency.test", "student2@school.test"
        message["Subject"], message["Message-Id"] = "big", "<big@agency.test>"
        message.add_alternative("Hello\n.a dot", subtype="plain")
        message.add_alternative("<p>Hello</p>", subtype="html")
        message.add_attachment(data, "application", "pdf", filename="a.pdf")
        message.add_attachment(
            mailbox.Attachment(data), "application", "pdf", filename="b.pdf"
        )
        message.set_boundary("top")  # smtplib draws it again for each send
        first, second = message.get_payload()[1:]
        self.assertEqual(first.get_payload(), second.get_payload())
        before = message.as_bytes()
        self.smtp.deliver(False)
        self.addCleanup(self.smtp.deliver, True)
        for session in self._sessions():
            session.send_message(message)
        # flattened otherwise than expected: the standard library's way then
        unexpected = mock.Mock(side_effect=mailbox._Unexpected)
        with mock.patch.object(mailbox, "_with_bodies", unexpected):
            for session in self._sessions():
                if isinstance(session, mailbox.SMTP_SSL):
                    session.send_message(message)
        self.assertEqual(unexpected.call_count, 1)
        stdlib, ours, usual = (m["data"] for m in self.smtp.messages())
        self.assertEqual(ours, stdlib)
        self.assertEqual(usual, stdlib)
        self.assertEqual(session.ally_smtp_sent.decode(), ours)
        self.assertEqual(message.as_bytes(), before)
        received = email.message_from_string(ours, policy=email.policy.SMTP)
        attachments = [p.get_content() for p in received.iter_attachments()]
        self.assertEqual(attachments, [data, data])
