# The two commands of README.md. Both need Odoo 18.0 Community: an importable
# `odoo`, else $ODOO_PATH, else /opt/odoo.
PYTHON ?= python3

.PHONY: test demo mailbox i18n
test:
	$(PYTHON) -m harness test

demo:
	$(PYTHON) -m harness demo

mailbox:
	$(PYTHON) -m harness mailbox $(USER)

# Export ally_smtp/i18n/ally_smtp.pot and update the .po files from it.
i18n:
	$(PYTHON) -m harness i18n
