"""Settings of the user's shell that would change what the tests compute are cleared."""

import pytest


@pytest.fixture(autouse=True)
def _full_length_runs(monkeypatch):
    """``FLATLAB_MAX_STEPS`` shortens runs (for trying examples); tests set it themselves."""
    monkeypatch.delenv("FLATLAB_MAX_STEPS", raising=False)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep a file's tests on one worker when they share a module-scoped fixture.

    ``make test`` spreads tests one by one over its workers (``--dist loadgroup``), so that a
    long file does not hold one worker while the other idles; a file whose tests share an
    expensive module fixture (a tiny study's runs, a distributed launch) would compute it once
    per worker, so its tests form one group.
    """
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d[-1].scope == "module" for d in defs if d):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
