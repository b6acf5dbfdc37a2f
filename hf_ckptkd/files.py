"""Small file utilities used across the package: atomic writes and SHA-256 hashes of files.

A file written with `write_text_atomic` / `write_json_atomic` is either absent, or complete: the
text goes to a hidden temporary file beside it (named `.tmp-…`, which snapshot folders skip and
clean up), is flushed to disk, and is then renamed over the target.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"
CHUNK_BYTES = 1 << 20  # hashes read files in blocks of this size, so large weights never sit in memory whole


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` (UTF-8) so that a reader sees the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, payload: Any, **dumps_options: Any) -> None:
    """`write_text_atomic` of `json.dumps(payload, indent=2, **dumps_options)`."""
    write_text_atomic(path, json.dumps(payload, indent=2, **dumps_options))


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in blocks."""
    sha256 = hashlib.sha256()
    _feed(Path(path), sha256)
    return sha256.hexdigest()


def file_hashes(data: bytes | str | os.PathLike) -> tuple[str, str]:
    """(SHA-256, git blob SHA-1) of bytes or of a file, read in blocks.

    The Hub identifies a large (LFS) file by its SHA-256 and a small one by its git blob SHA-1,
    so comparing local files with a Hub revision needs both.
    """
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest(), hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    path = Path(data)
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    _feed(path, sha256, sha1)
    return sha256.hexdigest(), sha1.hexdigest()


def _feed(path: Path, *digests) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            for digest in digests:
                digest.update(block)


__all__ = ["CHUNK_BYTES", "TEMP_PREFIX", "file_hashes", "sha256_of", "write_json_atomic", "write_text_atomic"]
