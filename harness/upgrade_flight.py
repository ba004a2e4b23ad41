"""The upgrade lane's mail in flight: what the previous release leaves
queued, waiting for the Sent folder or paused (``fill``, ``record``), and the
working tree's code proving, once upgraded, that none of it was lost
(``verify``). ``upgrade.py`` runs the lane.
"""

import collections
import email.utils

from .rpc import OLGA, PEOPLE, Agency, servers
from .services import free_port

# Ana and Bob sign in with their mailbox passwords, Olga with her Microsoft
# account (an OAuth sign-in, the harness's OAuth server)
PASSWORDS = ("ana", "bob")
CONSULTANTS = (*PASSWORDS, "olga")
MAILBOXES = {"ana": PEOPLE["ana"][0], "bob": PEOPLE["bob"][0], "olga": OLGA}
QUOTA = "550 5.4.5 Daily user sending limit exceeded"
MAIL_QUEUE = "mail.ir_cron_mail_scheduler_action"
FILING = "ally_smtp.ir_cron_sent_copy"
# the record of each SMTP transaction a provider accepted, under its name in
# PREVIOUS_RELEASE (upgrade.py) and in the working tree: 18.0.1.5.0 renamed it
DELIVERIES_BEFORE = "ally.smtp.sent.copy.part"
DELIVERIES = "ally.smtp.delivery"
# the Sent copy's "look for it in the folder before adding it", likewise
LOOK_FIRST_BEFORE, LOOK_FIRST = "verify", "look_first"
DELIVERY_FIELDS = [
    "copy_id",
    "user_id",
    "mail_id",
    "message_id",
    "subject",
    "recipients",
    "cc",
    "sent_at",
    "reached_only",
]
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
        ["message_id", "state", "last_error", LOOK_FIRST_BEFORE],
    )
    loose = admin(
        DELIVERIES_BEFORE,
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
        "look_first": {c["message_id"]: c[LOOK_FIRST_BEFORE] for c in copies},
        "loose": sorted({p["message_id"] for p in loose}),
        "deliveries": deliveries(world, DELIVERIES_BEFORE),
        "delivery_model": model_records(world, DELIVERIES_BEFORE),
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
    # the copy whose filing failed is looked for first, the one left unclaimed
    # is not: both values must come across
    check(
        set(flight["look_first"].values()) == {True, False},
        f"before: the copies' {LOOK_FIRST_BEFORE}: {flight['look_first']}",
    )
    loose = {mid for _l, mid in by_tag["sent"] + by_tag["paused"]}
    check(
        loose <= set(flight["loose"]),
        f"before: copies already gathered: {loose - set(flight['loose'])}",
    )
    gathered = {d["copy_id"] for d in flight["deliveries"].values()}
    check(
        False in gathered and len(gathered) > 1,
        f"before: deliveries not both gathered and loose: {flight['deliveries']}",
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


def deliveries(world, model):
    """{id: values} of every recorded SMTP transaction, read as ``model``."""
    rows = world.admin(model, "search_read", [], DELIVERY_FIELDS)
    return {
        row.pop("id"): {
            name: value[0] if isinstance(value, list) else value
            for name, value in row.items()
        }
        for row in rows
    }


def model_records(world, model):
    """The ids of Odoo's records of ``model``: its ir.model, its fields (by
    name) and its access rules. A renamed model keeps them all."""
    (ir_model,) = world.admin("ir.model", "search", [("model", "=", model)])
    fields = world.admin(
        "ir.model.fields", "search_read", [("model_id", "=", ir_model)], ["name"]
    )
    access = world.admin("ir.model.access", "search", [("model_id", "=", ir_model)])
    return {
        "ir.model": ir_model,
        "fields": {f["name"]: f["id"] for f in fields},
        "access": sorted(access),
    }


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
def verify(world, flight):
    admin = world.admin
    kept_deliveries(world, flight)
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
        ["message_id", "state", LOOK_FIRST],
    )
    check(
        {c["message_id"]: c["state"] for c in copies} == flight["copies"],
        f"waiting copies changed: {flight['copies']} -> {copies}",
    )
    check(
        {c["message_id"]: c[LOOK_FIRST] for c in copies} == flight["look_first"],
        f"{LOOK_FIRST_BEFORE} -> {LOOK_FIRST}: {flight['look_first']} -> {copies}",
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
    # the id sequence went with the table: new deliveries come after the old
    new = set(deliveries(world, DELIVERIES)) - set(flight["deliveries"])
    check(
        new and min(new) > max(flight["deliveries"]),
        f"deliveries after the upgrade {sorted(new)} reuse the old ids",
    )


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


def kept_deliveries(world, flight):
    """The old model's rows are the new model's, same ids and values, and
    Odoo sees a renamed model (the same ir.model, fields and access records),
    not a deleted one and a new one."""
    check(
        not world.admin("ir.model", "search", [("model", "=", DELIVERIES_BEFORE)]),
        f"{DELIVERIES_BEFORE} is still a model after the upgrade",
    )
    before, after = flight["deliveries"], deliveries(world, DELIVERIES)
    check(
        sorted(after) == sorted(before),
        f"{len(before)} deliveries before, {len(after)} after: lost "
        f"{sorted(set(before) - set(after))}, new {sorted(set(after) - set(before))}",
    )
    changed = [(before[i], after[i]) for i in before if after[i] != before[i]]
    check(not changed, f"deliveries changed: {changed}")
    records = model_records(world, DELIVERIES)
    check(
        records == flight["delivery_model"],
        f"{DELIVERIES_BEFORE} -> {DELIVERIES} is not the same model: "
        f"{flight['delivery_model']} -> {records}",
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
