"""One writer per output folder: an advisory ``flock`` on ``<out>/.build.lock``.

A whole build (``--stage all``) and ``finalize`` hold the lock exclusively. The array-job
stages ``ingest`` and ``shards`` hold it shared (their jobs write disjoint files), plus an
exclusive lock of their own job slot, so the same job run twice is refused too. A refused
build fails at once with :class:`BuildLocked`, naming the holder (pid, host, start time).
The lock is released by the kernel when the process ends, so a killed build never leaves a
stale lock behind. ``verify`` only reads: it takes the lock shared through a read-only
descriptor, and skips it where no lock file exists, so a read-only store can be verified.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".build.lock"


class BuildLocked(RuntimeError):
    """Another process holds the output folder."""


def _holders(out_dir: Path) -> str:
    found = []
    for p in sorted(out_dir.glob(LOCK_NAME + "*")):
        try:
            info = json.loads(p.read_text() or "{}")
        except (OSError, ValueError):
            continue
        if info:
            found.append(f"pid {info.get('pid')} on {info.get('host')} since "
                         f"{info.get('started')} ({info.get('what')})")
    return "; ".join(found) or "a process that has not written its details yet"


@contextmanager
def folder_lock(path: Path, exclusive: bool, what: str, out_dir: Path, fd: int | None = None,
                busy: str = "being built"):
    """Hold the ``flock`` on ``path`` (a file in ``out_dir``), exclusive or shared, or raise
    :class:`BuildLocked` at once naming ``out_dir`` ("is <busy> by another process") and the
    holders. ``what``: the holder's own description, written into the file while held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if fd is None else fd
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildLocked(f"{out_dir} is {busy} by another process: "
                              f"{_holders(out_dir)}. Wait for it to finish, or use another "
                              "output folder.") from None
        if exclusive:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        if exclusive:
            os.ftruncate(fd, 0)
        os.close(fd)


@contextmanager
def build_lock(out_dir: Path, stage: str, job_index: int = 0, num_jobs: int = 1):
    """Hold ``out_dir`` for ``stage`` (``all``, ``ingest``, ``shards``, ``finalize`` or
    ``verify``) of job ``job_index`` of ``num_jobs``; raises BuildLocked if it is taken."""
    out_dir = Path(out_dir)
    if stage == "verify":
        try:
            fd = os.open(out_dir / LOCK_NAME, os.O_RDONLY)
        except OSError:  # no lock file: nothing has ever built here (or it cannot be read)
            yield
            return
        with folder_lock(out_dir / LOCK_NAME, False, "--verify", out_dir, fd):
            yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    what = f"--stage {stage} job {job_index}/{num_jobs}"
    shared = stage in ("ingest", "shards", "verify")
    with folder_lock(out_dir / LOCK_NAME, not shared, what, out_dir):
        if stage in ("ingest", "shards"):
            slot = out_dir / f"{LOCK_NAME}.{stage}-{job_index}-of-{num_jobs}"
            with folder_lock(slot, True, what, out_dir):
                yield
        else:
            yield
