from odoo import fields, models


class AllySmtpReplyMark(models.Model):
    """How far the replies of one folder of a mailbox were looked at: the
    folder's UIDVALIDITY and the last UID seen, so that each message is
    looked at once. Written by the replies cron only, in the transaction
    that imports the message it passes."""

    _name = "ally.smtp.reply.mark"
    _description = "Replies: how far a mailbox folder was read"
    _rec_name = "folder"

    mailbox_id = fields.Many2one(
        "ally.smtp.mailbox", required=True, ondelete="cascade", readonly=True
    )
    folder = fields.Char(required=True, readonly=True)
    # 32-bit unsigned numbers (RFC 3501), beyond an int4 column: kept as text
    uidvalidity = fields.Char(readonly=True)
    last_uid = fields.Char(readonly=True)
    # the next message, which Odoo's mail gateway refused: tried again by
    # the next runs, passed over after IMPORT_TRIES refusals
    stuck_uid = fields.Char(readonly=True)
    stuck_tries = fields.Integer(readonly=True)

    _sql_constraints = [  # noqa: RUF012 - Odoo's declaration style
        (
            "mailbox_folder_uniq",
            "UNIQUE(mailbox_id, folder)",
            "One mark per mailbox folder.",
        )
    ]
