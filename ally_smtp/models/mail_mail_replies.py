from odoo import models, tools


class MailMail(models.Model):
    _inherit = "mail.mail"  # pylint: disable=consider-merging-classes-inherited

    def _ally_smtp_reply_to(self, emails, mail_server):
        """With replies coming home, a mail leaving from a personal mailbox is
        answered to that mailbox, not to the catchall nor anyone else: the
        student's Reply reaches the consultant, and the replies cron brings
        it into the record."""
        owner = mail_server.ally_smtp_owner_id
        if not owner.company_id.ally_smtp_fetch_replies:
            return
        reply_to = tools.formataddr((owner.name or "", mail_server.from_filter))
        for email in emails:
            email["reply_to"] = reply_to
