"""A local OAuth 2.0 authorization server, Google-like and Microsoft-like.

Run as ``python -m harness.oauth_server CONFIG.json`` on its own environment
(``requirements-oauth.txt``: authlib needs a newer ``cryptography`` than Odoo
pins). It prints ``ready`` once it listens on ``127.0.0.1:<port>`` (plain
http) and keeps everything in memory. Built on authlib: the authorization-code
grant with PKCE (S256 required), the refresh_token grant, revocation (RFC 7009)
and introspection (RFC 7662).

Google-like, below ``/google``::

    GET|POST /o/oauth2/v2/auth     consent page (form: email, Allow / Deny)
    POST     /token                code and refresh grants; refresh tokens are
                                   not rotated
    POST     /revoke               token=... revokes the whole grant
    GET      /oauth2/v2/userinfo   Bearer token -> {"email", "verified_email", "id"}

Microsoft-like, below ``/microsoft``::

    GET|POST /{tenant}/oauth2/v2.0/authorize
    POST     /{tenant}/oauth2/v2.0/token   every refresh rotates the refresh token
                                           (the old one is refused at once);
                                           tenant ``common`` is refused (AADSTS50194)

Shared: ``POST /introspect`` (token=...; HTTP basic auth optional, none needed
from loopback) -> ``{"active": true, "email", "username", "scope", "exp",
"client_id"}`` or ``{"active": false}``: what Dovecot and the SMTP server ask.

Control (JSON, for tests; see ``ally_smtp/tests/servers.py``)::

    POST /control/reset                   forget grants, faults, counters,
                                          rotated secrets and lifetimes
    POST /control/revoke   {"email"}      revoke every grant of the account
    POST /control/expire   {"email"}      expire its current access tokens
    POST /control/lifetime {"profile", "seconds"}   access token lifetime
    POST /control/fail     {"profile", "count", "status", "error", "hang"}
                           the next ``count`` token calls fail that way
    POST /control/down     {"seconds"}    token, userinfo and revoke requests
                           are held unanswered (the connection is accepted)
                           until /control/up or the end of the period, then
                           answered 503 without being processed
    POST /control/up
    POST /control/secret   {"profile", "client_secret"}   rotate the secret
    GET  /control/stats    counters and the live refresh tokens per account

The log (stderr) never holds a token, a code or a secret.
"""

import base64
import hashlib
import hmac
import html
import json
import logging
import os
import re
import secrets
import sys
import threading
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidRequestError,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

_logger = logging.getLogger("harness.oauth")

