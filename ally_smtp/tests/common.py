"""Fixtures: the harness's real SMTP/IMAP servers, a company wired to them."""

import contextlib
import uuid
from unittest.mock import patch

from odoo import modules
from odoo.tests import TransactionCase, new_test_user

from .servers import Mailbox, SmtpServer, free_port, harness

__all__ = ["AllySmtpCase", "AllySmtpMixin", "Mailbox", "SmtpServer", "free_port"]


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
        port = cls.harness["smtp"]["ports"][
            "ssl" if encryption == "ssl" else "starttls"
        ]
        return {
            "ally_smtp_enabled": True,
            "ally_smtp_provider": "custom",
            "ally_smtp_host": cls.harness["smtp"]["host"],
            "ally_smtp_port": port,
            "ally_smtp_encryption": encryption,
            "ally_smtp_imap_host": cls.harness["imap"]["host"],
            "ally_smtp_imap_port": cls.harness["imap"]["port"],
            "ally_smtp_sent_copy": "auto",
            "ally_smtp_verify_tls": True,
            **values,
        }

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
        return cls.env["ir.mail_server"].create(
            {
                "name": "agency",
                "smtp_host": cls.harness["smtp"]["host"],
                "smtp_port": cls.harness["smtp"]["ports"]["ssl"],
                "smtp_encryption": "ssl",
                "smtp_authentication": "login",
                "smtp_user": "carol@agency.test",
                "smtp_pass": cls.harness["mailboxes"]["carol@agency.test"],
            }
        )

    @classmethod
    def load_portuguese(cls, modules_domain):
        """Activate pt_BR and load its terms for the modules of the domain."""
        cls.env["res.lang"]._activate_lang("pt_BR")
        cls.env["ir.module.module"].search(modules_domain)._update_translations("pt_BR")

    @contextlib.contextmanager
    def live(self):
        """Let Odoo really talk SMTP inside this block (tests block it)."""
        with patch.object(modules.module, "current_test", False):
            yield


class AllySmtpCase(AllySmtpMixin, TransactionCase):
    pass
