"""Two filing runs at once, committing for real: each copy filed once."""

import email
import email.utils
import threading
import uuid
from types import SimpleNamespace
from unittest.mock import patch

from odoo import SUPERUSER_ID, api, modules
from odoo.tests import TransactionCase, tagged

from ..models.ir_mail_server import _Batch
from .common import Mailbox, company_values, harness


@tagged("post_install", "-at_install")
class TestFilingRunsAtOnce(TransactionCase):
    """Two filing runs at once, committing as in production (not in the test
    transaction): every copy reaches the folder exactly once."""

    def test_two_runs_at_once_file_each_copy_once(self):
        info = harness()
        login = "carol@agency.test"
        box = Mailbox(info, login)
        box.purge()
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            admin, company = env.ref("base.user_admin"), env.ref("base.main_company")
            values = company_values(info, ally_smtp_sent_copy="always")
            saved = company.read(list(values))[0]
            saved.pop("id")
            company.write(values)
            admin.with_user(admin).write(
                {
                    "ally_smtp_use_own": True,
                    "ally_smtp_email": login,
                    "ally_smtp_password": info["mailboxes"][login],
                }
            )
            admin_id = admin.id
        self.addCleanup(self._clean, admin_id, saved)
        message_ids = []
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            batch = _Batch()
            batch.mailbox = env["res.users"].browse(admin_id)._ally_smtp_mailbox()
            batch.owner_id = admin_id
            for i in range(12):
                message_id = f"<at-once-{i}-{uuid.uuid4().hex}@agency.test>"
                message_ids.append(message_id)
                # the message went out in two SMTP transactions (two recipients)
                for to in ("student1@school.test", f"x{i}@school.test"):
                    raw = (
                        f"From: carol@agency.test\r\nTo: {to}\r\n"
                        f"Subject: at once {i}\r\nMessage-Id: {message_id}\r\n"
                        f"Date: {email.utils.formatdate()}\r\n\r\nHello {i}\r\n"
                    ).encode()
                    session = SimpleNamespace(ally_smtp_batch=batch, ally_smtp_sent=raw)
                    env["ally.smtp.delivery"]._ally_smtp_record(
                        session, email.message_from_bytes(raw)
                    )
            env["ally.smtp.sent.copy"]._ally_smtp_collect()
        start = threading.Barrier(2)
        failures = []

        def run():
            try:
                with self.registry.cursor() as cr:
                    env = api.Environment(cr, SUPERUSER_ID, {})
                    start.wait(10)
                    env["ally.smtp.sent.copy"]._ally_smtp_process()
            except Exception as exc:  # noqa: BLE001 - reported by the test
                failures.append(exc)

        with patch.object(modules.module, "current_test", False):
            threads = [threading.Thread(target=run) for _i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        self.assertEqual(failures, [])
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            copies = env["ally.smtp.sent.copy"].search([("user_id", "=", admin_id)])
            self.assertEqual(len(copies), 12)
            self.assertEqual(set(copies.mapped("state")), {"done"}, copies.read())
            self.assertEqual(set(copies.mapped("attempts")), {1})
        filed = [m for _f, m in box.messages("Sent")]
        found = sorted(m["Message-Id"] for m in filed)
        self.assertEqual(found, sorted(message_ids))
        for message in filed:
            self.assertEqual(len(email.utils.getaddresses([message["To"]])), 2)

    def _clean(self, admin_id, saved):
        Mailbox(harness(), "carol@agency.test").purge()
        with self.registry.cursor() as cr:
            env = api.Environment(cr, SUPERUSER_ID, {})
            env["ally.smtp.sent.copy"].search([("user_id", "=", admin_id)]).unlink()
            env["ally.smtp.delivery"].search([("user_id", "=", admin_id)]).unlink()
            env["res.users"].browse(admin_id)._ally_smtp_mailbox().unlink()
            env.ref("base.main_company").write(saved)
