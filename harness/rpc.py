"""Odoo driven over XML-RPC as its users drive it: an agency integrated with
the harness's mail servers and its people. Shared by the prefork suite
(``e2e/``, through its conftest) and the upgrade lane (``harness/upgrade.py``).

Runs on the project's environment (``requests`` drives a browser session).
"""

import email
import email.header
import importlib.util
import re
import time
import xmlrpc.client
from datetime import datetime, timezone

import requests

from . import ROOT

_spec = importlib.util.spec_from_file_location(
    "ally_smtp_servers", ROOT / "ally_smtp" / "tests" / "servers.py"
)
servers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(servers)

PEOPLE = {  # login: (mailbox, groups)
    "ana": ("alice@agency.test", ["base.group_user", "base.group_partner_manager"]),
    "bob": ("bob@agency.test", ["base.group_user", "base.group_partner_manager"]),
    "paula": (None, ["base.group_portal"]),
    "sam": (None, ["base.group_user", "base.group_system"]),
}


class Rpc:
    """``rpc(model, method, *args, **kwargs)`` as one user, over XML-RPC."""

    def __init__(self, url, db, login, password):
        self.db, self.login, self.password = db, login, password
        common = xmlrpc.client.ServerProxy(url + "/xmlrpc/2/common")
        self.uid = common.authenticate(db, login, password, {})
        self.object = xmlrpc.client.ServerProxy(
            url + "/xmlrpc/2/object", allow_none=True
        )

    def __call__(self, model, method, *args, **kwargs):
        return self.object.execute_kw(
            self.db, self.uid, self.password, model, method, list(args), kwargs
        )


