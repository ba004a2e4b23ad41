"""Encryption of mailbox passwords at rest.

The key never lives in the database: it comes from the Odoo option
``ally_smtp_key`` or the ``ALLY_SMTP_KEY`` environment variable (several keys,
comma separated, newest first, so a key can be rotated); with neither, a key
file is generated once in Odoo's data directory.
"""

import logging
import os
import tempfile
import time

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from odoo.exceptions import UserError
from odoo.tools import config

_logger = logging.getLogger(__name__)
KEY_FILE = "ally_smtp.key"


def _key_file(env):
    """The generated key, made once, whole, by whichever process comes first."""
    path = os.path.join(config["data_dir"], KEY_FILE)
    for _attempt in range(20):
        try:
            with open(path, "rb") as f:
                key = f.read().decode().strip()
        except FileNotFoundError:
            _refuse_if_passwords_stored(env, path)
            create_key_file(path)
            continue
        if key:
            return key
        time.sleep(0.1)  # a file left empty by an older version's crash
    raise UserError(
        env._(
            "The ally_smtp key file %(path)s is empty. Put the key back in it, or "
            "set the Odoo option 'ally_smtp_key' (or ALLY_SMTP_KEY).",
            path=path,
        )
    )


def _refuse_if_passwords_stored(env, path):
    """Passwords stored without their key file were encrypted with a key that
    is missing: a new key would not decrypt them, so none is made."""
    stored = "ally.smtp.mailbox" in env and (
        env["ally.smtp.mailbox"]
        .sudo()
        .search_count([("password_crypt", "!=", False)], limit=1)
    )
    if not stored and "ally.smtp.oauth.token" in env:
        stored = (
            env["ally.smtp.oauth.token"]
            .sudo()
            .search_count([("tokens_crypt", "!=", False)], limit=1)
        )
    if not stored:
        return
    _logger.error(
        "ally_smtp: the key file %s is missing but mailbox passwords are stored; "
        "no new key is made. Restore the file or set the option 'ally_smtp_key'.",
        path,
    )
    raise UserError(
        env._(
            "The ally_smtp encryption key is missing: the key file %(path)s does "
            "not exist, yet mailbox passwords are stored. Ask your administrator "
            "to restore that file or to set the Odoo option 'ally_smtp_key' (or "
            "ALLY_SMTP_KEY); no password was changed.",
            path=path,
        )
    )


def create_key_file(path):
    """Write a new key beside ``path``, then link it in place: a reader sees
    the whole key or no file, and the first of several processes wins."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ally_smtp.key.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
            f.flush()
            os.fsync(f.fileno())
        _link_or_rename(tmp, path)
        _logger.info("ally_smtp: generated the encryption key file %s", path)
    except FileExistsError:
        _logger.debug("ally_smtp: key file %s made by another process", path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _link_or_rename(tmp, path):
    """Put the whole file ``tmp`` at ``path`` unless one is there already."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: one atomic rename
        if os.path.exists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)


def _keys(env):
    raw = config.get("ally_smtp_key") or os.environ.get("ALLY_SMTP_KEY") or ""
    keys = [k.strip() for k in raw.split(",") if k.strip()] or [_key_file(env)]
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except (ValueError, TypeError) as exc:
        raise UserError(
            env._(
                "The ally_smtp encryption key is not valid. Set the Odoo option "
                "'ally_smtp_key' (or the ALLY_SMTP_KEY environment variable) to "
                "keys made with Fernet.generate_key(), newest first."
            )
        ) from exc


def encrypt(env, plaintext):
    return _keys(env).encrypt(plaintext.encode()).decode()


def decrypt(env, token):
    try:
        return _keys(env).decrypt(token.encode()).decode()
    except InvalidToken:
        raise UserError(
            env._(
                "A stored mailbox password cannot be decrypted with the configured "
                "key. Put the previous key back in the Odoo option 'ally_smtp_key' "
                "(or ALLY_SMTP_KEY), after the new one, or enter the password again."
            )
        ) from None


def rotate(env, token):
    """Re-encrypt ``token`` with the newest key."""
    try:
        return _keys(env).rotate(token.encode()).decode()
    except InvalidToken:
        return None
