"""Find Odoo, make sure what it and the tests need is installed, run it.

Standard library only, like venv.py: the machine's python3 uses it to find
Odoo and build the project's environment.
"""

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import IS_ROOT, ROOT, venv

ADDON = "ally_smtp"
LOG_PROBLEM = re.compile(r"^\S+ \S+ \d+ (WARNING|ERROR|CRITICAL) ", re.MULTILINE)

DEBIAN_PACKAGES = {
    # command or file that proves it is there -> Debian package
    "dovecot": "dovecot-imapd",
    "/usr/lib/postgresql": "postgresql",
    "chromium": "chromium",
    "msgmerge": "gettext",
}
# What the environment must import: Odoo, the addon's dependency, the tools.
VENV_IMPORTS = [
    "odoo.cli",
    "odoo.addons.base",
    "cryptography",
    "aiosmtpd",
    "pytest_odoo",
    "ruff",
    "pylint_odoo",
    "websocket",
    "whool",
]
OAUTH_IMPORTS = ["authlib.oauth2.rfc7662", "flask", "werkzeug.serving"]


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
    if importlib.util.find_spec("ensurepip") is None:  # Debian's python3 -m venv
        missing.append("python3-venv")
    return missing


def ensure_debian():
    """Install the Debian packages the harness needs and are not there yet."""
    missing = _missing_debian()
    if not missing:
        return
    if not IS_ROOT:
        raise SystemExit(
            "ally_smtp: Debian packages are missing. As root, run:\n"
            "  apt-get update && apt-get install -y --no-install-recommends "
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


def odoo_venv(odoo_path):
    """The python of the project's environment (harness/venv.py): Odoo's
    requirements as Odoo pins them for this Python, the addon's dependencies
    and the test tools of requirements-test.txt."""
    requirements = [
        *odoo_requirements(odoo_path),
        *addon_requirements(),
        *(ROOT / "requirements-test.txt").read_text().splitlines(),
    ]
    return venv.ensure("odoo", requirements, VENV_IMPORTS, pythonpath=odoo_path)


def oauth_venv():
    """The python of the local OAuth server's own environment
    (requirements-oauth.txt): authlib needs a newer cryptography than Odoo's."""
    requirements = (ROOT / "requirements-oauth.txt").read_text().splitlines()
    return venv.ensure("oauth", requirements, OAUTH_IMPORTS)


def addon_requirements():
    """The manifest's Python dependencies (their import and PyPI names agree)."""
    manifest = ast.literal_eval((ROOT / ADDON / "__manifest__.py").read_text())
    return manifest["external_dependencies"]["python"]


def odoo_requirements(odoo_path):
    """Odoo's requirements.txt lines, adjusted for installing from PyPI wheels."""
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
    # gevent (Odoo's long-polling worker in --workers mode) looks its plugins up
    # through the venv's pkg_resources, which cannot find zope.* 6+/8+ (their
    # dist-info names changed): the worker would die at start
    lines += ["zope.event==5.0", "zope.interface==7.2"]
    return lines


def write_config(services, odoo_path, path, extra=None, addons=(ROOT,)):
    """An Odoo configuration for the harness's servers; ``addons`` are the
    directories of the addons path after Odoo's own."""
    db = services.info["db"]
    addons_path = [odoo_path / "odoo" / "addons", odoo_path / "addons", *addons]
    options = {
        "addons_path": ",".join(map(str, addons_path)),
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


def odoo_bin(
    odoo_path, config, *args, env=None, subcommand=(), python=sys.executable, **kwargs
):
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(odoo_path))
    return subprocess.run(
        [
            python,
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


def run_pytest(odoo_path, services, junit, args, **env):
    """pytest on the project's environment, with Odoo and the harness servers
    known to it; a JUnit report in ``junit`` (to count what was skipped)."""
    env = dict(
        os.environ,
        **env,
        PYTHONPATH=str(odoo_path),
        ALLY_SMTP_HARNESS=str(services.info_file),
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs"]
    cmd += [f"--junitxml={junit}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def step(title):
    print(f"\n=== {title}", flush=True)


def install(odoo_path, config, db, *extra, python=sys.executable):
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
        python=python,
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
