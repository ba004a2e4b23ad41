"""The upgrade lane: the previous release of the addon fills a database with
mail in flight, ``-u ally_smtp`` brings it to the working tree's code, and the
new code proves that nothing was lost.

The previous release comes from this repository's own history (``git
archive``); it runs on a new database with crons off, so that what it queued
and what waits for the Sent folder stay in flight across the upgrade. Counts
are taken on the harness SMTP server's record and in the Dovecot mailboxes.
"""

import ast
import collections
import contextlib
import email.utils
import re
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path

from . import ROOT
from .odoo import (
    ADDON,
    install,
    odoo_bin,
    odoo_popen,
    problem_records,
    step,
    write_config,
)
from .rpc import OLGA, PEOPLE, Agency, World, servers
from .services import free_port, wait_port

# The last release of the addon: every release moves it forward to its own
# commit, so that the next one is tested as an upgrade from it.
PREVIOUS_RELEASE = "4301d1384aa901cf81be7533f7878ac0d7985826"
UPGRADE_DB = "ally_smtp_upgrade"
# Ana and Bob sign in with their mailbox passwords, Olga with her Microsoft
# account (an OAuth sign-in, the harness's OAuth server)
PASSWORDS = ("ana", "bob")
CONSULTANTS = (*PASSWORDS, "olga")
MAILBOXES = {"ana": PEOPLE["ana"][0], "bob": PEOPLE["bob"][0], "olga": OLGA}
QUOTA = "550 5.4.5 Daily user sending limit exceeded"
MAIL_QUEUE = "mail.ir_cron_mail_scheduler_action"
FILING = "ally_smtp.ir_cron_sent_copy"
# what My Profile shows of a mailbox: on res.users before 18.0.1.5.0, on its
# ally.smtp.mailbox (shown through res.users under the same names) after
USER_FIELDS = [
    "ally_smtp_use_own",
    "ally_smtp_email",
    "ally_smtp_last_error",
    "ally_smtp_tested_at",
    "ally_smtp_state",
    "ally_smtp_password_set",
    "ally_smtp_sent_folder",
    "ally_smtp_paused_until",
    "ally_smtp_pause_reason",
    "ally_smtp_oauth_account",
]


class Lost(AssertionError):
    """The upgrade lost or changed something that was in flight."""


def check(condition, what):
    if not condition:
        raise Lost(what)


# -- the previous release ------------------------------------------------------
def _git(*args, **kwargs):
    return subprocess.run(["git", "-C", str(ROOT), *args], check=False, **kwargs)


def previous_release(target):
    """Extract the addon of PREVIOUS_RELEASE under ``target``; return it."""
    commit = f"{PREVIOUS_RELEASE}^{{commit}}"
    if _git("cat-file", "-e", commit, stderr=subprocess.DEVNULL).returncode:
        print(f"harness: fetching {PREVIOUS_RELEASE} from origin", flush=True)
        fetched = _git("fetch", "--quiet", "origin", PREVIOUS_RELEASE)
        if fetched.returncode or _git("cat-file", "-e", commit).returncode:
            raise SystemExit(
                f"the previous release {PREVIOUS_RELEASE} (PREVIOUS_RELEASE in "
                f"harness/upgrade.py) is not in the git history of {ROOT} and "
                "could not be fetched from origin: run the upgrade lane in a "
                "clone that has it (git fetch --unshallow)"
            )
    target.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, ADDON],
        stdout=subprocess.PIPE,
    )
    untar = subprocess.run(
        ["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=False
    )
    archive.stdout.close()
    if archive.wait() or untar.returncode:
        raise SystemExit(f"extracting {ADDON} of {PREVIOUS_RELEASE} failed")
    return target


def manifest_version(addons):
    manifest = (Path(addons) / ADDON / "__manifest__.py").read_text()
    return ast.literal_eval(manifest)["version"]


# -- Odoo, one process, crons off ------------------------------------------------
@contextlib.contextmanager
def serve(odoo_path, config, log):
    """The url of Odoo serving UPGRADE_DB, without cron threads: only the
    lane runs the mail queue and the filing (``World.run_cron``)."""
    port = free_port()
    server = odoo_popen(
        odoo_path,
        config,
        "-d",
        UPGRADE_DB,
        f"--db-filter=^{UPGRADE_DB}$",
        "--workers=0",
        "--max-cron-threads=0",
        f"--http-port={port}",
        f"--logfile={log}",
    )
    try:
        wait_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}"
        urllib.request.urlopen(url + "/web/login", timeout=60).close()
        yield url
    finally:
        server.terminate()
        server.wait(60)