class World:
    """The Odoo at ``url`` (database ``db``) and the harness servers of
    ``info`` (by default those of ``ALLY_SMTP_HARNESS``)."""

    def __init__(self, url, db, info=None):
        self.url, self.db = url, db
        self.info = info or servers.harness()
        self.smtp = servers.SmtpServer(self.info)
        self.admin = Rpc(self.url, self.db, "admin", "admin")
        self.ids = {}

    def xmlid(self, xmlid):
        """The id of ``xmlid`` (remembered: an archived record is not found)."""
        if xmlid not in self.ids:
            module, name = xmlid.split(".")
            reference = self.admin(
                "ir.model.data", "check_object_reference", module, name
            )
            self.ids[xmlid] = reference[1]
        return self.ids[xmlid]

    def setup(self):
        info, admin = self.info, self.admin
        (self.company,) = admin("res.users", "read", [admin.uid], ["company_id"])
        self.company = self.company["company_id"][0]
        admin(
            "res.company",
            "write",
            [self.company],
            servers.company_values(info),
        )
        admin("ir.config_parameter", "set_param", "ally_smtp.timeout", "5")
        admin("ir.mail_server", "create", servers.agency_server_values(info))
        self.users, self.rpc = {}, {}
        for login, (mailbox, groups) in PEOPLE.items():
            self.users[login], self.rpc[login] = self.person(login, mailbox, groups)
            if mailbox:
                self.rpc[login](
                    "res.users",
                    "write",
                    [self.users[login]],
                    {"ally_smtp_password": info["mailboxes"][mailbox]},
                )
        self.partner = {
            login: admin("res.users", "read", [uid], ["partner_id"])[0]["partner_id"][0]
            for login, uid in self.users.items()
        }
        self.student = admin(
            "res.partner",
            "create",
            {"name": "Maria Estudante", "email": "student1@school.test"},
        )
        (self.ana_server,) = admin(
            "ir.mail_server", "search", [("ally_smtp_owner_id", "=", self.users["ana"])]
        )
        self.smtp.reset()
        return self

    def person(self, login, mailbox, groups, company=None):
        """``(uid, rpc)`` of a new user, password ``<login>-odoo``, with their
        own ``mailbox`` (no password given) when there is one."""
        values = {
            "name": login.title(),
            "login": login,
            "password": f"{login}-odoo",
            "email": mailbox or f"{login}@example.test",
            "groups_id": [(6, 0, [self.xmlid(g) for g in groups])],
        }
        if company:
            values.update(company_id=company, company_ids=[(6, 0, [company])])
        uid = self.admin("res.users", "create", values)
        rpc = self.login(login)
        if mailbox:
            rpc(
                "res.users",
                "write",
                [uid],
                {"ally_smtp_use_own": True, "ally_smtp_email": mailbox},
            )
        return uid, rpc

    def login(self, login):
        """``rpc`` of the user ``login`` made by ``person``."""
        return Rpc(self.url, self.db, login, f"{login}-odoo")

    def post(self, login, subject, rpc=None, student=None, **kwargs):
        """``login`` (over ``rpc``) writes to the student (or ``partner_ids``)
        from the chatter."""
        student = student or self.student
        kwargs.setdefault("partner_ids", [student])
        return (rpc or self.rpc[login])(
            "res.partner",
            "message_post",
            [student],
            body=subject,
            subject=subject,
            subtype_xmlid="mail.mt_comment",
            **kwargs,
        )

    def delivered(self, subject, timeout=60):
        """The SMTP server's record of the message ``subject``, once it came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.smtp.messages() if subject_of(m) == subject]
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"{subject!r} never reached the SMTP server")

    def wake(self, cron_xmlid):
        """Have the cron workers run ``cron_xmlid`` now, as they would."""
        cron = self.xmlid(cron_xmlid)
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        try:
            self.admin("ir.cron", "write", [cron], {"nextcall": now})
        except xmlrpc.client.Fault as fault:
            if "currently being executed" not in fault.faultString:
                raise  # else it runs right now, which is what was asked

    def run_cron(self, cron_xmlid):
        """Run ``cron_xmlid`` once, now, in this request (as an admin's "Run
        Manually"): for a server that runs no crons itself."""
        self.admin("ir.cron", "method_direct_trigger", [self.xmlid(cron_xmlid)])

    def students(self, count, tag, **kwargs):
        return self.admin(
            "res.partner",
            "create",
            [
                {"name": f"Student {tag} {i}", "email": f"{tag}.{i}@school.test"}
                for i in range(count)
            ],
            **kwargs,
        )

    def message_id(self, message):
        return self.admin("mail.message", "read", [message], ["message_id"])[0][
            "message_id"
        ]

    def wait(self, condition, what, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            time.sleep(1)
        raise AssertionError(f"still waiting after {timeout}s: {what}")

    def queue_empty(self):
        return not self.admin("mail.mail", "search_count", [("state", "=", "outgoing")])

    def deliveries(self, message_id):
        """Every RCPT TO the SMTP server accepted for ``message_id``."""
        return [
            rcpt
            for m in self.smtp.messages()
            if m["message_id"] == message_id
            for rcpt in m["rcpt_tos"]
        ]


OLGA, OSCAR = "consultant03@agency.test", "consultant04@agency.test"


class Agency:
    """A second company that signs in with Microsoft accounts (the harness's
    OAuth server), and its consultants Olga and Oscar."""

    def __init__(self, world):
        self.world = world
        info, admin = world.info, world.admin
        app = info["oauth"]["microsoft"]
        self.oauth = servers.OAuthServer(info)
        admin(
            "ir.config_parameter",
            "set_param",
            "ally_smtp.oauth_microsoft_base_url",
            app["base_url"],
        )
        admin("ir.config_parameter", "set_param", "web.base.url", world.url)
        self.company = admin(
            "res.company",
            "create",
            servers.company_values(
                info,
                name="OAuth Agency",
                ally_smtp_sent_copy="always",
                **servers.oauth_values(info, "microsoft"),
            ),
        )
        self.users, self.rpc = {}, {}
        for login, mailbox in (("olga", OLGA), ("oscar", OSCAR)):
            self.users[login], self.rpc[login] = world.person(
                login, mailbox, PEOPLE["ana"][1], company=self.company
            )
        self.student = admin(
            "res.partner",
            "create",
            {"name": "Student OAuth", "email": "student2@school.test"},
        )

    def browser(self, login):
        """A logged-in browser session of ``login``."""
        session = requests.Session()
        page = session.get(f"{self.world.url}/web/login", timeout=30)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        reply = session.post(
            f"{self.world.url}/web/login",
            data={"login": login, "password": f"{login}-odoo", "csrf_token": token},
            timeout=30,
        )
        assert reply.ok and "/web/login" not in reply.url, reply.url
        return session

    def connect(self, login, mailbox, account=None):
        """Press Connect, consent as ``account``, come back; the result page."""
        browser = self.browser(login)
        start = browser.get(
            f"{self.world.url}/ally_smtp/oauth/start", allow_redirects=False, timeout=30
        )
        assert start.status_code in (302, 303), start.text[:300]
        callback = self.oauth.consent(start.headers["Location"], account or mailbox)
        return browser, callback, browser.get(callback, timeout=60)

    def state(self, login):
        (user,) = self.world.admin(
            "res.users",
            "read",
            [self.users[login]],
            ["ally_smtp_state", "ally_smtp_oauth_account", "ally_smtp_last_error"],
        )
        return user

    def post(self, login, subject):
        return self.world.post(
            login, subject, rpc=self.rpc[login], student=self.student
        )


def subject_of(message):
    raw = email.message_from_string(message["data"])
    return str(email.header.make_header(email.header.decode_header(raw["Subject"])))
