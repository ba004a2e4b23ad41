"""An SMTP submission server for tests: real TLS, real AUTH, scriptable faults.

Run as ``python3 -m harness.smtpd CONFIG.json``. It listens on loopback with

* ``ssl``: implicit TLS (RFC 8314, the 465 way),
* ``starttls``: plain until STARTTLS, AUTH only after it (the 587 way),
* ``untrusted``: implicit TLS with a self-signed certificate,

checks AUTH PLAIN/LOGIN against the same users as Dovecot and AUTH XOAUTH2
against the harness's OAuth server (token introspection: the token must be
live and belong to the user it names), and records for each connection what
the client did (AUTH login, MAIL FROM, RCPT TO, the exact DATA). An AUTH event
is ``["auth", login, ok]`` for a password, ``["auth", login, ok, "XOAUTH2"]``
for a token.
Accepted mail for a known user is delivered to that user's IMAP INBOX, and in
*autosave* mode a copy goes to the sender's Sent folder, the way Gmail and
Microsoft 365 file SMTP mail themselves.

A small HTTP API on loopback lets tests read and steer it::

    GET  /state            {"sessions": [...], "messages": [...]}
    POST /reset            forget everything, clear faults and autosave
    POST /faults           [{"stage": "RCPT", "reply": "451 4.3.0 Try later",
                             "times": 1, "login": "a@x", "after": 20}]
                           ("reply": "drop" cuts; "after": let that many
                            matching commands pass first; at AUTH,
                            "mechanism": "XOAUTH2" limits it to that one)
    POST /xoauth2          {"style": "google"}  how a bad token is refused:
                           "google" (default): 334 <base64 JSON error>, then
                           after the client's empty line 535 5.7.8;
                           "microsoft": 535 5.7.3 at once
    POST /config           {"autosave": true}   (or a list of logins)
                           {"deliver": false}   (record only: no IMAP delivery,
                                                 for benchmarks)
                           {"pace": 0.05}       (seconds between taking a
                                                 message and answering 250: a
                                                 slow provider, and the window
                                                 in which a client that dies
                                                 never hears that it was taken)
"""

import asyncio
import base64
import binascii
import collections
import imaplib
import itertools
import json
import logging
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

_logger = logging.getLogger("harness.smtpd")
STAGES = {"AUTH", "MAIL", "RCPT", "DATA", "RSET", "QUIT"}
XOAUTH2_STYLES = {"google", "microsoft"}
# What the providers answer to a refused XOAUTH2 token
GOOGLE_CHALLENGE = json.dumps(
    {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}
)
GOOGLE_REFUSAL = "535 5.7.8 Username and Password not accepted"
MICROSOFT_REFUSAL = "535 5.7.3 Authentication unsuccessful"
TEMPORARY_REFUSAL = "454 4.7.0 Temporary authentication failure"
# AUTH lines carry ~2.5 kB tokens (Microsoft's); aiosmtpd's default is 512
AUTH_LINE_LIMIT = 8192


class State:
    """Everything the server saw, and the faults it was asked to produce."""

    def __init__(self, users):
        self.users = users
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.reset()

    def reset(self):
        with self.lock:
            self.sessions = {}
            self.messages = []
            self.faults = []
            self.autosave = False
            self.deliver = True
            self.pace = 0
            self.xoauth2_style = "google"

    def session(self, smtp_session, listener):
        with self.lock:
            sid = getattr(smtp_session, "harness_id", None)
            if sid is None:
                sid = smtp_session.harness_id = next(self.ids)
                self.sessions[sid] = {"id": sid, "listener": listener, "events": []}
            return self.sessions[sid]

    def event(self, record, *event):
        with self.lock:
            record["events"].append(list(event))

    def take_fault(self, stage, login, mechanism=None):
        """Return the reply of the first fault matching ``stage``, ``login``
        and (at AUTH) ``mechanism``."""
        with self.lock:
            for fault in self.faults:
                if fault["stage"] != stage:
                    continue
                if fault.get("login") and fault["login"] != login:
                    continue
                if fault.get("mechanism") and fault["mechanism"] != mechanism:
                    continue
                if fault.get("after"):
                    fault["after"] -= 1
                    return None
                if fault.get("times") is not None:
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        self.faults.remove(fault)
                return fault["reply"]
        return None

    def snapshot(self):
        with self.lock:
            return {
                "sessions": list(self.sessions.values()),
                "messages": list(self.messages),
            }


