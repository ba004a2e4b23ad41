"""Replies come home: a student's answer to a consultant's mail, found in the
consultant's INBOX on the harness's Dovecot, lands once on the student's
record; the consultant's own answers from their mail client come from their
Sent folder; nothing else of the mailbox is read, marked or brought in."""

import email
import email.utils

from odoo import fields
from odoo.tests import tagged
from odoo.tools import mute_logger

from ..lib import crypto, errors, replies
from ..models.ally_smtp_mailbox_replies import REPLIES_FIRST_DELAY, REPLIES_LOCK
from .common import AllySmtpCase, Mailbox, free_port
from .servers import message
from .test_oauth import OAuthCase

PDF = b"%PDF-1.4 the signed contract\n%%EOF\n"


def deliver(box, msg, folder="INBOX", flags=None):
    """APPEND ``msg`` to ``folder`` as a delivery (or a mail client) would."""
    with box.connect() as imap:
        typ, data = imap.append(f'"{folder}"', flags, None, msg.as_bytes())
        assert typ == "OK", data


class RepliesMixin:
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.company.ally_smtp_fetch_replies = True
        cls.agency = cls.agency_server()  # Odoo's own notifications
        cls.maria = cls.env["res.partner"].create(
            {"name": "Maria Student", "email": "student1@school.test"}
        )
        cls.alice_box = Mailbox(cls.harness, "alice@agency.test")

    def setUp(self):
        super().setUp()
        self.alice_box.purge()
        self.ready(self.alice)

    def maria_answers(self, sent, body="Yes.", subject="Re: visa", **kwargs):
        """Maria answers ``sent`` (a ``mail.message``): her mail is delivered
        to Alice's INBOX. Returns it."""
        answer = message(
            "student1@school.test",
            "alice@agency.test",
            subject,
            body,
            answers=[sent.message_id],
            **kwargs,
        )
        deliver(self.alice_box, answer)
        return answer

    def ready(self, user):
        """The mailbox passed its Test: working, its Sent folder known."""
        with self.live():
            user._ally_smtp_mailbox()._test()

    def post(self, user, record, body="Your visa appointment is on Monday."):
        with self.live():
            return record.with_user(user).message_post(
                body=body,
                partner_ids=record.ids if record._name == "res.partner" else [],
                message_type="comment",
                subtype_xmlid="mail.mt_comment",
            )

    def fetch(self):
        with self.live():
            self.env["ally.smtp.mailbox"]._ally_smtp_fetch_replies()

    def on_record(self, record, message_id):
        return self.env["mail.message"].search(
            [
                ("model", "=", record._name),
                ("res_id", "=", record.id),
                ("message_id", "=", message_id),
            ]
        )

    def anywhere(self, message_id):
        return self.env["mail.message"].search_count([("message_id", "=", message_id)])


