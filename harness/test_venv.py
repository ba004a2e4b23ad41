"""The project's environments are reused while they hold their requirements,
and built anew when those change or the environment is broken (venv.py)."""

import pytest

from harness import venv

# pip is in every new environment: installing it needs no download
PIP = ["pip"]


@pytest.fixture
def probe(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLY_SMTP_VENV", str(tmp_path / "venv"))
    return venv.path("probe")


def test_names_and_places(probe, tmp_path):
    assert venv.path("odoo") == tmp_path / "venv"
    assert probe == tmp_path / "venv-probe"


def test_reused_until_changed_or_broken(probe):
    def rebuilt(requirements, damage=None):
        """Whether ``ensure`` built the environment anew after ``damage``."""
        (probe / "marker").touch()
        if damage:
            damage.unlink()
        assert venv.ensure("probe", requirements, PIP) == venv.python(probe)
        return not (probe / "marker").exists()

    venv.ensure("probe", PIP, PIP)
    assert not rebuilt(PIP)
    assert rebuilt(["pip>=1"])
    assert rebuilt(["pip>=1"], damage=venv.python(probe))
    assert rebuilt(["pip>=1"], damage=probe / venv.STAMP)  # a build cut short
    assert not rebuilt(["pip>=1"])


def test_never_replaces_what_is_not_an_environment(probe):
    probe.mkdir()
    (probe / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not a virtual environment"):
        venv.ensure("probe", PIP, PIP)
    assert (probe / "notes.txt").read_text() == "mine"
