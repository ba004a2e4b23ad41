"""Client actions the buttons return, and who may press them."""

from odoo.exceptions import AccessError


def check_settings_admin(env):
    """Buttons that act for the whole agency are a settings administrator's."""
    if not env.user.has_group("base.group_system"):
        raise AccessError(env._("Only a settings administrator can do this."))


def notify(message, title=None, reload=False):
    """A success toast; ``reload`` refreshes the form so new values show."""
    params = {"type": "success", "message": message}
    if title:
        params["title"] = title
    if reload:
        params["next"] = {"type": "ir.actions.client", "tag": "soft_reload"}
    return {
        "type": "ir.actions.client",
        "tag": "display_notification",
        "params": params,
    }
