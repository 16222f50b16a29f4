"""A small on-disk cache of generated arrays (``.npz``), for datasets that are slow to generate.

The folder is ``$FLATLAB_CACHE`` when set, else ``$XDG_CACHE_HOME/flatlab``, else
``~/.cache/flatlab``. Files are written atomically (a temporary file in the same folder, then
``os.replace``), so a crash never leaves a half-written entry. A folder that cannot be created
or written is skipped silently: caching only saves time, it never changes a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cache_dir", "cache_key", "load_arrays", "save_arrays"]


def cache_dir() -> Path:
    """The cache folder (which may not exist yet).

    Returns:
        ``$FLATLAB_CACHE``, else ``$XDG_CACHE_HOME/flatlab``, else ``~/.cache/flatlab``.
    """
    if os.environ.get("FLATLAB_CACHE"):
        return Path(os.environ["FLATLAB_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "flatlab"
    return Path.home() / ".cache" / "flatlab"


def cache_key(prefix: str, args: dict[str, Any]) -> str:
    """A file name that changes with every generation argument.

    Args:
        prefix: Readable start of the name, e.g. ``"mnist1d"``.
        args: JSON-serialisable generation arguments (library versions included by the caller).

    Returns:
        ``"{prefix}-{16 hex digits}.npz"``.
    """
    text = json.dumps(args, sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"


def load_arrays(name: str) -> dict[str, np.ndarray] | None:
    """Read a cached entry.

    Args:
        name: File name from :func:`cache_key`.

    Returns:
        The arrays, or ``None`` when the entry is missing or unreadable.
    """
    path = cache_dir() / name
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError):
        return None


def save_arrays(name: str, arrays: dict[str, np.ndarray]) -> bool:
    """Write an entry atomically; skip silently when the folder is not writable.

    Args:
        name: File name from :func:`cache_key`.
        arrays: Arrays to store.

    Returns:
        Whether the entry was written.
    """
    folder = cache_dir()
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, folder / name)
        return True
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False
