"""18.0.1.5.0: replies come home (``ally_smtp_fetch_replies``), off for the
companies already there.

A new integration brings replies into Odoo by default; an agency that ran
ally_smtp before this version keeps its replies where they went (reading a
consultant's mailbox is the agency's explicit choice, in Settings).
"""

import logging

from odoo import SUPERUSER_ID, api

_logger = logging.getLogger(__name__)


def migrate(cr, version):
    if not version:
        return
    env = api.Environment(cr, SUPERUSER_ID, {})
    companies = env["res.company"].with_context(active_test=False).search([])
    companies.write({"ally_smtp_fetch_replies": False})
    _logger.info(
        "ally_smtp: replies stay off for the %s existing companies", len(companies)
    )
