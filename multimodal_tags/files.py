"""Writing files and folders so that a reader (or a rerun after a kill) sees the old version or the
new one, never half of one."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def temp_path(path: Path) -> Path:
    """A sibling of `path` to build the new version in (hidden, unique to this process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write the new version of `path` into: when the block ends, it is flushed, fsynced
    and renamed over `path`; if the block raises, it is removed and `path` is left as it was."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def swap_in_folder(tmp: Path, folder: Path) -> Path:
    """Move the finished folder `tmp` to `folder`, replacing what was there."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temp file, then rename it over `path`."""
    tmp = temp_path(path)
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def remove_sqlite(path: Path) -> None:
    """Delete an SQLite database and its WAL and shared-memory files (those left are a database too)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
