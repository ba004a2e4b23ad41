"""Clients of the harness's servers, in plain Python (no Odoo import), for the
tests inside Odoo and for the suite that drives a running server (``e2e/``)."""

import base64
import contextlib
import email
import email.policy
import email.utils
import hashlib
import html
import imaplib
import json
import os
import re
import secrets
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage


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


def oauth_values(info, provider):
    """A company's sign-in with the harness's ``provider`` app (google or
    microsoft): the values to add to ``company_values``."""
    app = info["oauth"][provider]
    return {
        "ally_smtp_auth_method": provider,
        "ally_smtp_oauth_client_id": app["client_id"],
        "ally_smtp_oauth_client_secret": app["client_secret"],
        "ally_smtp_oauth_tenant": app.get("tenant") or False,
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

    def fail(self, stage, reply, times=None, login=None, after=0, mechanism=None):
        """Make the server answer ``reply`` (or "drop") at ``stage``, once
        ``after`` such commands passed; at AUTH, only for ``mechanism`` (say
        "XOAUTH2") when given."""
        fault = {
            "stage": stage,
            "reply": reply,
            "times": times,
            "login": login,
            "after": after,
            "mechanism": mechanism,
        }
        self._call("/faults", [fault])

    def xoauth2_style(self, style):
        """How AUTH XOAUTH2 refuses a bad token: "google" (a 334 challenge
        with a JSON error, then 535 5.7.8) or "microsoft" (535 5.7.3 at once).
        ``reset()`` brings back "google"."""
        self._call("/xoauth2", {"style": style})

    def autosave(self, on=True):
        self._call("/config", {"autosave": on})

    def deliver(self, on=True):
        """Off: record messages without delivering them (benchmarks)."""
        self._call("/config", {"deliver": on})

    def pace(self, seconds):
        """Answer each DATA ``seconds`` after taking the message (0: at once)."""
        self._call("/config", {"pace": seconds})

    def state(self):
        return self._call("/state")

    def messages(self):
        return self.state()["messages"]

    def auth_attempts(self, login=None, mechanism=None):
        """The AUTH events: ``["auth", login, ok]`` for a password,
        ``["auth", login, ok, "XOAUTH2"]`` for a token; with ``mechanism``
        ("XOAUTH2"), only those."""
        return [
            event
            for session in self.state()["sessions"]
            for event in session["events"]
            if event[0] == "auth"
            and (login is None or event[1] == login)
            and (mechanism is None or event[3:] == [mechanism])
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


def xoauth2(login, access_token):
    """The SASL XOAUTH2 initial response (Google and Microsoft)."""
    return f"user={login}\x01auth=Bearer {access_token}\x01\x01"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises HTTPError with the 30x


_OPENER = urllib.request.build_opener(_NoRedirect)


def _http(url, data=None, headers=None, timeout=10):
    """``(status, headers, body)``, redirects and errors included."""
    if isinstance(data, dict):
        data = urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as reply:
        with reply:
            return reply.code, reply.headers, reply.read()


class OAuthError(Exception):
    """The OAuth server refused: ``status`` and its JSON ``payload``."""

    def __init__(self, status, payload):
        super().__init__(f"{status} {payload}")
        self.status, self.payload = status, payload
        self.error = payload.get("error") if isinstance(payload, dict) else None


OAUTH_SCOPES = {  # what the addon asks for
    "google": "https://mail.google.com/ openid email",
    "microsoft": "https://outlook.office.com/SMTP.Send "
    "https://outlook.office.com/IMAP.AccessAsUser.All offline_access openid email",
}


class OAuthServer:
    """Client of the harness's OAuth 2.0 server (harness/oauth_server.py): its
    control API, a person on its consent page, and a plain-Python client that
    fetches tokens (authorization code with PKCE) for tests of the rig."""

    REDIRECT_URI = "http://127.0.0.1:8069/ally_smtp/oauth/callback"

    def __init__(self, info):
        self.info = info["oauth"]
        self.url = self.info["url"]
        self.control_url = self.info["control"]

    # -- control API ----------------------------------------------------------
    def _control(self, action, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(
            f"{self.control_url}/{action}", data=data, headers=headers
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def reset(self):
        """Forget every grant and token; default lifetimes, no faults, up."""
        self._control("reset", {})

    def revoke(self, email):
        """Revoke every grant of ``email``: its refresh and access tokens die."""
        self._control("revoke", {"email": email})

    def expire(self, email):
        """Expire the access tokens ``email`` has now (refresh tokens live)."""
        self._control("expire", {"email": email})

    def lifetime(self, profile, seconds):
        """Access tokens issued from now on live ``seconds`` (at least 1)."""
        self._control("lifetime", {"profile": profile, "seconds": seconds})

    def fail(self, profile, count=1, status=None, error=None, hang=None):
        """The next ``count`` token-endpoint calls of ``profile`` fail: HTTP
        ``status`` (503, or 400 with an ``error``) with the OAuth ``error``
        ("invalid_grant", "invalid_client", ...) if given, after sleeping
        ``hang`` seconds if given."""
        fault = {"profile": profile, "count": count, "status": status}
        self._control("fail", {**fault, "error": error, "hang": hang})

    def down(self, seconds=3600):
        """Token, userinfo and revoke requests hang unanswered (the connection
        is accepted) until ``up()`` or ``seconds`` pass, then get a 503 without
        being processed. Control and introspection keep working."""
        self._control("down", {"seconds": seconds})

    def up(self):
        self._control("up", {})

    def secret(self, profile, value):
        """Rotate ``profile``'s client secret: the old one is invalid_client."""
        self._control("secret", {"profile": profile, "client_secret": value})

    def stats(self):
        """Per profile: ``token`` calls by grant type, ``failed``,
        ``revocations``, ``userinfo``, ``introspections``, ``lifetime``,
        ``grants`` and ``live_refresh_tokens`` ({email: [token, ...]})."""
        return self._control("stats")

    # -- a person and a client ------------------------------------------------
    def endpoint(self, profile, name):
        """The URL of ``name`` (authorize, token, revoke, userinfo)."""
        app = self.info[profile]
        if profile == "google":
            paths = {
                "authorize": "/o/oauth2/v2/auth",
                "token": "/token",
                "revoke": "/revoke",
                "userinfo": "/oauth2/v2/userinfo",
            }
            return app["base_url"] + paths[name]
        tenant = app["tenant"]
        return f"{app['base_url']}/{tenant}/oauth2/v2.0/{name}"

    def authorize_url(self, profile, challenge, redirect_uri=None, **params):
        """The authorize URL the addon would send a person to."""
        query = {
            "response_type": "code",
            "client_id": self.info[profile]["client_id"],
            "redirect_uri": redirect_uri or self.REDIRECT_URI,
            "scope": OAUTH_SCOPES[profile],
            "state": secrets.token_urlsafe(16),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **params,
        }
        query = {k: v for k, v in query.items() if v is not None}
        return f"{self.endpoint(profile, 'authorize')}?{urllib.parse.urlencode(query)}"

    def consent(self, authorize_url, email, decision="allow"):
        """Open ``authorize_url`` as a person, sign in as ``email`` and press
        Allow (or Deny); the ``Location`` the server redirects to, not
        followed. An error redirect straight from the authorize URL is
        returned as it is; a refused account raises ``ValueError``."""
        status, headers, body = _http(authorize_url)
        if status in (301, 302, 303):
            return headers["Location"]
        page = body.decode()
        if status != 200 or 'method="post"' not in page:
            raise ValueError(f"no consent page ({status}): {page[:300]}")
        action = html.unescape(re.search(r'action="([^"]*)"', page).group(1))
        form = {"email": email, "decision": decision}
        status, headers, body = _http(urllib.parse.urljoin(authorize_url, action), form)
        if status not in (301, 302, 303):
            error = re.search(r'class="error">([^<]*)<', body.decode())
            raise ValueError(html.unescape(error.group(1)) if error else body[:300])
        return headers["Location"]

    def token_request(self, profile, basic=False, secret=None, **form):
        """POST ``form`` to the token endpoint with the client's credentials
        (in the body, or HTTP basic; ``secret`` instead of the registered
        one); the JSON reply, or ``OAuthError``."""
        client_id = self.info[profile]["client_id"]
        secret = secret or self.info[profile]["client_secret"]
        headers = {}
        if basic:
            pair = f"{client_id}:{secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        else:
            form = {"client_id": client_id, "client_secret": secret, **form}
        status, _headers, body = _http(self.endpoint(profile, "token"), form, headers)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = body.decode(errors="replace")
        if status != 200:
            raise OAuthError(status, payload)
        return payload

    def grant(self, profile, email, scope=None, redirect_uri=None, **params):
        """Tokens for ``email``, fetched as the addon would (authorization
        code with PKCE; the redirect is never followed)."""
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        redirect_uri = redirect_uri or self.REDIRECT_URI
        url = self.authorize_url(
            profile,
            challenge,
            redirect_uri,
            scope=scope or OAUTH_SCOPES[profile],
            **params,
        )
        location = self.consent(url, email)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        if "code" not in query:
            raise OAuthError(302, query)
        return self.token_request(
            profile,
            grant_type="authorization_code",
            code=query["code"],
            redirect_uri=redirect_uri,
            code_verifier=verifier,
        )

    def refresh(self, profile, refresh_token, secret=None):
        return self.token_request(
            profile,
            secret=secret,
            grant_type="refresh_token",
            refresh_token=refresh_token,
        )

    def introspect(self, token):
        """What Dovecot and the SMTP server learn about ``token`` (RFC 7662)."""
        _status, _headers, body = _http(
            self.info["introspection_url"], {"token": token}
        )
        return json.loads(body)


def id_token_claims(id_token):
    """The claims of a JWT, unverified."""
    payload = id_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def message(sender, to, subject, body, answers=(), attachment=None, msgid=None):
    """A mail as a mail client writes it, answering ``answers`` (the thread's
    Message-IDs, oldest first: In-Reply-To, References) when given, with
    ``attachment`` (name, PDF bytes) when given."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    domain = sender.rsplit("@", 1)[-1].rstrip(">")
    msg["Message-ID"] = msgid or email.utils.make_msgid(domain=domain)
    if answers:
        msg["In-Reply-To"] = answers[-1]
        msg["References"] = " ".join(answers)
    msg.set_content(body)
    if attachment:
        msg.add_attachment(
            attachment[1], maintype="application", subtype="pdf", filename=attachment[0]
        )
    return msg
