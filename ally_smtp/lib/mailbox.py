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
# response codes of a mailbox that is not there (RFC 3501, RFC 5530)
_MISSING = ("[trycreate]", "[nonexistent]", "doesn't exist", "does not exist")
# ... and of a message larger than the server accepts (RFC 5530, RFC 7889)
_TOO_BIG = ("[toobig]", "[limit]", "too large", "too big")
_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")


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


class _KeepSent:
    """Remember the bytes of the last message sent, for the Sent folder copy.

    ``send_message`` flattens the message once and hands the bytes to
    ``sendmail``: keeping that reference gives the copy exactly what went on
    the wire without serializing the message again.
    """

    ally_smtp_sent = None

    def sendmail(self, from_addr, to_addrs, msg, *args, **kwargs):
        self.ally_smtp_sent = None
        result = super().sendmail(from_addr, to_addrs, msg, *args, **kwargs)
        self.ally_smtp_sent = msg.encode("ascii") if isinstance(msg, str) else msg
        return result


class SMTP(_KeepSent, _QuitQuietly, smtplib.SMTP):
    pass


class SMTP_SSL(_KeepSent, _QuitQuietly, smtplib.SMTP_SSL):
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


class IMAP4_SSL(imaplib.IMAP4_SSL):
    def append(self, mailbox, flags, date_time, message):
        """imaplib's APPEND, without rewriting line endings that are CRLF
        already: the rewrite holds the message three times over in memory."""
        if self.utf8_enabled or _BARE_EOL.search(message):
            return super().append(mailbox, flags, date_time, message)
        date = imaplib.Time2Internaldate(date_time) if date_time else None
        self.literal = message
        return self._simple_command("APPEND", mailbox, flags, date)

    def multiappend(self, mailbox, flags, messages):
        """APPEND ``messages`` (``[(raw, date_time)]``, CRLF line endings) in
        one command (MULTIAPPEND, RFC 3502) of non-synchronizing literals
        (LITERAL+, RFC 7888): one round trip for all, and all or none added.
        Only for a server that announces both."""
        args = [mailbox]
        for raw, date_time in messages:
            date = imaplib.Time2Internaldate(date_time)
            literal = f"{flags} {date} {{{len(raw)}+}}\r\n".encode()
            args.append(literal + raw)
        return self._simple_command("APPEND", *args)


def imap_connect(host, port, verify=True, timeout=TIMEOUT):
    return IMAP4_SSL(host, port, ssl_context=tls_context(verify), timeout=timeout)


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


def _text(data):
    return b" ".join(d for d in data or [] if isinstance(d, bytes)).decode(
        errors="replace"
    )


class FolderMissing(imaplib.IMAP4.error):
    """The Sent folder is not (or no longer) in the mailbox."""


class TooBig(imaplib.IMAP4.error):
    """The server refuses a message of this size."""


class SentFolder:
    """The Sent folder of a logged-in IMAP session.

    Starts from the folder found earlier (at the Test, or by a previous copy)
    and, when the server says it does not exist (renamed, deleted), looks for
    it again once before giving up. ``name`` is the folder in use.
    """

    def __init__(self, imap, name=None):
        self.imap = imap
        self.name = name
        self._rediscovered = False
        self._multiappend = None
        if not self.name:
            self._discover()

    def _discover(self):
        self._rediscovered = True
        self.name = find_sent(self.imap)
        if not self.name:
            raise FolderMissing("No Sent folder in the mailbox.")

    def _retry_missing(self, typ, data):
        """Whether the reply says the folder is gone and another one was found."""
        if typ == "OK" or self._rediscovered:
            return False
        if not any(code in _text(data).lower() for code in _MISSING):
            return False
        old = self.name
        self._discover()
        return self.name != old

    def has_message(self, message_id):
        """Whether the folder already holds a message with this Message-ID."""
        typ, data = self.imap.select(quote(self.name), readonly=True)
        if self._retry_missing(typ, data):
            typ, data = self.imap.select(quote(self.name), readonly=True)
        if typ != "OK":
            raise FolderMissing(_text(data))
        typ, data = self.imap.uid("SEARCH", "HEADER", "Message-ID", quote(message_id))
        return typ == "OK" and bool(data and data[0] and data[0].split())

    def append(self, raw, date_time):
        """APPEND ``raw`` as read (``\\Seen``); TooBig/FolderMissing/error."""
        typ, data = self.imap.append(quote(self.name), r"(\Seen)", date_time, raw)
        if self._retry_missing(typ, data):
            typ, data = self.imap.append(quote(self.name), r"(\Seen)", date_time, raw)
        if typ == "OK":
            return data
        text = _text(data)
        lowered = text.lower()
        if any(code in lowered for code in _TOO_BIG):
            raise TooBig(text)
        if any(code in lowered for code in _MISSING):
            raise FolderMissing(text)
        raise imaplib.IMAP4.error(text)

    def append_many(self, messages):
        """APPEND ``messages`` (``[(raw, date_time)]``, read) in one command,
        all or none; False when the server does not offer it or refused them
        (none was added: add each alone, for its own error)."""
        if self._multiappend is None:
            _typ, data = self.imap.capability()
            offered = set(_text(data).upper().split())
            self._multiappend = {"MULTIAPPEND", "LITERAL+"} <= offered
        if (
            not self._multiappend
            or self.imap.utf8_enabled
            or any(_BARE_EOL.search(raw) for raw, _date in messages)
        ):
            return False
        try:
            typ, _data = self.imap.multiappend(quote(self.name), r"(\Seen)", messages)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error:  # BAD: not carried out
            return False
        return typ == "OK"
