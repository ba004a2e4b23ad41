from odoo import fields, models


class ResUsers(models.Model):
    _inherit = "res.users"  # pylint: disable=consider-merging-classes-inherited

    ally_smtp_fetch_replies = fields.Boolean(
        related="company_id.ally_smtp_fetch_replies"
    )
    ally_smtp_replies_checked_at = fields.Datetime(
        related="ally_smtp_mailbox_id.replies_checked_at", related_sudo=False
    )
    ally_smtp_replies_error = fields.Text(
        related="ally_smtp_mailbox_id.replies_error", related_sudo=False
    )

    @property
    def SELF_READABLE_FIELDS(self):
        return [
            *super().SELF_READABLE_FIELDS,
            "ally_smtp_fetch_replies",
            "ally_smtp_replies_checked_at",
            "ally_smtp_replies_error",
        ]
