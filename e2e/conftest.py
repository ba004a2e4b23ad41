"""A running Odoo (prefork, started by ``python3 -m harness test``), an agency
integrated with the harness's mail servers, and its people, over XML-RPC
(harness/rpc.py, shared with the upgrade lane)."""

import os

import pytest

from harness.rpc import PEOPLE, Rpc, World, servers, subject_of

__all__ = ["PEOPLE", "Rpc", "World", "servers", "subject_of"]


@pytest.fixture(scope="session")
def world():
    return World(
        os.environ["ALLY_SMTP_E2E_URL"], os.environ["ALLY_SMTP_E2E_DB"]
    ).setup()
