from odoo import models

# context key: the message comes from its author's own Sent folder
FROM_SENT = "ally_smtp_from_sent"


class MailThread(models.AbstractModel):
    _inherit = "mail.thread"

    def _notify_thread_by_email(self, message, recipients_data, *args, **kwargs):
        """A consultant's answer brought in from their Sent folder went out
        from their own mail client already: it is posted on the record, and
        nobody gets it by email a second time."""
        if self.env.context.get(FROM_SENT):
            return True
        return super()._notify_thread_by_email(
            message, recipients_data, *args, **kwargs
        )
