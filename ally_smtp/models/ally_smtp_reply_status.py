from odoo import fields, models


class AllySmtpReplyStatus(models.Model):
    """The last look for replies in a mailbox: when, and why it failed.

    A row of its own, written by the replies cron only: never the mailbox's
    row, which its owner's Test and Connect write (a cron writing it at the
    same moment would make their transaction fail).
    """

    _name = "ally.smtp.reply.status"
    _description = "Replies: the last check of a mailbox"
    _rec_name = "mailbox_id"
    _order = "checked_at desc, id desc"

    mailbox_id = fields.Many2one(
        "ally.smtp.mailbox", required=True, ondelete="cascade", readonly=True
    )
    user_id = fields.Many2one(related="mailbox_id.user_id")
    address = fields.Char(related="mailbox_id.address")
    checked_at = fields.Datetime("Last checked", readonly=True)
    error = fields.Text("Why the last check failed", readonly=True)
    error_kind = fields.Char(readonly=True)
    failures = fields.Integer(readonly=True)
    imported = fields.Integer("Replies brought in", readonly=True)

    _sql_constraints = [  # noqa: RUF012 - Odoo's declaration style
        ("mailbox_uniq", "UNIQUE(mailbox_id)", "One status per mailbox.")
    ]
