"""The harness's servers behave like a provider: prove it from inside Odoo."""

import email
import imaplib
import smtplib
import ssl
import time
import uuid

from odoo.tests import tagged

from .common import AllySmtpCase, Mailbox


@tagged("post_install", "-at_install")
class TestHarness(AllySmtpCase):
    def _context(self):
        return ssl.create_default_context(cafile=self.harness["ca_file"])

    def _smtp(self, listener="ssl"):
        port = self.smtp.ports[listener]
        if listener == "starttls":
            connection = smtplib.SMTP("localhost", port, timeout=10)
            connection.starttls(context=self._context())
            return connection
        return smtplib.SMTP_SSL("localhost", port, timeout=10, context=self._context())

    def test_odoo_mail_server_sends_through_harness(self):
        password = self.harness["mailboxes"]["carol@agency.test"]
        server = self.env["ir.mail_server"].create(
            {
                "name": "harness",
                "smtp_host": "localhost",
                "smtp_port": self.smtp.ports["starttls"],
                "smtp_encryption": "starttls",
                "smtp_authentication": "login",
                "smtp_user": "carol@agency.test",
                "smtp_pass": password,
                "from_filter": "carol@agency.test",
            }
        )
        subject = f"harness {uuid.uuid4()}"
        IrMailServer = self.env["ir.mail_server"]
        message = IrMailServer.build_email(
            "carol@agency.test",
            ["student1@school.test"],
            subject,
            "Hello",
            email_cc=["student2@school.test"],
        )
        with self.live():
            message_id = IrMailServer.send_email(message, mail_server_id=server.id)
        (sent,) = self.smtp.messages()
        self.assertEqual(sent["login"], "carol@agency.test")
        self.assertEqual(sent["listener"], "starttls")
        self.assertEqual(sent["mail_from"], "carol@agency.test")
        self.assertEqual(
            sorted(sent["rcpt_tos"]), ["student1@school.test", "student2@school.test"]
        )
        received = email.message_from_string(sent["data"])
        self.assertEqual(received["Subject"], subject)
        self.assertEqual(received["Message-Id"], message_id)
        # delivered to the local recipient's INBOX, as a provider would
        inbox = Mailbox(self.harness, "student1@school.test").find("INBOX", message_id)
        self.assertEqual(len(inbox), 1)

    def test_imap_append_and_read_back(self):
        box = Mailbox(self.harness, "carol@agency.test")
        message_id = f"<{uuid.uuid4()}@harness>"
        raw = f"From: carol@agency.test\r\nMessage-Id: {message_id}\r\n\r\nhi\r\n"
        with box.connect() as imap:
            _typ, folders = imap.list()
            self.assertIn(b'(\\HasNoChildren \\Sent) "/" Sent', folders)
            typ, _data = imap.append(
                "Sent", r"(\Seen)", imaplib.Time2Internaldate(time.time()), raw.encode()
            )
            self.assertEqual(typ, "OK")
        ((flags, msg),) = box.find("Sent", message_id)
        self.assertIn(b"\\Seen", flags)
        self.assertEqual(msg.get_payload().strip(), "hi")

    def test_wrong_password_refused_by_both(self):
        with (
            self._smtp() as connection,
            self.assertRaises(smtplib.SMTPAuthenticationError) as caught,
        ):
            connection.login("carol@agency.test", "not-the-password")
        self.assertEqual(caught.exception.smtp_code, 535)
        self.assertIn(["auth", "carol@agency.test", False], self.smtp.auth_attempts())
        box = Mailbox(self.harness, "carol@agency.test")
        box.password = "not-the-password"
        with self.assertRaises(imaplib.IMAP4.error), box.connect():
            pass

    def test_starttls_port_hides_auth_before_tls(self):
        with smtplib.SMTP("localhost", self.smtp.ports["starttls"], timeout=10) as c:
            c.ehlo()
            self.assertFalse(c.has_extn("auth"))
            c.starttls(context=self._context())
            c.ehlo()
            self.assertTrue(c.has_extn("auth"))

    def test_untrusted_listener_fails_verification(self):
        with self.assertRaises(ssl.SSLCertVerificationError):
            self._smtp("untrusted")

    def test_fault_switches(self):
        login = "carol@agency.test"
        password = self.harness["mailboxes"][login]
        cases = [
            ("RCPT", "451 4.3.0 Try again later", smtplib.SMTPRecipientsRefused),
            ("DATA", "554 5.6.0 Message rejected", smtplib.SMTPDataError),
            ("MAIL", "drop", smtplib.SMTPServerDisconnected),
            ("AUTH", "535 5.7.139 SmtpClientAuthentication is disabled", None),
        ]
        for stage, reply, exception in cases:
            with self.subTest(stage=stage, reply=reply):
                # smtplib tries every mechanism; a refused account refuses all
                self.smtp.fail(stage, reply, times=None if stage == "AUTH" else 1)
                connection = self._smtp()
                try:
                    if stage == "AUTH":
                        with self.assertRaises(smtplib.SMTPAuthenticationError) as c:
                            connection.login(login, password)
                        self.assertIn(b"5.7.139", c.exception.smtp_error)
                        continue
                    connection.login(login, password)
                    with self.assertRaises(exception) as caught:
                        connection.sendmail(
                            login, ["x@school.test"], b"Subject: x\r\n\r\nx"
                        )
                    if reply != "drop":
                        code = int(reply[:3])
                        got = caught.exception
                        codes = (
                            [v[0] for v in got.recipients.values()]
                            if isinstance(got, smtplib.SMTPRecipientsRefused)
                            else [got.smtp_code]
                        )
                        self.assertEqual(codes, [code])
                finally:
                    connection.close()
        self.smtp.reset()
        # the faults are gone: the next message goes through
        with self._smtp() as connection:
            connection.login(login, password)
            connection.sendmail(login, ["x@school.test"], b"Subject: ok\r\n\r\nok")
        self.assertEqual(len(self.smtp.messages()), 1)

    def test_fault_after_some_commands(self):
        login = "carol@agency.test"
        self.smtp.fail("DATA", "451 4.3.0 Try again later", times=1, after=2)
        results = []
        with self._smtp() as connection:
            connection.login(login, self.harness["mailboxes"][login])
            for n in range(4):
                try:
                    connection.sendmail(
                        login, [f"{n}@school.test"], b"Subject: x\r\n\r\nx"
                    )
                    results.append("sent")
                except smtplib.SMTPDataError as exc:
                    results.append(exc.smtp_code)
        self.assertEqual(results, ["sent", "sent", 451, "sent"])

    def test_autosave_files_sent_copy(self):
        self.smtp.autosave()
        login = "carol@agency.test"
        message_id = f"<{uuid.uuid4()}@harness>"
        with self._smtp("starttls") as connection:
            connection.login(login, self.harness["mailboxes"][login])
            connection.sendmail(
                login,
                ["x@school.test"],
                f"Message-Id: {message_id}\r\nSubject: a\r\n\r\nb".encode(),
            )
        self.assertEqual(len(Mailbox(self.harness, login).find("Sent", message_id)), 1)
