import json
import logging

from odoo import models

_logger = logging.getLogger(__name__)


class MailScheduledMessage(models.Model):
    _inherit = "mail.scheduled.message"

    def _post_message(self, *args, **kwargs):
        """Post without a personal mailbox named in the parameters.

        Odoo posts a scheduled message as its creator, who may not name a
        personal mailbox on a message: the post, and with it the rest of the
        scheduled-post cron run, would fail. Routing sends the creator's own
        mail from their own mailbox anyway, as it does for ``mail.mail``.
        """
        servers = (
            self.env["ir.mail_server"]
            .sudo()
            .with_context(active_test=False)
            .search([("ally_smtp_owner_id", "!=", False)])
        )
        owners = {server.id: server.ally_smtp_owner_id for server in servers}
        for scheduled in self.sudo():
            parameters = json.loads(scheduled.notification_parameters or "{}")
            server_id = parameters.get("mail_server_id")
            owner = isinstance(server_id, int) and owners.get(server_id)
            if owner:
                _logger.warning(
                    "ally_smtp: scheduled message %s named the personal mailbox of "
                    "user %s; posted without it",
                    scheduled.id,
                    owner.id,
                )
                del parameters["mail_server_id"]
                scheduled.notification_parameters = json.dumps(parameters)
        return super()._post_message(*args, **kwargs)