GOOGLE, MICROSOFT = "google", "microsoft"
SCOPES = {
    GOOGLE: ["https://mail.google.com/", "openid", "email"],
    MICROSOFT: [
        "https://outlook.office.com/SMTP.Send",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "offline_access",
        "openid",
        "email",
    ],
}
DEFAULT_LIFETIME = 3600
CODE_LIFETIME = 60
CLIENT_AUTH = ["client_secret_basic", "client_secret_post"]
REDIRECT_URI = re.compile(
    r"^http://(127\.0\.0\.1|localhost)(:\d+)?(/.*)?/ally_smtp/oauth/callback$"
)
AADSTS50194 = (
    "AADSTS50194: Application is not configured as a multi-tenant application. "
    "Usage of the /common endpoint is not supported for such applications. "
    "Use a tenant-specific endpoint or configure the application to be "
    "multi-tenant."
)


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims, key):
    """An HS256 JSON Web Token."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def _subject(profile, email):
    """A stable account id: digits for Google, an opaque string for Microsoft."""
    digest = hashlib.sha256(f"{profile}:{email}".encode()).digest()
    if profile == GOOGLE:
        return str(int.from_bytes(digest[:9], "big")).zfill(21)
    return _b64(digest[:24])


# -- what the store holds (authlib's model interfaces) -------------------------
class Client(ClientMixin):
    """The one registered application of a profile (a confidential client)."""

    def __init__(self, profile, client_id, client_secret, tenant=None):
        self.profile, self.client_id, self.tenant = profile, client_id, tenant
        self.client_secret = client_secret

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return " ".join(s for s in (scope or "").split() if s in SCOPES[self.profile])

    def check_redirect_uri(self, redirect_uri):
        return bool(REDIRECT_URI.match(redirect_uri))

    def check_client_secret(self, client_secret):
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        return method in CLIENT_AUTH

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


class Code(AuthorizationCodeMixin):
    def __init__(self, profile, code, client_id, redirect_uri, scope, email, data):
        self.profile, self.code, self.client_id = profile, code, client_id
        self.redirect_uri, self.scope, self.email = redirect_uri, scope, email
        self.code_challenge = data.get("code_challenge")
        self.code_challenge_method = data.get("code_challenge_method")
        self.nonce = data.get("nonce")
        self.issued = time.monotonic()

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


class Grant(TokenMixin):
    """One consent of an account: its (current) refresh token and scope."""

    def __init__(self, profile, client_id, email, scope, refresh_token):
        self.profile, self.client_id, self.email = profile, client_id, email
        self.scope, self.refresh_token, self.revoked = scope, refresh_token, False

    def check_client(self, client):  # None: an endpoint called without client auth
        return client is None or client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return 0

    def is_expired(self):
        return False

    def is_revoked(self):
        return self.revoked


class Access(TokenMixin):
    def __init__(self, grant, token, scope, expires_in):
        self.grant, self.token, self.scope = grant, token, scope
        self.expires_at = time.time() + expires_in

    def check_client(self, client):
        return self.grant.check_client(client)

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return max(0, int(self.expires_at - time.time()))

    def is_expired(self):
        return time.time() >= self.expires_at

    def is_revoked(self):
        return self.grant.revoked


class Store:
    """Everything the server knows; one lock around all of it."""

    def __init__(self, config):
        self.lock = threading.RLock()
        self.accounts = {a.lower() for a in config["accounts"]}
        self.registered = config["clients"]
        self.base_url = f"http://127.0.0.1:{config['port']}"
        self.key = secrets.token_bytes(32)  # signs the id_tokens
        self.up = threading.Event()
        self.reset()

    def reset(self):
        with self.lock:
            self.clients = {  # as registered: a rotated secret comes back
                profile: Client(profile, **values)
                for profile, values in self.registered.items()
            }
            self.codes, self.access, self.refresh, self.grants = {}, {}, {}, []
            self.lifetime = dict.fromkeys(SCOPES, DEFAULT_LIFETIME)
            self.faults = {profile: [] for profile in SCOPES}
            self.down_until = 0.0
            self.up.set()
            self.counters = {
                profile: {
                    "token": {},
                    "failed": 0,
                    "revocations": 0,
                    "userinfo": 0,
                    "introspections": 0,
                }
                for profile in SCOPES
            }
            self.introspections = 0

    def client(self, profile, client_id):
        client = self.clients[profile]
        return client if client.client_id == client_id else None

    def revoke(self, grant):
        grant.revoked = True
        self.refresh.pop(grant.refresh_token, None)

    def id_token(self, grant, nonce=None):
        now = int(time.time())
        client = self.clients[grant.profile]
        claims = {
            "aud": grant.client_id,
            "sub": _subject(grant.profile, grant.email),
            "email": grant.email,
            "iat": now,
            "exp": now + 3600,
        }
        if grant.profile == GOOGLE:
            claims.update(iss=f"{self.base_url}/google", email_verified=True)
        else:
            claims.update(
                iss=f"{self.base_url}/microsoft/{client.tenant}/v2.0",
                tid=client.tenant,
                preferred_username=grant.email,
            )
        if nonce:
            claims["nonce"] = nonce
        return _jwt(claims, self.key)

    def stats(self):
        with self.lock:
            result = {"introspections": self.introspections}
            for profile, counters in self.counters.items():
                live = {}
                for grant in self.grants:
                    if grant.profile == profile and not grant.revoked:
                        live.setdefault(grant.email, []).append(grant.refresh_token)
                result[profile] = {
                    **json.loads(json.dumps(counters)),
                    "lifetime": self.lifetime[profile],
                    "live_refresh_tokens": live,
                    "grants": [
                        {"email": g.email, "scope": g.scope, "active": not g.revoked}
                        for g in self.grants
                        if g.profile == profile
                    ],
                }
            return result


# -- authlib: grants, PKCE, endpoints ------------------------------------------
class S256Required(CodeChallenge):
    """PKCE is mandatory, and only with S256."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ("S256",)

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge' (PKCE is required)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH

    def validate_authorization_request(self):
        redirect_uri = super().validate_authorization_request()
        if (request.view_args or {}).get("tenant") == "common":
            raise InvalidRequestError(AADSTS50194, redirect_uri=redirect_uri)
        return redirect_uri

    def save_authorization_code(self, code, oauth_request):
        self.server.store.codes[code] = Code(
            self.server.profile,
            code,
            oauth_request.client.client_id,
            oauth_request.payload.redirect_uri,
            oauth_request.scope,
            oauth_request.user,
            oauth_request.payload.data,
        )

    def query_authorization_code(self, code, client):
        item = self.server.store.codes.get(code)
        if (
            item
            and item.profile == self.server.profile
            and item.client_id == client.client_id
            and time.monotonic() - item.issued < CODE_LIFETIME
        ):
            return item
        return None

    def delete_authorization_code(self, authorization_code):
        self.server.store.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return authorization_code.email


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH

    def authenticate_refresh_token(self, refresh_token):
        grant = self.server.store.refresh.get(refresh_token)
        if grant and grant.profile == self.server.profile and not grant.revoked:
            return grant
        return None

    def authenticate_user(self, refresh_token):
        return refresh_token.email

    def revoke_old_credential(self, refresh_token):
        pass  # a rotation replaces the grant's refresh token in save_token