def clean_log(log, what):
    text = log.read_text() if log.exists() else ""
    problems = problem_records(text)
    if problems:
        print("\n".join(problems[:40]), file=sys.stderr)
    check(not problems, f"{what} logged {len(problems)} WARNING/ERROR record(s)")
    return text


def upgrade(odoo_path, config, log):
    """``-u ally_smtp`` with the working tree's code; clean log or fail."""
    result = odoo_bin(
        odoo_path,
        config,
        "-d",
        UPGRADE_DB,
        "-u",
        ADDON,
        "--stop-after-init",
        "--no-http",
        f"--logfile={log}",
    )
    text = clean_log(log, "the upgrade")
    if result.returncode:
        print("\n".join(text.splitlines()[-40:]), file=sys.stderr)
    check(result.returncode == 0, f"the upgrade ended with {result.returncode}")


# -- mail in flight, made by the previous release -------------------------------
def run_queue(world):
    world.run_cron(MAIL_QUEUE)


def posts(world, login, tag, count, students):
    """``count`` posts of ``login`` to ``students`` new students each, left to
    the queue: {Message-ID: (login, subject, [addresses])}."""
    result = {}
    for n in range(count):
        subject = f"upgrade {tag} {login} {n}"
        # on a record of their own that nobody follows: the students alone
        # are the recipients
        partners = world.students(
            students, f"{tag}-{login}-{n}", context={"mail_create_nosubscribe": True}
        )
        message = world.post(
            login, subject, student=partners[0], partner_ids=partners, force_send=False
        )
        addresses = [
            p["email"] for p in world.admin("res.partner", "read", partners, ["email"])
        ]
        result[world.message_id(message)] = (login, subject, sorted(addresses))
    return result


def fill(world):
    """What the previous release leaves in flight; the record of it."""
    admin, info = world.admin, world.info
    servers.OAuthServer(info).reset()
    agency = Agency(world)
    _browser, _callback, page = agency.connect("olga", OLGA)
    check("alert-success" in page.text, f"before: Olga's Connect: {page.text[-500:]}")
    world.users["olga"], world.rpc["olga"] = agency.users["olga"], agency.rpc["olga"]
    for login in CONSULTANTS:
        servers.Mailbox(info, MAILBOXES[login]).purge()
        world.rpc[login]("res.users", "action_ally_smtp_test", [world.users[login]])
    messages = {}
    # sent; their copies failed to be filed (IMAP down) and wait to be retried
    for login in PASSWORDS:
        messages.update(posts(world, login, "retried", 2, 2))
    run_queue(world)
    imap_port = info["imap"]["port"]
    admin("res.company", "write", [world.company], {"ally_smtp_imap_port": free_port()})
    try:
        world.run_cron(FILING)
    finally:
        admin(
            "res.company", "write", [world.company], {"ally_smtp_imap_port": imap_port}
        )
    # sent; their copies not even gathered (the filing cron did not run since)
    for login in CONSULTANTS:
        messages.update(posts(world, login, "sent", 2, 2))
    run_queue(world)
    # Bob's provider refuses his third recipient for a quota: his mailbox is
    # paused and the rest of that mail waits in the queue
    world.smtp.fail("DATA", QUOTA, times=1, login=PEOPLE["bob"][0], after=2)
    messages.update(posts(world, "bob", "paused", 1, 5))
    run_queue(world)
    # queued (more than 50 recipients: several mails for one message)
    messages.update(posts(world, "ana", "queued", 1, 60))
    messages.update(posts(world, "bob", "queued", 1, 3))
    messages.update(posts(world, "olga", "queued", 1, 2))
    return record(world, messages)


