"""Clients of the harness's servers, in plain Python (no Odoo import), for the
tests inside Odoo and for the suite that drives a running server (``e2e/``)."""

import contextlib
import email
import imaplib
import json
import os
import socket
import ssl
import urllib.request


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


def agency_server_values(info, name="agency"):
    """Odoo's ordinary ir.mail_server on the harness, logged in as carol."""
    return {
        "name": name,
        "smtp_host": info["smtp"]["host"],
        "smtp_port": info["smtp"]["ports"]["ssl"],
        "smtp_encryption": "ssl",
        "smtp_authentication": "login",
        "smtp_user": "carol@agency.test",
        "smtp_pass": info["mailboxes"]["carol@agency.test"],
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

    def fail(self, stage, reply, times=None, login=None, after=0):
        """Make the server answer ``reply`` (or "drop") at ``stage``, once
        ``after`` such commands passed."""
        fault = {
            "stage": stage,
            "reply": reply,
            "times": times,
            "login": login,
            "after": after,
        }
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
