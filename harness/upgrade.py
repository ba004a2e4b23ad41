"""The upgrade lane: the previous release of the addon fills a database with
mail in flight, ``-u ally_smtp`` brings it to the working tree's code, and the
new code proves that nothing was lost.

The previous release comes from this repository's own history (``git
archive``); it runs on a new database with crons off, so that what it queued
and what waits for the Sent folder stay in flight across the upgrade. Counts
are taken on the harness SMTP server's record and in the Dovecot mailboxes.
What is put in flight, and what is checked after, is in ``upgrade_flight.py``.
"""

import ast
import contextlib
import re
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path

from . import ROOT
from .odoo import (
    ADDON,
    install,
    odoo_bin,
    odoo_popen,
    problem_records,
    step,
    write_config,
)
from .rpc import World
from .services import free_port, wait_port
from .upgrade_flight import Lost, check, fill, verify

# The last release of the addon: every release moves it forward to its own
# commit, so that the next one is tested as an upgrade from it.
PREVIOUS_RELEASE = "4301d1384aa901cf81be7533f7878ac0d7985826"
UPGRADE_DB = "ally_smtp_upgrade"


# -- the previous release ------------------------------------------------------
def _git(*args, **kwargs):
    return subprocess.run(["git", "-C", str(ROOT), *args], check=False, **kwargs)


def previous_release(target):
    """Extract the addon of PREVIOUS_RELEASE under ``target``; return it."""
    commit = f"{PREVIOUS_RELEASE}^{{commit}}"
    if _git("cat-file", "-e", commit, stderr=subprocess.DEVNULL).returncode:
        print(f"harness: fetching {PREVIOUS_RELEASE} from origin", flush=True)
        fetched = _git("fetch", "--quiet", "origin", PREVIOUS_RELEASE)
        if fetched.returncode or _git("cat-file", "-e", commit).returncode:
            raise SystemExit(
                f"the previous release {PREVIOUS_RELEASE} (PREVIOUS_RELEASE in "
                f"harness/upgrade.py) is not in the git history of {ROOT} and "
                "could not be fetched from origin: run the upgrade lane in a "
                "clone that has it (git fetch --unshallow)"
            )
    target.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, ADDON],
        stdout=subprocess.PIPE,
    )
    untar = subprocess.run(
        ["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=False
    )
    archive.stdout.close()
    if archive.wait() or untar.returncode:
        raise SystemExit(f"extracting {ADDON} of {PREVIOUS_RELEASE} failed")
    return target


def manifest_version(addons):
    manifest = (Path(addons) / ADDON / "__manifest__.py").read_text()
    return ast.literal_eval(manifest)["version"]


# -- Odoo, one process, crons off ------------------------------------------------
@contextlib.contextmanager
def serve(odoo_path, config, log):
    """The url of Odoo serving UPGRADE_DB, without cron threads: only the
    lane runs the mail queue and the filing (``World.run_cron``)."""
    port = free_port()
    server = odoo_popen(
        odoo_path,
        config,
        "-d",
        UPGRADE_DB,
        f"--db-filter=^{UPGRADE_DB}$",
        "--workers=0",
        "--max-cron-threads=0",
        f"--http-port={port}",
        f"--logfile={log}",
    )
    try:
        wait_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}"
        urllib.request.urlopen(url + "/web/login", timeout=60).close()
        yield url
    finally:
        server.terminate()
        server.wait(60)


def clean_log(log, what):
    text = log.read_text() if log.exists() else ""
    problems = problem_records(text)
    if problems:
        print("\n".join(problems[:40]), file=sys.stderr)
    check(not problems, f"{what} logged {len(problems)} WARNING/ERROR record(s)")
    return text


def upgrade(odoo_path, config, log):
    """``-u ally_smtp`` with the working tree's code; clean log or fail."""
    result = odoo_bin(
        odoo_path,
        config,
        "-d",
        UPGRADE_DB,
        "-u",
        ADDON,
        "--stop-after-init",
        "--no-http",
        f"--logfile={log}",
    )
    text = clean_log(log, "the upgrade")
    if result.returncode:
        print("\n".join(text.splitlines()[-40:]), file=sys.stderr)
    check(result.returncode == 0, f"the upgrade ended with {result.returncode}")


def attach(url, info, flight):
    """The World of ``flight``'s database as served at ``url``."""
    world = World(url, UPGRADE_DB, info)
    world.company, world.users = flight["company"], flight["users"]
    world.rpc = {login: world.login(login) for login in world.users}
    return world


# -- the lane ------------------------------------------------------------------
def check_upgrade(odoo_path, services):
    step(f"upgrade from the previous release, {PREVIOUS_RELEASE[:10]}, mail in flight")
    started = time.monotonic()
    old = previous_release(services.dir / "previous")
    old_config = write_config(
        services, odoo_path, services.dir / "upgrade-old.conf", addons=(old,)
    )
    new_config = write_config(services, odoo_path, services.dir / "upgrade-new.conf")
    install(odoo_path, old_config, UPGRADE_DB, "--without-demo=all")
    old_log = services.dir / "upgrade-old.log"
    try:
        with serve(odoo_path, old_config, old_log) as url:
            world = World(url, UPGRADE_DB, services.info).setup()
            check(
                installed_version(world) == manifest_version(old),
                f"the database has {installed_version(world)}, not the previous "
                f"release's {manifest_version(old)}",
            )
            flight = fill(world)
        paths = re.findall(r"addons paths: (.*)", old_log.read_text())
        check(
            paths and str(old) in paths[0] and str(ROOT) not in paths[0],
            f"the previous release's server ran with the addons paths {paths}",
        )
        print(
            f"harness: in flight: {len(flight['outgoing'])} queued mails, "
            f"{len(flight['copies'])} copies to retry, {len(flight['loose'])} "
            f"messages with copies not gathered, {len(flight['deliveries'])} "
            "deliveries recorded, Bob's mailbox paused, "
            f"{len(flight['sign_ins'])} OAuth sign-in",
            flush=True,
        )
        upgrade(odoo_path, new_config, services.dir / "upgrade.log")
        new_log = services.dir / "upgrade-new.log"
        with serve(odoo_path, new_config, new_log) as url:
            world = attach(url, services.info, flight)
            check(
                installed_version(world) == manifest_version(ROOT),
                f"after -u the database has {installed_version(world)}",
            )
            verify(world, flight)
        clean_log(new_log, "the upgraded server")
    except Lost as exc:
        raise SystemExit(f"the upgrade from {PREVIOUS_RELEASE[:10]}: {exc}") from exc
    except Exception as exc:  # an RPC fault, a server that did not start, ...
        traceback.print_exc()
        raise SystemExit(f"the upgrade lane broke: {exc!r}"[:2000]) from exc
    print(
        f"harness: upgrade {manifest_version(old)} -> {manifest_version(ROOT)}: "
        f"nothing lost ({time.monotonic() - started:.0f}s)",
        flush=True,
    )


def installed_version(world):
    (module,) = world.admin(
        "ir.module.module",
        "search_read",
        [("name", "=", ADDON)],
        ["latest_version", "state"],
    )
    return module["latest_version"] if module["state"] == "installed" else None
