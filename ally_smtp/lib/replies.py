"""Reading a person's mailbox for the replies to mail sent from Odoo, and
nothing else: folders are only EXAMINEd (read-only, so no flag changes),
headers are read first and a body only for a message that answers a
message Odoo knows."""

import email.parser
import email.policy
import imaplib
import re

from .mailbox import quote

# the three headers that decide whether a message is a reply
HEADERS = "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID IN-REPLY-TO REFERENCES)])"
# after a UIDVALIDITY change (or the first run) only the last RESCAN UIDs are
# looked at again: never the whole mailbox
RESCAN = 100
# UIDs asked for in one FETCH of headers
CHUNK = 500
_UID = re.compile(rb"\bUID (\d+)")
_MSGID = re.compile(r"<[^<>\s]+>")
_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


class Folder:
    """A folder EXAMINEd in a logged-in session: its ``uidvalidity`` and
    ``uidnext`` (strings of digits, as the server says them)."""

    def __init__(self, imap, name):
        self.imap, self.name = imap, name
        typ, data = imap.select(quote(name), readonly=True)
        if typ != "OK":
            raise FolderGone(b" ".join(d for d in data if d).decode(errors="replace"))
        self.uidvalidity = _code(imap, "UIDVALIDITY")
        self.uidnext = int(_code(imap, "UIDNEXT") or 0)
        self.exists = int(data[0] or 0) if data and data[0] else 0

    def start(self, uidvalidity, last_uid):
        """The first UID to look at, after ``last_uid`` of ``uidvalidity``
        (a watermark, or ``None`` for none yet)."""
        if uidvalidity == self.uidvalidity and last_uid is not None:
            return int(last_uid) + 1
        # unknown or renumbered folder: a bounded window, never everything
        return max(1, (self.uidnext or 1) - RESCAN)

    def headers(self, start):
        """``[(uid, message_id, [message ids it answers])]`` from ``start``
        on, in UID order, read in chunks; bodies are not read."""
        if self.uidnext and start >= self.uidnext or not self.exists:
            return []
        result = []
        while True:
            end = start + CHUNK - 1
            upper = "*" if self.uidnext and end >= self.uidnext - 1 else end
            typ, data = self.imap.uid("FETCH", f"{start}:{upper}", HEADERS)
            if typ != "OK":
                raise imaplib.IMAP4.error(_text(data))
            for item in data or []:
                if not isinstance(item, tuple):
                    continue
                match = _UID.search(item[0])
                if not match or int(match.group(1)) < start:
                    continue  # "n:*" answers the last message when n is past it
                headers = _PARSER.parsebytes(item[1])
                answers = _MSGID.findall(
                    " ".join(
                        str(headers.get(name) or "")
                        for name in ("In-Reply-To", "References")
                    )
                )
                found = _MSGID.findall(str(headers.get("Message-ID") or ""))
                result.append((int(match.group(1)), found[0] if found else "", answers))
            if upper == "*" or not self.uidnext:
                break
            start = end + 1
        result.sort()
        return result

    def body(self, uid):
        """The whole message ``uid``, read without setting ``\\Seen``."""
        typ, data = self.imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
        if typ != "OK":
            raise imaplib.IMAP4.error(_text(data))
        for item in data or []:
            if isinstance(item, tuple):
                return item[1]
        return None


class FolderGone(imaplib.IMAP4.error):
    """The folder cannot be EXAMINEd (renamed, deleted)."""


def _code(imap, name):
    _typ, data = imap.response(name)
    value = data and data[-1]
    return value.decode() if isinstance(value, bytes) else value


def _text(data):
    return b" ".join(d for d in data or [] if isinstance(d, bytes)).decode(
        errors="replace"
    )
