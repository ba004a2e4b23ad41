"""18.0.1.4.0: the Sent-copy parts also record whom a mail reached when no
copy is wanted (``reached_only``), so the index of the parts left to gather
leaves those out. Every part written before is a Sent-copy part: the new
column's default (false) already says so, and no row moves."""


def migrate(cr, version):
    if not version:
        return
    cr.execute("DROP INDEX IF EXISTS ally_smtp_sent_copy_part_uncollected_index")
