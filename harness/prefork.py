"""Odoo as agencies run it — ``--workers=2 --max-cron-threads=2`` — driven over
XML-RPC by the suite in ``e2e/`` (adversarial and production-like scenarios)."""

import re
import sys
import urllib.request

from .odoo import install, odoo_popen, problem_records, run_pytest, step
from .services import free_port, wait_port

E2E_DB = "ally_smtp_e2e"
# what the suite provokes on purpose: refusals are logged, never errors; and
# what Odoo itself logs when the queue and "Send Now" send at once: the send
# that lost a concurrent update (and what its aborted transaction logs
# after it), and a queued mail that the other sender sent and deleted
EXPECTED = re.compile(
    r"ally_smtp: (refused a session|mail \d+ named the personal)"
    r"|could not serialize access due to concurrent update"
    r"|current transaction is aborted, commands ignored"
    r"|Record does not exist or has been deleted\.\n\(Record: mail\.mail\("
)


def run_e2e(odoo_path, services, config, extra=()):
    """Start the prefork server, run ``e2e/`` against it, stop it."""
    step("prefork Odoo (--workers=2 --max-cron-threads=2) driven over XML-RPC")
    install(odoo_path, config, E2E_DB, "--without-demo=all")
    port = free_port()
    log = services.dir / "prefork.log"
    server = odoo_popen(
        odoo_path,
        config,
        "-d",
        E2E_DB,
        f"--db-filter=^{E2E_DB}$",
        "--workers=2",
        "--max-cron-threads=2",
        f"--http-port={port}",
        f"--gevent-port={free_port()}",
        f"--logfile={log}",
        # Odoo's own switch: a cron whose next call is moved wakes the cron
        # workers at once, so that the suite can run the mail queue in them
        env={"ODOO_NOTIFY_CRON_CHANGES": "1"},
    )
    try:
        wait_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}"
        urllib.request.urlopen(url + "/web/login", timeout=60).close()
        junit = services.dir / "e2e.xml"
        code = run_pytest(
            odoo_path,
            services,
            junit,
            ["-p", "no:odoo", *(extra or ["e2e"])],
            ALLY_SMTP_E2E_URL=url,
            ALLY_SMTP_E2E_DB=E2E_DB,
            ALLY_SMTP_E2E_PID=str(server.pid),
            ALLY_SMTP_E2E_LOG=str(log),
        )
    finally:
        server.terminate()
        server.wait(60)
    text = log.read_text() if log.exists() else ""
    problems = [r for r in problem_records(text) if not EXPECTED.search(r)]
    if problems:
        print("\n".join(problems[:40]), file=sys.stderr)
        print(f"harness: the prefork server logged {len(problems)} problem(s)")
    return code == 0 and not problems, junit
