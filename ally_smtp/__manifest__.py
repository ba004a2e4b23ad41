{
    "name": "Ally SMTP: send from each consultant's own mailbox",
    "summary": "Mail written in Odoo leaves through the author's own mailbox, "
    "with a copy in its Sent folder",
    "version": "18.0.1.5.0",
    "category": "Productivity/Discuss",
    "license": "LGPL-3",
    "author": "Ally SMTP Authors",
    "website": "https://github.com/ally-intercambio/ally_smtp",
    "maintainers": ["ally-intercambio"],
    "development_status": "Alpha",
    "depends": ["mail", "base_setup"],
    "external_dependencies": {"python": ["cryptography"]},
    "data": [
        "security/ir.model.access.csv",
        "security/ally_smtp_security.xml",
        "data/ir_cron_data.xml",
        "views/ally_smtp_sent_copy_views.xml",
        "views/res_config_settings_views.xml",
        "views/res_users_views.xml",
        "views/ir_mail_server_views.xml",
        "views/oauth_templates.xml",
    ],
    "assets": {
        "web.assets_tests": ["ally_smtp/static/tests/tours/*.js"],
    },
    "uninstall_hook": "uninstall_hook",
    "installable": True,
}
