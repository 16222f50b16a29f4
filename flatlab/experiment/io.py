"""Reading and writing the files of configs and run directories, safely.

Nothing read from disk runs code (DESIGN.md §7). YAML is read by :class:`StrictLoader`, a
``yaml.SafeLoader`` that

- refuses a key given twice in one mapping (PyYAML keeps the last one silently);
- refuses every tag it does not know (``!!python/object`` and friends), as ``SafeLoader`` does;
- reads numbers in exponent form without a dot (``1e-3``, ``2E5``) as floats, as YAML 1.2 does
  (YAML 1.1, PyYAML's default, reads them as strings).

Every problem with a file is one :class:`~flatlab.errors.FlatlabError` line naming the file,
what is wrong and, where there is one, the line of the file. Files are written atomically
(a temporary file in the same folder, then ``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flatlab.errors import FlatlabError

__all__ = ["StrictLoader", "yaml_loads", "read_yaml", "read_json", "read_table",
           "atomic_write", "write_text", "yaml_error_line", "write_error", "write_parquet",
           "read_parquet"]


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without silent duplicates, with YAML 1.2 exponent floats."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping; a key that appears twice is an error naming it and its line."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`, overridden below
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {first}); give it "
                    "once", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 needs a dot in a float; YAML 1.2 (and every user) reads 1e-3 as a number.
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def yaml_error_line(err: yaml.YAMLError) -> str:
    """One line for a YAML error: the problem and where it is."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0] or "parse error"
    if "could not determine a constructor for the tag" in problem:
        tag = problem.split("'")[1].replace("tag:yaml.org,2002:", "!!")
        problem = (f"tag {tag} is not allowed (flatlab reads plain YAML: mappings, lists, "
                   "strings, numbers, booleans, null)")
    mark = getattr(err, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def yaml_loads(text: str) -> Any:
    """Parse YAML text with :class:`StrictLoader` (raises ``yaml.YAMLError``)."""
    loader = StrictLoader(text)  # a SafeLoader: builds plain data only
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_text(path: Path, what: str, error: type[FlatlabError]) -> str:
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    if not path.is_file():
        raise error(f"{what} {path} is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not text (not UTF-8)") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror or e}") from None


def read_yaml(path: str | Path, what: str = "YAML file", *, mapping: bool = True,
              error: type[FlatlabError] = FlatlabError) -> Any:
    """The contents of a YAML file, read safely (:class:`StrictLoader`).

    Args:
        path: The file.
        what: What the file is, for messages (``"config file"``).
        mapping: Require a mapping at the top (an empty file reads as ``{}``).
        error: The :class:`FlatlabError` subclass raised.

    Raises:
        FlatlabError: (``error``) The file is missing, unreadable, not valid YAML, uses a tag or a
            duplicate key, or (with ``mapping``) does not hold a mapping.
    """
    path = Path(path)
    text = _read_text(path, what, error)
    try:
        data = yaml_loads(text)
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML: {yaml_error_line(e)}") from None
    if mapping:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise error(f"{what} {path} must hold a mapping of fields (got a "
                        f"{type(data).__name__})")
    return data


def read_json(path: str | Path, what: str = "JSON file", *,
              error: type[FlatlabError] = FlatlabError) -> dict[str, Any]:
    """A JSON object from a file (one-line errors for a missing, damaged or non-object file).

    A file that stops before its JSON does (empty, or cut inside a string or a container) is
    called truncated, the usual way such a file comes about (a disk that filled up, a copy cut
    short); any other parse error is named with its line.
    """
    path = Path(path)
    text = _read_text(path, what, error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if not text.strip():
            why = "the file is empty (truncated?)"
        elif e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):
            why = f"it stops before the JSON ends (truncated?) at line {e.lineno}"
        else:
            why = f"{e.msg} (line {e.lineno})"
        raise error(f"{what} {path} is not valid JSON: {why}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object (got a {type(data).__name__})")
    return data


def atomic_write(path: Path, writer: Callable[[Path], Any]) -> None:
    """``writer(tmp)`` then ``os.replace(tmp, path)``: readers see the old or the new file.

    The temporary name is unique per process and thread, so two writers never share it. A write
    that fails (a full file system, a file-size limit, a folder that went read-only) leaves the
    old file as it was and no temporary behind, and is raised as one :class:`OSError` naming
    ``path`` and the cause (:func:`write_error`), also where the writer reported it otherwise
    (torch's writer raises ``RuntimeError: [enforce fail at inline_container.cc] ...``).
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise write_error(path, e) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_error(path: Path, e: BaseException) -> OSError:
    """``e``, raised while writing ``path``, as one line: the file and the cause, diagnosed.

    ``ENOSPC``/``EDQUOT``: the file system (or a quota) is full; ``EFBIG``: a file-size limit
    (``ulimit -f``); a writer that says neither (torch's) is told apart by the free space and the
    process's limit.
    """
    code = getattr(e, "errno", None)
    if isinstance(e, OSError) and code not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, None):
        return OSError(code, f"cannot be written: {e.strerror or e}", str(path))
    limit = _file_size_limit()
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = free is not None and free < 1 << 20
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and full):
        cause = f"the file system is full ({free if free is not None else '?'} bytes free)"
        code = code or errno.ENOSPC
    elif code == errno.EFBIG or (code is None and limit is not None):
        cause = (f"a file-size limit stops it (ulimit -f: {limit} bytes)" if limit is not None
                 else "a file-size limit stops it")
        code = errno.EFBIG
    else:
        cause = (str(e).splitlines() or [type(e).__name__])[0][:160]
        code = errno.EIO
    return OSError(code, f"cannot be written: {cause}; the files written before are intact",
                   str(path))


def _file_size_limit() -> int | None:
    """This process's file-size limit in bytes (``ulimit -f``), ``None`` when unlimited."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def write_parquet(path: Path, frame: Any) -> None:
    """Write a DataFrame to ``path`` as Parquet, atomically, through a Python file object.

    pyarrow encodes a path it is given as UTF-8 and fails on one that Python holds with
    surrogate escapes (a non-ASCII folder under ``LC_ALL=C PYTHONUTF8=0``); a file Python opened
    has no such problem.
    """
    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            frame.to_parquet(fh, index=False)

    atomic_write(Path(path), write)


def read_parquet(path: Path) -> Any:
    """A Parquet file as a DataFrame, read through a Python file object (see write_parquet)."""
    with open(path, "rb") as fh:
        return pd.read_parquet(fh)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def read_table(path: Path) -> pd.DataFrame:
    """A CSV table, or an empty one for a file without rows or columns (nothing tuned)."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
