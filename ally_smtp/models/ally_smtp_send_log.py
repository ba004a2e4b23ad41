from odoo import api, fields, models

from ..lib import pacing


class AllySmtpSendLog(models.Model):
    """What a personal mailbox was given to send, one row per queue batch.

    Rows are only inserted, never updated, by the send path: pacing reads the
    last day of them to keep each mailbox within its provider's limits.
    """

    _name = "ally.smtp.send.log"
    _description = "Mail sent through a personal mailbox"
    _order = "sent_at, id"
    _log_access = False

    user_id = fields.Many2one(
        "res.users", required=True, ondelete="cascade", index=True
    )
    sent_at = fields.Datetime(required=True, index=True)
    messages = fields.Integer(required=True)
    recipients = fields.Integer(required=True)

    @api.model
    def _ally_smtp_history(self, user, now):
        """``[(sent_at, messages, recipients)]`` of ``user``'s last day."""
        rows = self.sudo().search_fetch(
            [("user_id", "=", user.id), ("sent_at", ">", now - pacing.DAY)],
            ["sent_at", "messages", "recipients"],
        )
        return [(row.sent_at, row.messages, row.recipients) for row in rows]

    @api.autovacuum
    def _gc_old_rows(self):
        limit = fields.Datetime.now() - 2 * pacing.DAY
        self.sudo().search([("sent_at", "<", limit)]).unlink()
