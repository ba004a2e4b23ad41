from odoo import models, tools


class MailMail(models.Model):
    _inherit = "mail.mail"  # pylint: disable=consider-merging-classes-inherited

    def _ally_smtp_reply_to(self, emails, mail_server, batch):
        """With replies coming home, a mail leaving from a personal mailbox is
        answered to that mailbox, not to the catchall nor anyone else: the
        student's Reply reaches the consultant, and the replies cron brings
        it into the record. Decided once per batch (``batch.reply_to``): the
        queue commits after each mail, and records are read again after it."""
        if batch.reply_to is None:
            owner = mail_server.ally_smtp_owner_id
            batch.reply_to = owner.company_id.ally_smtp_fetch_replies and (
                tools.formataddr((owner.name or "", mail_server.from_filter))
            )
        if batch.reply_to:
            for email in emails:
                email["reply_to"] = batch.reply_to
