# The two commands of README.md. Both need Odoo 18.0 Community: an importable
# `odoo`, else $ODOO_PATH, else /opt/odoo.
PYTHON ?= python3

.PHONY: test demo mailbox
test:
	$(PYTHON) -m harness test

demo:
	$(PYTHON) -m harness demo

mailbox:
	$(PYTHON) -m harness mailbox $(USER)
