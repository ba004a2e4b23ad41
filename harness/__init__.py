"""Local mail provider and database for ally_smtp's tests and demo.

Everything runs on loopback, on ports chosen at run time, under one temporary
directory that is removed when the harness stops.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
