from odoo import fields, models


class ResCompany(models.Model):
    _inherit = "res.company"  # pylint: disable=consider-merging-classes-inherited

    # on for a new integration; an upgrade keeps it off (18.0.1.5.0
    # post-30-replies): reading a consultant's mailbox is the agency's choice
    ally_smtp_fetch_replies = fields.Boolean(
        "Bring replies into Odoo",
        default=True,
        help="Replies to mail sent from a personal mailbox go to that mailbox, "
        "and Odoo brings them into the record they answer: only replies, read "
        "without marking them read. Off: replies follow Odoo's usual Reply-To "
        "(the catchall alias, when the agency has one).",
    )
