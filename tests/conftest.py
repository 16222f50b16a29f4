"""Settings of the user's shell that would change what the tests compute are cleared."""

import pytest


@pytest.fixture(autouse=True)
def _full_length_runs(monkeypatch):
    """``FLATLAB_MAX_STEPS`` shortens runs (for trying examples); tests set it themselves."""
    monkeypatch.delenv("FLATLAB_MAX_STEPS", raising=False)

