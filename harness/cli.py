"""The harness's commands, run on the project's environment (see __main__.py)."""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

from . import venv
from .demo import cmd_demo, cmd_mailbox
from .odoo import (
    ADDON,
    find_odoo,
    install,
    odoo_bin,
    problem_records,
    run_pytest,
    step,
    write_config,
)
from .prefork import run_e2e
from .services import ROOT, Services, free_port
from .upgrade import check_upgrade
from .wheel import check_wheel

TEST_DB = "ally_smtp_test"
TOURS = f"{ADDON}/tests/test_tours.py"
I18N_DB = "ally_smtp_i18n"
I18N_DIR = ROOT / ADDON / "i18n"
LANGUAGES = ["pt_BR"]  # every other <lang>.po already in I18N_DIR is updated too
PLURAL_FORMS = {  # as in Odoo's own translations of that language
    "pt_BR": "nplurals=3; plural=(n == 0 || n == 1) ? 0 : "
    "n != 0 && n % 1000000 == 0 ? 1 : 2;",
}
POT_DATES = re.compile(r'^"(POT-Creation-Date|PO-Revision-Date): .*\\n"$', re.MULTILINE)


def _stop_on_term(*_):
    raise SystemExit(143)


def lint():
    step("lint: ruff, pylint-odoo (OCA mandatory checks)")
    checks = [
        [sys.executable, "-m", "ruff", "check", "."],
        [sys.executable, "-m", "ruff", "format", "--check", "."],
        [sys.executable, "-m", "pylint", "--rcfile=.pylintrc-mandatory", ADDON],
    ]
    failed = [c for c in checks if subprocess.run(c, cwd=ROOT, check=False).returncode]
    return not failed


def pytest(odoo_path, services, config, junit, extra=()):
    args = [f"--odoo-config={config}", f"--odoo-database={TEST_DB}"]
    args += extra or [f"{ADDON}/tests", "harness", f"--ignore={TOURS}"]
    return run_pytest(odoo_path, services, junit, args)


def export_pot(odoo_path, config, db, pot):
    """Export the addon's terms from ``db`` to the template ``pot``.

    The template is left untouched when only its dates would change, so that
    running again without new strings changes no file.
    """
    exported = config.parent / pot.name
    log = config.parent / f"export-{db}.log"
    result = odoo_bin(
        odoo_path,
        config,
        "-d",
        db,
        f"--i18n-export={exported}",
        f"--modules={ADDON}",
        "--stop-after-init",
        "--no-http",
        f"--logfile={log}",
    )
    text = log.read_text() if log.exists() else ""
    if result.returncode or not exported.exists() or problem_records(text):
        print("\n".join(text.splitlines()[-40:]), file=sys.stderr)
        raise SystemExit(f"exporting the terms of {ADDON} from {db} failed")
    gettext("msgfmt", "--check-format", "-o", os.devnull, exported)
    new = exported.read_text()
    old = pot.read_text() if pot.exists() else ""
    if POT_DATES.sub("", new) != POT_DATES.sub("", old):
        shutil.copyfile(exported, pot)
    return count_entries(new)


def count_entries(text):
    """How many messages the .po/.pot ``text`` has, its header not counted."""
    return len(re.findall(r'^msgid (?!""\nmsgstr )', text, re.MULTILINE))


def gettext(*cmd, **kwargs):
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, check=False, **kwargs)
    if result.returncode:
        raise SystemExit(f"harness: {cmd[0]} failed on {cmd[-1]}")
    return result


def set_header(text, field, value):
    """Set ``field`` in the header of the .po ``text``, which must have it."""
    line = f'"{field}: {value}\\n"'
    pattern = rf'^"{re.escape(field)}: .*\\n"$'
    return re.sub(pattern, lambda _: line, text, count=1, flags=re.MULTILINE)


