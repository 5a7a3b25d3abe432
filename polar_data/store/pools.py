"""Worker pools for the build stages: :func:`worker_pool` gives processes that survive one of
them dying (:class:`WorkerPool`), or runs each task inline (one worker)."""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
from concurrent.futures import Future
from multiprocessing.connection import wait

from polar_data.store.checksum import default_threads


def worker_pool(workers: int, shared=None):
    """A pool of worker processes (:class:`WorkerPool`), or an inline one; ``shared``: an
    open pool to use instead (left open)."""
    if shared is not None:
        return _Borrowed(shared)
    if workers <= 1:
        return InlinePool()
    return WorkerPool(workers)


class WorkerDied(RuntimeError):
    """A worker process ended before returning its task's result (killed, e.g. by the
    out-of-memory killer, or crashed); the message says how it ended."""


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        oom = " (e.g. by the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"the worker process was killed by {name}{oom}"
    return f"the worker process exited with status {exitcode} without a result"


def _worker_main(conn) -> None:
    """One worker process: run each ``(fn, args)`` received, send back ``(True, result)``
    or ``(False, exception)``; stop on ``None`` or when the pool's end of the pipe closes."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        fn, args = job
        try:
            out = (True, fn(*args))
        except Exception as e:
            out = (False, e)
        try:
            conn.send(out)
        except Exception as e:  # a result or exception that cannot be pickled
            conn.send((False, RuntimeError(f"{type(e).__name__}: {e}")))


class WorkerPool:
    """``workers`` processes (spawn: zarr's I/O threads do not survive fork), each running
    one task at a time, each fed by one thread of this process. ``submit`` returns a
    :class:`concurrent.futures.Future`. A process that dies (SIGKILL from the out-of-memory
    killer, a crash) fails only the task it held, with :class:`WorkerDied` saying how it
    ended; a fresh process takes its place for the next task and every other task runs as
    if nothing happened (a ``ProcessPoolExecutor`` fails every pending task instead)."""

    def __init__(self, workers: int):
        self._ctx = mp.get_context("spawn")
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._procs: dict[int, mp.Process] = {}
        self._threads = [threading.Thread(target=self._feed, args=(i,), daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self._jobs.put((fut, fn, args))
        return fut

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:  # e.g. Ctrl-C: tasks not started are not run
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
            for p in list(self._procs.values()):
                p.terminate()
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        return False

    def _start(self, slot: int):
        ours, theirs = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(theirs,), daemon=True)
        proc.start()
        theirs.close()
        self._procs[slot] = proc
        return proc, ours

    def _feed(self, slot: int) -> None:
        proc = conn = None
        try:
            while (job := self._jobs.get()) is not None:
                fut, fn, args = job
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    if proc is None:
                        proc, conn = self._start(slot)
                    ok, value = self._run(proc, conn, fn, args)
                except WorkerDied as e:
                    conn.close()
                    proc = conn = None
                    fut.set_exception(e)
                    continue
                except BaseException as e:  # e.g. the arguments cannot be pickled
                    fut.set_exception(e)
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        finally:
            if conn is not None:
                try:
                    conn.send(None)
                except OSError:
                    pass
                conn.close()
                proc.join()

    @staticmethod
    def _run(proc, conn, fn, args):
        """Send one task to ``proc`` and wait for its result or its end."""
        try:
            conn.send((fn, args))
            wait([conn, proc.sentinel])
            if conn.poll():  # a result sent just before the process ended still counts
                return conn.recv()
        except (EOFError, OSError):
            pass
        proc.join()
        raise WorkerDied(_how_it_ended(proc.exitcode))


def threads_per_worker(workers: int) -> int:
    """Compression threads per worker process: the cores shared among the workers, at
    least 2 (so a worker's reading overlaps its compression)."""
    return max(2, -(-default_threads() // max(1, workers)))


class _Borrowed:
    """A pool used by one stage and closed by its owner."""

    def __init__(self, pool):
        self._pool = pool

    def __enter__(self):
        return self._pool

    def __exit__(self, *exc):
        return False


class _Lazy:
    def __init__(self, fn, args):
        self._fn, self._args = fn, args

    def result(self):
        return self._fn(*self._args)


class InlinePool:
    """Runs each submission in this process when its result is asked for (workers = 1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        return _Lazy(fn, args)
