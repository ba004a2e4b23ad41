"""SMTP and IMAP sessions with verified TLS, and the IMAP Sent folder."""

import imaplib
import re
import smtplib
import ssl

from odoo.tools import config

TIMEOUT = 20
# Sent folder names when the server flags none \Sent (RFC 6154), in order;
# each is also tried under the personal namespace (cPanel's "INBOX.").
SENT_FALLBACKS = [
    "Sent",
    "Sent Items",
    "Sent Messages",
    "[Gmail]/Sent Mail",
    "Enviados",
    "Itens Enviados",
]
_LIST_RE = re.compile(r'\((?P<flags>[^)]*)\) (?P<sep>"[^"]*"|NIL) (?P<name>.+)')
# the first personal namespace of a NAMESPACE reply: (("INBOX." ".")) NIL NIL
_NAMESPACE_RE = re.compile(r'^\(\("(?P<prefix>(?:[^"\\]|\\.)*)" (?P<sep>"[^"]*"|NIL)')


def tls_context(verify=True):
    """TLS 1.2+; certificates checked unless the company turned it off.

    Odoo 18 does not verify SMTP certificates; a mailbox password must not go
    to whoever answers on the port. The Odoo option ``ally_smtp_ca_file`` adds
    a private CA (for an on-premise mail server).
    """
    context = ssl.create_default_context()
    if config.get("ally_smtp_ca_file"):
        context.load_verify_locations(config["ally_smtp_ca_file"])
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _QuitQuietly:
    """Odoo 18's ``mail.mail.send()`` calls ``quit()`` unguarded in ``finally``:
    a server that hangs up first must not abort the rest of the queue run."""

    def quit(self):
        try:
            return super().quit()
        except (smtplib.SMTPServerDisconnected, OSError):
            self.close()
            return None


class SMTP(_QuitQuietly, smtplib.SMTP):
    pass


class SMTP_SSL(_QuitQuietly, smtplib.SMTP_SSL):
    pass


def smtp_connect(host, port, encryption, verify=True, timeout=TIMEOUT):
    """An SMTP session, encrypted before anything secret is said."""
    context = tls_context(verify)
    if encryption == "ssl":
        return SMTP_SSL(host, port, timeout=timeout, context=context)
    connection = SMTP(host, port, timeout=timeout)
    try:
        connection.starttls(context=context)
    except BaseException:
        connection.close()
        raise
    return connection


def imap_connect(host, port, verify=True, timeout=TIMEOUT):
    return imaplib.IMAP4_SSL(
        host, port, ssl_context=tls_context(verify), timeout=timeout
    )


def _unquote(name):
    if name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name


def _parse_list(data):
    """``[(flags, separator, name)]`` of a LIST reply."""
    result = []
    for item in data or []:
        if isinstance(item, tuple):  # name sent as a literal
            line = item[0].decode(errors="replace").rsplit("{", 1)[0]
            match = _LIST_RE.match(line)
            name = item[1].decode(errors="replace")
        else:
            match = _LIST_RE.match(item.decode(errors="replace"))
            name = match and _unquote(match.group("name"))
        if not match:
            continue
        sep = match.group("sep")
        sep = "" if sep == "NIL" else _unquote(sep)
        result.append((match.group("flags").lower().split(), sep, name))
    return result


def personal_prefix(imap, listed=()):
    """The personal namespace's prefix, e.g. ``"INBOX."`` on cPanel hosting.

    From ``NAMESPACE`` (RFC 2342) when the server answers it (servers often
    announce it only after login), else guessed from the LIST reply: every
    folder but INBOX under ``INBOX<separator>``.
    """
    try:
        typ, data = imap.namespace()
    except imaplib.IMAP4.error:  # BAD: no NAMESPACE on this server
        typ, data = "BAD", None
    match = (
        typ == "OK"
        and data
        and isinstance(data[0], bytes)
        and _NAMESPACE_RE.match(data[0].decode(errors="replace"))
    )
    if match:
        return _unquote('"' + match.group("prefix") + '"')
    seps = {sep for _flags, sep, _name in listed if sep}
    if len(seps) == 1:
        prefix = "INBOX" + seps.pop()
        others = [n for _f, _s, n in listed if n.upper() != "INBOX"]
        if others and all(n.upper().startswith(prefix.upper()) for n in others):
            return prefix
    return ""


def find_sent(imap):
    """The Sent folder: RFC 6154 ``\\Sent`` first, then the usual names.

    Each usual name is looked for as it is and under the personal namespace,
    so that cPanel's ``INBOX.Sent Items`` is found as well as ``Sent Items``.
    """
    _typ, data = imap.list()
    listed = _parse_list(data)
    for flags, _sep, name in listed:
        if "\\sent" in flags:
            return name
    prefix = personal_prefix(imap, listed)
    lowered = {name.lower(): name for _flags, _sep, name in listed}
    for fallback in SENT_FALLBACKS:
        for candidate in (fallback, prefix + fallback):
            if candidate.lower() in lowered:
                return lowered[candidate.lower()]
    return None


def quote(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def has_message(imap, folder, message_id):
    """Whether ``folder`` already holds a message with this Message-ID."""
    typ, _unused = imap.select(quote(folder), readonly=True)
    if typ != "OK":
        return False
    typ, data = imap.uid("SEARCH", "HEADER", "Message-ID", quote(message_id))
    return typ == "OK" and bool(data and data[0] and data[0].split())


def append(imap, folder, raw, date_time):
    typ, data = imap.append(quote(folder), r"(\Seen)", date_time, raw)
    if typ != "OK":
        raise imaplib.IMAP4.error(
            b" ".join(d for d in data if d).decode(errors="replace")
        )
    return data
