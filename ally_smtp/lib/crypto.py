"""Encryption of mailbox passwords at rest.

The key never lives in the database: it comes from the Odoo option
``ally_smtp_key`` or the ``ALLY_SMTP_KEY`` environment variable (several keys,
comma separated, newest first, so a key can be rotated); with neither, a key
file is generated once in Odoo's data directory.
"""

import logging
import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from odoo.exceptions import UserError
from odoo.tools import config

_logger = logging.getLogger(__name__)
KEY_FILE = "ally_smtp.key"


def _key_file():
    path = os.path.join(config["data_dir"], KEY_FILE)
    if not os.path.exists(path):
        os.makedirs(config["data_dir"], exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
            _logger.info("ally_smtp: generated the encryption key file %s", path)
        except FileExistsError:
            _logger.debug("ally_smtp: key file %s made by another worker", path)
    with open(path, "rb") as f:
        return f.read().decode().strip()


def _keys(env):
    raw = config.get("ally_smtp_key") or os.environ.get("ALLY_SMTP_KEY") or ""
    keys = [k.strip() for k in raw.split(",") if k.strip()] or [_key_file()]
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
