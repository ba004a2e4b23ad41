"""Demo data for ``make demo``, run inside ``odoo-bin shell`` (never installed
with the addon, so it cannot land in a production database by accident).

Expects ``env`` (given by the Odoo shell) and ``ALLY_SMTP_HARNESS``.
"""

import json
import os

CONSULTANTS = [
    # login, name, mailbox (bob's provider files Sent itself, like Gmail)
    ("ana", "Ana Consultora", "alice@agency.test"),
    ("bruno", "Bruno Consultor", "bob@agency.test"),
]
# a consultant of an agency whose mailboxes sign in with Google (the harness's
# Google-like authorization server): she presses Connect in My Profile
GOOGLE_CONSULTANT = ("carla", "Carla Consultora", "consultant01@agency.test")
STUDENTS = [
    ("Maria Estudante", "student1@school.test"),
    ("João Estudante", "student2@school.test"),
]


def load(env):
    with open(os.environ["ALLY_SMTP_HARNESS"]) as f:
        info = json.load(f)
    boxes = info["mailboxes"]
    company = env.company
    company.write(
        {
            "name": "Ally Intercâmbio",
            "ally_smtp_enabled": True,
            "ally_smtp_provider": "custom",
            "ally_smtp_host": info["smtp"]["host"],
            "ally_smtp_port": info["smtp"]["ports"]["ssl"],
            "ally_smtp_encryption": "ssl",
            "ally_smtp_imap_host": info["imap"]["host"],
            "ally_smtp_imap_port": info["imap"]["port"],
            "ally_smtp_sent_copy": "auto",
        }
    )
    company.action_ally_smtp_integrate()

    # the agency's own server, for notifications and users without a mailbox
    env["ir.mail_server"].create(
        {
            "name": "Agency notifications",
            "smtp_host": info["smtp"]["host"],
            "smtp_port": info["smtp"]["ports"]["ssl"],
            "smtp_encryption": "ssl",
            "smtp_authentication": "login",
            "smtp_user": "carol@agency.test",
            "smtp_pass": boxes["carol@agency.test"],
        }
    )

    for login, name, mailbox in CONSULTANTS:
        user = _consultant(env, login, name, mailbox, company)
        user.with_user(user).write({"ally_smtp_password": boxes[mailbox]})
        user.with_user(user).action_ally_smtp_test()

    _google_agency(env, info, company)

    for name, email in STUDENTS:
        student = env["res.partner"].create({"name": name, "email": email})
        student.message_subscribe(student.ids)  # chatter messages reach the student

    env.ref("base.user_admin").lang = "pt_BR"
    env.cr.commit()


def _consultant(env, login, name, mailbox, company):
    """A consultant of ``company`` (password = login) with their own mailbox."""
    user = (
        env["res.users"]
        .with_context(no_reset_password=True)
        .create(
            {
                "name": name,
                "login": login,
                "password": login,
                "email": mailbox,
                "lang": "pt_BR",
                "company_id": company.id,
                "company_ids": [(6, 0, company.ids)],
                "groups_id": [
                    (4, env.ref("base.group_user").id),
                    (4, env.ref("base.group_partner_manager").id),
                ],
            }
        )
    )
    user.with_user(user).write({"ally_smtp_use_own": True, "ally_smtp_email": mailbox})
    return user


def _google_agency(env, info, company):
    """A second company on the same servers, signing in with Google accounts."""
    app = info["oauth"]["google"]
    env["ir.config_parameter"].set_param(
        "web.base.url", os.environ["ALLY_SMTP_DEMO_URL"]
    )
    env["ir.config_parameter"].set_param(
        "ally_smtp.oauth_google_base_url", app["base_url"]
    )
    google = env["res.company"].create(
        {
            "name": "Ally Intercâmbio (Google)",
            "ally_smtp_enabled": True,
            "ally_smtp_provider": "custom",
            "ally_smtp_host": company.ally_smtp_host,
            "ally_smtp_port": company.ally_smtp_port,
            "ally_smtp_encryption": company.ally_smtp_encryption,
            "ally_smtp_imap_host": company.ally_smtp_imap_host,
            "ally_smtp_imap_port": company.ally_smtp_imap_port,
            "ally_smtp_sent_copy": "auto",
            "ally_smtp_auth_method": "google",
            "ally_smtp_oauth_client_id": app["client_id"],
            "ally_smtp_oauth_client_secret": app["client_secret"],
        }
    )
    google.action_ally_smtp_integrate()
    _consultant(env, *GOOGLE_CONSULTANT, google)
    env.ref("base.user_admin").company_ids = [(4, google.id)]


load(env)  # noqa: F821 - env is given by odoo-bin shell
