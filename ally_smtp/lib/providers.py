"""Mail provider presets (see shared PROVIDERS.md for the sources)."""

# key: (smtp host, port, encryption, imap host, imap port, sent copy)
PRESETS = {
    "gmail": ("smtp.gmail.com", 465, "ssl", "imap.gmail.com", 993, "never"),
    "microsoft365": (
        "smtp.office365.com",
        587,
        "starttls",
        "outlook.office365.com",
        993,
        "never",
    ),
    "outlook": (
        "smtp-mail.outlook.com",
        587,
        "starttls",
        "outlook.office365.com",
        993,
        "never",
    ),
    "yahoo": ("smtp.mail.yahoo.com", 465, "ssl", "imap.mail.yahoo.com", 993, "auto"),
    "zoho": ("smtp.zoho.com", 465, "ssl", "imap.zoho.com", 993, "auto"),
    "icloud": ("smtp.mail.me.com", 587, "starttls", "imap.mail.me.com", 993, "auto"),
    "locaweb": ("email-ssl.com.br", 465, "ssl", "email-ssl.com.br", 993, "always"),
    # cPanel hosts: the server name depends on the account (brNNN.hostgator...).
    "hostgator": ("", 465, "ssl", "", 993, "always"),
    "kinghost": (
        "smtp.kinghost.net",
        587,
        "starttls",
        "imap.kinghost.net",
        993,
        "always",
    ),
    "uolhost": ("smtps.uhserver.com", 465, "ssl", "imap.uhserver.com", 993, "always"),
    "hostinger": (
        "smtp.hostinger.com",
        465,
        "ssl",
        "imap.hostinger.com",
        993,
        "always",
    ),
    "titan": ("smtp.titan.email", 465, "ssl", "imap.titan.email", 993, "always"),
    "cpanel": ("", 465, "ssl", "", 993, "always"),
}

# (per minute, per hour, per day, recipients per day); 0 = no limit known.
# Sources: shared PROVIDERS.md "Limits" (Google Workspace 2,000/day, consumer
# Gmail about 500/day; Microsoft 365 30/minute and 10,000 recipients/day;
# iCloud 1,000/day; HostGator 500/hour; Hostinger from 1,000/day by plan).
# Outlook.com runs on Exchange Online, whose per-minute limit it shares.
LIMITS = {
    # a free Gmail account: about 500; Google Workspace admins raise it to 2,000
    "gmail": (0, 0, 500, 0),
    "microsoft365": (30, 0, 0, 10000),
    "outlook": (30, 0, 0, 0),
    "icloud": (0, 0, 1000, 0),
    "hostgator": (0, 500, 0, 0),
    "hostinger": (0, 0, 1000, 0),
}


# presets whose accounts sign in with OAuth: (method, Microsoft tenant)
SIGN_IN = {
    "gmail": ("google", False),
    "microsoft365": ("microsoft", "organizations"),
    # personal Microsoft accounts: password SMTP is gone since September 2024
    "outlook": ("microsoft", "consumers"),
}


def preset_values(provider):
    """The ``res.company`` values a preset fills, or ``{}`` for custom."""
    if provider not in PRESETS:
        return {}
    host, port, encryption, imap_host, imap_port, sent_copy = PRESETS[provider]
    minute, hour, day, recipients = LIMITS.get(provider, (0, 0, 0, 0))
    method, tenant = SIGN_IN.get(provider, ("password", False))
    values = {"ally_smtp_auth_method": method}
    if tenant:
        values["ally_smtp_oauth_tenant"] = tenant
    return values | {
        "ally_smtp_limit_minute": minute,
        "ally_smtp_limit_hour": hour,
        "ally_smtp_limit_day": day,
        "ally_smtp_limit_recipients_day": recipients,
        "ally_smtp_host": host,
        "ally_smtp_port": port,
        "ally_smtp_encryption": encryption,
        "ally_smtp_imap_host": imap_host,
        "ally_smtp_imap_port": imap_port,
        "ally_smtp_sent_copy": sent_copy,
    }
