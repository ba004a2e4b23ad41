"""The send path of a personal mailbox, in order.

1. **Routing** (``_ally_smtp_personal_servers``): a mail leaves from its
   author's mailbox only when it is the author's own (created by them,
   never changed by someone else); its personal ``ir.mail_server`` (one per
   ``ally.smtp.mailbox`` in use) replaces any server it named.
2. **Pacing** (``_ally_smtp_pace``, ``lib/pacing.py``, ``ally.smtp.send.log``):
   what the mailbox's limits and pause let go now; the rest waits, queued.
3. **Grant** (``ir_mail_server.granted``): ``_split_by_mail_configuration``
   yields each batch inside a block that lets ``connect()`` sign in once
   for it. The block's ``_Batch`` (``ir_mail_server.py``) is the one channel
   between the later steps: ``sending_batch_of(server)`` finds it.
4. **Login** (``ir.mail_server.connect`` -> ``_ally_smtp_connect`` ->
   ``_smtp_login`` -> ``ally.smtp.mailbox._sign_in_smtp``): a verified-TLS
   session signed in as the owner, password or XOAUTH2; the session carries
   its batch (``ally_smtp_batch``) and the batch its mailbox.
5. **Send** (``_send`` with the batch's ``Ledger``, ``_prepare_outgoing_list``,
   ``ir.mail_server.send_email``): each mail claimed by one worker, sent to
   the recipients no earlier attempt reached.
6. **Record** (``ally.smtp.delivery._ally_smtp_record``): each accepted
   SMTP transaction is kept at once on the ledger, with the bytes for the
   Sent copy (``lib/mailbox._KeepSent`` keeps them on the session).
7. **Post-process** (``_postprocess_sent_message``): a failure's kind, noted
   by ``ir_mail_server._failed`` under ``cr.postcommit.data[FAILURES]`` (per
   owner, read once here), decides between retrying later, waiting for a
   window or a person, and Odoo's own failure.
"""

import logging
from collections import defaultdict
from datetime import timedelta

from odoo import fields, models, tools

from ..lib import errors, mailbox, pacing
from .ally_smtp_delivery import Ledger
from .ir_mail_server import FAILURES, AllySmtpDeliveryError, granted, sending_batch_of

_logger = logging.getLogger(__name__)

SEND_MAX_ATTEMPTS = 5
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
SEND_FIRST_DELAY = timedelta(minutes=5)
# pg_try_advisory_xact_lock(PACING_LOCK, user id): one worker paces a mailbox
PACING_LOCK = 0x41534D54


def note_foreign_edit(records, vals):
    """Mark the mail of ``records`` (``mail.mail`` or ``mail.message``) that
    someone but its author is changing with ``vals``: it is not the author's
    own mail any more, and never leaves from the author's mailbox."""
    if records.env.su or not CONTENT_FIELDS & vals.keys():
        return
    foreign = records.sudo().filtered(lambda r: r.create_uid != records.env.user)
    if foreign and foreign._name == "mail.message":
        foreign = (
            records.env["mail.mail"]
            .sudo()
            .search([("mail_message_id", "in", foreign.ids)])
        )
    if foreign:
        foreign.write({"ally_smtp_foreign_edit": True})


