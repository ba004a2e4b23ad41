"""How much a mailbox may still send, and when a full window reopens.

Pure functions over what a mailbox sent in the last day: ``history`` is a list
of ``(sent_at, messages, recipients)``, oldest first. A limit of 0 means none.
"""

from datetime import timedelta

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
# limit name -> (window, what it counts: 1 = messages, 2 = recipients)
WINDOWS = {
    "minute": (MINUTE, 1),
    "hour": (HOUR, 1),
    "day": (DAY, 1),
    "recipients_day": (DAY, 2),
}


def _used(history, now, window, column):
    return sum(row[column] for row in history if row[0] > now - window)


def _fits(limits, history, now, size):
    """Whether a mail of ``size`` (messages, recipients) may go at ``now``.

    A mail larger than a limit goes alone into an empty window, or never would.
    """
    for name, limit in limits.items():
        if not limit:
            continue
        window, column = WINDOWS[name]
        used = _used(history, now, window, column)
        if used and used + size[column - 1] > limit:
            return False
    return True


def reopens_at(limits, history, now, size):
    """The first time at which a mail of ``size`` fits again."""
    when = now
    for name, limit in limits.items():
        if not limit:
            continue
        window, column = WINDOWS[name]
        rows = [row for row in history if row[0] > now - window]
        used = sum(row[column] for row in rows)
        for row in rows:
            if not used or used + size[column - 1] <= limit:
                break
            used -= row[column]
            when = max(when, row[0] + window)
    return when


def plan(limits, history, now, sizes):
    """How many of the mails of ``sizes`` go now, in order, and when the next
    one may go (``None`` when all go)."""
    history = list(history)
    taken = 0
    for size in sizes:
        if not _fits(limits, history, now, size):
            return taken, reopens_at(limits, history, now, size)
        history.append((now, *size))
        taken += 1
    return taken, None
