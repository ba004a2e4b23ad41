"""``python3 -m harness test|demo|mailbox LOGIN`` — see README.md."""

import argparse
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

from .odoo import ensure_dependencies, find_odoo, odoo_bin, write_config
from .services import ROOT, Services

ADDON = "ally_smtp"
TEST_DB = "ally_smtp_test"
LOG_PROBLEM = re.compile(r"^\S+ \S+ \d+ (WARNING|ERROR|CRITICAL) ", re.MULTILINE)


def _stop_on_term(*_):
    raise SystemExit(143)


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
    problems = [m.group(0) for m in LOG_PROBLEM.finditer(text)]
    if result.returncode or problems:
        lines = [line for line in text.splitlines() if LOG_PROBLEM.match(line + " ")]
        print("\n".join(lines or text.splitlines()[-40:]), file=sys.stderr)
        raise SystemExit(f"installing {ADDON} in {db} failed or logged warnings")


def lint():
    step("lint: ruff, pylint-odoo (OCA mandatory checks)")
    checks = [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["pylint", "--rcfile=.pylintrc-mandatory", ADDON],
    ]
    failed = [c for c in checks if subprocess.run(c, cwd=ROOT, check=False).returncode]
    return not failed


def pytest(odoo_path, services, config, junit, extra=()):
    env = dict(
        os.environ,
        PYTHONPATH=str(odoo_path),
        ALLY_SMTP_HARNESS=str(services.info_file),
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--odoo-config={config}",
        f"--odoo-database={TEST_DB}",
        f"--junitxml={junit}",
        "-rs",
        *(extra or [f"{ADDON}/tests"]),
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def skipped(junit):
    """Skipped tests count as failures: a test that did not run proved nothing."""
    root = ET.parse(junit).getroot()
    return sum(int(s.get("skipped", 0)) for s in root.iter("testsuite"))


def cmd_test(args):
    odoo_path = find_odoo()
    print(f"harness: Odoo found at {odoo_path}", flush=True)
    ensure_dependencies(odoo_path)
    ok = lint() if not args.pytest_args else True
    with Services() as services:
        config = write_config(services, odoo_path, services.dir / "odoo.conf")
        step(f"install {ADDON} in a new database")
        install(odoo_path, config, TEST_DB, "--without-demo=all")
        step("tests (pytest-odoo)")
        junit = services.dir / "junit.xml"
        code = pytest(odoo_path, services, config, junit, args.pytest_args)
        ok = ok and code == 0
        if junit.exists() and skipped(junit):
            print(f"harness: {skipped(junit)} test(s) skipped: failing", flush=True)
            ok = False
    print("\nharness:", "all green" if ok else "FAILED", flush=True)
    return 0 if ok else 1


def main():
    signal.signal(signal.SIGTERM, _stop_on_term)
    parser = argparse.ArgumentParser(prog="python3 -m harness")
    sub = parser.add_subparsers(dest="command", required=True)
    test = sub.add_parser("test", help="run every test and linter on real servers")
    test.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="run only these pytest arguments (no linters), e.g. -k credentials",
    )
    args = parser.parse_args()
    return {"test": cmd_test}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
