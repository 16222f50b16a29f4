import pytest

from flatlab.errors import DataError, FlatlabError


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Every test gets its own cache folder and no $FLATLAB_DATA."""
    monkeypatch.setenv("FLATLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FLATLAB_DATA", raising=False)


def one_line_error(fn, *args, **kwargs) -> str:
    """Call ``fn`` expecting a one-line DataError and return its message."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg
    assert isinstance(info.value, FlatlabError) and isinstance(info.value, ValueError)
    return msg