class RotatingRefreshGrant(RefreshGrant):
    INCLUDE_NEW_REFRESH_TOKEN = True


class OptionalClientAuth:
    """Client authentication only when the caller offers it: Google's revoke
    takes the token alone, and Dovecot and the SMTP server introspect without
    it (the server listens on loopback only)."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH

    def authenticate_endpoint_client(self, oauth_request):
        if oauth_request.form.get("client_id") or "Authorization" in request.headers:
            return super().authenticate_endpoint_client(oauth_request)
        oauth_request.client = None
        return None


def _find(store, token, profile=None):
    item = store.access.get(token) or store.refresh.get(token)
    grant = getattr(item, "grant", item)
    if item is None or (profile and grant.profile != profile):
        return None
    return item


class Revocation(OptionalClientAuth, RevocationEndpoint):
    def query_token(self, token_string, token_type_hint):
        return _find(self.server.store, token_string, self.server.profile)

    def revoke_token(self, token, oauth_request):
        grant = getattr(token, "grant", token)  # the whole grant goes
        self.server.store.revoke(grant)
        _logger.info("%s: %s revoked a grant", grant.profile, grant.email)


class Introspection(OptionalClientAuth, IntrospectionEndpoint):
    def query_token(self, token_string, token_type_hint):
        token = _find(self.server.store, token_string)
        if token is not None:  # live or not: counted for its profile
            grant = getattr(token, "grant", token)
            self.server.store.counters[grant.profile]["introspections"] += 1
        return token

    def check_permission(self, token, client, oauth_request):
        return True

    def introspect_token(self, token):
        grant = getattr(token, "grant", token)
        payload = {
            "active": True,
            "email": grant.email,
            "username": grant.email,
            "sub": _subject(grant.profile, grant.email),
            "scope": token.get_scope(),
            "client_id": grant.client_id,
            "token_type": "Bearer",
        }
        if isinstance(token, Access):
            payload["exp"] = int(token.expires_at)
        return payload


def _authorization_server(app, store, profile):
    client = store.clients[profile]

    def query_client(client_id):
        return store.client(profile, client_id)

    def generate(grant_type, client, user=None, scope=None, **kwargs):
        include_refresh = kwargs.get("include_refresh_token", True)
        size = 1500 if profile == MICROSOFT else 120  # Microsoft's are ~2 kB JWTs
        token = {
            "access_token": ("ya29." if profile == GOOGLE else "EwB")
            + secrets.token_urlsafe(size),
            "token_type": "Bearer",
            "expires_in": store.lifetime[profile],
            "scope": scope or "",
        }
        if include_refresh:
            token["refresh_token"] = secrets.token_urlsafe(48)
        return token

    def save_token(token, oauth_request):
        grant = oauth_request.refresh_token
        if grant is None:  # a code exchange: a new grant
            grant = Grant(
                profile,
                oauth_request.client.client_id,
                oauth_request.user,
                token["scope"],
                token["refresh_token"],
            )
            store.grants.append(grant)
            store.refresh[grant.refresh_token] = grant
        elif "refresh_token" in token:  # rotation: the old one is dead now
            store.refresh.pop(grant.refresh_token, None)
            grant.refresh_token = token["refresh_token"]
            store.refresh[grant.refresh_token] = grant
        access = Access(
            grant, token["access_token"], token["scope"], token["expires_in"]
        )
        store.access[access.token] = access
        if "openid" in token["scope"].split():
            code = oauth_request.authorization_code
            token["id_token"] = store.id_token(grant, code and code.nonce)

    server = AuthorizationServer(app, query_client, save_token)
    server.profile, server.store = profile, store
    server.register_token_generator("default", generate)
    server.scopes_supported = SCOPES[profile]
    server.register_grant(CodeGrant, [S256Required(required=True)])
    server.register_grant(
        RotatingRefreshGrant if profile == MICROSOFT else RefreshGrant
    )
    if profile == GOOGLE:
        server.register_endpoint(Revocation)
    _logger.info("%s: client %s registered", profile, client.client_id)
    return server


# -- the web application -------------------------------------------------------
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in - {title}</title></head>
<body><h1>{title} (local test server)</h1>
<p>An application asks for: {scope}</p>{error}
<form method="post" action="{action}">
<label>Email <input type="text" name="email" value="{email}"></label>
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form></body></html>
"""


