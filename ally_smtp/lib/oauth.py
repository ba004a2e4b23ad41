"""OAuth 2.0 with Google and Microsoft: endpoints, PKCE, token requests, XOAUTH2.

Standard library and ``requests`` (an Odoo dependency) only. Each provider's
endpoints hang below one base URL, which the system parameters
``ally_smtp.oauth_google_base_url`` and ``ally_smtp.oauth_microsoft_base_url``
may move (to a local authorization server in tests and in the demo).
"""

import base64
import hashlib
import ipaddress
import json
import secrets
import time
from urllib.parse import urlencode, urlsplit

import requests

from .errors import MailboxError

GOOGLE, MICROSOFT = "google", "microsoft"
BASE_URLS = {
    GOOGLE: "https://accounts.google.com",
    MICROSOFT: "https://login.microsoftonline.com",
}
# Google's endpoints live on three hosts; below a moved base URL they keep
# their paths (see the README)
GOOGLE_HOSTS = {
    "/o/oauth2/v2/auth": "https://accounts.google.com",
    "/token": "https://oauth2.googleapis.com",
    "/revoke": "https://oauth2.googleapis.com",
    "/oauth2/v2/userinfo": "https://www.googleapis.com",
}
SCOPES = {
    GOOGLE: "https://mail.google.com/ openid email",
    MICROSOFT: "https://outlook.office.com/SMTP.Send "
    "https://outlook.office.com/IMAP.AccessAsUser.All offline_access openid email",
}
CALLBACK = "/ally_smtp/oauth/callback"
# token endpoint errors (RFC 6749 5.2, Microsoft's AADSTS codes map to these):
# the agency's app is refused (an admin fixes it); the user's grant is gone
# (they reconnect); anything else is retried later
CLIENT_REFUSED = ("invalid_client", "unauthorized_client")
GRANT_GONE = (
    "invalid_grant",
    "interaction_required",
    "consent_required",
    "invalid_scope",
)
TIMEOUT = 20
# an access token with less left than this is refreshed before use
REFRESH_MARGIN = 300


class OAuthError(Exception):
    """The token endpoint answered with an OAuth error (RFC 6749 5.2)."""

    def __init__(self, error, description="", status=0):
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


class Problem(MailboxError):
    """No usable token now; ``kind`` (a ``lib.errors`` kind) says what follows
    and ``message`` tells the user what to do. ``error`` is the token
    endpoint's OAuth error, if it answered one."""

    def __init__(self, kind, message, error=""):
        super().__init__(kind, message)
        self.error = error


class Unreachable(Exception):
    """The provider did not answer, or answered 5xx: try again later."""


def param(provider):
    """The system parameter that moves ``provider``'s endpoints (README)."""
    return f"ally_smtp.oauth_{provider}_base_url"


def base_url(env, provider):
    moved = env["ir.config_parameter"].sudo().get_param(param(provider))
    return (moved or "").rstrip("/") or None


def endpoint(env, provider, path, tenant=None):
    """The URL of ``path`` (a Google path, or Microsoft's after the tenant)."""
    base = base_url(env, provider)
    if provider == MICROSOFT:
        url = f"{base or BASE_URLS[MICROSOFT]}/{tenant or 'organizations'}{path}"
    else:
        url = (base or GOOGLE_HOSTS[path]) + path
    check_url(url)
    return url


def paths(provider):
    if provider == GOOGLE:
        return {
            "authorize": "/o/oauth2/v2/auth",
            "token": "/token",
            "revoke": "/revoke",
            "userinfo": "/oauth2/v2/userinfo",
        }
    return {
        "authorize": "/oauth2/v2.0/authorize",
        "token": "/oauth2/v2.0/token",
    }


