"""sha256 of files and byte strings (provenance, shard manifests, verification), a writer
that hashes what goes through it, and the default number of compression threads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class HashingWriter:
    """A write-only file wrapper that hashes (sha256) and counts every byte written through
    it, so a file's digest is known when it is closed, without reading it back; the digest
    equals :func:`sha256_file` of the file when nothing else writes to it."""

    def __init__(self, f):
        self._f, self._h, self.nbytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self._h.update(data)
        self.nbytes += len(memoryview(data).cast("B"))
        return self._f.write(data)

    def tell(self) -> int:
        return self.nbytes

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def default_threads() -> int:
    """Compression / hashing threads of one build process: the cores this process may use
    (zstd, sha256 and numpy's reductions release the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
