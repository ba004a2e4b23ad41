"""Virtual environments of the project, built with the machine's ``python -m venv``.

Standard library only: the machine's python3 runs this before any harness
code that needs other packages. Each environment has a name and a list of
requirement lines; a tool that needs other libraries than Odoo's (an OAuth
server needing a newer ``cryptography`` than Odoo's pin, say) gets its own
with one more ``ensure()`` call, never a place in Odoo's.
"""

import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import ROOT

STAMP = "ally_smtp.stamp"
# A file with the machine's `pip freeze` from before the run, checked at its end.
MACHINE_RECORD = "ALLY_SMTP_MACHINE_PACKAGES"


def path(name):
    """Where environment ``name`` lives: ``$ALLY_SMTP_VENV`` (default ``.venv``)
    for Odoo's, ``<that>-<name>`` beside it for any other."""
    base = Path(os.environ.get("ALLY_SMTP_VENV") or ROOT / ".venv").absolute()
    return base if name == "odoo" else base.with_name(f"{base.name}-{name}")


def python(directory):
    return directory / "bin" / "python"


def inside(name):
    """Whether this process runs on environment ``name``'s python."""
    return Path(sys.prefix).resolve() == path(name).resolve()


def ensure(name, requirements, imports, pythonpath=None):
    """Return the python of environment ``name``, holding ``requirements``.

    It is reused while its stamp (the base Python and the requirement lines)
    matches and ``imports`` import; otherwise it is built anew. The stamp is
    written last, so that a build cut short is never trusted.
    """
    directory = path(name)
    text = "".join(f"{line}\n" for line in requirements)
    key = "\n".join([sys.version, sys.base_prefix, text, *imports])
    stamp = hashlib.sha256(key.encode()).hexdigest()
    stamp_file = directory / STAMP
    if not stamp_file.exists():
        why = "new, or its last build did not finish"
    elif stamp_file.read_text() != stamp:
        why = "its requirements changed"
    elif not _imports(directory, imports, pythonpath):
        why = "it is broken"
    else:
        return python(directory)
    print(f"harness: building the environment {directory} ({why})", flush=True)
    create(directory)
    (directory / "requirements.txt").write_text(text)
    pip(python(directory), "install", "-r", directory / "requirements.txt")
    if not _imports(directory, imports, pythonpath, quiet=False):
        raise SystemExit(f"harness: {directory} is built but cannot import {imports}")
    stamp_file.write_text(stamp)
    return python(directory)


def create(directory, *options):
    """A new virtual environment at ``directory``, replacing an old one."""
    if directory.exists():
        if not (directory / "pyvenv.cfg").exists() and any(directory.iterdir()):
            raise SystemExit(
                f"harness: {directory} is not a virtual environment; remove it "
                "or point ALLY_SMTP_VENV elsewhere"
            )
        shutil.rmtree(directory)
    subprocess.run([sys.executable, "-m", "venv", *options, directory], check=True)


def pip(python, *args):
    command = [python, "-m", "pip", "-q", "--disable-pip-version-check", *args]
    if subprocess.run(command, check=False).returncode:
        raise SystemExit(f"harness: pip {args[0]} failed (see above)")


def freeze(python):
    """What ``python -m pip freeze`` lists."""
    command = [python, "-m", "pip", "freeze"]
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout


def record_machine(packages):
    """Keep the machine's ``packages`` (its ``pip freeze``) for ``machine_unchanged``
    in the processes this one starts."""
    record = path("odoo") / "machine-packages.json"
    record.write_text(json.dumps({"python": sys.executable, "freeze": packages}))
    os.environ[MACHINE_RECORD] = str(record)


def machine_unchanged():
    """Whether the machine's Python lists the packages it had before the run."""
    if not os.environ.get(MACHINE_RECORD):
        print("harness: the machine's Python packages were not recorded", flush=True)
        return True
    before = json.loads(Path(os.environ[MACHINE_RECORD]).read_text())
    after = freeze(before["python"])
    if after == before["freeze"]:
        count = len(after.splitlines())
        print(
            f"harness: the machine's Python ({before['python']}) lists the same "
            f"{count} packages as before the run",
            flush=True,
        )
        return True
    diff = difflib.unified_diff(
        before["freeze"].splitlines(),
        after.splitlines(),
        "before",
        "after",
        lineterm="",
    )
    print(f"harness: the run changed {before['python']}'s packages:", *diff, sep="\n")
    return False


def _imports(directory, imports, pythonpath, quiet=True):
    env = dict(os.environ, PYTHONPATH=str(pythonpath)) if pythonpath else None
    try:
        result = subprocess.run(
            [python(directory), "-c", "import " + ", ".join(imports)],
            cwd=directory,
            env=env,
            capture_output=quiet,
            check=False,
        )
    except OSError:  # no python there (any more)
        return False
    return result.returncode == 0
