"""18.0.1.5.0: ``mail.mail.ally_smtp_tried`` is ``ally_smtp_partly_sent``: a
mail kept queued after an attempt that may have reached some of its
recipients. The column and Odoo's record of the field are renamed, so that
every queued mail keeps its value."""


def migrate(cr, version):
    if not version:
        return
    cr.execute(
        """SELECT 1 FROM information_schema.columns
            WHERE table_name = 'mail_mail' AND column_name = 'ally_smtp_tried'"""
    )
    if not cr.fetchone():
        return
    cr.execute(
        "ALTER TABLE mail_mail RENAME COLUMN ally_smtp_tried TO ally_smtp_partly_sent"
    )
    cr.execute(
        """UPDATE ir_model_fields SET name = 'ally_smtp_partly_sent'
            WHERE model = 'mail.mail' AND name = 'ally_smtp_tried'"""
    )
    cr.execute(
        """UPDATE ir_model_data SET name = 'field_mail_mail__ally_smtp_partly_sent'
            WHERE module = 'ally_smtp' AND model = 'ir.model.fields'
              AND name = 'field_mail_mail__ally_smtp_tried'"""
    )
