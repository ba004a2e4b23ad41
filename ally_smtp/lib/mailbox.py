"""SMTP and IMAP sessions with verified TLS, and the IMAP Sent folder."""

import binascii
import email.contentmanager
import imaplib
import re
import smtplib
import ssl
import uuid

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
# a base64 body (an attachment) this large is put into the flattened message
# here, in pieces of PIECE bytes, rather than by the standard library; a
# message this large goes in DATA in pieces too
LARGE = 1024 * 1024
PIECE = 256 * 1024
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/=\n]*")
_BODY_TOKEN = re.compile(rb"ally-smtp-body-[0-9a-f]{32}")
_LINE_DOT = re.compile(rb"^\.", re.MULTILINE)


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


class Attachment:
    """The content of an attachment for ``EmailMessage.add_attachment``, which
    encodes it as the standard library does (base64) but in pieces: not one
    string per line (3.5 times the attachment at the peak)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


def encode_base64(data, max_line_length):
    """``email.contentmanager``'s base64 of ``data`` (lines of at most
    ``max_line_length``, each ending in a newline), made in pieces."""
    per_line = max_line_length // 4 * 3
    step = per_line * (PIECE // max_line_length)
    view, pieces = memoryview(data), []
    for start in range(0, len(view), step):
        chunk = view[start : start + step]
        lines = [
            binascii.b2a_base64(chunk[i : i + per_line])
            for i in range(0, len(chunk), per_line)
        ]
        pieces.append(b"".join(lines).decode("ascii"))
    return "".join(pieces)


def _set_attachment(msg, content, *args, cte="base64", **kwargs):
    if cte != "base64":
        return email.contentmanager.set_bytes_content(
            msg, content.data, *args, cte=cte, **kwargs
        )
    email.contentmanager.set_bytes_content(msg, b"", *args, **kwargs)
    msg.set_payload(encode_base64(content.data, msg.policy.max_line_length))
    return None


# the content manager of the standard library's policies (Odoo uses SMTP)
email.contentmanager.raw_data_manager.add_set_handler(Attachment, _set_attachment)


class _Unexpected(Exception):
    """The flattened message is not as expected: flatten it the usual way."""


def _with_bodies(flat, bodies):
    """``flat`` with each token replaced by its body of ``bodies``, lines ending
    in CRLF as the generator ends them: the bytes the standard library makes
    of the whole message, made once, in pieces."""
    tokens = _BODY_TOKEN.findall(flat)
    if sorted(tokens) != sorted(bodies):
        raise _Unexpected(tokens)
    size = len(flat) + sum(
        len(body) + body.count("\n") - len(token)
        for token, (_part, body) in bodies.items()
    )
    message, pos, start = bytearray(size), 0, 0
    for match in _BODY_TOKEN.finditer(flat):
        message[pos : pos + match.start() - start] = flat[start : match.start()]
        pos += match.start() - start
        body = bodies[match.group()][1]
        for i in range(0, len(body), PIECE):
            piece = body[i : i + PIECE].encode("ascii").replace(b"\n", b"\r\n")
            message[pos : pos + len(piece)] = piece
            pos += len(piece)
        start = match.end()
    message[pos:] = flat[start:]
    return message


class _LargeBodies:
    """Flatten a message with a large attachment without the standard
    library's object per line and whole copies (four times the message at
    the peak): the large base64 bodies are set aside, the rest is flattened
    as usual and the bodies are put back into those bytes, in pieces. Only
    base64 text, which flattening does not change but for line endings."""

    _ally_smtp_bodies = None

    def send_message(self, msg, *args, **kwargs):
        bodies = {}
        for part in msg.walk():
            body = part.get_payload()
            if (
                isinstance(body, str)
                and len(body) >= LARGE
                and body.isascii()
                and _BASE64_BODY.fullmatch(body)
            ):
                token = f"ally-smtp-body-{uuid.uuid4().hex}"
                bodies[token.encode()] = (part, body)
                part.set_payload(token)
        self._ally_smtp_bodies = bodies
        try:
            return super().send_message(msg, *args, **kwargs)
        except _Unexpected:  # raised before anything is sent
            self._ally_smtp_bodies = None
            for part, body in bodies.values():
                part.set_payload(body)
            return super().send_message(msg, *args, **kwargs)
        finally:
            self._ally_smtp_bodies = None
            for part, body in bodies.values():
                part.set_payload(body)

    def sendmail(self, from_addr, to_addrs, msg, *args, **kwargs):
        if self._ally_smtp_bodies:
            msg = _with_bodies(msg, self._ally_smtp_bodies)
        return super().sendmail(from_addr, to_addrs, msg, *args, **kwargs)


class _StreamData:
    """smtplib's DATA makes two more whole copies of the message (the lines
    starting with a dot doubled, then the terminator appended): a large
    message is sent in pieces of whole lines instead, each piece dot-stuffed
    on its own, so that it exists once more only a piece at a time."""

    def data(self, msg):
        if isinstance(msg, str) or len(msg) < LARGE:
            return super().data(msg)
        self.putcmd("data")
        code, reply = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        view, pos = memoryview(msg), 0
        while pos < len(msg):
            end = msg.find(b"\n", pos + PIECE)
            end = len(msg) if end < 0 else end + 1
            piece = _LINE_DOT.sub(b"..", view[pos:end])
            pos = end
            if pos == len(msg):
                piece += b".\r\n" if piece.endswith(b"\r\n") else b"\r\n.\r\n"
            self.send(piece)
        return self.getreply()


class SMTP(_LargeBodies, _KeepSent, _StreamData, _QuitQuietly, smtplib.SMTP):
    pass


class SMTP_SSL(_LargeBodies, _KeepSent, _StreamData, _QuitQuietly, smtplib.SMTP_SSL):
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

    def find(self, message_ids):
        """Those of ``message_ids`` that the folder already holds: one SEARCH
        for all, then the Message-ID of what it found, when there are several."""
        typ, data = self.imap.select(quote(self.name), readonly=True)
        if self._retry_missing(typ, data):
            typ, data = self.imap.select(quote(self.name), readonly=True)
        if typ != "OK":
            raise FolderMissing(_text(data))
        keys = ["OR"] * (len(message_ids) - 1)
        for message_id in message_ids:
            keys += ["HEADER", "Message-ID", quote(message_id)]
        typ, data = self.imap.uid("SEARCH", *keys)
        uids = data[0].split() if typ == "OK" and data and data[0] else []
        if len(message_ids) < 2 or not uids:
            return set(message_ids) if uids else set()
        typ, data = self.imap.uid(
            "FETCH", b",".join(uids).decode(), "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
        )
        if typ != "OK":  # found, but which ones: not known, so none is added
            raise imaplib.IMAP4.error(_text(data))
        # as the server's HEADER search: a substring, whatever the case
        found = b"".join(item[1] for item in data if isinstance(item, tuple)).lower()
        return {m for m in message_ids if m.lower().encode() in found}

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
