"""The build's worker pools (polar_data.store.pools): a task's exception comes back from its
future, a worker process that dies fails only the task it held and a fresh one takes its
place, one worker runs tasks inline, a shared pool is left open."""

from __future__ import annotations

import os
import signal

import pytest

from polar_data.store.pools import InlinePool, WorkerDied, WorkerPool, worker_pool


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def die(code: int | None) -> None:
    """End this worker process: killed by SIGKILL (``None``, as the OOM killer does) or with
    exit status ``code``."""
    if code is None:
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(code)


def pid() -> int:
    return os.getpid()


def test_a_task_exception_comes_back_and_the_other_tasks_complete():
    with worker_pool(2) as pool:
        assert isinstance(pool, WorkerPool)
        futures = [pool.submit(square, 3), pool.submit(fail, "bad input 7"),
                   pool.submit(square, 4)]
        assert futures[0].result() == 9
        with pytest.raises(ValueError, match="bad input 7"):
            futures[1].result()
        assert futures[2].result() == 16


def test_a_dead_worker_fails_only_its_task_and_a_fresh_process_takes_its_place():
    with worker_pool(2) as pool:
        killed, exited = pool.submit(die, None), pool.submit(die, 3)
        with pytest.raises(WorkerDied, match="killed by SIGKILL .*out-of-memory killer"):
            killed.result()
        with pytest.raises(WorkerDied, match="exited with status 3 without a result"):
            exited.result()
        after = [pool.submit(square, k) for k in range(4)]
        assert [f.result() for f in after] == [0, 1, 4, 9]
        assert os.getpid() not in {pool.submit(pid).result() for _ in range(2)}


def test_one_worker_runs_each_task_in_this_process_when_its_result_is_asked_for():
    with worker_pool(1) as pool:
        assert isinstance(pool, InlinePool)
        future = pool.submit(fail, "not run yet")  # nothing runs at submission
        assert pool.submit(pid).result() == os.getpid()
        with pytest.raises(ValueError, match="not run yet"):
            future.result()


def test_a_shared_pool_is_used_and_left_open():
    with worker_pool(2) as owner:
        with worker_pool(2, shared=owner) as borrowed:
            assert borrowed is owner
        assert owner.submit(square, 5).result() == 25  # still open after the borrower
