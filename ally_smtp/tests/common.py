"""Fixtures: the harness's real SMTP/IMAP servers, a company wired to them."""

import contextlib
import email
import imaplib
import json
import os
import socket
import ssl
import urllib.request
import uuid
from unittest.mock import patch

from odoo import modules
from odoo.tests import TransactionCase, new_test_user

from ..lib import mailbox


def harness():
    path = os.environ.get("ALLY_SMTP_HARNESS")
    if not path:
        raise RuntimeError(
            "ALLY_SMTP_HARNESS is not set: run the tests with `make test`, which "
            "starts the SMTP and IMAP servers they talk to."
        )
    with open(path) as f:
        return json.load(f)


def free_port():
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def company_values(info, encryption="ssl", **values):
    """A company integrated with the harness provider ``info``."""
    port = info["smtp"]["ports"]["ssl" if encryption == "ssl" else "starttls"]
    return {
        "ally_smtp_enabled": True,
        "ally_smtp_provider": "custom",
        "ally_smtp_host": info["smtp"]["host"],
        "ally_smtp_port": port,
        "ally_smtp_encryption": encryption,
        "ally_smtp_imap_host": info["imap"]["host"],
        "ally_smtp_imap_port": info["imap"]["port"],
        "ally_smtp_sent_copy": "auto",
        "ally_smtp_verify_tls": True,
        **values,
    }


class SmtpServer:
    """Client of the harness SMTP server's control API."""

    def __init__(self, info):
        self.url = info["smtp_control"]
        self.host = info["smtp"]["host"]
        self.ports = info["smtp"]["ports"]

    def _call(self, path, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data)
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def reset(self):
        self._call("/reset", {})

    def fail(self, stage, reply, times=None, login=None):
        """Make the server answer ``reply`` (or "drop") at ``stage``."""
        fault = {"stage": stage, "reply": reply, "times": times, "login": login}
        self._call("/faults", [fault])

    def autosave(self, on=True):
        self._call("/config", {"autosave": on})

    def deliver(self, on=True):
        """Off: record messages without delivering them (benchmarks)."""
        self._call("/config", {"deliver": on})

    def state(self):
        return self._call("/state")

    def messages(self):
        return self.state()["messages"]

    def auth_attempts(self, login=None):
        return [
            event
            for session in self.state()["sessions"]
            for event in session["events"]
            if event[0] == "auth" and (login is None or event[1] == login)
        ]


class Mailbox:
    """Read a harness mailbox over IMAP, the way a mail client would."""

    def __init__(self, info, login):
        self.info, self.login = info, login
        self.password = info["mailboxes"][login]

    @contextlib.contextmanager
    def connect(self):
        context = ssl.create_default_context(cafile=self.info["ca_file"])
        imap = imaplib.IMAP4_SSL(
            self.info["imap"]["host"],
            self.info["imap"]["port"],
            ssl_context=context,
            timeout=10,
        )
        with imap:
            imap.login(self.login, self.password)
            yield imap

    def messages(self, folder):
        """[(flags, email.message.Message)] of ``folder``."""
        result = []
        with self.connect() as imap:
            imap.select(f'"{folder}"', readonly=True)
            _typ, data = imap.uid("SEARCH", "ALL")
            for uid in data[0].split():
                _typ, parts = imap.uid("FETCH", uid, "(FLAGS RFC822)")
                flags = imaplib.ParseFlags(parts[0][0])
                result.append((flags, email.message_from_bytes(parts[0][1])))
        return result

    def find(self, folder, message_id):
        return [
            (flags, msg)
            for flags, msg in self.messages(folder)
            if (msg["Message-Id"] or "").strip() == message_id
        ]

    def purge(self, folders=("INBOX", "Sent")):
        """Empty ``folders`` (those that exist)."""
        with self.connect() as imap:
            for folder in folders:
                typ, count = imap.select(f'"{folder}"')
                if typ == "OK" and int(count[0]):
                    imap.store("1:*", "+FLAGS", r"(\Deleted)")
                    imap.expunge()

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
