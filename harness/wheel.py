"""The addon as integrators install it: a wheel, pip-installed next to Odoo.

whool builds ``odoo-addon-ally_smtp`` from ``ally_smtp/``; pip installs it into
a new environment that has Odoo and its requirements; Odoo installs the addon
from there in a new database, with no addons path to the repository.
"""

import importlib.metadata
import runpy
import subprocess
import sys
import sysconfig
from pathlib import Path

from . import ROOT, venv
from .odoo import ADDON, addon_requirements, install, step, write_config

WHEEL_DB = "ally_smtp_wheel"
PURELIB = "import sysconfig; print(sysconfig.get_path('purelib'))"
FIND_ADDON = (
    f"import importlib.util as u; print(u.find_spec('odoo.addons.{ADDON}').origin)"
)


def check_wheel(odoo_path, services):
    step(f"the {ADDON} wheel: build it, pip install it next to Odoo, install from it")
    dist = services.dir / "dist"
    build = ["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", dist]
    venv.pip(sys.executable, *build, ROOT / ADDON)
    (wheel,) = dist.glob("*.whl")
    deploy = services.dir / "deploy-venv"
    venv.create(deploy, "--without-pip")
    python = venv.python(deploy)
    site = Path(_output(python, PURELIB))
    odoo_info = _add_odoo(site, odoo_path)
    venv.pip(sys.executable, "--python", python, "install", wheel)
    (info,) = site.glob(f"odoo_addon_{ADDON}-*.dist-info")
    requires = importlib.metadata.Distribution.at(info).requires
    if not set(addon_requirements()) <= set(requires):
        raise SystemExit(f"the wheel requires {requires}, not {addon_requirements()}")
    others = [p.name for p in site.glob("*.dist-info") if p not in (info, odoo_info)]
    if others:
        raise SystemExit(f"pip installed {others} too, which Odoo's environment has")
    origin = Path(_output(python, FIND_ADDON))
    if not origin.is_relative_to(site):
        raise SystemExit(f"Odoo finds {ADDON} at {origin}, not in {site}")
    print(f"harness: {wheel.name} requires {', '.join(requires)}", flush=True)
    config = write_config(services, odoo_path, deploy / "odoo.conf", addons=())
    install(odoo_path, config, WHEEL_DB, "--without-demo=all", python=python)
    print(f"harness: {ADDON} installed from {origin.parent}", flush=True)


def _add_odoo(site, odoo_path):
    """Odoo as an integrator's environment has it: Odoo's tree, registered as
    the ``odoo`` distribution as ``pip install -e`` would register it (without
    writing into the tree), and its requirements (the project's environment)."""
    version = runpy.run_path(str(odoo_path / "odoo" / "release.py"))["version"]
    (site / "odoo.pth").write_text(f"{odoo_path}\n{sysconfig.get_path('purelib')}\n")
    info = site / f"odoo-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: odoo\nVersion: {version}\n"
    )
    return info


def _output(python, code):
    result = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise SystemExit(result.stderr)
    return result.stdout.strip()
