"""18.0.1.5.0: ``ally.smtp.sent.copy.part`` is now ``ally.smtp.delivery``,
and two fields of the Sent copy say what they are: ``part_ids`` is
``delivery_ids``, ``verify`` is ``look_first``.

One row is one SMTP transaction the provider accepted (whom a mail reached,
and the bytes for its Sent copy), not a MIME part. Before the models load,
the table, everything PostgreSQL names after it and Odoo's record of the
model take the new name, so that Odoo finds the model it knows under that
name. Otherwise it would create an empty ``ally_smtp_delivery`` and, at the
end of the update, delete the model it no longer sees, with its table: whom
each mail in flight reached (a retry would send to them again) and the bytes
of the copies not filed yet. A renamed field keeps its ``ir.model.fields``
record and its column (which Odoo would otherwise drop, and add empty).
"""

import logging

from odoo.tools import SQL

_logger = logging.getLogger(__name__)

OLD, NEW = "ally.smtp.sent.copy.part", "ally.smtp.delivery"
OLD_TABLE, NEW_TABLE = "ally_smtp_sent_copy_part", "ally_smtp_delivery"
# what PostgreSQL and Odoo named after the old table: its name, then "_" or
# the end (LIKE and regexp patterns)
OLD_PREFIX = OLD_TABLE.replace("_", r"\_") + r"\_%"
OLD_XMLIDS = rf"^(model|field|access)_{OLD_TABLE}(_|$)"
# columns that name a model: rows of other models about a delivery (the
# addon makes none, but nothing forbids them)
MODEL_COLUMNS = [
    ("ir_attachment", "res_model"),
    ("ir_filters", "model_id"),
    ("mail_message", "model"),
    ("mail_followers", "res_model"),
    ("mail_activity", "res_model"),
]


def migrate(cr, version):
    if not version:
        return
    cr.execute("SELECT to_regclass(%s)", [OLD_TABLE])
    if cr.fetchone()[0]:
        _rename_table(cr)
    _rename_model(cr)
    _rename_field(cr, "part_ids", "delivery_ids")  # a One2many: no column
    # an earlier attempt may have filed the copy: look for it before adding it
    _rename_field(cr, "verify", "look_first", column=True)


def _rename_table(cr):
    """The table, its id sequence, and the constraints and indexes named after
    it (primary key, foreign keys, the fields' indexes, ``init``'s index),
    named as a new install of 18.0.1.5.0 names them."""
    old, new = SQL.identifier(OLD_TABLE), SQL.identifier(NEW_TABLE)
    _execute(cr, SQL("ALTER TABLE %s RENAME TO %s", old, new))
    _execute(
        cr,
        SQL(
            "ALTER SEQUENCE %s RENAME TO %s",
            SQL.identifier(f"{OLD_TABLE}_id_seq"),
            SQL.identifier(f"{NEW_TABLE}_id_seq"),
        ),
    )
    # a constraint's index (the primary key's) takes its new name with it
    cr.execute(
        """SELECT conname FROM pg_constraint
            WHERE conrelid = %s::regclass AND conname LIKE %s ORDER BY conname""",
        [NEW_TABLE, OLD_PREFIX],
    )
    for (name,) in cr.fetchall():
        _execute(
            cr,
            SQL(
                "ALTER TABLE %s RENAME CONSTRAINT %s TO %s",
                new,
                SQL.identifier(name),
                SQL.identifier(NEW_TABLE + name[len(OLD_TABLE) :]),
            ),
        )
    cr.execute(
        """SELECT i.relname
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = %s::regclass AND i.relname LIKE %s
            ORDER BY i.relname""",
        [NEW_TABLE, OLD_PREFIX],
    )
    for (name,) in cr.fetchall():
        _execute(
            cr,
            SQL(
                "ALTER INDEX %s RENAME TO %s",
                SQL.identifier(name),
                SQL.identifier(NEW_TABLE + name[len(OLD_TABLE) :]),
            ),
        )


def _rename_model(cr):
    """Odoo's record of the model under the new name: the same ``ir.model``,
    ``ir.model.fields`` and ``ir.model.access`` records, with their external
    ids renamed, so that Odoo loads them again and deletes none of them."""
    _execute(cr, SQL("UPDATE ir_model SET model = %s WHERE model = %s", NEW, OLD))
    _execute(
        cr, SQL("UPDATE ir_model_fields SET model = %s WHERE model = %s", NEW, OLD)
    )
    _execute(
        cr,
        SQL("UPDATE ir_model_fields SET relation = %s WHERE relation = %s", NEW, OLD),
    )
    # model_<table>, field_<table>__<field>, access_<table>_system
    _execute(
        cr,
        SQL(
            """UPDATE ir_model_data
                  SET name = regexp_replace(name, %s, %s)
                WHERE module = 'ally_smtp' AND name ~ %s""",
            OLD_XMLIDS,
            rf"\1_{NEW_TABLE}\2",
            OLD_XMLIDS,
        ),
    )
    # external ids of deliveries themselves (an export makes them)
    _execute(cr, SQL("UPDATE ir_model_data SET model = %s WHERE model = %s", NEW, OLD))
    # the foreign keys renamed above, as Odoo recorded them for uninstalling
    _execute(
        cr,
        SQL(
            """UPDATE ir_model_constraint
                  SET name = %s || substr(name, %s)
                WHERE name LIKE %s
                  AND model = (SELECT id FROM ir_model WHERE model = %s)""",
            NEW_TABLE,
            len(OLD_TABLE) + 1,
            OLD_PREFIX,
            NEW,
        ),
    )
    for table, column in MODEL_COLUMNS:
        column = SQL.identifier(column)
        _execute(
            cr,
            SQL(
                "UPDATE %s SET %s = %s WHERE %s = %s",
                SQL.identifier(table),
                column,
                NEW,
                column,
                OLD,
            ),
        )


def _rename_field(cr, old, new, column=False):
    """The Sent copy's field ``old`` under the name ``new``: the same
    ``ir.model.fields`` record and external id, and its column if stored."""
    if column:
        cr.execute(
            """SELECT 1 FROM information_schema.columns
                WHERE table_name = 'ally_smtp_sent_copy' AND column_name = %s""",
            [old],
        )
        if cr.fetchone():
            _execute(
                cr,
                SQL(
                    "ALTER TABLE ally_smtp_sent_copy RENAME COLUMN %s TO %s",
                    SQL.identifier(old),
                    SQL.identifier(new),
                ),
            )
    _execute(
        cr,
        SQL(
            """UPDATE ir_model_fields SET name = %s
                WHERE model = 'ally.smtp.sent.copy' AND name = %s""",
            new,
            old,
        ),
    )
    _execute(
        cr,
        SQL(
            """UPDATE ir_model_data SET name = %s
                WHERE module = 'ally_smtp' AND name = %s""",
            f"field_ally_smtp_sent_copy__{new}",
            f"field_ally_smtp_sent_copy__{old}",
        ),
    )


def _execute(cr, query):
    cr.execute(query)
    rows = f" ({cr.rowcount} rows)" if cr.rowcount >= 0 else ""  # DML only
    _logger.info("ally_smtp: %s%s", cr.mogrify(query).decode(), rows)
