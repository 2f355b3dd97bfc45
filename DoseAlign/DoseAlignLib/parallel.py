"""Run per-case exports in parallel: a local process pool, or a Dask distributed cluster.

Both run the same task, :func:`batch.export_case`, which never raises for a bad case and returns
its manifest row; at most ``2 x workers`` cases are in flight, so memory stays bounded however
long the cohort. Deterministic sharding (``--shard K/N``) splits a cohort across independent jobs
(e.g. Slurm array tasks) that write into one output folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import queue as queue_module
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Iterable, Optional

from .limits import die_with_parent

#: In a worker process: where :func:`worker_stage` sends a case's stages (set by the pool's initializer).
_STAGE_QUEUE = None


def parse_shard(text: str) -> tuple:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes K/N, e.g. 2/8, got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def in_shard(case_id: str, shard: Optional[tuple]) -> bool:
    """Whether a case belongs to shard ``(K, N)``: by a hash of its id, so every job agrees."""
    if shard is None:
        return True
    k, n = shard
    return int(hashlib.sha1(case_id.encode()).hexdigest(), 16) % n == k - 1


def _init_worker(stage_queue=None, parent_pid: Optional[int] = None) -> None:
    """A pool worker: it dies with the batch process, leaves Ctrl-C to it (it stops the workers), and
    sends stages to its queue."""
    global _STAGE_QUEUE
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STAGE_QUEUE = stage_queue


def worker_stage(case_id: str, message: str) -> None:
    """A case's stage, from a pool worker to the batch process (nothing outside a pool with stages)."""
    if _STAGE_QUEUE is not None:
        with contextlib.suppress(Exception):  # progress is never worth a case
            _STAGE_QUEUE.put_nowait((case_id, message))


def run_pool(
    task: Callable,
    cases: list,
    workers: int,
    on_result: Callable[[int, dict], None],
    on_stage: Optional[Callable[[str, str], None]] = None,
) -> None:
    """Call ``task(case)`` in ``workers`` processes; ``on_result(index, row)`` as each finishes.

    ``on_stage(case_id, message)`` receives what the workers send with :func:`worker_stage`.
    Workers ignore Ctrl-C; on KeyboardInterrupt here the cases not started are cancelled, the
    workers stopped (their unfinished case folders are temporary ones, removed by the next run)
    and the interrupt is raised again.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    stages = context.Queue() if on_stage is not None else None
    pending: dict = {}
    queue: Iterable = iter(enumerate(cases))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(stages, os.getpid())
    ) as pool:
        try:
            while True:
                while len(pending) < 2 * workers:
                    item = next(queue, None)
                    if item is None:
                        break
                    index, case = item
                    pending[pool.submit(task, case)] = index
                if not pending:
                    return
                done, _ = wait(pending, timeout=0.5 if stages is not None else None, return_when=FIRST_COMPLETED)
                _drain(stages, on_stage)
                for future in done:
                    on_result(pending.pop(future), future.result())
        except KeyboardInterrupt:
            _stop(pool)
            raise
        finally:
            if stages is not None:
                stages.close()
                stages.cancel_join_thread()


def _drain(stages, on_stage) -> None:
    while stages is not None:
        try:
            case_id, message = stages.get_nowait()
        except queue_module.Empty:
            return
        on_stage(case_id, message)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the worker processes now (they ignore SIGINT)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=5)


def run_dask(task: Callable, cases: list, scheduler: str, workers: int, on_result: Callable[[int, dict], None]) -> None:
    """Run ``task(case)`` on a Dask cluster: ``scheduler`` is ``tcp://host:port`` or ``local``.

    ``local`` starts a LocalCluster of ``workers`` single-threaded processes on this machine.
    Workers elsewhere need the input and output folders at the same paths (a shared filesystem).
    """
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ImportError("--scheduler needs Dask: pip install 'dosealign[distributed]'") from None
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        )
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        window = max(2 * workers, 2 * len(client.scheduler_info().get("workers", {})) or 2)
        queue = iter(enumerate(cases))
        index_of: dict = {}
        batch = as_completed()
        for _ in range(window):
            item = next(queue, None)
            if item is None:
                break
            future = client.submit(task, item[1], pure=False)
            index_of[future.key] = item[0]
            batch.add(future)
        for future in batch:
            on_result(index_of.pop(future.key), future.result())
            item = next(queue, None)
            if item is not None:
                nxt = client.submit(task, item[1], pure=False)
                index_of[nxt.key] = item[0]
                batch.add(nxt)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def default_workers() -> int:
    """One worker per core (the machine's, or the CPUs this process may use)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
