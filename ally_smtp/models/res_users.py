from odoo import _, api, fields, models
from odoo.exceptions import AccessError, UserError

from ..lib import actions
from .ally_smtp_mailbox import STATES

# what My Profile shows of the user's mailbox (``ally.smtp.mailbox``), under
# the names consultants and integrators use: res.users field -> mailbox field
MAILBOX_FIELDS = {
    "ally_smtp_use_own": "use_own",
    "ally_smtp_email": "address",
    "ally_smtp_password": "password",
    "ally_smtp_password_set": "password_set",
    "ally_smtp_state": "state",
    "ally_smtp_last_error": "last_error",
    "ally_smtp_tested_at": "tested_at",
    "ally_smtp_sent_folder": "sent_folder",
    "ally_smtp_paused_until": "paused_until",
    "ally_smtp_pause_reason": "pause_reason",
    "ally_smtp_paused": "paused",
    "ally_smtp_oauth_account": "oauth_account",
}
# what the user writes from My Profile
OWN_FIELDS = ["ally_smtp_use_own", "ally_smtp_email", "ally_smtp_password"]


class ResUsers(models.Model):
    _inherit = "res.users"

    ally_smtp_mailbox_id = fields.Many2one(
        "ally.smtp.mailbox",
        "Own mailbox",
        compute="_compute_ally_smtp_mailbox_id",
        search="_search_ally_smtp_mailbox_id",
    )
    ally_smtp_use_own = fields.Boolean(
        related="ally_smtp_mailbox_id.use_own", readonly=False, related_sudo=False
    )
    ally_smtp_email = fields.Char(
        related="ally_smtp_mailbox_id.address", readonly=False, related_sudo=False
    )
    ally_smtp_password = fields.Char(
        related="ally_smtp_mailbox_id.password", readonly=False, related_sudo=False
    )
    ally_smtp_password_set = fields.Boolean(
        related="ally_smtp_mailbox_id.password_set", related_sudo=False
    )
    # "Not used" also for a user who never had a mailbox
    ally_smtp_state = fields.Selection(
        STATES,
        "SMTP status",
        compute="_compute_ally_smtp_state",
        search="_search_ally_smtp_state",
    )
    ally_smtp_last_error = fields.Text(
        related="ally_smtp_mailbox_id.last_error", related_sudo=False
    )
    ally_smtp_tested_at = fields.Datetime(
        related="ally_smtp_mailbox_id.tested_at", related_sudo=False
    )
    ally_smtp_sent_folder = fields.Char(
        related="ally_smtp_mailbox_id.sent_folder", related_sudo=False
    )
    ally_smtp_paused_until = fields.Datetime(
        related="ally_smtp_mailbox_id.paused_until", related_sudo=False
    )
    ally_smtp_pause_reason = fields.Text(
        related="ally_smtp_mailbox_id.pause_reason", related_sudo=False
    )
    ally_smtp_paused = fields.Boolean(
        related="ally_smtp_mailbox_id.paused", related_sudo=False
    )
    ally_smtp_oauth_account = fields.Char(
        related="ally_smtp_mailbox_id.oauth_account", related_sudo=False
    )
    ally_smtp_available = fields.Boolean(compute="_compute_ally_smtp_available")
    ally_smtp_auth_method = fields.Selection(related="company_id.ally_smtp_auth_method")

    @property
    def SELF_READABLE_FIELDS(self):
        return [
            *super().SELF_READABLE_FIELDS,
            "ally_smtp_mailbox_id",
            *MAILBOX_FIELDS,
            "ally_smtp_available",
            "ally_smtp_auth_method",
        ]

    @property
    def SELF_WRITEABLE_FIELDS(self):
        return super().SELF_WRITEABLE_FIELDS + OWN_FIELDS

    @api.depends_context("uid")
    def _compute_ally_smtp_mailbox_id(self):
        Mailbox = self.env["ally.smtp.mailbox"]
        found = {}
        if Mailbox.has_access("read"):
            found = {
                mailbox.user_id.id: mailbox
                for mailbox in Mailbox.search([("user_id", "in", self._origin.ids)])
            }
        for user in self:
            user.ally_smtp_mailbox_id = found.get(user._origin.id, Mailbox)

    @api.depends("ally_smtp_mailbox_id.state")
    @api.depends_context("uid")
    def _compute_ally_smtp_state(self):
        for user in self:
            user.ally_smtp_state = user.ally_smtp_mailbox_id.state or "off"

    def _search_ally_smtp_state(self, operator, value):
        return [("ally_smtp_mailbox_id.state", operator, value)]

    def _search_ally_smtp_mailbox_id(self, operator, value):
        """Users by their mailbox, as far as the searcher may see mailboxes."""
        if operator == "any":
            mailboxes = self.env["ally.smtp.mailbox"]._search(value)
        else:
            mailboxes = self.env["ally.smtp.mailbox"]._search([("id", operator, value)])
        return [("id", "in", mailboxes.subselect("user_id"))]

    @api.depends("company_id.ally_smtp_enabled", "company_id.ally_smtp_host")
    def _compute_ally_smtp_available(self):
        for user in self:
            user.ally_smtp_available = user.company_id.sudo()._ally_smtp_ready()

    def _ally_smtp_mailbox(self):
        """These users' mailboxes, as superuser (empty for a user without)."""
        return (
            self.env["ally.smtp.mailbox"].sudo().search([("user_id", "in", self.ids)])
        )

    # -- writing the mailbox through the user -------------------------------------
    @api.model_create_multi
    def create(self, vals_list):
        mailbox_vals = [_pop_mailbox_values(vals) for vals in vals_list]
        users = super().create(vals_list)
        self.env["ally.smtp.mailbox"].sudo().create(
            [
                dict(values, user_id=user.id)
                for user, values in zip(users, mailbox_vals, strict=True)
                if values
            ]
        )
        return users

    def write(self, vals):
        values = _pop_mailbox_values(vals)
        if "company_id" in vals:
            # moving to another company: the mailbox goes along, if it is free
            for mailbox in self._ally_smtp_mailbox():
                mailbox._check_address_free(
                    mailbox.address, vals["company_id"], mailbox
                )
        result = super().write(vals) if vals else True
        if values:
            self._ally_smtp_write_mailbox(values)
        if {"company_id", "name"} & vals.keys():
            self._ally_smtp_mailbox()._sync_server()
        return result

    def _ally_smtp_write_mailbox(self, values):
        """Write ``values`` on these users' mailboxes with the writer's rights
        (its owner, or a settings admin turning it off), creating the owner's
        own mailbox the first time."""
        Mailbox = self.env["ally.smtp.mailbox"]
        for user in self:
            mailbox = user._ally_smtp_mailbox()
            if mailbox:
                mailbox.with_env(self.env).write(values)
            elif any(values.values()):
                user._ally_smtp_check_self()
                Mailbox.sudo().create(dict(values, user_id=user.id))

    def _ally_smtp_check_self(self):
        """Only the user sets up their own mailbox; admins may only turn it off."""
        if self.env.su:
            return
        if any(user != self.env.user or not user._is_internal() for user in self):
            raise AccessError(
                _(
                    "Only internal users set up their own mailbox, each their own. "
                    "An administrator can only turn it off."
                )
            )

    def _ally_smtp_own_mailbox(self):
        """The signed-in user's own mailbox, for their buttons; as superuser."""
        self.ensure_one()
        self._ally_smtp_check_self()
        return self._ally_smtp_mailbox()

    # -- My Profile's buttons --------------------------------------------------------
    def action_ally_smtp_test(self):
        """Sign in to SMTP and IMAP as the user; nothing is sent."""
        mailbox = self._ally_smtp_own_mailbox()
        if not mailbox:
            raise UserError(_("Turn on 'Use my own SMTP configuration' first."))
        notification = actions.notify(mailbox._test(), _("SMTP configuration works"))
        # reopen My Profile so it shows the new status
        notification["params"]["next"] = dict(self.action_get(), res_id=self.id)
        return notification

    def action_ally_smtp_clear_password(self):
        self._ally_smtp_own_mailbox().write({"password_crypt": False})

    def action_ally_smtp_oauth_connect(self):
        """Send the browser to the provider's sign-in (see controllers)."""
        mailbox = self._ally_smtp_own_mailbox()
        if not self.company_id._ally_smtp_oauth():
            raise UserError(_("Your agency signs in to mailboxes with passwords."))
        if not mailbox.address:
            raise UserError(_("Enter your SMTP email first."))
        return {
            "type": "ir.actions.act_url",
            "url": "/ally_smtp/oauth/start",
            "target": "self",
        }

    def action_ally_smtp_oauth_disconnect(self):
        """Forget the user's grant, revoking it where the provider offers it."""
        self._ally_smtp_own_mailbox()._oauth_disconnect()
        return actions.notify(
            _("Your mailbox is disconnected. Odoo no longer sends from it."),
            reload=True,
        )


def _pop_mailbox_values(vals):
    """Take the mailbox's fields out of ``vals`` (a res.users create/write),
    as the mailbox's own ``vals``."""
    return {MAILBOX_FIELDS[name]: vals.pop(name) for name in OWN_FIELDS if name in vals}