def _login_of(args):
    """The user name carried by an ``AUTH PLAIN|LOGIN|XOAUTH2 <initial-response>``."""
    if len(args) < 2:
        return None
    try:
        raw = base64.b64decode(args[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    if args[0].upper() == "PLAIN":
        parts = raw.split(b"\0")
        return parts[1].decode(errors="replace") if len(parts) == 3 else None
    if args[0].upper() == "XOAUTH2":
        return _xoauth2(raw)[0]
    return raw.decode(errors="replace")


def _xoauth2(raw):
    """``(user, token)`` of ``user=<email>^Aauth=Bearer <token>^A^A``."""
    fields = dict(
        part.split("=", 1)
        for part in raw.decode(errors="replace").split("\x01")
        if "=" in part
    )
    auth = fields.get("auth", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    return fields.get("user"), token


def introspect(url, token):
    """The OAuth server's RFC 7662 answer about ``token``."""
    data = urllib.parse.urlencode({"token": token}).encode()
    with urllib.request.urlopen(url, data=data, timeout=10) as reply:
        return json.loads(reply.read())


def imap_append(imap_port, login, password, folder, raw, flags=""):
    """Deliver ``raw`` into ``folder`` of ``login``'s mailbox on Dovecot."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with imaplib.IMAP4_SSL("127.0.0.1", imap_port, ssl_context=context) as imap:
        imap.login(login, password)
        imap.append(folder, flags, imaplib.Time2Internaldate(time.time()), raw)


class Handler:
    def __init__(self, state, listener, imap_port, introspection_url=None):
        self.state = state
        self.listener = listener
        self.imap_port = imap_port
        self.introspection_url = introspection_url

    def _record(self, session):
        return self.state.session(session, self.listener)

    @staticmethod
    def _login(session):
        return getattr(session.auth_data, "login", b"").decode() or None

    def _fault(self, server, session, stage):
        reply = self.state.take_fault(stage, self._login(session))
        if reply == "drop":
            self.state.event(self._record(session), "drop", stage)
            server.transport.abort()
            return "421 4.4.2 dropped"  # never reaches the client
        if reply:
            self.state.event(self._record(session), "fault", stage, reply)
        return reply

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode()
        ok = self.state.users.get(login) == auth_data.password.decode()
        self.state.event(self._record(session), "auth", login, ok)
        if not ok:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, handled=False, auth_data=auth_data)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.state.event(self._record(session), "ehlo", hostname)
        session.host_name = hostname
        return responses

    async def handle_AUTH(self, server, session, envelope, args):
        login = _login_of(args)
        mechanism = args[0].upper()
        reply = self.state.take_fault("AUTH", login, mechanism)
        if reply:
            extra = ["XOAUTH2"] if mechanism == "XOAUTH2" else []
            self.state.event(self._record(session), "auth", login, False, *extra)
            if reply == "drop":
                server.transport.abort()
            return reply
        return MISSING

    async def auth_XOAUTH2(self, server, args):
        """SASL XOAUTH2 (Google, Microsoft): the token must be live at the
        OAuth server and belong to the user it names."""
        if len(args) > 1:  # AUTH XOAUTH2 <initial response>: what smtplib sends
            try:
                raw = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            raw = await server.challenge_auth("")
            if raw is MISSING:
                return AuthResult(success=False, handled=True)
        login, token = _xoauth2(raw)
        record = self._record(server.session)
        try:
            ok = await self._token_of(login, token)
        except (OSError, ValueError):  # the OAuth server does not answer
            _logger.warning("XOAUTH2: introspection failed", exc_info=True)
            self.state.event(record, "auth", login, False, "XOAUTH2")
            return AuthResult(success=False, handled=False, message=TEMPORARY_REFUSAL)
        self.state.event(record, "auth", login, ok, "XOAUTH2")
        if ok:
            data = LoginPassword(login.encode(), b"")
            return AuthResult(success=True, handled=False, auth_data=data)
        with self.state.lock:
            style = self.state.xoauth2_style
        if style == "microsoft":
            return AuthResult(success=False, handled=False, message=MICROSOFT_REFUSAL)
        # Google: an error challenge first; the client answers an empty line
        if await server.challenge_auth(GOOGLE_CHALLENGE) is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=GOOGLE_REFUSAL)

    async def _token_of(self, login, token):
        """Whether ``token`` is live and ``login``'s (a known mailbox)."""
        if not (token and login and self.introspection_url):
            return False
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(
            None, introspect, self.introspection_url, token
        )
        email = (answer.get("email") or answer.get("username") or "").lower()
        return (
            answer.get("active") is True
            and email == login.lower()
            and email in self.state.users
        )

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.state.event(self._record(session), "mail", address)
        reply = self._fault(server, session, "MAIL")
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.state.event(self._record(session), "rcpt", address)
        reply = self._fault(server, session, "RCPT")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        self.state.event(self._record(session), "rset")
        return self._fault(server, session, "RSET") or "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        self.state.event(self._record(session), "quit")
        return self._fault(server, session, "QUIT") or "221 Bye"

    async def handle_DATA(self, server, session, envelope):
        record = self._record(session)
        reply = self._fault(server, session, "DATA")
        if reply:
            return reply
        login = self._login(session)
        raw = envelope.original_content
        message_id = (message_from_bytes(raw).get("Message-Id") or "").strip()
        with self.state.lock:
            self.state.messages.append(
                {
                    "session": record["id"],
                    "listener": self.listener,
                    "login": login,
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "message_id": message_id,
                    "at": time.time(),
                    "data": raw.decode("utf-8", "surrogateescape"),
                }
            )
            autosave = self.state.autosave
            deliver = self.state.deliver
            pace = self.state.pace
        self.state.event(record, "data", message_id)
        deliveries = [
            (rcpt, self.state.users[rcpt], "INBOX", "")
            for rcpt in envelope.rcpt_tos
            if rcpt in self.state.users and deliver
        ]
        if login and (autosave is True or (autosave and login in autosave)):
            deliveries.append((login, self.state.users[login], "Sent", r"(\Seen)"))
        loop = asyncio.get_running_loop()
        for login_, password, folder, flags in deliveries:
            await loop.run_in_executor(
                None, imap_append, self.imap_port, login_, password, folder, raw, flags
            )
        if pace:
            await asyncio.sleep(pace)
        return "250 2.0.0 OK queued"


def _control_server(state, port):
    class Control(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, payload):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._reply(state.snapshot())

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(length) or b"null")
            if self.path == "/reset":
                state.reset()
            elif self.path == "/faults":
                for fault in payload:
                    assert fault["stage"] in STAGES, fault
                with state.lock:
                    state.faults.extend(payload)
            elif self.path == "/config":
                with state.lock:
                    if "autosave" in payload:
                        autosave = payload["autosave"]
                        state.autosave = (
                            set(autosave)
                            if isinstance(autosave, list)
                            else bool(autosave)
                        )
                    if "deliver" in payload:
                        state.deliver = bool(payload["deliver"])
                    if "pace" in payload:
                        state.pace = float(payload["pace"])
            elif self.path == "/xoauth2":
                assert payload["style"] in XOAUTH2_STYLES, payload
                with state.lock:
                    state.xoauth2_style = payload["style"]
            else:
                self.send_error(404)
                return
            self._reply({"ok": True})

    server = ThreadingHTTPServer(("127.0.0.1", port), Control)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Server(SMTP):
    """aiosmtpd's SMTP with room for XOAUTH2 tokens on the AUTH line and in
    its challenge answer; DATA lines keep RFC 5321's limit."""

    line_length_limit = AUTH_LINE_LIMIT  # the stream reader's, set at __init__

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.line_length_limit = SMTP.line_length_limit  # checked in DATA
        # aiosmtpd keeps these in a class-wide dict: give each session its own
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, AUTH=AUTH_LINE_LIMIT
        )


def _tls(cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(config, users):
    state = State(users)
    _control_server(state, config["control_port"])
    loop = asyncio.get_running_loop()
    trusted = _tls(config["cert"], config["key"])
    listeners = {
        # implicit TLS: the session cannot tell it is encrypted, so AUTH must
        # not wait for STARTTLS there.
        "ssl": (trusted, False, {"ssl": trusted}),
        "starttls": (trusted, True, {}),
        "untrusted": (
            _tls(config["untrusted_cert"], config["untrusted_key"]),
            False,
            {},
        ),
    }
    listeners["untrusted"][2]["ssl"] = listeners["untrusted"][0]
    for name, (context, require_tls, extra) in listeners.items():
        handler = Handler(
            state, name, config["imap_port"], config.get("introspection_url")
        )

        def factory(handler=handler, context=context, require_tls=require_tls):
            return Server(
                handler,
                hostname="localhost",
                tls_context=None if not require_tls else context,
                require_starttls=require_tls,
                auth_require_tls=require_tls,
                authenticator=handler.authenticate,
                timeout=30,
            )

        await loop.create_server(factory, "127.0.0.1", config["ports"][name], **extra)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main():
    logging.basicConfig(level=logging.WARNING)
    with open(sys.argv[1]) as f:
        config = json.load(f)
    with open(config["users"]) as f:
        users = json.load(f)
    asyncio.run(serve(config, users))


if __name__ == "__main__":
    main()