def record(world, messages):
    """Everything in flight that the upgrade must keep, as the lane sees it."""
    admin = world.admin
    ids = list(messages)
    users = admin("res.users", "read", list(world.users.values()), USER_FIELDS)
    outgoing = admin(
        "mail.mail",
        "search_read",
        [("message_id", "in", ids), ("state", "=", "outgoing")],
        ["message_id", "recipient_ids"],
    )
    emails = {
        p["id"]: p["email"]
        for p in admin(
            "res.partner",
            "read",
            [pid for mail in outgoing for pid in mail["recipient_ids"]],
            ["email"],
        )
    }
    copies = admin(
        "ally.smtp.sent.copy",
        "search_read",
        [("message_id", "in", ids)],
        ["message_id", "state", "last_error"],
    )
    loose = admin(
        "ally.smtp.sent.copy.part",
        "search_read",
        [("message_id", "in", ids), ("copy_id", "=", False)],
        ["message_id"],
    )
    flight = {
        "company": world.company,
        "users": world.users,
        "messages": messages,
        "states": {u["id"]: {f: u[f] for f in USER_FIELDS} for u in users},
        "outgoing": {
            str(m["id"]): sorted(emails[p] for p in m["recipient_ids"])
            for m in outgoing
        },
        "copies": {c["message_id"]: c["state"] for c in copies},
        "loose": sorted({p["message_id"] for p in loose}),
        "delivered": delivered(world, ids),
        "failed": admin("mail.mail", "search_count", [("state", "=", "exception")]),
        "sign_ins": sign_ins(world),
    }
    sanity(world, flight)
    return flight


def sanity(world, flight):
    """The previous release left what the lane means to carry over (else the
    lane would prove nothing)."""
    by_tag = collections.defaultdict(list)
    for message_id, (login, subject, _to) in flight["messages"].items():
        by_tag[subject.split()[1]].append((login, message_id))
    bob = flight["states"][flight["users"]["bob"]]
    check(
        all(
            flight["states"][world.users[login]]["ally_smtp_state"] == "ok"
            for login in CONSULTANTS
        ),
        f"before: the consultants are not all Working: {flight['states']}",
    )
    check(bob["ally_smtp_paused_until"], f"before: Bob is not paused: {bob}")
    olga = flight["users"]["olga"]
    check(
        flight["sign_ins"] == [(olga, "microsoft", OLGA)],
        f"before: sign-ins {flight['sign_ins']}",
    )
    retried = {mid for _l, mid in by_tag["retried"]}
    check(
        retried and all(flight["copies"].get(m) == "pending" for m in retried),
        f"before: copies that failed to be filed are not pending: {flight['copies']}",
    )
    loose = {mid for _l, mid in by_tag["sent"] + by_tag["paused"]}
    check(
        loose <= set(flight["loose"]),
        f"before: copies already gathered: {loose - set(flight['loose'])}",
    )
    (paused,) = by_tag["paused"]
    check(
        len(flight["delivered"][paused[1]]) == 2,
        f"before: Bob's paused mail reached {flight['delivered'][paused[1]]}",
    )
    queued = {mid for _l, mid in by_tag["queued"] + by_tag["paused"]}
    waiting = {m["message_id"] for m in _outgoing_mails(world, flight)}
    check(queued == waiting, f"before: queued {sorted(queued)}, found {waiting}")
    check(
        len(flight["outgoing"]) >= 4,  # Ana's 60 recipients make 2 mails
        f"before: {len(flight['outgoing'])} mails queued",
    )


def sign_ins(world):
    """The OAuth sign-ins stored (ally.smtp.oauth.token, tokens unread)."""
    return sorted(
        (t["user_id"][0], t["provider"], t["account"])
        for t in world.admin(
            "ally.smtp.oauth.token",
            "search_read",
            [("user_id", "in", list(world.users.values()))],
            ["user_id", "provider", "account"],
        )
    )


def _outgoing_mails(world, flight):
    return world.admin(
        "mail.mail",
        "search_read",
        [("message_id", "in", list(flight["messages"])), ("state", "=", "outgoing")],
        ["message_id", "recipient_ids"],
    )


def delivered(world, message_ids):
    """{Message-ID: [every RCPT TO the SMTP server accepted for it]}."""
    wanted = set(message_ids)
    result = {m: [] for m in message_ids}
    for message in world.smtp.messages():
        if message["message_id"] in wanted:
            result[message["message_id"]] += message["rcpt_tos"]
    return result


# -- the working tree's code proves nothing was lost ----------------------------
def attach(url, info, flight):
    """The World of ``flight``'s database as served at ``url``."""
    world = World(url, UPGRADE_DB, info)
    world.company, world.users = flight["company"], flight["users"]
    world.rpc = {login: world.login(login) for login in world.users}
    return world