def check_url(url):
    """Provider endpoints are https; plain http only on a loopback address."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return url
    host = parts.hostname or ""
    if parts.scheme == "http" and (host == "localhost" or _is_loopback(host)):
        return url
    raise ValueError(f"OAuth endpoints must use https: {url}")


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, not an address
        return False


def pkce():
    """``(verifier, S256 challenge)`` (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_url(env, provider, tenant, client_id, redirect_uri, **values):
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": SCOPES[provider],
        "code_challenge_method": "S256",
        **values,
    }
    if provider == GOOGLE:
        # a refresh token, also when the account consented before
        query.update(access_type="offline", prompt="consent")
    else:
        query.update(prompt="select_account")
    url = endpoint(env, provider, paths(provider)["authorize"], tenant)
    return f"{url}?{urlencode(query)}"


def _post(url, data):
    try:
        reply = requests.post(url, data=data, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise Unreachable(type(exc).__name__) from None
    try:
        payload = reply.json()
    except ValueError:
        payload = {}
    if reply.status_code >= 500 or (reply.status_code >= 400 and not payload):
        raise Unreachable(f"HTTP {reply.status_code}")
    if reply.status_code >= 400 or "error" in payload:
        raise OAuthError(
            str(payload.get("error") or "invalid_request"),
            str(payload.get("error_description") or "")[:300],
            reply.status_code,
        )
    return payload


def token_request(env, provider, tenant, client_id, client_secret, **data):
    """POST to the token endpoint; the JSON reply, with ``expires_at`` added."""
    url = endpoint(env, provider, paths(provider)["token"], tenant)
    payload = _post(
        url, {"client_id": client_id, "client_secret": client_secret, **data}
    )
    if not payload.get("access_token"):
        raise OAuthError("invalid_response", "no access token")
    payload["expires_at"] = time.time() + int(payload.get("expires_in") or 3600)
    return payload


def revoke(env, provider, token):
    """Revoke a grant where the provider offers it (Google); best effort."""
    if provider != GOOGLE:
        return False
    try:
        _post(endpoint(env, GOOGLE, "/revoke"), {"token": token})
    except (Unreachable, OAuthError):
        return False
    return True


def signed_in_account(env, provider, tokens):
    """``(email, verified)`` of the account that signed in."""
    if provider == GOOGLE:
        url = endpoint(env, GOOGLE, "/oauth2/v2/userinfo")
        try:
            reply = requests.get(
                url,
                headers={"Authorization": f"Bearer {tokens['access_token']}"},
                timeout=TIMEOUT,
            )
        except requests.RequestException as exc:
            raise Unreachable(type(exc).__name__) from None
        if reply.status_code != 200:
            raise Unreachable(f"HTTP {reply.status_code}")
        info = reply.json()
        return (info.get("email") or "").strip().lower(), bool(
            info.get("verified_email")
        )
    claims = id_token_claims(tokens.get("id_token") or "")
    email = claims.get("email") or claims.get("preferred_username") or ""
    return email.strip().lower(), bool(email)


def id_token_claims(id_token):
    """The claims of an id_token received straight from the token endpoint.

    Its signature is not checked: it came over TLS from the provider's token
    endpoint itself, which OpenID Connect Core 3.1.3.7 accepts in its place.
    """
    try:
        payload = id_token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError):
        return {}


def xoauth2(login, access_token):
    """The SASL XOAUTH2 initial response (Google and Microsoft)."""
    return f"user={login}\x01auth=Bearer {access_token}\x01\x01"


class Xoauth2:
    """XOAUTH2 for ``smtplib.SMTP.auth`` and ``imaplib.IMAP4.authenticate``.

    The first call answers with the token. A refused token gets a ``334`` (or
    IMAP ``+``) challenge with a JSON error from Google, which must be
    answered with an empty line before the final refusal.
    """

    def __init__(self, login, access_token):
        self.response = xoauth2(login, access_token)
        self.calls = 0

    def __call__(self, challenge=None):
        self.calls += 1
        return self.response if self.calls == 1 else ""

    def imap(self, _challenge):
        return self().encode()
