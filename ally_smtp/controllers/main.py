import logging
import time

from odoo import http
from odoo.exceptions import AccessError, UserError
from odoo.http import request

from ..lib import oauth

_logger = logging.getLogger(__name__)
SESSION_KEY = "ally_smtp_oauth"


class AllySmtpOAuth(http.Controller):
    """Connect a user's own mailbox with their Google or Microsoft account.

    Both routes act for the signed-in user only. The ``state`` sent to the
    provider is unguessable, kept in this browser's Odoo session with the
    user it was made for and a PKCE verifier, and used once.
    """

    @http.route("/ally_smtp/oauth/start", type="http", auth="user", methods=["GET"])
    def start(self):
        user = request.env.user
        try:
            mailbox = user._ally_smtp_own_mailbox()
            if not mailbox.address:
                raise UserError(request.env._("Enter your SMTP email first."))
            url, pending = mailbox._oauth_authorize(_redirect_uri(user))
        except (UserError, AccessError, ValueError) as exc:
            return _result(False, str(exc.args[0]))
        states = {
            key: value
            for key, value in (request.session.get(SESSION_KEY) or {}).items()
            if value.get("expires", 0) > time.time()
        }
        states[pending["state"]] = pending
        request.session[SESSION_KEY] = states
        return request.redirect(url, local=False)

    @http.route(oauth.CALLBACK, type="http", auth="user", methods=["GET"])
    def callback(self, state=None, code=None, error=None, **_kwargs):
        user = request.env.user
        states = dict(request.session.get(SESSION_KEY) or {})
        pending = states.pop(state or "", None)
        request.session[SESSION_KEY] = states  # used once, whatever follows
        if (
            not pending
            or pending.get("uid") != user.id
            or pending.get("expires", 0) < time.time()
        ):
            _logger.info(
                "ally_smtp: refused an OAuth answer for user %s: unknown, used or "
                "expired state",
                user.id,
            )
            return _result(
                False,
                request.env._(
                    "This sign-in answer does not belong to a Connect you started "
                    "in this browser, or it was already used. Press Connect again "
                    "in My Profile."
                ),
            )
        if error or not code:
            return _result(
                False,
                request.env._(
                    "The sign-in was not completed (%(error)s). Press Connect again "
                    "in My Profile.",
                    error=error or "no code",
                ),
            )
        try:
            connected, message = user._ally_smtp_own_mailbox()._oauth_finish(
                pending, code, _redirect_uri(user)
            )
        except (UserError, AccessError) as exc:
            connected, message = False, str(exc.args[0])
        return _result(connected, message)


def _redirect_uri(user):
    return user.company_id.sudo().ally_smtp_oauth_redirect_uri


def _result(connected, message):
    return request.render(
        "ally_smtp.oauth_result",
        {"connected": connected, "message": message, "user_id": request.env.uid},
    )