class _RetriesQuietly(logging.Filter):
    """Odoo logs every failed send as an ERROR with its traceback. A personal
    mailbox's temporary failure (4xx, dropped connection) is expected and the
    mail is retried, so it is logged at INFO without one; giving up is logged
    as a warning by ``_postprocess_sent_message``."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AllySmtpDeliveryError) and exc.kind in (
            errors.TEMPORARY,
            *errors.QUOTA_KINDS,
            *errors.WAITING_KINDS,
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
    # kept queued after an attempt (a retry, a quota): it may have reached
    # some recipients already, whom sending it again leaves out
    ally_smtp_partly_sent = fields.Boolean(
        "May have reached some recipients", copy=False, readonly=True
    )

    # what is sent: once someone but the author changed it, it is not the
    # author's own mail any more and never leaves from the author's mailbox
    ally_smtp_foreign_edit = fields.Boolean(
        "Changed by someone else", copy=False, readonly=True
    )

    def write(self, vals):
        """A mail someone but its author changes is not the author's own."""
        note_foreign_edit(self, vals)
        return super().write(vals)

    def mark_outgoing(self):
        """A mail retried by hand gets its automatic attempts back."""
        self.ally_smtp_attempts = 0
        return super().mark_outgoing()

    def _split_by_mail_configuration(self):
        """Mail written by a user with their own mailbox goes through it.

        One batch (so one SMTP session) per user and ``mail.session.batch.size``
        mails, within the limits of the user's mailbox (``_ally_smtp_pace``);
        the rest follows Odoo. The mailbox with the fewest mails goes first,
        and a mailbox's next batch waits for every other mailbox's batch: one
        busy consultant does not hold up the others. The session of a personal
        server can only be opened inside ``granted()``.
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
        queues = sorted(by_server.items(), key=lambda queue: len(queue[1]))
        batches = {}
        while queues:
            for server, mail_ids in list(queues):
                user = server.ally_smtp_owner_id
                if server not in batches:
                    # paced when its turn comes: the window counts from then
                    mailbox = user._ally_smtp_mailbox()
                    mails = self.browse(mail_ids)._ally_smtp_pace(mailbox)
                    batches[server] = tools.split_every(size, mails.ids)
                batch_ids = next(batches[server], None)
                if not batch_ids:
                    queues.remove((server, mail_ids))
                    continue
                smtp_from = tools.formataddr((user.name, server.from_filter))
                with granted(server):
                    # no alias domain: the envelope must stay the user's mailbox
                    yield server.id, False, smtp_from, list(batch_ids)

    def _ally_smtp_pace(self, mailbox):
        """The mails of ``mailbox`` that go now, in order; the others
        wait, queued, for the window their mailbox's limits leave them.

        What goes is logged at once (one row): a mailbox is paced by one worker
        at a time, and the next one sees what this one gave it to send.
        """
        now = fields.Datetime.now()
        mails = self.sudo()
        user = mailbox.user_id
        until = mailbox.paused_until
        if until and until > now:
            mails._ally_smtp_wait(until, mailbox.pause_reason)
            return self.browse()
        cr = self.env.cr
        cr.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [PACING_LOCK, user.id])
        if not cr.fetchone()[0]:
            # another worker is sending this mailbox's share now: its mails stay
            # queued for the next queue run
            self.env.ref("mail.ir_cron_mail_scheduler_action")._trigger(
                at=now + pacing.MINUTE
            )
            return self.browse()
        Log = self.env["ally.smtp.send.log"].sudo()
        sizes = [mail._ally_smtp_size() for mail in mails]
        limits = user.company_id._ally_smtp_limits()
        history = Log._ally_smtp_history(user, now)
        count, reopens = pacing.plan(limits, history, now, sizes)
        if count:
            Log.create(
                {
                    "user_id": user.id,
                    "sent_at": now,
                    "messages": sum(size[0] for size in sizes[:count]),
                    "recipients": sum(size[1] for size in sizes[:count]),
                }
            )
        if reopens:
            reason = mailbox.with_context(lang=user.lang)._pacing_reason(
                limits, reopens
            )
            mails[count:]._ally_smtp_wait(reopens, reason)
        return self.browse(mails[:count].ids)

    def _ally_smtp_size(self):
        """``(messages, recipients)``: Odoo sends one message per recipient
        partner, plus one to the mail's To and Cc addresses."""
        self.ensure_one()
        listed = len(tools.email_split(self.email_to or "")) + len(
            tools.email_split(self.email_cc or "")
        )
        partners = len(self.recipient_ids)
        return max(partners + bool(listed), 1), max(partners + listed, 1)

    def _ally_smtp_wait(self, until, reason):
        """Keep these mails queued until ``until``, saying why; no attempt is
        counted: waiting for a window is no failure."""
        self.sudo().write(
            {"state": "outgoing", "scheduled_date": until, "failure_reason": reason}
        )
        self._ally_smtp_notifications_ready()
        self.env.ref("mail.ir_cron_mail_scheduler_action")._trigger(at=until)

    def _send(self, *args, **kwargs):
        """A personal batch is sent with its ledger: each mail by one worker
        at a time, to the recipients no earlier attempt reached
        (``Ledger``), each accepted SMTP transaction kept at once.

        The queue commits after each mail and lets go of the batch's mails at
        the end; any other caller ("Send Now") holds them until its
        transaction ends, so that no worker takes them before they show sent.
        """
        batch = sending_batch_of(kwargs.get("mail_server"))
        if batch is None:
            return super()._send(*args, **kwargs)
        hold = None if kwargs.get("auto_commit") else self.env.cr
        ledger = batch.ledger = Ledger(self.env)
        try:
            mails = self.browse(ledger.claim(self.ids, hold))
            return super(MailMail, mails)._send(*args, **kwargs)
        finally:
            batch.ledger = batch.mail_id = None
            ledger.close()

    def _prepare_outgoing_list(self, mail_server=False, **kwargs):
        """A mail of a personal mailbox sent again skips who it already reached.

        Odoo sends a mail as one SMTP transaction per recipient; a worker that
        dies, a send that Odoo rolls back after it went out, a temporary
        failure or a quota partway leave the whole mail queued. The addresses
        already reached are in the batch's ledger (read when ``_send`` claimed
        the mail); a mail kept queued after an attempt (``ally_smtp_partly_sent``)
        also skips the partners whose notification says sent: a mail tried
        before 18.0.1.4.0 without Sent copies has no ledger rows.

        A large attachment is handed to ``build_email`` as a
        ``mailbox.Attachment``, encoded in pieces: the same message, built
        with a third less memory at its peak.
        """
        emails = super()._prepare_outgoing_list(mail_server=mail_server, **kwargs)
        batch = sending_batch_of(mail_server)
        if batch is None:
            return emails
        self._ally_smtp_reply_to(emails, mail_server, batch)
        for email in emails:
            if email.get("attachments"):
                email["attachments"] = [
                    (name, mailbox.Attachment(content), mimetype)
                    if isinstance(content, bytes) and len(content) >= mailbox.LARGE
                    else (name, content, mimetype)
                    for name, content, mimetype in email["attachments"]
                ]
        batch.mail_id = self.id
        reached = batch.ledger.reached.get(self.id, set()) if batch.ledger else set()
        if not (reached or self.ally_smtp_partly_sent):
            return emails
        notified = ()
        if self.ally_smtp_partly_sent:
            notified = set(self._ally_smtp_notified().ids)
        left = [
            email
            for email in emails
            if not (
                email.get("partner_id")
                and email["partner_id"].id in notified
                or email.get("email_to_normalized")
                and set(email["email_to_normalized"]) <= reached
            )
        ]
        if len(left) == len(emails):
            return emails
        _logger.info(
            "ally_smtp: mail %s sent again without the %s recipients it reached",
            self.id,
            len(emails) - len(left),
        )
        if not left:  # nothing left to send: Odoo would call it a failure
            self.write({"state": "sent", "failure_reason": False})
        return left

    def _ally_smtp_notified(self):
        """The partners this mail reached (their notification says sent)."""
        return (
            self.env["mail.notification"]
            .sudo()
            .search(
                [
                    ("mail_mail_id", "=", self.id),
                    ("notification_type", "=", "email"),
                    ("notification_status", "=", "sent"),
                ]
            )
            .res_partner_id
        )

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
        mailboxes = {
            mailbox.user_id: mailbox
            for mailbox in servers.ally_smtp_owner_id._ally_smtp_mailbox()
        }
        result, blocked = {}, {}
        for mail in self.sudo():
            user = mail.mail_message_id.create_uid
            server = by_user.get(user)
            own = (
                server
                and not mail.ally_smtp_foreign_edit
                and mail.create_uid == user
                and mail.author_id == user.partner_id
                and mailboxes[user].use_own
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
            if user.company_id.ally_smtp_fallback:
                if user not in blocked:  # asked once per user (a token lookup)
                    blocked[user] = mailboxes[user]._unusable()[1]
                if blocked[user]:
                    mail._ally_smtp_note_fallback(mailboxes[user], blocked[user])
                    continue
            result[mail.id] = server
        return result

    def _ally_smtp_note_fallback(self, mailbox, reason):
        message = self.mail_message_id
        if not (message.model and message.res_id):
            return
        record = self.env[message.model].browse(message.res_id)
        if hasattr(record, "_message_log"):
            record._message_log(
                body=self.env._(
                    "Sent from the agency's mail server: the mailbox %(address)s of "
                    "%(name)s cannot be used now (%(reason)s).",
                    address=mailbox.address,
                    name=mailbox.user_id.name,
                    reason=reason,
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
        waiting = self.filtered(
            lambda mail: (
                kinds.get(mail.sudo().mail_message_id.create_uid.id)
                in errors.WAITING_KINDS
            )
        )
        for mail in waiting:
            user = mail.sudo().mail_message_id.create_uid
            if kinds[user.id] == errors.QUOTA:
                mailbox = user._ally_smtp_mailbox()
                until = mailbox.paused_until or fields.Datetime.now() + pacing.HOUR
                mail._ally_smtp_wait(until, mailbox.pause_reason or failure_reason)
            else:  # until someone reconnects (``_send_waiting_now``), or a day
                reason = failure_reason or mail.failure_reason
                mail._ally_smtp_wait(fields.Datetime.now() + pacing.DAY, reason)
        waiting.sudo().ally_smtp_partly_sent = True
        if kinds and failure_type in ("mail_smtp", "unknown"):
            temporary = self.filtered(
                lambda mail: (
                    kinds.get(mail.sudo().mail_message_id.create_uid.id)
                    in (errors.TEMPORARY, errors.QUOTA_UNSURE)
                )
            )
            retry = temporary.filtered(
                lambda mail: mail.ally_smtp_attempts + 1 < SEND_MAX_ATTEMPTS
            )
            tired = temporary - retry
        if retry:
            retry._ally_smtp_retry_later()
        if success_pids and (retry or waiting):
            # who this attempt reached shows as sent, and is not sent again
            self.env["mail.notification"].sudo().search(
                [
                    ("mail_mail_id", "in", (retry | waiting).ids),
                    ("notification_type", "=", "email"),
                    ("res_partner_id", "in", [partner.id for partner in success_pids]),
                ]
            ).write(
                {
                    "notification_status": "sent",
                    "failure_type": False,
                    "failure_reason": False,
                }
            )
        for mail in tired:
            _logger.warning(
                "ally_smtp: mail %s not sent after %s attempts: %s",
                mail.id,
                mail.ally_smtp_attempts + 1,
                failure_reason,
            )
        return super(MailMail, self - retry - waiting)._postprocess_sent_message(
            success_pids, failure_reason=failure_reason, failure_type=failure_type
        )

    def _ally_smtp_retry_later(self):
        cron = self.env.ref("mail.ir_cron_mail_scheduler_action")
        for mail in self.sudo():
            when = fields.Datetime.now() + SEND_FIRST_DELAY * 2**mail.ally_smtp_attempts
            mail.write(
                {
                    "state": "outgoing",
                    "scheduled_date": when,
                    "ally_smtp_attempts": mail.ally_smtp_attempts + 1,
                    "ally_smtp_partly_sent": True,
                }
            )
            cron._trigger(at=when)
        self._ally_smtp_notifications_ready()

    def _ally_smtp_notifications_ready(self):
        """The recipients of mails that wait show "Ready", not an error."""
        self.env["mail.notification"].sudo().search(
            [
                ("mail_mail_id", "in", self.ids),
                ("notification_status", "=", "exception"),
            ]
        ).write({"notification_status": "ready", "failure_type": False})