def update_po(pot, po):
    """Bring ``po`` in line with ``pot``, keeping its translations."""
    lang = po.stem
    if not po.exists():
        gettext(
            "msginit",
            "--no-translator",
            "--no-wrap",
            f"--locale={lang}.UTF-8",
            f"--input={pot}",
            f"--output-file={po}",
        )
        text = po.read_text()
        for field in ("Last-Translator", "Language-Team"):  # as Odoo's .pot
            text = set_header(text, field, "")
        text = set_header(text, "Language", lang)
        if lang in PLURAL_FORMS:
            text = set_header(text, "Plural-Forms", PLURAL_FORMS[lang])
        po.write_text(text)
    gettext(
        "msgmerge",
        "--quiet",
        "--update",
        "--backup=none",
        "--no-fuzzy-matching",
        "--no-wrap",
        po,
        pot,
    )
    # Drop the entries of strings the addon no longer has (git keeps them).
    gettext("msgattrib", "--no-obsolete", "--no-wrap", f"--output-file={po}", po)
    gettext("msgfmt", "--check", "-o", os.devnull, po)
    untranslated = gettext(
        "msgattrib", "--untranslated", "--no-wrap", po, capture_output=True, text=True
    ).stdout
    return count_entries(untranslated)


def tours(odoo_path, services, config, screenshots=None):
    """Browser tours, on Odoo's own runner; a skipped tour fails."""
    log = services.dir / "tours.log"
    env = {"ALLY_SMTP_HARNESS": str(services.info_file)}
    if screenshots:
        env["ALLY_SMTP_SCREENSHOTS"] = str(screenshots)
    result = odoo_bin(
        odoo_path,
        config,
        "-d",
        TEST_DB,
        "--test-enable",
        f"--test-tags=/{ADDON}:TestTours",
        "--stop-after-init",
        "--workers=0",
        f"--http-port={free_port()}",
        f"--logfile={log}",
        env=env,
    )
    text = log.read_text() if log.exists() else ""
    problems = problem_records(text)
    ran = sum(int(n) for n in re.findall(r"(\d+) post-tests in", text))
    failed = len(re.findall(r" (?:ERROR|CRITICAL) .*(?:FAIL|ERROR): ", text))
    if problems:
        print("\n".join(problems[:60]), file=sys.stderr)
    if not ran:
        print("\n".join(text.splitlines()[-40:]), file=sys.stderr)
    print(f"tours: {ran - failed} passed, {failed} failed", flush=True)
    return result.returncode == 0 and ran > 0 and not problems


def skipped(junit):
    """Skipped tests count as failures: a test that did not run proved nothing."""
    root = ET.parse(junit).getroot()
    return sum(int(s.get("skipped", 0)) for s in root.iter("testsuite"))


def e2e_args(args):
    """pytest's arguments for ``--e2e-only``: ``-k name`` or e2e/ files."""
    if not (args.e2e_only and args.pytest_args):
        return ()
    if any(arg.startswith("e2e") for arg in args.pytest_args):
        return args.pytest_args
    return ["e2e", *args.pytest_args]


def cmd_test(args):
    odoo_path = find_odoo()
    print(f"harness: Odoo found at {odoo_path}", flush=True)
    only = args.tours_only or args.e2e_only or args.upgrade_only
    partial = bool(args.pytest_args) or only
    ok = lint() if not partial else True
    with Services() as services:
        config = write_config(services, odoo_path, services.dir / "odoo.conf")
        if not args.upgrade_only:
            step(f"install {ADDON} in a new database")
            install(odoo_path, config, TEST_DB, "--without-demo=all")
        if not only:
            step("tests (pytest-odoo)")
            junit = services.dir / "junit.xml"
            code = pytest(odoo_path, services, config, junit, args.pytest_args)
            ok = ok and code == 0
            if junit.exists() and skipped(junit):
                print(f"harness: {skipped(junit)} skipped: failing", flush=True)
                ok = False
        if not (args.pytest_args or args.e2e_only or args.upgrade_only):
            step("browser tours (Odoo's runner, headless Chromium)")
            ok = tours(odoo_path, services, config, args.screenshots) and ok
        if not partial or args.e2e_only:
            e2e_ok, junit = run_e2e(odoo_path, services, config, e2e_args(args))
            ok = e2e_ok and ok
            if junit.exists() and skipped(junit):
                print(f"harness: {skipped(junit)} skipped: failing", flush=True)
                ok = False
        if not partial or args.upgrade_only:
            ok = _passes("the upgrade", check_upgrade, odoo_path, services) and ok
        if not partial:
            ok = _passes("the wheel", check_wheel, odoo_path, services) and ok
    if not partial:
        step("make demo, as a newcomer would run it (started, answers, stopped)")
        demo = argparse.Namespace(port=free_port(), check=True)
        ok = _passes("the demo", cmd_demo, demo) and ok
    ok = venv.machine_unchanged() and ok
    print("\nharness:", "all green" if ok else "FAILED", flush=True)
    return 0 if ok else 1