def verify(world, flight):
    admin = world.admin
    mails = _outgoing_mails(world, flight)
    check(
        sorted(str(m["id"]) for m in mails) == sorted(flight["outgoing"]),
        f"queued mails lost: {sorted(flight['outgoing'])} -> "
        f"{sorted(m['id'] for m in mails)}",
    )
    states = admin("res.users", "read", list(world.users.values()), USER_FIELDS)
    for user in states:
        kept = {f: user[f] for f in USER_FIELDS}
        check(
            kept == flight["states"][user["id"]],
            f"user {user['id']}: {flight['states'][user['id']]} -> {kept}",
        )
    copies = admin(
        "ally.smtp.sent.copy",
        "search_read",
        [("message_id", "in", list(flight["messages"]))],
        ["message_id", "state"],
    )
    check(
        {c["message_id"]: c["state"] for c in copies} == flight["copies"],
        f"waiting copies changed: {flight['copies']} -> {copies}",
    )
    check(
        sign_ins(world) == flight["sign_ins"],
        f"sign-ins: {flight['sign_ins']} -> {sign_ins(world)}",
    )
    # each consultant's Test passes with the password (or sign-in) stored by
    # the old code; Olga's access token is expired first, so that her stored
    # refresh token and the agency's client secret must be read too
    oauth = servers.OAuthServer(world.info)
    oauth.expire(OLGA)
    refreshed = oauth.stats()["microsoft"]["token"].get("refresh_token", 0)
    for login in CONSULTANTS:
        world.rpc[login]("res.users", "action_ally_smtp_test", [world.users[login]])
        (user,) = world.rpc[login](
            "res.users", "read", [world.users[login]], ["ally_smtp_state"]
        )
        check(user["ally_smtp_state"] == "ok", f"{login}'s Test: {user}")
    refreshes = oauth.stats()["microsoft"]["token"].get("refresh_token", 0)
    check(refreshes > refreshed, "Olga's Test did not refresh her access token")
    # the pause holds: Ana's queue leaves, Bob's waits; then an admin resumes
    run_queue(world)
    bobs = [m for m, (login, *_r) in flight["messages"].items() if login == "bob"]
    check(
        delivered(world, bobs) == {m: flight["delivered"][m] for m in bobs},
        "Bob's mail left while his mailbox was paused",
    )
    mailboxes(world)
    # replies come home (18.0.1.5.0): off for every company that upgraded
    fetching = admin("res.company", "search", [("ally_smtp_fetch_replies", "=", True)])
    check(not fetching, f"replies turned on by the upgrade for companies {fetching}")
    admin(
        "ally.smtp.mailbox",
        "action_resume",
        admin("ally.smtp.mailbox", "search", [("user_id", "=", world.users["bob"])]),
    )
    for _run in range(5):
        if not _outgoing_mails(world, flight):
            break
        run_queue(world)
    check(not _outgoing_mails(world, flight), "mail still queued after 5 runs")
    failed = admin("mail.mail", "search_count", [("state", "=", "exception")])
    check(failed == flight["failed"], f"{failed - flight['failed']} mails failed")
    reached = delivered(world, list(flight["messages"]))
    for message_id, (_login, subject, to) in flight["messages"].items():
        counts = collections.Counter(reached[message_id])
        check(
            sorted(counts) == to and set(counts.values()) == {1},
            f"{subject!r}: not each recipient once: "
            f"{ {a: n for a, n in counts.items() if n != 1} }, "
            f"missing {sorted(set(to) - set(counts))}, "
            f"others {sorted(set(counts) - set(to))}",
        )
    file_copies(world, flight)


def mailboxes(world):
    """Each consultant's mailbox is a row of its own, their personal server
    signs in as them, and nothing of a mailbox is stored on res.users."""
    admin = world.admin
    consultants = sorted(world.users[login] for login in CONSULTANTS)
    rows = admin(
        "ally.smtp.mailbox",
        "search_read",
        [("user_id", "in", list(world.users.values()))],
        ["user_id", "address"],
    )
    addresses = {row["user_id"][0]: row["address"] for row in rows}
    check(
        addresses == {world.users[login]: MAILBOXES[login] for login in CONSULTANTS},
        f"mailboxes after the upgrade: {rows}",
    )
    servers = admin(
        "ir.mail_server",
        "search_read",
        [("ally_smtp_owner_id", "in", consultants)],
        ["smtp_authentication"],
    )
    check(
        len(servers) == len(consultants)
        and {s["smtp_authentication"] for s in servers} == {"ally_smtp"},
        f"personal servers after the upgrade: {servers}",
    )
    stored = admin(
        "ir.model.fields",
        "search_read",
        [("model", "=", "res.users"), ("name", "like", "ally_smtp_")],
        ["name", "store"],
    )
    check(
        stored and not [f["name"] for f in stored if f["store"]],
        f"mailbox fields still stored on res.users: {stored}",
    )


