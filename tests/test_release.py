"""Release basics: one version everywhere, a license, a citation, a changelog."""

from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

import flatlab

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_everywhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "flatlab.__version__"}
    assert version("flatlab") == flatlab.__version__
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == flatlab.__version__ and cff["cff-version"] == "1.2.0"
    assert f"## {flatlab.__version__} " in (ROOT / "CHANGELOG.md").read_text()


def test_the_license_is_the_declared_one():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "BSD-3-Clause" == yaml.safe_load(
        (ROOT / "CITATION.cff").read_text())["license"]
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
