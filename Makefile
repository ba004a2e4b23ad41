# Commands of README.md. They need Odoo 18.0 Community: an importable `odoo`,
# else $ODOO_PATH, else /opt/odoo. $(PYTHON) only starts them: they run from the
# project's virtual environment, .venv/ (or $ALLY_SMTP_VENV), which the first
# run builds and later runs reuse (harness/venv.py).
PYTHON ?= python3

.PHONY: demo test mailbox i18n screenshots bench
# Odoo with ally_smtp, demo data and a local mail provider on http://localhost:8069.
demo:
	$(PYTHON) -m harness demo

# What a demo mailbox holds: make mailbox USER=ana (or bruno, student1@school.test).
mailbox:
	$(PYTHON) -m harness mailbox $(USER)

# Every test and linter, against real PostgreSQL, IMAP and SMTP servers.
test:
	$(PYTHON) -m harness test

# Export ally_smtp/i18n/ally_smtp.pot and update the .po files from it.
i18n:
	$(PYTHON) -m harness i18n

# Refresh the screenshots of docs/ (English and pt_BR) from the browser tours.
screenshots:
	$(PYTHON) -m harness test --tours-only --screenshots docs

# Queue-run speed of the personal path against stock Odoo sending (bench/).
bench:
	$(PYTHON) -m harness test bench/bench_send.py bench/bench_replies.py -s
