"""Uninstalling leaves the consultants' mail to the agency's mail server."""

from odoo.tests import tagged

from .. import uninstall_hook
from .common import AllySmtpCase


@tagged("post_install", "-at_install")
class TestUninstall(AllySmtpCase):
    def test_personal_servers_are_removed(self):
        agency = self.agency_server()
        Server = self.env["ir.mail_server"].with_context(active_test=False)
        mailboxes = [("from_filter", "in", ["alice@agency.test", "bob@agency.test"])]
        self.assertEqual(len(Server.search(mailboxes)), 2)
        uninstall_hook(self.env)
        self.assertFalse(Server.search(mailboxes))
        server, _email_from = Server._find_mail_server("alice@agency.test")
        self.assertEqual(server, agency)
