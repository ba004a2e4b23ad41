"""``make demo``: Odoo with ally_smtp and a local mail provider, on loopback;
``make mailbox USER=ana``: what that mailbox holds (INBOX and Sent)."""

import email
import email.header
import imaplib
import json
import shutil
import ssl
import time
import urllib.request
import xmlrpc.client

from .odoo import find_odoo, install, odoo_bin, odoo_popen, step, write_config
from .services import ROOT, Services, wait_port

DEMO_DB = "ally_smtp_demo"
POINTER = ROOT / ".demo" / "harness.json"  # where `make mailbox` finds the run
LOGINS = {"ana": "alice@agency.test", "bruno": "bob@agency.test"}


def _post(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode())
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.read()


def cmd_demo(args):
    odoo_path = find_odoo()
    with Services() as services:
        # bob's provider files sent mail in Sent itself, like Gmail
        _post(
            services.info["smtp_control"] + "/config", {"autosave": [LOGINS["bruno"]]}
        )
        config = write_config(
            services,
            odoo_path,
            services.dir / "odoo.conf",
            {"http_port": args.port, "dbfilter": f"^{DEMO_DB}$"},
        )
        step("install ally_smtp and the pt_BR language")
        install(
            odoo_path, config, DEMO_DB, "--without-demo=all", "--load-language=pt_BR"
        )
        step("demo data: two agencies, three consultants, two students")
        loaded = odoo_bin(
            odoo_path,
            config,
            "-d",
            DEMO_DB,
            "--no-http",
            "--log-level=warn",
            input=(ROOT / "harness" / "demo_data.py").read_text(),
            text=True,
            env={
                "ALLY_SMTP_HARNESS": str(services.info_file),
                # the OAuth redirect URI is built from it
                "ALLY_SMTP_DEMO_URL": f"http://localhost:{args.port}",
            },
            subcommand=["shell"],
        )
        if loaded.returncode:
            raise SystemExit("loading the demo data failed")
        if args.check:  # leaves a running demo's `make mailbox` alone
            _serve(odoo_path, config, args, services.info)
            return 0
        POINTER.parent.mkdir(exist_ok=True)
        shutil.copy(services.info_file, POINTER)
        try:
            _serve(odoo_path, config, args, services.info)
        finally:
            POINTER.unlink(missing_ok=True)
    return 0


def _serve(odoo_path, config, args, info):
    url = f"http://localhost:{args.port}"
    print(
        f"""
=== ally_smtp demo on {url}   (Ctrl-C stops everything)
  admin / admin   the agency's administrator (Settings > Integrations)
  ana / ana       consultant, mailbox alice@agency.test
  bruno / bruno   consultant, mailbox bob@agency.test (provider files Sent itself)
  carla / carla   consultant of an agency signing in with Google accounts (a
                  local Google-like server): My Profile > Preferences >
                  Connect Google account, Allow, and she is connected
Open a student (Contacts: Maria Estudante), send a message, then:
  make mailbox USER=ana              # her INBOX and Sent folder
  make mailbox USER=student1@school.test
""",
        flush=True,
    )
    if not args.check:
        odoo_bin(odoo_path, config, "-d", DEMO_DB)
        return
    # --check: start, answer the login page, stop (`make test` does this)
    process = odoo_popen(odoo_path, config, "-d", DEMO_DB)
    try:
        wait_port(args.port, timeout=60)
        with urllib.request.urlopen(url + "/web/login", timeout=30) as page:
            assert page.status == 200, page.status
        _check_consultant_message(url, info)
        print("demo: Odoo answers on", url, "and ana's message arrived", flush=True)
    finally:
        process.terminate()
        process.wait(30)


def _check_consultant_message(url, info):
    """Ana writes to Maria; Maria receives it and Ana finds it in Sent."""
    common = xmlrpc.client.ServerProxy(url + "/xmlrpc/2/common")
    uid = common.authenticate(DEMO_DB, "ana", "ana", {})
    models = xmlrpc.client.ServerProxy(url + "/xmlrpc/2/object")
    subject = f"demo check {time.time()}"
    maria = models.execute_kw(
        DEMO_DB,
        uid,
        "ana",
        "res.partner",
        "search",
        [[("name", "=", "Maria Estudante")]],
    )
    models.execute_kw(
        DEMO_DB,
        uid,
        "ana",
        "res.partner",
        "message_post",
        maria,
        {"body": subject, "subject": subject, "subtype_xmlid": "mail.mt_comment"},
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        inbox = _subjects(info, "student1@school.test", "INBOX")
        sent = _subjects(info, LOGINS["ana"], "Sent")
        if subject in inbox and subject in sent:
            return
        time.sleep(2)
    raise SystemExit(f"ana's demo message did not arrive: {inbox=} {sent=}")


def _subjects(info, login, folder):
    with _imap(info, login) as imap:
        imap.select(folder, readonly=True)
        _typ, data = imap.search(None, "ALL")
        subjects = []
        for number in data[0].split():
            _typ, parts = imap.fetch(number, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            subjects.append(_decode(email.message_from_bytes(parts[0][1])["Subject"]))
        return subjects


def _imap(info, login):
    context = ssl.create_default_context(cafile=info["ca_file"])
    imap = imaplib.IMAP4_SSL(
        info["imap"]["host"], info["imap"]["port"], ssl_context=context, timeout=10
    )
    imap.login(login, info["mailboxes"][login])
    return imap


def _decode(value):
    return str(email.header.make_header(email.header.decode_header(value or "")))


def cmd_mailbox(args):
    if not POINTER.exists():
        raise SystemExit("No demo is running: start it with `make demo`.")
    info = json.loads(POINTER.read_text())
    login = LOGINS.get(args.user, args.user)
    if login not in info["mailboxes"]:
        names = ", ".join([*LOGINS, *info["mailboxes"]])
        raise SystemExit(f"No mailbox {args.user!r}; try one of: {names}")
    with _imap(info, login) as imap:
        for folder in ("INBOX", "Sent"):
            _typ, count = imap.select(folder, readonly=True)
            print(f"\n{login} / {folder}: {int(count[0])} message(s)")
            _typ, data = imap.search(None, "ALL")
            for number in data[0].split():
                _typ, parts = imap.fetch(
                    number, "(BODY.PEEK[HEADER.FIELDS (DATE FROM TO SUBJECT)])"
                )
                headers = email.message_from_bytes(parts[0][1])
                print(
                    f"  {headers['Date']}\n    From: {_decode(headers['From'])}\n"
                    f"    To: {_decode(headers['To'])}\n"
                    f"    Subject: {_decode(headers['Subject'])}"
                )
    return 0
