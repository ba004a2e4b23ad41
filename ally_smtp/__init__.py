from . import controllers
from . import models


def uninstall_hook(env):
    """Remove the personal mail servers: without the addon, Odoo would choose one
    for mail from its owner's address (``from_filter``) and could not log in."""
    Server = env["ir.mail_server"].with_context(active_test=False)
    Server.search([("ally_smtp_owner_id", "!=", False)]).unlink()
