# Commands of README.md. They need Odoo 18.0 Community: an importable `odoo`,
# else $ODOO_PATH, else /opt/odoo.
PYTHON ?= python3

.PHONY: test i18n
# Every test and linter, against real PostgreSQL, IMAP and SMTP servers.
test:
	$(PYTHON) -m harness test

# Export ally_smtp/i18n/ally_smtp.pot and update the .po files from it.
i18n:
	$(PYTHON) -m harness i18n