def _passes(what, check, *args):
    try:
        check(*args)
    except SystemExit as exc:
        print(f"harness: {what} failed: {exc}", file=sys.stderr)
        return False
    return True


def cmd_i18n(args):
    odoo_path = find_odoo()
    print(f"harness: Odoo found at {odoo_path}", flush=True)
    I18N_DIR.mkdir(exist_ok=True)
    pot = I18N_DIR / f"{ADDON}.pot"
    with Services() as services:
        config = write_config(services, odoo_path, services.dir / "odoo.conf")
        step(f"install {ADDON} in a new database")
        install(odoo_path, config, I18N_DB, "--without-demo=all")
        step(f"export {pot.relative_to(ROOT)}")
        terms = export_pot(odoo_path, config, I18N_DB, pot)
    print(f"harness: {terms} term(s) to translate", flush=True)
    pos = {I18N_DIR / f"{lang}.po" for lang in LANGUAGES} | set(I18N_DIR.glob("*.po"))
    missing = 0
    for po in sorted(pos):
        step(f"update {po.relative_to(ROOT)}")
        untranslated = update_po(pot, po)
        missing += untranslated
        print(f"harness: {untranslated} term(s) without translation", flush=True)
    print("\nharness:", "all translated" if not missing else "NOT all translated")
    return 0


def main():
    signal.signal(signal.SIGTERM, _stop_on_term)
    parser = argparse.ArgumentParser(prog="python3 -m harness")
    sub = parser.add_subparsers(dest="command", required=True)
    test = sub.add_parser("test", help="run every test and linter on real servers")
    test.add_argument(
        "--tours-only", action="store_true", help="only the browser tours"
    )
    test.add_argument(
        "--e2e-only",
        action="store_true",
        help="only the suite against a prefork server (e2e/)",
    )
    test.add_argument(
        "--upgrade-only",
        action="store_true",
        help="only the upgrade from the previous release (harness/upgrade.py)",
    )
    test.add_argument(
        "--screenshots", type=os.path.abspath, help="save the tours' screenshots here"
    )
    test.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="run only these pytest arguments (no linters), e.g. -k credentials",
    )
    sub.add_parser(
        "i18n",
        help=f"export {ADDON}.pot and update the .po files from it, keeping "
        "their translations",
    )
    demo = sub.add_parser("demo", help="Odoo with the demo on http://localhost:8069")
    demo.add_argument("--port", type=int, default=8069)
    demo.add_argument(
        "--check", action="store_true", help="start, answer one page, stop"
    )
    mailbox = sub.add_parser("mailbox", help="list a demo mailbox's INBOX and Sent")
    mailbox.add_argument("user", help="ana, bruno or a mailbox address")
    # `test -k sending`: options argparse does not know go to pytest as well
    args, unknown = parser.parse_known_args()
    if unknown and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "test":
        args.pytest_args = unknown + args.pytest_args
    commands = {
        "test": cmd_test,
        "i18n": cmd_i18n,
        "demo": cmd_demo,
        "mailbox": cmd_mailbox,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("\nharness: stopped; every server it started is stopped too")
        return 130


if __name__ == "__main__":
    sys.exit(main())