@tagged("post_install", "-at_install")
class TestReplies(RepliesMixin, AllySmtpCase):
    def catchall(self):
        domain = self.env["mail.alias.domain"].create({"name": "odoo.agency.test"})
        self.company.alias_domain_id = domain

    def test_reply_to_is_the_personal_mailbox(self):
        self.catchall()  # Odoo would answer to its catchall
        self.post(self.alice, self.maria)
        sent = [m for m in self.smtp.messages() if m["login"] == "alice@agency.test"]
        self.assertEqual(len(sent), 1)
        header = email.message_from_string(sent[0]["data"])["Reply-To"]
        self.assertEqual(
            email.utils.parseaddr(header), ("Alice Consultant", "alice@agency.test")
        )

    def test_reply_to_is_odoo_s_when_off(self):
        self.company.ally_smtp_fetch_replies = False
        self.catchall()
        self.post(self.alice, self.maria)
        sent = [m for m in self.smtp.messages() if m["login"] == "alice@agency.test"]
        header = email.message_from_string(sent[0]["data"])["Reply-To"]
        self.assertIn("catchall@odoo.agency.test", header)
        self.assertNotIn("alice@agency.test", header)

    def test_student_reply_lands_once_with_attachment_and_stays_unread(self):
        sent = self.post(self.alice, self.maria)
        answer = message(
            '"Maria Student" <student1@school.test>',
            "alice@agency.test",
            "Re: visa",
            "Monday works, the contract is attached.",
            answers=[sent.message_id],
            attachment=("contract.pdf", PDF),
        )
        private = message(
            "friend@elsewhere.test",
            "alice@agency.test",
            "Dinner on Friday?",
            "Nothing to do with work.",
        )
        # a reply to a message Odoo does not have: private too
        stranger = message(
            "friend@elsewhere.test",
            "alice@agency.test",
            "Re: Dinner",
            "See you then.",
            answers=["<not-odoo@elsewhere.test>"],
        )
        for msg in (private, answer, stranger):
            deliver(self.alice_box, msg)
        self.fetch()
        landed = self.on_record(self.maria, answer["Message-ID"])
        self.assertEqual(len(landed), 1)
        self.assertEqual(landed.author_id, self.maria)
        self.assertEqual(landed.message_type, "email")
        self.assertIn("Monday works", str(landed.body))
        self.assertEqual(landed.attachment_ids.mapped("name"), ["contract.pdf"])
        self.assertEqual(landed.attachment_ids.raw, PDF)
        for msg in (private, stranger):
            self.assertEqual(self.anywhere(msg["Message-ID"]), 0)
            self.assertFalse(
                self.env["mail.message"].search([("subject", "=", msg["Subject"])])
            )
        # nothing marked read, moved or deleted
        inbox = self.alice_box.messages("INBOX")
        ids = {msg["Message-ID"].strip() for _flags, msg in inbox}
        self.assertLessEqual(
            {m["Message-ID"] for m in (private, answer, stranger)}, ids
        )
        # (and Odoo's notification of the reply to Alice, a follower)
        flags = {flag for flags, _msg in inbox for flag in flags}
        self.assertFalse(flags - {b"\\Recent"})  # no \Seen, no \Deleted
        box = self.alice._ally_smtp_mailbox()
        self.assertTrue(box.replies_checked_at)
        self.assertFalse(box.replies_error)
        self.assertEqual(box.replies_imported, 1)
        # the next run looks at what came since (Odoo's notification of the
        # reply, its own Message-ID: passed over) and imports nothing again
        mark = box.reply_mark_ids.filtered(lambda m: m.folder == "INBOX")
        notification = self.on_record(self.maria, answer["Message-ID"]).message_id
        self.fetch()
        with self.alice_box.connect() as imap:
            imap.select("INBOX", readonly=True)
            _typ, data = imap.uid("SEARCH", "ALL")
        self.assertEqual(mark.last_uid, data[0].split()[-1].decode())
        self.assertEqual(self.anywhere(answer["Message-ID"]), 1)
        self.assertEqual(self.anywhere(notification), 1)
        self.assertEqual(box.replies_imported, 1)

    def test_consultant_reply_from_sent_is_theirs_and_not_mailed_again(self):
        sent = self.post(self.alice, self.maria)
        answer = self.maria_answers(sent, body="Which time?")
        own = message(
            '"Alice Consultant" <alice@agency.test>',
            "student1@school.test",
            "Re: visa",
            "At 10, from Thunderbird.",
            answers=[sent.message_id, answer["Message-ID"]],
        )
        deliver(self.alice_box, own, "Sent", r"(\Seen)")
        # a student who follows the record would be mailed a new comment
        self.maria.message_subscribe(self.maria.ids)
        # Odoo's own copy of its mail in Sent (its Message-ID): no new message
        odoo_copy = message(
            "alice@agency.test",
            "student1@school.test",
            "visa",
            "Your visa appointment is on Monday.",
            msgid=sent.message_id,
        )
        deliver(self.alice_box, odoo_copy, "Sent", r"(\Seen)")
        self.smtp.reset()
        self.fetch()
        theirs = self.on_record(self.maria, own["Message-ID"])
        self.assertEqual(len(theirs), 1)
        self.assertEqual(theirs.author_id, self.alice.partner_id)
        self.assertIn("from Thunderbird", str(theirs.body))
        self.assertEqual(self.anywhere(sent.message_id), 1)
        self.assertEqual(self.anywhere(answer["Message-ID"]), 1)
        # the student is not mailed the consultant's answer a second time
        mails = self.env["mail.mail"].search([("mail_message_id", "=", theirs.id)])
        self.assertFalse(mails)
        self.assertFalse(
            self.env["mail.notification"].search(
                [
                    ("mail_message_id", "=", theirs.id),
                    ("notification_type", "=", "email"),
                ]
            )
        )
        self.run_queue()
        self.assertFalse(
            [m for m in self.smtp.messages() if "Thunderbird" in m["data"]]
        )

    def test_once_catchall_rescan_lost_watermark_and_a_second_run(self):
        sent = self.post(self.alice, self.maria)
        answer = message(
            "student1@school.test",
            "alice@agency.test",
            "Re: visa",
            "Yes.",
            answers=[sent.message_id],
        )
        # the same reply reached Odoo through a catchall first
        self.env["mail.thread"].sudo().message_process(False, answer.as_bytes())
        self.assertEqual(self.anywhere(answer["Message-ID"]), 1)
        later = message(
            "student1@school.test",
            "alice@agency.test",
            "Re: visa",
            "And Tuesday?",
            answers=[sent.message_id],
        )
        deliver(self.alice_box, answer)
        deliver(self.alice_box, later)
        self.fetch()
        self.assertEqual(self.anywhere(answer["Message-ID"]), 1)
        self.assertEqual(len(self.on_record(self.maria, later["Message-ID"])), 1)
        box = self.alice._ally_smtp_mailbox()
        mark = box.reply_mark_ids.filtered(lambda m: m.folder == "INBOX")
        # a run killed before its watermark was kept, and a renumbered INBOX
        for values in ({"last_uid": "0"}, {"uidvalidity": "1"}):
            with self.subTest(**values):
                mark.sudo().write(values)
                self.fetch()
                self.assertEqual(self.anywhere(answer["Message-ID"]), 1)
                self.assertEqual(self.anywhere(later["Message-ID"]), 1)
        self.assertEqual(box.replies_imported, 1)

    def test_the_sent_folder_key_set_over_rpc_silences_nothing(self):
        """A context key is all a caller can send over RPC: set by hand on a
        post, the Sent folder's key does not keep the post from its mail."""
        maria = self.maria.with_context(ally_smtp_from_sent=True)
        self.post(self.alice, maria, body="Forged quiet post")
        sent = [m for m in self.smtp.messages() if m["login"] == "alice@agency.test"]
        self.assertEqual(len(sent), 1)
        self.assertIn("student1@school.test", sent[0]["rcpt_tos"])

    def test_two_runs_at_once_one_reads_the_mailbox(self):
        sent = self.post(self.alice, self.maria)
        answer = self.maria_answers(sent)
        box = self.alice._ally_smtp_mailbox()
        # another cron worker holds the mailbox (its own connection)
        with self.env.registry.cursor() as other:
            other.execute("SELECT pg_advisory_lock(%s, %s)", [REPLIES_LOCK, box.id])
            with self.live():
                self.assertIsNone(box._replies_run())
            self.assertEqual(self.anywhere(answer["Message-ID"]), 0)
            other.execute("SELECT pg_advisory_unlock(%s, %s)", [REPLIES_LOCK, box.id])
        self.fetch()
        self.assertEqual(self.anywhere(answer["Message-ID"]), 1)

    def test_unread_headers_only_bounded_rescan(self):
        """The headers read are those of the window, never the whole folder."""
        with self.alice_box.connect() as imap:
            for i in range(replies.RESCAN + 20):
                msg = message("x@elsewhere.test", "alice@agency.test", f"n{i}", "n")
                imap.append('"INBOX"', None, None, msg.as_bytes())
            imap.select("INBOX", readonly=True)
            folder = replies.Folder(imap, "INBOX")
            seen = folder.headers(folder.start(None, None))
            self.assertEqual(len(seen), replies.RESCAN)
            self.assertEqual(seen[-1][0], folder.uidnext - 1)
            # from a watermark: only what came after it
            again = folder.headers(folder.start(folder.uidvalidity, seen[-3][0]))
            self.assertEqual([uid for uid, *_r in again], [u for u, *_r in seen[-2:]])
            _typ, data = imap.uid("SEARCH", "SEEN")
            self.assertEqual(data, [b""])

    def test_failures_are_noted_and_sending_goes_on(self):
        box = self.alice._ally_smtp_mailbox()
        port = self.company.ally_smtp_imap_port
        self.company.ally_smtp_imap_port = free_port()
        self.fetch()
        self.assertTrue(box.replies_error)
        self.assertEqual(box.replies_error_kind, errors.TEMPORARY)
        self.assertEqual(box.replies_failures, 1)
        self.assertEqual(box.state, "ok")
        # waits for its delay, then works again
        self.company.ally_smtp_imap_port = port
        last = box.replies_checked_at
        self.fetch()
        self.assertEqual(box.replies_checked_at, last)
        checked(box, fields.Datetime.now() - replies_delay())
        self.fetch()
        self.assertFalse(box.replies_error)
        self.assertEqual(box.replies_failures, 0)
        # a refused password: noted, and no login again until the owner tests
        box.sudo().password_crypt = crypto.encrypt(self.env, "not-the-password")
        with mute_logger("odoo.addons.ally_smtp.models.ally_smtp_mailbox_replies"):
            self.fetch()
        self.assertEqual(box.replies_error_kind, errors.AUTH)
        self.assertEqual(box.state, "ok")
        # sending is not stopped by it
        self.assertEqual(box._unusable(), (False, False))
        # no login again with that password, however long it waits
        box.sudo().tested_at = fields.Datetime.now() - replies_delay(12)
        checked(box, fields.Datetime.now() - replies_delay(9))
        self.assertNotIn(box, self.env["ally.smtp.mailbox"]._replies_due())
        # until its owner enters it again and tests it
        self.alice.with_user(self.alice).ally_smtp_password = self.harness["mailboxes"][
            "alice@agency.test"
        ]
        self.ready(self.alice)
        self.assertIn(box, self.env["ally.smtp.mailbox"]._replies_due())
        self.fetch()
        self.assertFalse(box.replies_error)
        self.assertEqual(box.replies_failures, 0)

    def test_a_reply_odoo_refuses_is_tried_again_then_passed_over(self):
        # a message on a record that takes no mail: Odoo's gateway has no
        # route for its reply (ValueError), a stand-in for any refusal
        country = self.env.ref("base.br")
        odd = self.env["mail.message"].create(
            {
                "model": country._name,
                "res_id": country.id,
                "message_id": "<odd-thread@odoo.agency.test>",
                "body": "A message on a country",
            }
        )
        refused = message(
            "student1@school.test",
            "alice@agency.test",
            "Re: country",
            "Refused.",
            answers=[odd.message_id],
        )
        sent = self.post(self.alice, self.maria)
        after = message(
            "student1@school.test",
            "alice@agency.test",
            "Re: visa",
            "Comes after it.",
            answers=[sent.message_id],
        )
        deliver(self.alice_box, refused)
        deliver(self.alice_box, after)
        box = self.alice._ally_smtp_mailbox()
        for tries in (1, 2):
            with self.subTest(tries=tries):
                checked(box, fields.Datetime.now() - replies_delay(tries))
                self.fetch()
                mark = box.reply_mark_ids.filtered(lambda m: m.folder == "INBOX")
                self.assertEqual(mark.stuck_tries, tries)
                self.assertIn("could not be brought into Odoo", box.replies_error)
                # the next message waits behind it: nothing is skipped yet
                self.assertEqual(self.anywhere(after["Message-ID"]), 0)
        checked(box, fields.Datetime.now() - replies_delay(3))
        with self.assertLogs(
            "odoo.addons.ally_smtp.models.ally_smtp_mailbox_replies", "WARNING"
        ) as logged:
            self.fetch()
        self.assertIn("passed over after 3 attempts", logged.output[0])
        self.assertEqual(self.anywhere(refused["Message-ID"]), 0)
        self.assertEqual(len(self.on_record(self.maria, after["Message-ID"])), 1)
        self.assertFalse(box.replies_error)
        self.assertFalse(mark.stuck_uid)

    def test_paused_or_off_mailboxes_are_not_read(self):
        sent = self.post(self.alice, self.maria)
        answer = self.maria_answers(sent)
        box = self.alice._ally_smtp_mailbox()
        box.sudo().paused_until = fields.Datetime.now() + replies_delay()
        self.fetch()
        self.assertFalse(box.replies_checked_at)
        box.sudo().paused_until = False
        self.company.ally_smtp_fetch_replies = False
        self.fetch()
        self.assertFalse(box.replies_checked_at)
        self.assertEqual(self.anywhere(answer["Message-ID"]), 0)
        self.company.ally_smtp_fetch_replies = True
        self.fetch()
        self.assertEqual(self.anywhere(answer["Message-ID"]), 1)

    def test_sent_folders_named_as_gmail_and_cpanel(self):
        cpanel = self.consultant("cpanel@agency.test", name="Carla Cpanel")
        cases = [
            (self.bob, "bob@agency.test", "[Gmail]/Sent Mail", True),
            (cpanel, "cpanel@agency.test", "INBOX.Sent", False),
        ]
        for user, address, folder, known in cases:
            with self.subTest(folder=folder):
                harness_box = Mailbox(self.harness, address)
                harness_box.reset()
                harness_box.make_folder(folder)
                self.ready(user)
                box = user._ally_smtp_mailbox()
                if known:  # Gmail flags it \Sent: the Test finds it so
                    box.sudo().sent_folder = folder
                else:
                    box.sudo().sent_folder = False
                sent = self.post(user, self.maria)
                own = message(
                    address,
                    "student1@school.test",
                    "Re: visa",
                    f"From {folder}",
                    answers=[sent.message_id],
                )
                deliver(harness_box, own, folder, r"(\Seen)")
                self.fetch()
                theirs = self.on_record(self.maria, own["Message-ID"])
                self.assertEqual(theirs.author_id, user.partner_id)
                self.assertFalse(box.replies_error)
                marks = box.reply_mark_ids.mapped("folder")
                self.assertIn(folder, marks)


def checked(box, when):
    """As if the mailbox was last looked at ``when``."""
    box.sudo().reply_status_ids.write({"checked_at": when})


def replies_delay(times=1):
    """Longer than the wait after ``times`` failures."""
    return REPLIES_FIRST_DELAY * 2 ** (times - 1) + REPLIES_FIRST_DELAY


@tagged("post_install", "-at_install")
class TestRepliesOAuth(RepliesMixin, OAuthCase):
    def setUp(self):
        super(RepliesMixin, self).setUp()
        self.alice_box.purge()

    def test_replies_of_a_mailbox_signed_in_with_google(self):
        connected, text = self.connect(self.alice)
        self.assertTrue(connected, text)
        box = self.alice._ally_smtp_mailbox()
        sent = self.post(self.alice, self.maria)
        answer = self.maria_answers(sent, body="Via Gmail.")
        self.fetch()
        self.assertFalse(box.replies_error)
        self.assertEqual(len(self.on_record(self.maria, answer["Message-ID"])), 1)
