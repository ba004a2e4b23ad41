"""Find Odoo, make sure what it and the tests need is installed, run it."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .services import IS_ROOT, ROOT

ADDON = "ally_smtp"
LOG_PROBLEM = re.compile(r"^\S+ \S+ \d+ (WARNING|ERROR|CRITICAL) ", re.MULTILINE)

DEBIAN_PACKAGES = {
    # command or file that proves it is there -> Debian package
    "dovecot": "dovecot-imapd",
    "/usr/lib/postgresql": "postgresql",
    "chromium": "chromium",
}
PYTHON_MODULES = ["aiosmtpd", "pytest_odoo", "ruff", "pylint_odoo", "websocket"]


class OdooNotFound(SystemExit):
    pass


def find_odoo():
    """Return the directory holding Odoo's ``odoo`` package and ``odoo-bin``."""
    spec = importlib.util.find_spec("odoo")
    if spec and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))).parent
        if (path / "odoo" / "release.py").exists():
            return path
    looked = ["an importable 'odoo' package"]
    for candidate in (os.environ.get("ODOO_PATH"), "/opt/odoo"):
        if not candidate:
            continue
        looked.append(candidate)
        if (Path(candidate) / "odoo" / "release.py").exists():
            return Path(candidate)
    raise OdooNotFound(
        "ally_smtp: Odoo 18.0 Community was not found. Looked for "
        + ", ".join(looked)
        + ".\nPut an Odoo 18.0 source tree at /opt/odoo, or point ODOO_PATH at "
        "one (the directory that holds odoo-bin), or install Odoo so that "
        "'python3 -c \"import odoo\"' works."
    )


def _missing_debian():
    missing = []
    for probe, package in DEBIAN_PACKAGES.items():
        found = os.path.exists(probe) if probe.startswith("/") else shutil.which(probe)
        if not found:
            missing.append(package)
    return missing


def ensure_dependencies(odoo_path):
    """Install what the harness needs and is not there yet."""
    missing = _missing_debian()
    if missing:
        if not IS_ROOT:
            raise SystemExit(
                "ally_smtp: missing Debian packages, install them as root: "
                + " ".join(missing)
            )
        print("harness: installing", *missing, flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if any(importlib.util.find_spec(m) is None for m in PYTHON_MODULES):
        subprocess.run([*pip, "-r", str(ROOT / "requirements-test.txt")], check=True)
    probe = subprocess.run(
        [sys.executable, "-c", "import odoo.cli, odoo.addons.base"],
        cwd=odoo_path,
        capture_output=True,
        check=False,
    )
    if probe.returncode:
        print("harness: installing Odoo's Python requirements", flush=True)
        subprocess.run(
            [*pip, "-r", "/dev/stdin"],
            input=odoo_requirements(odoo_path),
            text=True,
            check=True,
        )


def odoo_requirements(odoo_path):
    """Odoo's requirements.txt, adjusted for installing from PyPI wheels."""
    lines = []
    for line in (odoo_path / "requirements.txt").read_text().splitlines():
        name = line.split("=")[0].split(";")[0].strip().lower()
        if name == "python-ldap":  # LDAP login only; needs C headers
            continue
        if name == "psycopg2":
            line = line.replace("psycopg2", "psycopg2-binary", 1)
        if name == "cbor2" and "< '3.12'" in line:  # 5.4.2 does not build here
            line = "cbor2==5.6.5 ; python_version < '3.12'"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_config(services, odoo_path, path, extra=None):
    db = services.info["db"]
    options = {
        "addons_path": ",".join(
            [str(odoo_path / "odoo" / "addons"), str(odoo_path / "addons"), str(ROOT)]
        ),
        "data_dir": str(services.dir / "odoo-data"),
        "db_host": db["host"],
        "db_port": db["port"],
        "db_user": db["user"],
        "db_password": "False",
        "list_db": "False",
        "http_interface": "127.0.0.1",
        "ally_smtp_ca_file": services.info["ca_file"],
    }
    options.update(extra or {})
    path.write_text("[options]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return path


def odoo_bin(odoo_path, config, *args, env=None, subcommand=(), **kwargs):
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(odoo_path))
    return subprocess.run(
        [
            sys.executable,
            str(odoo_path / "odoo-bin"),
            *subcommand,
            "-c",
            str(config),
            *args,
        ],
        env=env,
        check=False,
        **kwargs,
    )


def step(title):
    print(f"\n=== {title}", flush=True)


def install(odoo_path, config, db, *extra):
    """Install the addon in a new database; any WARNING/ERROR logged fails."""
    log = config.parent / f"install-{db}.log"
    result = odoo_bin(
        odoo_path,
        config,
        "-d",
        db,
        "-i",
        ADDON,
        "--stop-after-init",
        "--no-http",
        f"--logfile={log}",
        *extra,
    )
    text = log.read_text() if log.exists() else ""
    problems = problem_records(text)
    if result.returncode or problems:
        print("\n".join(problems or text.splitlines()[-40:]), file=sys.stderr)
        raise SystemExit(f"installing {ADDON} in {db} failed or logged warnings")


def problem_records(log_text):
    """The WARNING/ERROR records of an Odoo log, tracebacks included."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ )", log_text)
    return [r for r in records if LOG_PROBLEM.match(r + " ")]


def odoo_popen(odoo_path, config, *args, env=None):
    """Odoo running in the background (the demo server)."""
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(odoo_path))
    command = [sys.executable, str(odoo_path / "odoo-bin"), "-c", str(config), *args]
    return subprocess.Popen(command, env=env)
