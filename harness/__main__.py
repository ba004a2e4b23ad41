"""``python3 -m harness test|i18n|demo|mailbox`` — see README.md.

The machine's python3 only starts the harness: it finds Odoo, installs the
missing Debian packages, makes sure of the project's virtual environment
(harness/venv.py) and starts the harness again on that environment's python
(harness/cli.py); the local OAuth server's own environment is made sure of
here too. Until then nothing outside the standard library is
imported, and nothing is ever pip-installed into the machine's Python.
"""

import os
import sys

from . import venv
from .odoo import ensure_debian, find_odoo, oauth_venv, odoo_venv


def main():
    if venv.inside("odoo"):
        from .cli import main as run  # needs the environment's packages

        return run()
    odoo_path = find_odoo()
    ensure_debian()
    os.environ["ODOO_PATH"] = str(odoo_path)  # the same Odoo, seen from the venv
    before = venv.freeze(sys.executable) if sys.argv[1:2] == ["test"] else None
    python = odoo_venv(odoo_path)
    if sys.argv[1:2] != ["mailbox"]:  # the OAuth server's, which Services starts
        oauth_venv()
    if before is not None:  # `make test` checks at its end that it is the same
        venv.record_machine(before)
    os.execv(python, [python, "-m", "harness", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