def _json_error(status, error, description=""):
    body = {"error": error}
    if description:
        body["error_description"] = description
    return jsonify(body), status


class Web:
    """The routes: authlib's servers, what it leaves to us, the control API."""

    def __init__(self, app, store):
        self.app, self.store = app, store
        self.servers = {p: _authorization_server(app, store, p) for p in SCOPES}
        self.introspector = AuthorizationServer(app, self.any_client, None)
        self.introspector.store = store
        self.introspector.register_endpoint(Introspection)
        routes = [
            ("/google/o/oauth2/v2/auth", self.google_authorize, ["GET", "POST"]),
            ("/google/token", self.google_token, ["POST"]),
            ("/google/revoke", self.google_revoke, ["POST"]),
            ("/google/oauth2/v2/userinfo", self.google_userinfo, ["GET"]),
            (
                "/microsoft/<tenant>/oauth2/v2.0/authorize",
                self.microsoft_authorize,
                ["GET", "POST"],
            ),
            ("/microsoft/<tenant>/oauth2/v2.0/token", self.microsoft_token, ["POST"]),
            ("/introspect", self.introspect, ["POST"]),
            ("/control/stats", self.stats, ["GET"]),
            ("/control/<action>", self.control, ["POST"]),
        ]
        for rule, view, methods in routes:
            app.add_url_rule(rule, view.__name__, view, methods=methods)
        app.after_request(self.log_request)

    def any_client(self, client_id):
        clients = self.store.clients.values()
        return next((c for c in clients if c.client_id == client_id), None)

    @staticmethod
    def log_request(response):  # the path only: a query may carry a code
        _logger.info("%s %s -> %s", request.method, request.path, response.status_code)
        return response

    def hold_while_down(self):
        """While down, hold the request; then 503, never processed."""
        store = self.store
        if time.time() >= store.down_until:
            return None
        while time.time() < store.down_until and not store.up.is_set():
            store.up.wait(max(0.0, store.down_until - time.time()))
        return Response("Service Unavailable", 503, mimetype="text/plain")

    @staticmethod
    def consent_page(profile, email, error=""):
        page = PAGE.format(
            title="Google" if profile == GOOGLE else "Microsoft",
            scope=html.escape(request.args.get("scope", "")),
            error=f'<p class="error">{html.escape(error)}</p>' if error else "",
            action=html.escape(request.full_path),
            email=html.escape(email or ""),
        )
        return Response(page, 200, mimetype="text/html")

    # -- authorization and token endpoints --------------------------------------
    def google_authorize(self):
        return self.authorize(GOOGLE)

    def microsoft_authorize(self, tenant):  # "common": refused by CodeGrant
        return self.authorize(MICROSOFT)

    def authorize(self, profile):
        server = self.servers[profile]
        with self.store.lock:
            try:
                grant = server.get_consent_grant(end_user=None)
            except OAuth2Error as error:
                return server.handle_error_response(None, error)
            if request.method == "GET":
                return self.consent_page(profile, request.args.get("login_hint"))
            if request.form.get("decision") == "deny":
                return server.create_authorization_response(grant=grant)
            email = request.form.get("email", "").strip().lower()
            if email not in self.store.accounts:
                return self.consent_page(profile, email, f"No account {email} here.")
            _logger.info("%s: %s consented", profile, email)
            return server.create_authorization_response(grant=grant, grant_user=email)

    def google_token(self):
        return self.token(GOOGLE)

    def microsoft_token(self, tenant):
        return self.token(MICROSOFT, tenant)

    def token(self, profile, tenant=None):
        store = self.store
        grant_type = request.form.get("grant_type", "")
        counters = store.counters[profile]
        with store.lock:
            calls = counters["token"]
            calls[grant_type] = calls.get(grant_type, 0) + 1
        response = self.hold_while_down()
        if response is None:
            with store.lock:
                faults = store.faults[profile]
                fault = faults.pop(0) if faults else None
            response = self.injected(fault) if fault else None
        if response is None and tenant == "common":
            response = _json_error(400, "invalid_request", AADSTS50194)
        if response is None:
            with store.lock:
                response = self.servers[profile].create_token_response()
        response = self.app.make_response(response)
        if response.status_code != 200:
            with store.lock:
                counters["failed"] += 1
        _logger.info("%s: %s grant -> %s", profile, grant_type, response.status_code)
        return response

    @staticmethod
    def injected(fault):
        """The reply a /control/fail asked for."""
        time.sleep(fault.get("hang") or 0)
        if fault.get("error"):
            status = fault.get("status") or 400
            return _json_error(status, fault["error"], "Injected by the test.")
        status = fault.get("status") or 503
        return Response("Service Unavailable", status, mimetype="text/plain")

    # -- Google's revocation and userinfo, the shared introspection -------------
    def google_revoke(self):
        with self.store.lock:
            self.store.counters[GOOGLE]["revocations"] += 1
        held = self.hold_while_down()
        if held is not None:
            return held
        with self.store.lock:
            return self.servers[GOOGLE].create_endpoint_response("revocation")

    def google_userinfo(self):
        store = self.store
        with store.lock:
            store.counters[GOOGLE]["userinfo"] += 1
        held = self.hold_while_down()
        if held is not None:
            return held
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        with store.lock:
            access = store.access.get(bearer)
            if (
                access is None
                or access.grant.profile != GOOGLE
                or access.is_expired()
                or access.is_revoked()
            ):
                body = {"code": 401, "status": "UNAUTHENTICATED"}
                body["message"] = "Request had invalid authentication credentials."
                return jsonify({"error": body}), 401
            email = access.grant.email
        return jsonify(
            {"id": _subject(GOOGLE, email), "email": email, "verified_email": True}
        )

    def introspect(self):
        with self.store.lock:
            self.store.introspections += 1
            return self.introspector.create_endpoint_response("introspection")

    # -- control ----------------------------------------------------------------
    def stats(self):
        return jsonify(self.store.stats())

    def control(self, action):
        store = self.store
        payload = request.get_json(silent=True) or {}
        profile = payload.get("profile")
        if profile is not None and profile not in SCOPES:
            return _json_error(400, "unknown_profile", str(profile))
        with store.lock:
            if action == "reset":
                store.reset()
            elif action in ("revoke", "expire"):
                email = payload["email"].lower()
                for grant in store.grants:
                    if grant.email == email and action == "revoke":
                        store.revoke(grant)
                for access in store.access.values():
                    if access.grant.email == email and action == "expire":
                        access.expires_at = time.time() - 1
            elif action == "lifetime":
                store.lifetime[profile] = max(1, int(payload["seconds"]))
            elif action == "fail":
                fault = {k: payload.get(k) for k in ("status", "error", "hang")}
                store.faults[profile].extend([fault] * int(payload.get("count", 1)))
            elif action == "down":
                store.down_until = time.time() + float(payload.get("seconds", 3600))
                store.up.clear()
            elif action == "up":
                store.down_until = 0.0
                store.up.set()
            elif action == "secret":
                store.clients[profile].client_secret = payload["client_secret"]
            else:
                return _json_error(404, "unknown_action", action)
        _logger.info("control: %s %s", action, profile or payload.get("email", ""))
        return jsonify({"ok": True})


def create_app(config):
    app = Flask(__name__)
    Web(app, Store(config))
    return app


def main():
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # logs query strings
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain http, on loopback only
    with open(sys.argv[1]) as f:
        config = json.load(f)
    server = make_server("127.0.0.1", config["port"], create_app(config), threaded=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
