"""Fixtures: the harness's real SMTP/IMAP servers, a company wired to them."""

import contextlib
import uuid
from datetime import timedelta
from unittest.mock import patch

from odoo import Command, fields, modules
from odoo.tests import TransactionCase, new_test_user

from ..lib import mailbox
from . import servers
from .servers import (
    SmtpServer,
    agency_server_values,
    company_values,
    free_port,
    harness,
)

__all__ = ["AllySmtpCase", "AllySmtpMixin", "Mailbox", "SmtpServer", "free_port"]


class Mailbox(servers.Mailbox):
    """A harness mailbox, with the folder helpers that parse like the addon."""

    def folders(self):
        """The names of the mailbox's folders."""
        with self.connect() as imap:
            _typ, data = imap.list()
        return [name for _flags, _sep, name in mailbox._parse_list(data)]

    def reset(self):
        """Empty INBOX and delete every other folder."""
        with self.connect() as imap:
            _typ, data = imap.list()
            for _flags, _sep, name in mailbox._parse_list(data):
                if name.upper() != "INBOX":
                    imap.delete(f'"{name}"')
        self.purge(["INBOX"])

    def make_folder(self, folder):
        with self.connect() as imap:
            typ, data = imap.create(f'"{folder}"')
            assert typ == "OK", data


class AllySmtpMixin:
    """A company integrated with the harness provider, and consultants."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.harness = harness()
        cls.smtp = SmtpServer(cls.harness)
        cls.company = cls.env.company
        cls.company.write(cls.company_values())
        cls.alice = cls.consultant("alice@agency.test", name="Alice Consultant")
        cls.bob = cls.consultant("bob@agency.test", name="Bob Consultant")

    def setUp(self):
        super().setUp()
        self.smtp.reset()
        self.env["ir.config_parameter"].sudo().set_param("ally_smtp.timeout", "3")

    @classmethod
    def company_values(cls, encryption="ssl", **values):
        return company_values(cls.harness, encryption, **values)

    @classmethod
    def consultant(cls, mailbox, password=None, **values):
        """An internal user with ``mailbox`` of the harness as their own."""
        login = mailbox.split("@")[0] + "-" + uuid.uuid4().hex[:6]
        user = new_test_user(
            cls.env,
            login=login,
            groups="base.group_user,base.group_partner_manager",
            email=mailbox,
            **values,
        )
        user.with_user(user).write(
            {
                "ally_smtp_use_own": True,
                "ally_smtp_email": mailbox,
                "ally_smtp_password": password or cls.harness["mailboxes"][mailbox],
            }
        )
        return user

    @classmethod
    def agency_server(cls):
        """Odoo's ordinary ir.mail_server, logged in as the agency (carol)."""
        return cls.env["ir.mail_server"].create(agency_server_values(cls.harness))

    @classmethod
    def load_portuguese(cls, modules_domain):
        """Activate pt_BR and load its terms for the modules of the domain."""
        cls.env["res.lang"]._activate_lang("pt_BR")
        cls.env["ir.module.module"].search(modules_domain)._update_translations("pt_BR")

    def queue(self, user, subject, partner=None):
        """A mail written by ``user``, left in the queue for the cron."""
        message = (
            self.env["mail.message"]
            .with_user(user)
            .create(
                {
                    "model": "res.partner",
                    "res_id": (partner or self.student).id,
                    "body": subject,
                    "subject": subject,
                    "author_id": user.partner_id.id,
                    "email_from": user.email_formatted,
                    "message_type": "comment",
                }
            )
        )
        return (
            self.env["mail.mail"]
            .with_user(user)
            .sudo()
            .create(
                {
                    "mail_message_id": message.id,
                    "recipient_ids": [Command.link((partner or self.student).id)],
                    "body_html": f"<p>{subject}</p>",
                }
            )
        )

    def notify(self, mail, partners):
        """The chatter's record of ``mail`` to ``partners``, as Odoo's notify
        step makes it: one e-mail notification each, ready to send."""
        self.env["mail.notification"].create(
            [
                {
                    "mail_message_id": mail.mail_message_id.id,
                    "mail_mail_id": mail.id,
                    "res_partner_id": partner.id,
                    "notification_type": "email",
                    "notification_status": "ready",
                }
                for partner in partners
            ]
        )

    def run_queue(self):
        with self.live():
            self.env["mail.mail"].process_email_queue()

    def retry_now(self, *mails):
        """Make ``mails`` due, as the end of their retry delay does, run the
        queue and read them again."""
        for mail in mails:
            mail.scheduled_date = fields.Datetime.now() - timedelta(seconds=1)
        self.run_queue()
        for mail in mails:
            mail.invalidate_recordset()

    @contextlib.contextmanager
    def live(self):
        """Let Odoo really talk SMTP inside this block (tests block it)."""
        with patch.object(modules.module, "current_test", False):
            yield


class AllySmtpCase(AllySmtpMixin, TransactionCase):
    pass
