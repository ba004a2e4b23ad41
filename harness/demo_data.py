"""Demo data for ``make demo``, run inside ``odoo-bin shell`` (never installed
with the addon, so it cannot land in a production database by accident).

Expects ``env`` (given by the Odoo shell) and ``ALLY_SMTP_HARNESS``. The
company and server values are those of the tests (``ally_smtp/tests/servers.py``,
plain Python, loaded from the addon's folder).
"""

import importlib.util
import os

from odoo.tools.misc import file_path

_spec = importlib.util.spec_from_file_location(
    "ally_smtp_servers", file_path("ally_smtp/tests/servers.py")
)
servers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(servers)

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
    info = servers.harness()
    boxes = info["mailboxes"]
    company = env.company
    company.write(servers.company_values(info, name="Ally Intercâmbio"))
    company.action_ally_smtp_integrate()

    # the agency's own server, for notifications and users without a mailbox
    env["ir.mail_server"].create(
        servers.agency_server_values(info, name="Agency notifications")
    )

    for login, name, mailbox in CONSULTANTS:
        user = _consultant(env, login, name, mailbox, company)
        user.with_user(user).write({"ally_smtp_password": boxes[mailbox]})
        user.with_user(user).action_ally_smtp_test()

    _google_agency(env, info)

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


def _google_agency(env, info):
    """A second company on the same servers, signing in with Google accounts."""
    app = info["oauth"]["google"]
    env["ir.config_parameter"].set_param(
        "web.base.url", os.environ["ALLY_SMTP_DEMO_URL"]
    )
    env["ir.config_parameter"].set_param(
        "ally_smtp.oauth_google_base_url", app["base_url"]
    )
    google = env["res.company"].create(
        servers.company_values(
            info,
            name="Ally Intercâmbio (Google)",
            **servers.oauth_values(info, "google"),
        )
    )
    google.action_ally_smtp_integrate()
    _consultant(env, *GOOGLE_CONSULTANT, google)
    env.ref("base.user_admin").company_ids = [(4, google.id)]


load(env)  # noqa: F821 - env is given by odoo-bin shell
