from odoo import models

# context key: the message comes from its author's own Sent folder. Its value
# is this module's own object, which no RPC call can send (a context over RPC
# is JSON): a user who sets the key on a post does not silence its mail.
FROM_SENT = "ally_smtp_from_sent"
SENT_FOLDER = object()


class MailThread(models.AbstractModel):
    _inherit = "mail.thread"

    def _notify_thread_by_email(self, message, recipients_data, *args, **kwargs):
        """A consultant's answer brought in from their Sent folder went out
        from their own mail client already: it is posted on the record, and
        nobody gets it by email a second time."""
        if self.env.context.get(FROM_SENT) is SENT_FOLDER:
            return True
        return super()._notify_thread_by_email(
            message, recipients_data, *args, **kwargs
        )
