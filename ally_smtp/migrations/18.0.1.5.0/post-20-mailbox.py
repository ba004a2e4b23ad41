"""18.0.1.5.0: a user's mailbox is a model of its own, ``ally.smtp.mailbox``.

Every user who had anything of a mailbox on ``res.users`` (switched on, an
address, a stored password, a state other than "not used") gets one row with
the same values: the encrypted password as it is (nobody types it again), its
state, last error, Test date, Sent folder, pause and the server fingerprint
(``ally_smtp_server_key`` before). Then the old columns are dropped, so that
no copy of a password is left on ``res_users``.

Mailbox addresses are unique per company (lower-case, trimmed). 18.0.1.3.0
and later enforced it with an index of their own, so no duplicate can be
there; should one be, the user who last tested it successfully keeps the
address and each other user keeps their row with the address cleared and
the mailbox off (logged with their ids), so nothing is deleted.

Personal mail servers sign in as their owner (``smtp_authentication``
``ally_smtp``), no longer as a "login" server without a password.
"""

import logging

_logger = logging.getLogger(__name__)

OLD_COLUMNS = (
    "ally_smtp_use_own",
    "ally_smtp_email",
    "ally_smtp_password_crypt",
    "ally_smtp_server_key",
    "ally_smtp_state",
    "ally_smtp_last_error",
    "ally_smtp_tested_at",
    "ally_smtp_sent_folder",
    "ally_smtp_paused_until",
    "ally_smtp_pause_reason",
)


def migrate(cr, version):
    if not version:
        return
    cr.execute(
        """SELECT column_name FROM information_schema.columns
            WHERE table_name = 'res_users' AND column_name = ANY(%s)""",
        [list(OLD_COLUMNS)],
    )
    if {row[0] for row in cr.fetchall()} != set(OLD_COLUMNS):
        _logger.info("ally_smtp: no mailbox columns on res_users; nothing to move")
        return
    cr.execute(
        """SELECT array_agg(id ORDER BY ally_smtp_state = 'ok' DESC,
                                        ally_smtp_tested_at DESC NULLS LAST, id)
             FROM res_users
            WHERE ally_smtp_email IS NOT NULL
            GROUP BY company_id, lower(trim(ally_smtp_email))
           HAVING count(*) > 1"""
    )
    cleared = [user_id for (ids,) in cr.fetchall() for user_id in ids[1:]]
    if cleared:
        _logger.warning(
            "ally_smtp: users %s shared a mailbox address with another user of "
            "their company; their address is cleared and their mailbox off",
            cleared,
        )
    cr.execute(
        """INSERT INTO ally_smtp_mailbox (
               user_id, company_id, use_own, address, password_crypt,
               server_fingerprint, state, last_error, tested_at, sent_folder,
               paused_until, pause_reason,
               create_uid, create_date, write_uid, write_date)
           SELECT u.id, u.company_id,
                  COALESCE(u.ally_smtp_use_own, false) AND NOT u.id = ANY(%(cleared)s),
                  CASE WHEN u.id = ANY(%(cleared)s) THEN NULL
                       ELSE u.ally_smtp_email END,
                  u.ally_smtp_password_crypt, u.ally_smtp_server_key,
                  CASE WHEN u.id = ANY(%(cleared)s) THEN 'off'
                       ELSE COALESCE(u.ally_smtp_state, 'off') END,
                  u.ally_smtp_last_error, u.ally_smtp_tested_at,
                  u.ally_smtp_sent_folder, u.ally_smtp_paused_until,
                  u.ally_smtp_pause_reason,
                  1, now() AT TIME ZONE 'UTC', 1, now() AT TIME ZONE 'UTC'
             FROM res_users u
            WHERE u.ally_smtp_use_own
               OR u.ally_smtp_email IS NOT NULL
               OR u.ally_smtp_password_crypt IS NOT NULL
               OR COALESCE(u.ally_smtp_state, 'off') != 'off'
           ON CONFLICT (user_id) DO NOTHING""",
        {"cleared": cleared},
    )
    _logger.info("ally_smtp: %s mailbox(es) moved to ally.smtp.mailbox", cr.rowcount)
    cr.execute(
        """UPDATE ir_mail_server SET smtp_authentication = 'ally_smtp'
            WHERE ally_smtp_owner_id IS NOT NULL"""
    )
    cr.execute("DROP INDEX IF EXISTS res_users_ally_smtp_email_company_uniq")
    for column in OLD_COLUMNS:
        cr.execute(f"ALTER TABLE res_users DROP COLUMN {column}")
