"""One Sent copy per message, whatever happens while it is sent and filed."""

import contextlib
import email
import email.utils
import logging
from datetime import timedelta
from unittest.mock import patch

from odoo import fields
from odoo.tests import new_test_user, tagged

from ..lib import mailbox
from ..models.ally_smtp_delivery import Ledger
from .common import AllySmtpCase, Mailbox, free_port


@tagged("post_install", "-at_install")
class TestSentCopy(AllySmtpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.company_server = cls.agency_server()
        cls.students = cls.env["res.partner"].create(
            [
                {"name": f"Student {i:03d}", "email": f"s{i:03d}@school.test"}
                for i in range(120)
            ]
        )
        cls.student = cls.env["res.partner"].create(
            {"name": "Student One", "email": "student1@school.test"}
        )
        cls.group = cls.env["res.partner"].create({"name": "Class of 2027"})
        cls.alice_box = Mailbox(cls.harness, "alice@agency.test")
        cls.cpanel = cls.consultant("cpanel@agency.test", name="Carla Cpanel")
        cls.cpanel_box = Mailbox(cls.harness, "cpanel@agency.test")

    def setUp(self):
        super().setUp()
        self.alice_box.purge()
        self.cpanel_box.reset()
        self.Copy = self.env["ally.smtp.sent.copy"]

    # -- helpers --------------------------------------------------------------
    def post(self, user, partners, body="Hello", **kwargs):
        with self.live():
            return self.group.with_user(user).message_post(
                body=body,
                partner_ids=partners.ids,
                message_type="comment",
                subtype_xmlid="mail.mt_comment",
                **kwargs,
            )

    def file_copies(self):
        with self.live():
            self.Copy._ally_smtp_process()

    def copy_of(self, message_id):
        return self.Copy.search([("message_id", "=", message_id)])

    @staticmethod
    def addresses(header):
        return sorted(a for _n, a in email.utils.getaddresses([header or ""]))

    # -- one copy per message -------------------------------------------------
    def test_queued_post_in_chunks_one_delivery_each_one_copy_for_all(self):
        self.company.ally_smtp_sent_copy = "always"
        message = self.post(self.alice, self.students, force_send=False)
        chunks = self.env["mail.mail"].search(
            [("mail_message_id", "=", message.id)], order="id"
        )
        self.assertEqual(len(chunks), 3)  # Odoo: 50 recipients per mail.mail
        self.assertEqual(set(chunks.mapped("state")), {"outgoing"})
        with self.live():
            chunks[0].send()
        self.file_copies()
        # the other chunks still wait in the queue: the copy waits for them
        self.assertEqual(self.copy_of(message.message_id).state, "pending")
        self.assertFalse(self.alice_box.find("Sent", message.message_id))
        self.run_queue()
        self.file_copies()
        delivered = [r for m in self.smtp.messages() for r in m["rcpt_tos"]]
        self.assertEqual(sorted(delivered), sorted(self.students.mapped("email")))
        copy = self.copy_of(message.message_id)
        self.assertEqual(copy.state, "done", copy.last_error)
        # filed: the bytes are gone, whom each delivery reached stays a while
        self.assertEqual(len(copy.delivery_ids), 120)
        self.env.cr.execute(
            "SELECT count(*) FROM ally_smtp_delivery WHERE raw IS NOT NULL"
        )
        self.assertEqual(self.env.cr.fetchone()[0], 0)
        ((flags, filed),) = self.alice_box.find("Sent", message.message_id)
        self.assertIn(b"\\Seen", flags)
        self.assertEqual(
            self.addresses(filed["To"]), sorted(self.students.mapped("email"))
        )
        self.assertEqual(len(filed.get_all("To")), 1)
        self.file_copies()
        self.assertEqual(len(self.alice_box.find("Sent", message.message_id)), 1)

    def test_stuck_chunk_does_not_hold_the_copy_forever(self):
        message = self.post(self.alice, self.students[:60], force_send=False)
        first, stuck = self.env["mail.mail"].search(
            [("mail_message_id", "=", message.id)], order="id"
        )
        with self.live():
            first.send()
        self.file_copies()
        copy = self.copy_of(message.message_id)
        self.assertEqual(copy.state, "pending")
        copy.first_sent = fields.Datetime.now() - timedelta(hours=2)
        self.file_copies()
        self.assertEqual(copy.state, "done", copy.last_error)
        ((_flags, filed),) = self.alice_box.find("Sent", message.message_id)
        self.assertEqual(len(self.addresses(filed["To"])), 50)
        self.assertEqual(stuck.state, "outgoing")

    def test_copy_equals_what_was_sent(self):
        self.company.ally_smtp_sent_copy = "always"
        message = self.post(self.alice, self.student, body="<p>Olá, João</p>")
        (sent,) = self.smtp.messages()
        self.file_copies()
        ((_flags, filed),) = self.alice_box.find("Sent", message.message_id)
        wire = email.message_from_string(sent["data"])
        for header in ("Subject", "Date", "From", "Content-Type", "Reply-To"):
            self.assertEqual(filed[header], wire[header], header)
        self.assertIsNone(filed["Return-Path"])
        self.assertEqual(self.addresses(filed["To"]), ["student1@school.test"])
        body = sent["data"].replace("\r\n", "\n").split("\n\n", 1)[1]
        self.assertEqual(filed.as_string().split("\n\n", 1)[1], body)

    def test_big_mail_is_streamed_and_filed_whole(self):
        self.company.ally_smtp_sent_copy = "always"
        data = bytes(range(256)) * 8 * 1024  # 2 MB: the streamed path
        message = self.post(self.alice, self.student, attachments=[("big.bin", data)])
        self.file_copies()
        copy = self.copy_of(message.message_id)
        self.assertEqual(copy.state, "done", copy.last_error)
        self.assertGreater(copy.size, len(data))
        ((_flags, filed),) = self.alice_box.find("Sent", message.message_id)
        (part,) = [p for p in filed.walk() if p.get_filename() == "big.bin"]
        self.assertEqual(part.get_payload(decode=True), data)
        self.assertIn("student1@school.test", filed["To"])

    def test_copy_larger_than_the_provider_accepts_fails_once(self):
        self.company.ally_smtp_sent_copy = "always"
        self.cpanel_box.make_folder("INBOX.Sent")
        data = b"x" * (1536 * 1024)  # the cPanel mailbox takes at most 1 MB
        message = self.post(self.cpanel, self.student, attachments=[("a.bin", data)])
        self.assertEqual(len(self.smtp.messages()), 1)  # the mail itself left
        with self.assertLogs("odoo.addons.ally_smtp", logging.INFO) as logs:
            self.file_copies()
        copy = self.copy_of(message.message_id)
        self.assertEqual((copy.state, copy.attempts), ("failed", 1))
        self.assertIn("larger than the mail provider accepts", copy.last_error)
        self.assertIn("[LIMIT]", copy.last_error)
        self.assertTrue(any("WARNING" in line for line in logs.output))
        copy.next_try = fields.Datetime.now() - timedelta(hours=1)
        self.file_copies()
        self.assertEqual((copy.state, copy.attempts), ("failed", 1))
        self.assertEqual(self.cpanel.ally_smtp_state, "untested")  # not a password

    # -- runs that do not finish ---------------------------------------------
    def test_run_cut_after_some_copies_files_nothing_twice(self):
        for mode in ("always", "auto"):
            with self.subTest(mode=mode):
                self.company.ally_smtp_sent_copy = mode
                self.alice_box.purge()
                mails = [self.queue(self.alice, f"cut {mode} {i}") for i in range(4)]
                self.run_queue()
                appended = []

                # (not assertRaises: Odoo's rolls back what the run wrote)
                interrupted = False
                with self._dying_appends(appended):
                    try:
                        self.file_copies()
                    except KeyboardInterrupt:
                        interrupted = True
                self.assertTrue(interrupted)
                self.assertEqual(len(appended), 3)
                ids = [m.message_id for m in mails]
                copies = self.Copy.search([("message_id", "in", ids)], order="id")
                # the first batch (one copy) was committed; the second (two,
                # added in one command) died before its end
                self.assertEqual(
                    copies.mapped("state"), ["done", "filing", "filing", "pending"]
                )
                # the next run, once the interrupted copies' retry delay is over
                copies.next_try = fields.Datetime.now() - timedelta(seconds=1)
                appended.clear()
                with self._dying_appends(appended):
                    self.file_copies()
                self.assertEqual(len(appended), 1)  # only the copy never filed
                self.assertEqual(set(copies.mapped("state")), {"done"})
                for message_id in ids:
                    self.assertEqual(
                        len(self.alice_box.find("Sent", message_id)), 1, message_id
                    )

    @staticmethod
    @contextlib.contextmanager
    def _dying_appends(appended):
        """APPENDs that reach the server, then the worker dies (at the 3rd
        message added, alone or with others in one command)."""
        Folder = mailbox.SentFolder
        real_append, real_many = Folder.append, Folder.append_many

        def died():
            if len(appended) >= 3:
                raise KeyboardInterrupt

        def append(folder, raw, date_time):
            result = real_append(folder, raw, date_time)
            appended.append(raw)
            died()
            return result

        def append_many(folder, messages):
            result = real_many(folder, messages)
            if result:
                appended.extend(raw for raw, _date in messages)
                died()
            return result

        with (
            patch.object(Folder, "append", append),
            patch.object(Folder, "append_many", append_many),
        ):
            yield

    def test_small_copies_go_together_or_one_at_a_time(self):
        """Several small copies are added in one command (MULTIAPPEND); when
        the server refuses them together, each is added alone."""
        self.company.ally_smtp_sent_copy = "always"
        for refused in (False, True):
            with self.subTest(refused=refused):
                self.alice_box.purge()
                mails = [self.queue(self.alice, f"together {i}") for i in range(5)]
                self.run_queue()
                commands = []
                with patch.object(
                    mailbox.IMAP4_SSL,
                    "multiappend",
                    self._counted_multiappend(commands, refused),
                ):
                    self.file_copies()
                self.assertEqual(commands, [2, 2])  # claimed 1, then 2, then 2
                for mail in mails:
                    copy = self.copy_of(mail.message_id)
                    self.assertEqual(copy.state, "done", copy.last_error)
                    ((flags, filed),) = self.alice_box.find("Sent", mail.message_id)
                    self.assertIn(b"\\Seen", flags)
                    self.assertEqual(
                        self.addresses(filed["To"]), ["student1@school.test"]
                    )

    def test_auto_looks_for_a_batch_at_once_and_adds_the_others(self):
        """'auto': the copies the provider filed itself are found with one
        SEARCH per batch and skipped; the others are added, each once."""
        self.company.ally_smtp_sent_copy = "auto"
        mails = [self.queue(self.alice, f"auto {i}") for i in range(5)]
        self.run_queue()
        provider = {mails[1].message_id, mails[4].message_id}  # filed by it
        with self.alice_box.connect() as imap:
            for sent in self.smtp.messages():
                if sent["message_id"] in provider:
                    raw = sent["data"].encode("utf-8", "surrogateescape")
                    imap.append("Sent", r"(\Seen)", None, raw)
        searches = []
        real = mailbox.SentFolder.find

        def find(folder, message_ids):
            searches.append(len(message_ids))
            return real(folder, message_ids)

        with patch.object(mailbox.SentFolder, "find", find):
            self.file_copies()
        self.assertEqual(searches, [1, 2, 2])  # claimed 1, then 2, then 2
        for mail in mails:
            copy = self.copy_of(mail.message_id)
            state = "skipped" if mail.message_id in provider else "done"
            self.assertEqual(copy.state, state, copy.last_error)
            self.assertEqual(len(self.alice_box.find("Sent", mail.message_id)), 1)

    @staticmethod
    def _counted_multiappend(commands, refused):
        real = mailbox.IMAP4_SSL.multiappend

        def multiappend(imap, folder, flags, messages):
            commands.append(len(messages))
            if refused:  # as a server that takes no such message
                return "NO", [b"[LIMIT] Message too large"]
            return real(imap, folder, flags, messages)

        return multiappend

    def test_run_stops_at_its_time_budget_and_reports_what_is_left(self):
        for i in range(3):
            self.queue(self.alice, f"budget {i}")
        self.run_queue()
        cron = self.env.ref("ally_smtp.ir_cron_sent_copy")
        progress = []
        for _run in range(3):
            _cron, record = cron._add_progress()
            with (
                patch.object(type(self.Copy), "_ally_smtp_time_budget", lambda s: 0),
                self.live(),
            ):
                self.Copy.with_context(
                    ir_cron_progress_id=record.id
                )._ally_smtp_process()
            progress.append((record.done, record.remaining))
        self.assertEqual(progress, [(1, 2), (1, 1), (1, 0)])
        self.assertEqual(set(self.Copy.search([]).mapped("state")), {"done"})

    # -- the Sent folder -------------------------------------------------------
    def test_cpanel_namespace_and_renamed_folder(self):
        self.cpanel_box.make_folder("INBOX.Itens Enviados")
        action = self.cpanel.with_user(self.cpanel).action_ally_smtp_test()
        self.assertIn("INBOX.Itens Enviados", action["params"]["message"])
        self.assertEqual(self.cpanel.ally_smtp_sent_folder, "INBOX.Itens Enviados")
        # renamed in webmail after the Test: found again, not counted as failure
        with self.cpanel_box.connect() as imap:
            imap.rename('"INBOX.Itens Enviados"', '"INBOX.Sent Items"')
        message = self.post(self.cpanel, self.student)
        self.file_copies()
        copy = self.copy_of(message.message_id)
        self.assertEqual((copy.state, copy.attempts), ("done", 1), copy.last_error)
        self.assertEqual(self.cpanel.ally_smtp_sent_folder, "INBOX.Sent Items")
        self.assertEqual(
            len(self.cpanel_box.find("INBOX.Sent Items", message.message_id)), 1
        )

    def test_no_sent_folder_is_retried_with_its_own_advice(self):
        message = self.post(self.cpanel, self.student)
        self.file_copies()
        copy = self.copy_of(message.message_id)
        self.assertEqual(copy.state, "pending")
        self.assertIn("No Sent folder", copy.last_error)
        self.cpanel_box.make_folder("INBOX.Sent")
        copy.next_try = fields.Datetime.now() - timedelta(seconds=1)
        self.file_copies()
        self.assertEqual(copy.state, "done", copy.last_error)

    def test_imap_outage_gets_imap_advice(self):
        port = free_port()
        self.company.ally_smtp_imap_port = port
        message = self.post(self.alice, self.student)
        self.file_copies()
        copy = self.copy_of(message.message_id)
        self.assertEqual((copy.state, copy.attempts), ("pending", 1))
        self.assertIn(f"port {port}", copy.last_error)
        # the advice, without the dead port's number (58779 holds "587")
        advice = copy.last_error.replace(str(port), "")
        self.assertIn("IMAP", advice)
        self.assertIn("993", advice)
        self.assertNotIn("465", advice)
        self.assertNotIn("587", advice)

    # -- the send path ---------------------------------------------------------
    def test_failed_bookkeeping_never_undoes_the_send(self):
        real = Ledger.record

        def broken(ledger, values, raw):
            values[0] = None  # violates NOT NULL in the database
            return real(ledger, values, raw)

        with (
            patch.object(Ledger, "record", broken),
            self.assertLogs("odoo.addons.ally_smtp", logging.ERROR),
        ):
            mail = self.queue(self.alice, "kept")
            self.run_queue()
        self.assertEqual(mail.state, "sent")
        self.assertEqual(len(self.smtp.messages()), 1)
        self.env.flush_all()  # the transaction is usable
        self.file_copies()
        self.assertFalse(self.copy_of(mail.message_id))

    def test_send_path_queries_per_mail(self):
        """Copies cost at most two queries per mail more than stock Odoo,
        however many mails the queue run sends."""
        plain = new_test_user(
            self.env,
            login="plain",
            groups="base.group_user,base.group_partner_manager",
            email="plain@agency.test",
        )
        self.company.ally_smtp_sent_copy = "always"

        def cost(user, count):
            for i in range(count):
                self.queue(user, f"count {i}")
            self.env.invalidate_all()
            before = self.env.cr.sql_log_count
            self.run_queue()
            return self.env.cr.sql_log_count - before

        cost(plain, 2), cost(self.alice, 2)  # warm the caches
        stock = [cost(plain, n) for n in (5, 10, 15)]
        personal = [cost(self.alice, n) for n in (5, 10, 15)]
        # the same cost for every 5 more mails: constant per mail
        self.assertEqual(stock[2] - stock[1], stock[1] - stock[0], stock)
        self.assertEqual(personal[2] - personal[1], personal[1] - personal[0], personal)
        per_mail = (personal[1] - personal[0]) / 5
        stock_per_mail = (stock[1] - stock[0]) / 5
        self.assertLessEqual(per_mail, stock_per_mail + 2, (stock, personal))
        deliveries = self.env["ally.smtp.delivery"].search_count([])
        self.assertEqual(deliveries, 2 + 5 + 10 + 15)  # every personal mail has one

    def test_mail_of_other_servers_reads_no_server(self):
        """Mail of the agency's server costs what it costs without the addon:
        after each commit of a queue run the cache is empty, and the addon
        reads no mail server to tell a personal batch from another."""
        server = self.agency_server()
        mail = self.queue(self.alice, "agency")
        mail.mail_server_id = False
        self.env.flush_all()

        def queries(mail_server):
            self.env.invalidate_all()
            before = self.env.cr.sql_log_count
            mail._prepare_outgoing_list(mail_server=mail_server)
            return self.env.cr.sql_log_count - before

        queries(False)  # warm the caches that do not depend on the mail
        self.assertEqual(queries(server), queries(False))
        personal = self.env["ir.mail_server"].search(
            [("ally_smtp_owner_id", "=", self.alice.id)]
        )
        self.assertTrue(personal)  # outside a routed batch: not sent through it
        self.assertEqual(queries(personal), queries(False))