def file_copies(world, flight):
    """Each message's copy filed once in its author's Sent, listing everyone."""
    ids = list(flight["messages"])
    # the copies whose filing failed before the upgrade are due now
    retry = world.admin(
        "ally.smtp.sent.copy",
        "search",
        [("message_id", "in", ids), ("state", "=", "pending")],
    )
    world.admin(
        "ally.smtp.sent.copy", "write", retry, {"next_try": "2000-01-01 00:00:00"}
    )
    for _run in range(5):
        world.run_cron(FILING)
        left = world.admin(
            "ally.smtp.sent.copy",
            "search_count",
            [("message_id", "in", ids), ("state", "not in", ["done", "skipped"])],
        )
        if not left:
            break
    check(not left, f"{left} copies not filed after 5 runs")
    for login in CONSULTANTS:
        sent = collections.defaultdict(list)
        box = servers.Mailbox(world.info, MAILBOXES[login])
        for _flags, message in box.messages("Sent"):
            sent[(message["Message-Id"] or "").strip()].append(message)
        for message_id, (author, subject, to) in flight["messages"].items():
            if author != login:
                continue
            copies = sent[message_id]
            check(len(copies) == 1, f"{subject!r}: {len(copies)} copies in Sent")
            listed = {
                a.lower() for _n, a in email.utils.getaddresses(copies[0].get_all("To"))
            }
            check(set(to) <= listed, f"{subject!r}: the copy misses {set(to) - listed}")


# -- the lane ------------------------------------------------------------------
def check_upgrade(odoo_path, services):
    step(f"upgrade from the previous release, {PREVIOUS_RELEASE[:10]}, mail in flight")
    started = time.monotonic()
    old = previous_release(services.dir / "previous")
    old_config = write_config(
        services, odoo_path, services.dir / "upgrade-old.conf", addons=(old,)
    )
    new_config = write_config(services, odoo_path, services.dir / "upgrade-new.conf")
    install(odoo_path, old_config, UPGRADE_DB, "--without-demo=all")
    old_log = services.dir / "upgrade-old.log"
    try:
        with serve(odoo_path, old_config, old_log) as url:
            world = World(url, UPGRADE_DB, services.info).setup()
            check(
                installed_version(world) == manifest_version(old),
                f"the database has {installed_version(world)}, not the previous "
                f"release's {manifest_version(old)}",
            )
            flight = fill(world)
        paths = re.findall(r"addons paths: (.*)", old_log.read_text())
        check(
            paths and str(old) in paths[0] and str(ROOT) not in paths[0],
            f"the previous release's server ran with the addons paths {paths}",
        )
        print(
            f"harness: in flight: {len(flight['outgoing'])} queued mails, "
            f"{len(flight['copies'])} copies to retry, {len(flight['loose'])} "
            "messages with copies not gathered, Bob's mailbox paused, "
            f"{len(flight['sign_ins'])} OAuth sign-in",
            flush=True,
        )
        upgrade(odoo_path, new_config, services.dir / "upgrade.log")
        new_log = services.dir / "upgrade-new.log"
        with serve(odoo_path, new_config, new_log) as url:
            world = attach(url, services.info, flight)
            check(
                installed_version(world) == manifest_version(ROOT),
                f"after -u the database has {installed_version(world)}",
            )
            verify(world, flight)
        clean_log(new_log, "the upgraded server")
    except Lost as exc:
        raise SystemExit(f"the upgrade from {PREVIOUS_RELEASE[:10]}: {exc}") from exc
    except Exception as exc:  # an RPC fault, a server that did not start, ...
        traceback.print_exc()
        raise SystemExit(f"the upgrade lane broke: {exc!r}"[:2000]) from exc
    print(
        f"harness: upgrade {manifest_version(old)} -> {manifest_version(ROOT)}: "
        f"nothing lost ({time.monotonic() - started:.0f}s)",
        flush=True,
    )


def installed_version(world):
    (module,) = world.admin(
        "ir.module.module",
        "search_read",
        [("name", "=", ADDON)],
        ["latest_version", "state"],
    )
    return module["latest_version"] if module["state"] == "installed" else None
