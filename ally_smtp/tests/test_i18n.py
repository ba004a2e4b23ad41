"""The consultants are Brazilian: the screens and messages ship in pt_BR."""

from odoo.exceptions import UserError
from odoo.tests import tagged

from .common import AllySmtpCase, free_port


@tagged("post_install", "-at_install")
class TestPortuguese(AllySmtpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.load_portuguese([("name", "=", "ally_smtp")])

    def test_labels(self):
        Users = self.env["res.users"].with_context(lang="pt_BR")
        labels = {
            name: field["string"]
            for name, field in Users.fields_get(
                ["ally_smtp_use_own", "ally_smtp_email", "ally_smtp_password"]
            ).items()
        }
        self.assertEqual(
            labels,
            {
                "ally_smtp_use_own": "Use minha própria configuração SMTP",
                "ally_smtp_email": "Email SMTP",
                "ally_smtp_password": "Senha SMTP",
            },
        )
        arch = Users.get_view(self.env.ref("base.view_users_form_simple_modif").id)[
            "arch"
        ]
        self.assertIn("Testar configuração SMTP", arch)
        settings = self.env["res.config.settings"].with_context(lang="pt_BR")
        self.assertIn("Integrar", settings.get_view()["arch"])

    def test_error_messages(self):
        self.alice.lang = "pt_BR"
        self.alice.with_user(self.alice).ally_smtp_password = "wrong"
        alice = self.alice.with_user(self.alice).with_context(lang="pt_BR")
        with self.assertRaises(UserError) as caught:
            alice.action_ally_smtp_test()
        self.assertIn("não a sua senha do Odoo", str(caught.exception))

    def test_imap_advice(self):
        self.alice.lang = "pt_BR"
        self.company.ally_smtp_imap_port = free_port()
        alice = self.alice.with_user(self.alice).with_context(lang="pt_BR")
        with self.assertRaises(UserError) as caught:
            alice.action_ally_smtp_test()
        self.assertIn("Verifique a porta IMAP (normalmente 993", str(caught.exception))
