import base64
import email.utils
import imaplib
import logging
import re
import time
from datetime import timedelta

from odoo import _, api, fields, models, modules, tools

from ..lib import errors, mailbox

_logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
FIRST_DELAY = timedelta(minutes=2)
KEEP_DONE = timedelta(days=7)
# headers of the SMTP transaction that a mail client's Sent copy does not carry
_DROP = re.compile(
    rb"^(To|Return-Path|X-Forge-To|X-Msg-To-Add):[^\r\n]*\r\n([ \t][^\r\n]*\r\n)*",
    re.IGNORECASE | re.MULTILINE,
)


class AllySmtpSentCopy(models.Model):
    _name = "ally.smtp.sent.copy"
    _description = "Copy of a sent mail for the author's Sent folder"
    _order = "id desc"
    _rec_name = "subject"

    user_id = fields.Many2one(
        "res.users", required=True, index=True, ondelete="cascade", readonly=True
    )
    message_id = fields.Char("Message-ID", required=True, readonly=True)
    subject = fields.Char(readonly=True)
    recipients = fields.Char(readonly=True)
    raw = fields.Binary("Message", attachment=True, readonly=True)
    state = fields.Selection(
        [
            ("pending", "Pending"),
            ("done", "In the Sent folder"),
            ("skipped", "Already filed by the provider"),
            ("failed", "Failed"),
        ],
        default="pending",
        required=True,
        index=True,
        readonly=True,
    )
    attempts = fields.Integer(readonly=True)
    next_try = fields.Datetime(default=fields.Datetime.now, readonly=True)
    last_error = fields.Text(readonly=True)

    _sql_constraints = [  # noqa: RUF012 - Odoo's declaration style
        (
            "user_message_unique",
            "UNIQUE(user_id, message_id)",
            "One Sent copy per user and message.",
        )
    ]

    @api.model
    def _ally_smtp_register(self, user, message):
        """Queue the copy of a message ``user``'s session just sent.

        Odoo sends one SMTP transaction per recipient partner, all with the
        same Message-ID: they make one copy that lists every recipient.
        """
        company = user.company_id
        if company.ally_smtp_sent_copy == "never" or not company.ally_smtp_imap_host:
            return self.browse()
        message_id = (message["Message-Id"] or "").strip()
        recipients = tools.mail.email_split_and_format(str(message["To"] or ""))
        copy = self.search([("user_id", "=", user.id), ("message_id", "=", message_id)])
        if copy:
            if copy.state == "pending":
                known = tools.mail.email_split_and_format(copy.recipients)
                new = [r for r in recipients if r not in known]
                copy.recipients = ", ".join(known + new)
            return copy
        raw = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        copy = self.create(
            {
                "user_id": user.id,
                "message_id": message_id,
                "subject": str(message["Subject"] or ""),
                "recipients": ", ".join(recipients),
                "raw": base64.b64encode(raw),
            }
        )
        self.env.ref("ally_smtp.ir_cron_sent_copy")._trigger()
        return copy

    def _ally_smtp_message(self):
        """The bytes to file: as sent, with every recipient in To."""
        raw = base64.b64decode(self.with_context(bin_size=False).raw)
        header, sep, body = raw.partition(b"\r\n\r\n")
        header = _DROP.sub(b"", header + b"\r\n").rstrip(b"\r\n")
        pairs = email.utils.getaddresses([self.recipients])
        to = ",\r\n ".join(email.utils.formataddr(p, charset="utf-8") for p in pairs)
        return header + b"\r\nTo: " + to.encode() + sep + body

    @api.model
    def _ally_smtp_process(self):
        """Cron: file pending copies, one IMAP login per user."""
        if modules.module.current_test:  # other modules' tests stay offline
            return
        due = self.search(
            [("state", "=", "pending"), ("next_try", "<=", fields.Datetime.now())]
        )
        # a refused password is not tried again until the user fixes it
        for user in due.user_id.filtered(lambda u: u.ally_smtp_state != "failed"):
            due.filtered(lambda c, u=user: c.user_id == u)._ally_smtp_file(user)

    def _ally_smtp_file(self, user):
        company = user.company_id
        mode = company.ally_smtp_sent_copy
        host, port = (
            (company.ally_smtp_imap_host or "").strip(),
            company.ally_smtp_imap_port,
        )
        try:
            if not host:
                raise imaplib.IMAP4.error(_("No IMAP server is set up for the agency."))
            with company._ally_smtp_open_imap() as imap:
                imap.login(user.ally_smtp_email, user._ally_smtp_password())
                folder = user.ally_smtp_sent_folder or mailbox.find_sent(imap)
                if not folder:
                    raise imaplib.IMAP4.error(_("No Sent folder in the mailbox."))
                if folder != user.ally_smtp_sent_folder:
                    user.ally_smtp_sent_folder = folder
                for copy in self:
                    if mode == "auto" and mailbox.has_message(
                        imap, folder, copy.message_id
                    ):
                        copy.state = "skipped"
                        continue
                    date = time.time()
                    mailbox.append(imap, folder, copy._ally_smtp_message(), date)
                    copy.write({"state": "done", "last_error": False})
        except Exception as exc:  # noqa: BLE001 - retried, then shown to the user
            kind, message = errors.classify(
                user.with_context(lang=user.lang).env,
                exc,
                host,
                port,
                user.ally_smtp_email,
                protocol="imap",
            )
            _logger.info("ally_smtp: Sent copy for user %s delayed: %s", user.id, exc)
            if kind == errors.AUTH:
                user._ally_smtp_auth_failed(message)
            for copy in self.filtered(lambda c: c.state == "pending"):
                copy.write(
                    {
                        "attempts": copy.attempts + 1,
                        "last_error": message,
                        "next_try": fields.Datetime.now()
                        + FIRST_DELAY * 2**copy.attempts,
                        "state": "failed"
                        if copy.attempts + 1 >= MAX_ATTEMPTS
                        else "pending",
                    }
                )

    def action_retry(self):
        self.write({"state": "pending", "next_try": fields.Datetime.now()})
        self.env.ref("ally_smtp.ir_cron_sent_copy")._trigger()

    @api.autovacuum
    def _gc_done_copies(self):
        self.search(
            [
                ("state", "in", ("done", "skipped")),
                ("write_date", "<", fields.Datetime.now() - KEEP_DONE),
            ]
        ).unlink()
