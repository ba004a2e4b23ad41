import logging
from collections import defaultdict
from datetime import timedelta

from odoo import fields, models, tools

from ..lib import errors
from .ally_smtp_sent_copy_part import SENDING
from .ir_mail_server import FAILURES, AllySmtpDeliveryError, granted

_logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
CONTENT_FIELDS = {
    "author_id",
    "attachment_ids",
    "body",
    "body_html",
    "email_cc",
    "email_from",
    "email_to",
    "headers",
    "mail_server_id",
    "partner_ids",
    "recipient_ids",
    "references",
    "reply_to",
    "subject",
}
FIRST_DELAY = timedelta(minutes=5)


class _RetriesQuietly(logging.Filter):
    """Odoo logs every failed send as an ERROR with its traceback. A personal
    mailbox's temporary failure (4xx, dropped connection) is expected and the
    mail is retried, so it is logged at INFO without one; giving up is logged
    as a warning by ``_postprocess_sent_message``."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if (
            isinstance(exc, AllySmtpDeliveryError)
            and getattr(exc, "ally_smtp_kind", None) == errors.TEMPORARY
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("odoo.addons.mail.models.mail_mail").addFilter(_RetriesQuietly())


class MailMail(models.Model):
    _inherit = "mail.mail"

    ally_smtp_attempts = fields.Integer(
        "Delivery attempts", copy=False, readonly=True, default=0
    )

    # what is sent: once someone but the author changed it, it is not the
    # author's own mail any more and never leaves from the author's mailbox
    ally_smtp_foreign_edit = fields.Boolean(
        "Changed by someone else", copy=False, readonly=True
    )

    def write(self, vals):
        if CONTENT_FIELDS & vals.keys():
            self._ally_smtp_note_foreign_edit()
        return super().write(vals)

    def _ally_smtp_note_foreign_edit(self):
        if self.env.su:
            return
        foreign = self.sudo().filtered(lambda m: m.create_uid != self.env.user)
        if foreign:
            foreign.write({"ally_smtp_foreign_edit": True})

    def mark_outgoing(self):
        """A mail retried by hand gets its automatic attempts back."""
        self.ally_smtp_attempts = 0
        return super().mark_outgoing()

    def _split_by_mail_configuration(self):
        """Mail written by a user with their own mailbox goes through it.

        One batch (so one SMTP session) per user; the rest follows Odoo. The
        session of a personal server can only be opened inside ``granted()``.
        """
        personal = self._ally_smtp_personal_servers()
        others = self.filtered(lambda mail: mail.id not in personal)
        if others:
            yield from super(MailMail, others)._split_by_mail_configuration()
        by_server = defaultdict(list)
        for mail_id, server in personal.items():
            by_server[server].append(mail_id)
        size = int(
            self.env["ir.config_parameter"].sudo().get_param("mail.session.batch.size")
            or 1000
        )
        for server, mail_ids in by_server.items():
            user = server.ally_smtp_owner_id
            smtp_from = tools.formataddr((user.name, server.from_filter))
            for batch_ids in tools.split_every(size, mail_ids):
                with granted(server):
                    # no alias domain: the envelope must stay the user's mailbox
                    yield server.id, False, smtp_from, list(batch_ids)

    def _prepare_outgoing_list(self, mail_server=False, **kwargs):
        """A retried mail of a personal mailbox skips who it already reached.

        Odoo sends a mail as one SMTP transaction per recipient; a temporary
        failure partway keeps the whole mail queued. The transactions that
        went through left their recipients in ``ally.smtp.sent.copy.part``
        rows, committed with the queued mail: the retry leaves those out.
        """
        emails = super()._prepare_outgoing_list(mail_server=mail_server, **kwargs)
        if not (mail_server and mail_server.sudo().ally_smtp_owner_id):
            return emails
        self.env.cr.postcommit.data[SENDING] = self.id
        Part = self.env["ally.smtp.sent.copy.part"].sudo()
        reached = Part._ally_smtp_reached(self.id)
        if not reached:
            return emails
        left = [
            email
            for email in emails
            if not (
                email.get("email_to_normalized")
                and set(email["email_to_normalized"]) <= reached
            )
        ]
        _logger.info(
            "ally_smtp: mail %s retried without the %s recipients it reached",
            self.id,
            len(emails) - len(left),
        )
        if not left:  # nothing left to send: Odoo would call it a failure
            self.write({"state": "sent", "failure_reason": False})
        return left

    def _ally_smtp_personal_servers(self):
        """``{mail id: personal ir.mail_server}`` for the mails to reroute.

        A mailbox only sends its owner's own mail: the mail and its message
        were both created by the owner, who is also the author. A mail that
        names someone's personal server otherwise loses that server and
        follows Odoo's ordinary path.
        """
        Server = self.env["ir.mail_server"].sudo()
        servers = Server.search([("ally_smtp_owner_id", "!=", False)])
        if not servers:
            return {}
        by_user = {server.ally_smtp_owner_id: server for server in servers}
        result = {}
        for mail in self.sudo():
            user = mail.mail_message_id.create_uid
            server = by_user.get(user)
            own = (
                server
                and not mail.ally_smtp_foreign_edit
                and mail.create_uid == user
                and mail.author_id == user.partner_id
                and user.ally_smtp_use_own
                and not getattr(mail, "mailing_id", False)
            )
            named = mail.mail_server_id
            if named.ally_smtp_owner_id and not (own and named == server):
                _logger.warning(
                    "ally_smtp: mail %s named the personal mailbox of user %s; "
                    "sent through the agency's server instead",
                    mail.id,
                    named.ally_smtp_owner_id.id,
                )
                mail.mail_server_id = named = False
            if not own or (named and named != server):
                continue
            if user._ally_smtp_blocked() and user.company_id.ally_smtp_fallback:
                mail._ally_smtp_note_fallback(user)
                continue
            result[mail.id] = server
        return result

    def _ally_smtp_note_fallback(self, user):
        message = self.mail_message_id
        if not (message.model and message.res_id):
            return
        record = self.env[message.model].browse(message.res_id)
        if hasattr(record, "_message_log"):
            record._message_log(
                body=self.env._(
                    "Sent from the agency's mail server: the mailbox %(address)s of "
                    "%(name)s cannot be used now (%(reason)s).",
                    address=user.ally_smtp_email,
                    name=user.name,
                    reason=user._ally_smtp_blocked(),
                )
            )

    def _postprocess_sent_message(
        self, success_pids, failure_reason=False, failure_type=None
    ):
        """Temporary failures of a personal mailbox are retried later."""
        failures = self.env.cr.postcommit.data.get(FAILURES) or {}
        users = self.sudo().mail_message_id.create_uid
        kinds = {
            user.id: failures.pop(user.id) for user in users if user.id in failures
        }
        retry = tired = self.browse()
        if kinds and failure_type in ("mail_smtp", "unknown"):
            temporary = self.filtered(
                lambda mail: (
                    kinds.get(mail.sudo().mail_message_id.create_uid.id)
                    == errors.TEMPORARY
                )
            )
            retry = temporary.filtered(
                lambda mail: mail.ally_smtp_attempts + 1 < MAX_ATTEMPTS
            )
            tired = temporary - retry
        if retry:
            retry._ally_smtp_retry_later()
        for mail in tired:
            _logger.warning(
                "ally_smtp: mail %s not sent after %s attempts: %s",
                mail.id,
                mail.ally_smtp_attempts + 1,
                failure_reason,
            )
        return super(MailMail, self - retry)._postprocess_sent_message(
            success_pids, failure_reason=failure_reason, failure_type=failure_type
        )

    def _ally_smtp_retry_later(self):
        cron = self.env.ref("mail.ir_cron_mail_scheduler_action")
        for mail in self.sudo():
            when = fields.Datetime.now() + FIRST_DELAY * 2**mail.ally_smtp_attempts
            mail.write(
                {
                    "state": "outgoing",
                    "scheduled_date": when,
                    "ally_smtp_attempts": mail.ally_smtp_attempts + 1,
                }
            )
            cron._trigger(at=when)
        self.env["mail.notification"].sudo().search(
            [
                ("mail_mail_id", "in", self.ids),
                ("notification_status", "=", "exception"),
            ]
        ).write({"notification_status": "ready", "failure_type": False})
