"""Create the key of the mark on ingest's Kafka records, once per installation.

Ingest marks every record it produces and the processors refuse a reading without a
valid mark (:mod:`civic_iot.contracts.provenance`); both read the key from
``<data dir>/secrets/kafka-mark-key`` (or ``CIVIC_KAFKA__MARK_KEY``) and refuse to start
without it. Idempotent: an existing key is kept (``--rotate`` replaces it; restart ingest
and the processors afterwards, and let the processors drain what ingest marked with the
old key first, or those records are refused as foreign). Run by ``deploy/stack.sh up``
and docker-compose's setup (``python -m ops.mark_key``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
from pathlib import Path

from civic_iot.files import write_atomic
from civic_iot.settings import MARK_KEY_FILE, get_settings


def ensure_mark_key(data_dir: Path, *, rotate: bool = False) -> Path:
    """The key file, created (0600, 256 random bits, hex) when missing or ``rotate``."""
    path = data_dir / MARK_KEY_FILE
    if rotate:
        write_atomic(path, secrets.token_hex(32) + "\n")
        return path
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kafka-mark-key.")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        # A hard link appears whole or never replaces a file: two setups at once keep one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotate", action="store_true", help="replace an existing key")
    args = parser.parse_args(argv)
    path = ensure_mark_key(get_settings().data_dir, rotate=args.rotate)
    print(f"record mark key: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
