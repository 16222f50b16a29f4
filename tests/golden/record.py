"""Re-record the golden runs: ``python -m tests.golden.record`` (see tests/golden/__init__.py)."""

import json
import shutil
import tempfile
from pathlib import Path

from tests.golden import DATA, fingerprint, key_file, produce


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        got = produce(Path(tmp))
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    for key, frame in got.items():
        frame.to_parquet(DATA / key_file(key), index=False)
    (DATA / "machine.json").write_text(json.dumps(
        {**fingerprint(), "tables": sorted(got)}, indent=1) + "\n")
    print(f"recorded {len(got)} tables into {DATA}")


if __name__ == "__main__":
    main()
