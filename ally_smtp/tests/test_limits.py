"""Each mailbox is paced to its provider's limits; a quota reply pauses only
that mailbox, and no mail is failed or sent twice for waiting."""

import collections
import email
from datetime import timedelta

from freezegun import freeze_time

from odoo import fields
from odoo.exceptions import AccessError
from odoo.tests import tagged

from ..lib import errors, pacing
from ..lib.providers import preset_values
from .common import AllySmtpCase

NOW = fields.Datetime.to_datetime("2026-11-28 10:00:00")


@tagged("post_install", "-at_install")
class TestLimits(AllySmtpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.student = cls.env["res.partner"].create(
            {"name": "Student One", "email": "student1@school.test"}
        )
        cls.agency_server()

    def setUp(self):
        super().setUp()
        # no fault here is a silent server: allow Dovecot's delay after the
        # wrong passwords other tests give (it checks the harness's AUTH)
        self.env["ir.config_parameter"].set_param("ally_smtp.timeout", "20")
        self.clock = freeze_time(NOW, tick=True)
        self.clock.start()
        self.addCleanup(self.clock.stop)

    def queue(self, user, subject, partner=None):
        """A queued mail whose recipient is shown in the chatter, as Odoo does."""
        mail = super().queue(user, subject, partner)
        self.notify(mail, mail.recipient_ids)
        return mail

    def students(self, count):
        return self.env["res.partner"].create(
            [{"name": f"S{n}", "email": f"s{n}@school.test"} for n in range(count)]
        )

    def later(self, **delta):
        """Move the clock on, as if that much time had passed."""
        when = fields.Datetime.now() + timedelta(**delta)
        self.clock.stop()
        self.clock = freeze_time(when, tick=True)
        self.clock.start()

    def subjects(self, login=None):
        """How often each subject reached the SMTP server (from ``login``)."""
        return collections.Counter(
            email.message_from_string(sent["data"])["Subject"]
            for sent in self.smtp.messages()
            if login is None or sent["login"] == login
        )

    def assert_waiting(self, mails, until, reason):
        for mail in mails:
            self.assertEqual(mail.state, "outgoing")
            self.assertEqual(mail.ally_smtp_attempts, 0)
            self.assertAlmostEqual(
                mail.scheduled_date, until, delta=timedelta(seconds=30)
            )
            self.assertIn(reason, mail.failure_reason)
        notifications = self.env["mail.notification"].search(
            [("mail_mail_id", "in", [m.id for m in mails])]
        )
        self.assertEqual(set(notifications.mapped("notification_status")), {"ready"})

    # -- pacing ---------------------------------------------------------------
    def test_a_mailbox_never_sends_over_its_limit(self):
        self.company.ally_smtp_limit_minute = 3
        mails = [self.queue(self.alice, f"paced {n}") for n in range(5)]
        self.run_queue()
        self.assertEqual(sum(self.subjects().values()), 3)
        self.assertEqual([m.state for m in mails[:3]], ["sent"] * 3)
        self.assert_waiting(mails[3:], NOW + pacing.MINUTE, "3 messages per minute")

        self.run_queue()  # the window is still full: nothing more goes
        self.assertEqual(sum(self.subjects().values()), 3)

        self.later(seconds=61)
        self.run_queue()
        self.assertEqual(self.subjects(), {f"paced {n}": 1 for n in range(5)})
        self.assertEqual({m.state for m in mails}, {"sent"})

    def test_limits_count_messages_per_recipient(self):
        """Odoo sends one message per recipient: a mail to three students is
        three of the mailbox's messages."""
        self.company.ally_smtp_limit_hour = 4
        students = self.students(3)
        first = self.queue(self.alice, "three")
        first.recipient_ids = students
        second = self.queue(self.alice, "two")
        second.recipient_ids = students[:2]
        self.run_queue()
        self.assertEqual(self.subjects(), {"three": 3})
        self.assert_waiting(second, NOW + pacing.HOUR, "4 messages per hour")

    def test_a_mail_larger_than_the_limit_goes_alone(self):
        self.company.ally_smtp_limit_minute = 2
        students = self.students(3)
        big = self.queue(self.alice, "big")
        big.recipient_ids = students
        small = self.queue(self.alice, "small")
        self.run_queue()
        self.assertEqual(self.subjects(), {"big": 3})
        self.assert_waiting(small, NOW + pacing.MINUTE, "2 messages per minute")

    def test_other_mailboxes_are_not_paced_by_one(self):
        self.company.ally_smtp_limit_minute = 1
        alice = [self.queue(self.alice, f"alice {n}") for n in range(3)]
        bob = self.queue(self.bob, "bob")
        self.run_queue()
        self.assertEqual(self.subjects(), {"alice 0": 1, "bob": 1})
        self.assertEqual([m.state for m in alice], ["sent", "outgoing", "outgoing"])
        self.assertEqual(bob.state, "sent")

    # -- quota replies -----------------------------------------------------------
    def test_a_quota_reply_pauses_only_that_mailbox(self):
        reply = "550 5.4.5 Daily user sending limit exceeded"
        self.smtp.fail("MAIL", reply, times=1, login="alice@agency.test")
        alice = [self.queue(self.alice, f"alice {n}") for n in range(3)]
        bob = self.queue(self.bob, "bob")
        self.run_queue()

        # the provider was asked once; the rest of the batch did not insist
        attempts = [
            event
            for session in self.smtp.state()["sessions"]
            for event in session["events"]
            if event[0] == "fault"
        ]
        self.assertEqual(len(attempts), 1)
        self.assertEqual(self.subjects(), {"bob": 1})
        self.assertEqual(bob.state, "sent")
        self.assert_waiting(alice, NOW + pacing.HOUR, "5.4.5")
        self.assertTrue(self.alice.ally_smtp_paused)
        self.assertNotEqual(self.alice.ally_smtp_state, "failed")
        self.assertIn("5.4.5", self.alice.ally_smtp_pause_reason)
        self.assertFalse(self.bob.ally_smtp_paused)
        self.assertFalse(
            self.env["mail.mail"].search([("state", "=", "exception")]),
            "a quota never fails a mail",
        )

        self.later(minutes=30)  # still paused: nothing is asked of the provider
        self.run_queue()
        self.assertEqual(self.subjects("alice@agency.test"), {})

        self.later(minutes=31)
        self.run_queue()
        self.assertEqual(
            self.subjects("alice@agency.test"), {f"alice {n}": 1 for n in range(3)}
        )
        self.env.invalidate_all()  # "paused" is computed from the time now
        self.assertFalse(self.alice.ally_smtp_paused)

    def test_a_quota_partway_through_a_mail_sends_the_rest_once(self):
        """Gmail and Microsoft 365 file their own Sent copy (no copy rows):
        the recipients a mail reached before the quota are not sent it again."""
        self.company.ally_smtp_sent_copy = "never"
        students = self.students(10)
        mail = self.queue(self.alice, "partway")
        mail.recipient_ids = students
        self.notify(mail, students)
        self.smtp.fail(
            "DATA", "550 5.4.5 Daily user sending limit exceeded", times=1, after=4
        )
        self.run_queue()
        self.assertEqual(mail.state, "outgoing")
        self.assertEqual(len(self.smtp.messages()), 4)
        self.later(hours=2)
        self.run_queue()
        self.assertEqual(mail.state, "sent", mail.failure_reason)
        received = collections.Counter(
            rcpt for sent in self.smtp.messages() for rcpt in sent["rcpt_tos"]
        )
        self.assertEqual(received, dict.fromkeys(students.mapped("email"), 1))

    def test_a_daily_quota_waits_for_the_oldest_mail_of_the_day(self):
        first = self.queue(self.alice, "morning")
        self.run_queue()
        self.assertEqual(first.state, "sent")
        self.later(hours=5)
        self.smtp.fail(
            "DATA",
            "554 5.2.0 STOREDRV.Submission.Exception:"
            "SubmissionQuotaExceededException; Failed to process message",
            times=1,
        )
        late = self.queue(self.alice, "evening")
        self.run_queue()
        self.assert_waiting(late, NOW + pacing.DAY, "SubmissionQuotaExceeded")

    def test_too_many_logins_is_a_pause_not_a_wrong_password(self):
        self.smtp.fail(
            "AUTH", "454 4.7.0 Too many login attempts, please try again later"
        )
        mail = self.queue(self.alice, "later")
        self.run_queue()
        self.smtp.reset()
        self.assertNotEqual(self.alice.ally_smtp_state, "failed")
        self.assert_waiting(mail, NOW + timedelta(minutes=30), "4.7.0")

        self.later(minutes=31)
        self.run_queue()
        self.assertEqual(self.subjects(), {"later": 1})

    def test_a_reply_that_only_reads_like_a_quota_counts_the_attempt(self):
        """No provider documents this reply: the mailbox is paused all the
        same, but the mail it came for uses its attempts, so a per-message
        problem worded so fails that mail instead of pausing the mailbox
        forever."""
        reply = "550 5.7.1 Recipient limit exceeded for this message"
        self.smtp.fail("DATA", reply, times=1)
        culprit = self.queue(self.alice, "culprit")
        other = self.queue(self.alice, "other")
        self.run_queue()
        self.assertEqual(culprit.state, "outgoing")
        self.assertEqual(culprit.ally_smtp_attempts, 1)
        self.assert_waiting(other, NOW + pacing.HOUR, "limit exceeded")
        self.assertTrue(self.alice.ally_smtp_paused)

        culprit.ally_smtp_attempts = 4
        self.later(minutes=61)
        self.smtp.fail("DATA", reply, times=1)
        self.run_queue()
        self.assertEqual(culprit.state, "exception")
        self.later(minutes=61)
        self.run_queue()
        self.assertEqual(other.state, "sent")
        self.assertEqual(self.subjects(), {"other": 1})

    def test_an_admin_can_resume_a_paused_mailbox(self):
        self.smtp.fail("DATA", "421 4.7.0 Try again later: unusual rate", times=1)
        mail = self.queue(self.alice, "resume")
        self.run_queue()
        self.assertTrue(self.alice.ally_smtp_paused)
        paused = self.env["res.users"].search([("ally_smtp_paused", "=", True)])
        self.assertEqual(paused, self.alice)
        # a mailbox never paused (no date at all) is found as not paused
        Mailbox = self.env["ally.smtp.mailbox"]
        not_paused = Mailbox.search([("paused", "=", False)])
        self.assertIn(self.bob._ally_smtp_mailbox(), not_paused)
        self.assertNotIn(self.alice._ally_smtp_mailbox(), not_paused)
        self.assertEqual(Mailbox.search([("paused", "!=", True)]), not_paused)
        with self.assertRaises(AccessError):
            self.alice._ally_smtp_mailbox().with_user(self.bob).action_resume()
        admin = self.env.ref("base.user_admin")
        self.alice._ally_smtp_mailbox().with_user(admin).action_resume()
        self.assertFalse(self.alice.ally_smtp_paused)
        self.run_queue()
        self.assertEqual(mail.state, "sent")
        self.assertEqual(self.subjects(), {"resume": 1})

    def test_waiting_is_explained_in_portuguese(self):
        self.load_portuguese([("name", "=", "ally_smtp")])
        self.alice.lang = "pt_BR"
        self.company.ally_smtp_limit_minute = 1
        paced = [self.queue(self.alice, f"pt {n}") for n in range(2)]
        self.run_queue()
        self.assertIn("(1 mensagens por minuto): sai sozinho", paced[1].failure_reason)

        self.later(minutes=2)
        self.smtp.fail("DATA", "550 5.4.5 Daily user sending limit exceeded", times=1)
        self.run_queue()
        self.assertIn("atingiu o limite de envio do provedor", paced[1].failure_reason)
        self.assertIn("atingiu o limite", self.alice.ally_smtp_pause_reason)

    # -- fairness ---------------------------------------------------------------
    def test_a_busy_mailbox_does_not_hold_up_the_others(self):
        self.env["ir.config_parameter"].set_param("mail.session.batch.size", 50)
        for n in range(200):
            self.queue(self.alice, f"alice {n}")
        bob = self.queue(self.bob, "bob")
        self.run_queue()
        self.assertEqual(bob.state, "sent", bob.failure_reason)
        order = [sent["login"] for sent in self.smtp.messages()]
        self.assertEqual(len(order), 201)
        self.assertLess(order.index("bob@agency.test"), 51)
        self.assertEqual(sum(self.subjects().values()), 201)
        # mail.session.batch.size mails a session
        self.assertEqual(len(self.smtp.auth_attempts("alice@agency.test")), 4)

    # -- what a provider's words mean --------------------------------------------
    def test_quota_replies(self):
        quotas = {
            "550 5.4.5 Daily user sending limit exceeded.": pacing.DAY,
            "554 5.2.0 STOREDRV.Submission.Exception:"
            "SubmissionQuotaExceededException": pacing.DAY,
            "550 5.7.1 Message rejected: daily sending limit reached": pacing.DAY,
            "550 Domain agency.com.br has exceeded the max emails per hour "
            "(500/500 (100%)) allowed. Message discarded.": pacing.HOUR,
            "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded": (
                timedelta(minutes=5)
            ),
            "454 4.7.0 Too many login attempts, please try again later.": (
                timedelta(minutes=30)
            ),
            "421 4.7.0 [10.45.2.2] Our system has detected an unusual rate of "
            "unsolicited mail": timedelta(minutes=30),
            "550 5.4.5 [10.4.2.2] Daily user sending limit exceeded": pacing.DAY,
        }
        for reply, window in quotas.items():
            self.assertEqual(errors.quota_window(reply), window, reply)
        for reply in (
            "552 5.3.4 Message size exceeds fixed limit",
            "452 4.2.2 The email account that you tried to reach is over quota",
            "452 4.5.3 Your message has too many recipients",
            "451 4.3.0 Try again later",
            (
                "421 4.7.0 Try again later, closing connection (TLS negotiation "
                "failed; a separate issue)"
            ),
            "535 5.7.8 Username and Password not accepted",
        ):
            self.assertIsNone(errors.quota_window(reply), reply)

    def test_presets_bring_their_limits(self):
        self.assertEqual(preset_values("microsoft365")["ally_smtp_limit_minute"], 30)
        self.assertEqual(
            preset_values("microsoft365")["ally_smtp_limit_recipients_day"], 10000
        )
        self.assertEqual(preset_values("gmail")["ally_smtp_limit_day"], 500)
        self.assertEqual(preset_values("hostgator")["ally_smtp_limit_hour"], 500)

    def test_plan(self):
        limits = {"minute": 2, "hour": 0, "day": 5, "recipients_day": 0}
        sent = [(NOW - timedelta(hours=20), 2, 2), (NOW - timedelta(seconds=30), 1, 1)]
        self.assertEqual(
            pacing.plan(limits, sent, NOW, [(1, 1), (1, 1)]),
            (1, NOW + timedelta(seconds=30)),
        )
        self.assertEqual(
            pacing.plan(limits, sent[:1], NOW, [(1, 1)] * 4),
            (2, NOW + pacing.MINUTE),
        )
        # the day is full until its oldest mail leaves it
        day = [(NOW - timedelta(hours=20), 5, 5)]
        self.assertEqual(
            pacing.plan(limits, day, NOW, [(1, 1)]), (0, NOW + timedelta(hours=4))
        )
