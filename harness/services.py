"""Start and stop the harness's PostgreSQL, OAuth 2.0, Dovecot and SMTP servers."""

import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from . import IS_ROOT, ROOT, tls
from .odoo import oauth_venv

# Mailboxes of the local provider. Passwords are drawn for every run.
MAILBOXES = [
    "alice@agency.test",
    "bob@agency.test",
    "carol@agency.test",
    "student1@school.test",
    "student2@school.test",
    "cpanel@agency.test",
]
# The agency-scale benchmark's consultants (bench/): mailboxes no test reads.
MAILBOXES += [f"consultant{i:02}@agency.test" for i in range(1, 21)]
# Dovecot settings of one mailbox (userdb extra fields). cpanel@ is a cPanel-like
# host: folders under "INBOX." with "." as separator, no folder flagged \Sent,
# and no message over 1 MB accepted.
MAILBOX_SETTINGS = {
    "cpanel@agency.test": (
        "userdb_namespace/inbox/prefix=INBOX. "
        "userdb_namespace/inbox/separator=. "
        "userdb_namespace/inbox/mailbox/Sent/auto=no "
        "userdb_namespace/inbox/mailbox/Drafts/auto=no "
        "userdb_quota_max_mail_size=1M"
    ),
}


_handed_out = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A loopback port nothing listens on, for a server started later.

    Drawn below the kernel's ephemeral range: a port that ``bind(0)`` hands
    out comes from the range outgoing connections draw from too, and one of
    them could take it before the server binds it ("address already in use",
    seen in a bench run).
    """
    low = _ephemeral_low()
    for _attempt in range(200):
        port = 10000 + secrets.randbelow(max(low - 10000, 1000))
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # nothing free below the range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def run(cmd, user=None, **kwargs):
    if user and IS_ROOT:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, check=kwargs.pop("check", True), **kwargs)


class Services:
    """The local provider and database, all under one temporary directory."""

    def __init__(self, workdir=None, mailboxes=MAILBOXES):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="ally_smtp-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.mailboxes = {m: secrets.token_urlsafe(12) for m in mailboxes}
        self.procs = []
        self.stoppers = []
        self.info = {"dir": str(self.dir)}

    # -- lifecycle -----------------------------------------------------------
    def start(self):
        self._certificates()
        self._postgres()
        self._oauth()
        self._dovecot()
        self._smtpd()
        self.info["mailboxes"] = self.mailboxes
        path = self.dir / "harness.json"
        path.write_text(json.dumps(self.info, indent=2))
        path.chmod(0o600)
        self.info_file = path
        return self

    def stop(self):
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                print(f"harness: while stopping: {exc}", file=sys.stderr)
        self.stoppers.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    # -- pieces --------------------------------------------------------------
    def _certificates(self):
        certs = self.dir / "tls"
        certs.mkdir()
        certs.chmod(0o755)
        ca = tls.make_ca(certs)
        self.info["ca_file"] = str(certs / "ca.crt")
        self.cert, self.key = tls.make_server_cert(certs, "server", ca)
        rogue_dir = certs / "rogue"  # a CA nobody is told to trust
        rogue_dir.mkdir()
        rogue = tls.make_ca(rogue_dir, common_name="untrusted CA")
        self.untrusted = tls.make_server_cert(certs, "untrusted", rogue)

    def _postgres(self):
        bindir = max(glob.glob("/usr/lib/postgresql/*/bin"))
        data = self.dir / "pg"
        data.mkdir()
        if IS_ROOT:
            shutil.chown(data, "postgres", "postgres")
        port = free_port()
        run(
            [f"{bindir}/initdb", "-D", str(data), "-U", "odoo", "-A", "trust"],
            user="postgres",
            stdout=subprocess.DEVNULL,
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
        run(
            [f"{bindir}/pg_ctl", "-D", str(data), "-o", opts, "-w", "-l"]
            + [str(data / "log"), "start"],
            user="postgres",
            stdout=subprocess.DEVNULL,
        )
        self.stoppers.append(
            lambda: run(
                [f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                user="postgres",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        self.info["db"] = {"host": "127.0.0.1", "port": port, "user": "odoo"}
        self.info["pg_bin"] = bindir

    def _server(self, name, module, python, config):
        """Start ``python -m module config``, which prints "ready"; its
        stderr goes to ``<dir>/<name>.log``."""
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - lives with proc
        proc = subprocess.Popen(
            [python, "-m", module, str(config)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        self.stoppers.append(lambda: (proc.terminate(), proc.wait(10), log.close()))
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(
                f"the {name} server did not start:\n"
                + (self.dir / f"{name}.log").read_text()
            )

    def _oauth(self):
        """The local Google-like and Microsoft-like OAuth 2.0 server
        (harness/oauth_server.py, on its own environment), one app each."""
        port = free_port()
        clients = {
            "google": {
                "client_id": f"{secrets.randbelow(10**12):012}-"
                f"{secrets.token_hex(16)}.apps.googleusercontent.com",
                "client_secret": "GOCSPX-" + secrets.token_urlsafe(21),
            },
            "microsoft": {
                "client_id": str(uuid.uuid4()),
                "client_secret": secrets.token_urlsafe(30),
                "tenant": str(uuid.uuid4()),
            },
        }
        config = self.dir / "oauth.json"
        config.write_text(
            json.dumps(
                {"port": port, "accounts": list(self.mailboxes), "clients": clients}
            )
        )
        config.chmod(0o600)
        self._server("oauth", "harness.oauth_server", oauth_venv(), config)
        url = f"http://127.0.0.1:{port}"
        self.info["oauth"] = {
            "url": url,
            "google": {"base_url": f"{url}/google", **clients["google"]},
            "microsoft": {"base_url": f"{url}/microsoft", **clients["microsoft"]},
            "control": f"{url}/control",
            "introspection_url": f"{url}/introspect",
        }

    def _dovecot(self):
        base = self.dir / "dovecot"
        (base / "run").mkdir(parents=True)
        (base / "state").mkdir()
        mail = self.dir / "mail"
        mail.mkdir()
        passwd = []
        for login, password in self.mailboxes.items():
            crypt = run(
                ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
                capture_output=True,
                text=True,
            ).stdout.strip()
            passwd.append(f"{login}:{crypt}::::::{MAILBOX_SETTINGS.get(login, '')}")
        (base / "users").write_text("\n".join(passwd) + "\n")
        (base / "oauth2.conf.ext").write_text(
            DOVECOT_OAUTH2.format(url=self.info["oauth"]["introspection_url"])
        )
        port = free_port()
        conf = base / "dovecot.conf"
        conf.write_text(
            DOVECOT_CONF.format(
                base=base,
                mail=mail,
                port=port,
                cert=self.cert,
                key=self.key,
                user="dovenull" if IS_ROOT else os.environ.get("USER", ""),
            )
        )
        if IS_ROOT:
            for path in (mail, base / "users"):
                shutil.chown(path, "dovenull", "dovenull")
        run(
            ["dovecot", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.stoppers.append(
            lambda: run(
                ["doveadm", "-c", str(conf), "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(port)
        self.info["imap"] = {"host": "localhost", "port": port}

    def _smtpd(self):
        ports = {name: free_port() for name in ("ssl", "starttls", "untrusted")}
        users = self.dir / "smtpd-users.json"
        users.write_text(json.dumps(self.mailboxes))
        users.chmod(0o600)
        control = free_port()
        config = self.dir / "smtpd.json"
        config.write_text(
            json.dumps(
                {
                    "users": str(users),
                    "ports": ports,
                    "control_port": control,
                    "imap_port": self.info["imap"]["port"],
                    "cert": str(self.cert),
                    "key": str(self.key),
                    "untrusted_cert": str(self.untrusted[0]),
                    "untrusted_key": str(self.untrusted[1]),
                    "introspection_url": self.info["oauth"]["introspection_url"],
                }
            )
        )
        self._server("smtpd", "harness.smtpd", sys.executable, config)
        self.info["smtp"] = {"host": "localhost", "ports": ports}
        self.info["smtp_control"] = f"http://127.0.0.1:{control}"


DOVECOT_OAUTH2 = """\
tokeninfo_url =
introspection_mode = post
introspection_url = {url}
force_introspection = yes
username_attribute = email
active_attribute = active
active_value = true
"""

DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
first_valid_uid = 1
default_internal_user = {user}
default_login_user = {user}
mail_uid = {user}
mail_gid = {user}
mail_location = maildir:{mail}/%u
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
# XOAUTH2/OAUTHBEARER: the access token is introspected at the harness's OAuth
# server at every login (no auth cache: a revoked token is refused at once).
auth_mechanisms = plain login xoauth2 oauthbearer
auth_cache_size = 0
disable_plaintext_auth = yes
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=SHA512-CRYPT {base}/users
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {base}/oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid={user} gid={user} home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # no growing per-IP delay after failed logins (auth penalty): every test
  # client is 127.0.0.1, and tests refuse tokens and passwords on purpose
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  chroot =
}}
mail_plugins = $mail_plugins quota
plugin {{
  quota = count:User quota
  quota_vsizes = yes
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
}}
"""
