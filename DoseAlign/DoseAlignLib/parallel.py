"""Run per-case exports in parallel: a local process pool, or a Dask distributed cluster.

Both run the same task, :func:`batch.export_case`, which never raises for a bad case and returns
its manifest row. The local pool gives each worker one case at a time (Dask: at most ``2 x workers``
in flight), so memory stays bounded however long the cohort, and a worker that dies (the
out-of-memory killer) or overruns the per-case time limit fails only its own case. Deterministic sharding (``--shard K/N``) splits a cohort across independent jobs
(e.g. Slurm array tasks) that write into one output folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import queue as queue_module
import signal
import sys
import threading
import time
from multiprocessing import connection
from typing import Callable, Iterable, Optional

from .errors import no_semaphores, raise_if_stopped, termination_held, too_many_open_files
from .limits import SuspensionClock, case_seconds, die_with_parent

logger = logging.getLogger(__name__)

#: In a worker process: where :func:`worker_stage` sends a case's stages (set by the pool's initializer).
_STAGE_QUEUE = None


#: Most parts of a split: ``merge`` reads K and N of at most six digits from the shard manifests' names.
MAX_SHARDS = 999_999


def parse_shard(text: str) -> tuple:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N <= :data:`MAX_SHARDS`."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes K/N, e.g. 2/8, got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    if n > MAX_SHARDS:  # its shard manifest would be one merge cannot read (thirteenth hostile trial M9)
        raise ValueError(f"--shard K/N takes at most {MAX_SHARDS:,} parts, got {text!r}")
    return k, n


def in_shard(case_id: str, shard: Optional[tuple]) -> bool:
    """Whether a case belongs to shard ``(K, N)``: by a hash of its id, so every job agrees."""
    if shard is None:
        return True
    k, n = shard
    return int(hashlib.sha1(case_id.encode()).hexdigest(), 16) % n == k - 1


def _init_worker(stage_queue=None, parent_pid: Optional[int] = None) -> None:
    """A pool worker: it dies with the batch process, leaves Ctrl-C to it (it stops the workers), ends at
    once on SIGTERM (the batch process's handler, inherited through fork, is not its own; the batch process
    removes what it left), and sends stages to its queue."""
    global _STAGE_QUEUE
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:  # an ignore the command inherited holds here too
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    hangup = getattr(signal, "SIGHUP", None)  # (as SIGTERM: seventieth hostile trial BR5)
    if hangup is not None and signal.getsignal(hangup) not in (signal.SIG_IGN, signal.SIG_DFL):
        signal.signal(hangup, signal.SIG_DFL)
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
    on_lost: Optional[Callable[[object, str], dict]] = None,
    stop: Optional[Callable[[], bool]] = None,
) -> None:
    """Call ``task(case)`` in ``workers`` processes; ``on_result(index, row)`` as each finishes.

    Once ``stop()`` is true no further case is started (those running finish).

    Each worker runs one case at a time, so the pool knows which case a worker holds: when a worker
    dies (killed by the out-of-memory killer, a crash) or runs past the per-case time limit
    (``DOSEALIGN_CASE_SECONDS`` plus a grace), ``on_lost(case, reason)`` makes that case's row (a
    failed row naming what happened), a fresh worker takes its place and the batch goes on.
    ``on_stage(case_id, message)`` receives what the workers send with :func:`worker_stage`.
    Workers ignore Ctrl-C; on KeyboardInterrupt here the workers are stopped and the interrupt is
    raised again (their unfinished case folders are temporary ones, removed by the next run).
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    lost = on_lost or (lambda _case, reason: {"status": "failed", "reason": reason})
    queue: Iterable = iter(enumerate(cases))
    stages, slots = _start_workers(context, task, max(1, min(workers, len(cases))), on_stage is not None)
    if not slots:  # not one process could be started (the open-file limit): the cases run in this one
        for index, case in queue:
            if stop is not None and stop():
                return
            on_result(index, task(case))
        return
    hard_limit = case_seconds() + max(5.0, 0.1 * case_seconds())  # the case stops itself first, if it can
    try:
        while True:
            raise_if_stopped()  # a Ctrl-C or SIGTERM a library swallowed in this process
            for slot in slots:
                if slot.job is None and not (stop is not None and stop()):
                    item = next(queue, None)
                    if item is not None:
                        slot.start(*item)
            busy = [slot for slot in slots if slot.job is not None]
            if not busy:
                return
            waiting = [slot.conn for slot in busy] + [slot.process.sentinel for slot in busy]
            connection.wait(waiting, timeout=0.5)
            _drain(stages, on_stage)
            for slot in busy:
                index, case, clock = slot.job
                outcome = slot.collect()
                if outcome is not None:
                    on_result(index, outcome if isinstance(outcome, dict) else lost(case, outcome))
                elif clock.elapsed() > hard_limit:
                    slot.replace()
                    on_result(
                        index,
                        lost(
                            case,
                            f"the case took longer than the limit of {case_seconds():g} s: its worker process was "
                            "stopped (set DOSEALIGN_CASE_SECONDS to allow more time)",
                        ),
                    )
    except KeyboardInterrupt:
        _stop(slots)
        raise
    finally:
        _stop(slots)
        if stages is not None:
            stages.close()
            stages.cancel_join_thread()


def _start_workers(context, task: Callable, count: int, with_stages: bool) -> tuple:
    """``(stages queue or None, workers)``: as many of ``count`` workers as this process can start. Each
    needs pipes, and a process at its open-file limit (``ulimit -n``) cannot make them; the stages queue needs a
    semaphore, which a container without a writable /dev/shm cannot make: the batch then goes on with fewer
    workers, or none (said once, in one line)."""
    stages, slots = None, []
    if with_stages:
        try:
            stages = context.Queue()
        except OSError as error:  # the workers need no semaphore themselves: they run, their steps unseen
            # (at the open-file limit even importing the queue's module fails: the cases run without it too)
            reason = no_semaphores(error) or too_many_open_files(error)
            if not reason:
                raise
            logger.warning("the steps inside each case are not shown: %s", reason)
    try:
        while len(slots) < count:
            slots.append(_Worker(context, task, stages))
    except OSError as error:
        reason = too_many_open_files(error) or no_semaphores(error)
        if not reason:
            _stop(slots)
            raise
        logger.warning(
            "%s of %d worker processes started (%s): the cases run in %s",
            len(slots),
            count,
            reason.split(";")[0],
            f"{len(slots)} process(es)" if slots else "this process, one at a time",
        )
        if not slots:
            stages = None  # its pipe is closed with it: the cases that run here need the descriptors
    return stages, slots


class _Worker:
    """One worker process of :func:`run_pool` and the case it runs (``job``: index, case, the clock of its time limit)."""

    def __init__(self, context, task: Callable, stages) -> None:
        self.context, self.task, self.stages = context, task, stages
        self.job: Optional[tuple] = None
        self._spawn()

    def _spawn(self) -> None:
        _check_descriptors(6 + WORKER_FILES)
        self.conn, child = self.context.Pipe()
        self.process = self.context.Process(
            target=_work, args=(child, self.task, self.stages, os.getpid()), name="dosealign-worker", daemon=True
        )
        with termination_held():
            self.process.start()
        child.close()

    def start(self, index: int, case) -> None:
        self.job = (index, case, SuspensionClock())  # a stopped job's time is not the case's (J8)
        self.conn.send((index, case))

    def collect(self):
        """The finished case's row, the reason its worker was lost (str), or None while it runs."""
        try:
            if self.conn.poll():
                _index, row, error = self.conn.recv()
                self.job = None
                return row if error is None else error
        except (EOFError, OSError):
            pass  # the worker died while sending
        if self.process.is_alive():
            return None
        self.process.join(timeout=1)
        reason = _death(self.process.exitcode)
        self.replace()
        return reason

    def replace(self) -> None:
        """Stop this worker (lost, or its case past the time limit) and start a fresh one."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        with contextlib.suppress(OSError):
            self.conn.close()
        self.job = None
        self._spawn()


#: Descriptors a worker needs for a case beyond its pipes (the modules it imports, the DICOM files it reads, the
#: files it writes): a worker forked with fewer free failed every case "cannot be opened now" (eleventh hostile
#: trial K10: at ulimit -n 16 one worker started and all cases failed, at 10-14 all ran in this process).
WORKER_FILES = 16


def _check_descriptors(count: int) -> None:
    """Raise EMFILE now, holding nothing, if ``count`` more descriptors cannot be opened: a worker needs a
    pipe of its own and two for its process, and CPython's fork start leaks the first of those two when
    the second cannot be made (the cases that then run in this process would have fewer)."""
    opened: list = []
    try:
        for _ in range(count):
            opened.append(os.open(os.devnull, os.O_RDONLY))
    finally:
        for fd in opened:
            os.close(fd)


def _death(exitcode: Optional[int]) -> str:
    """Why a worker process ended while it held a case, in words."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = (
            " (most often the out-of-memory killer: the case needed more memory than was free)"
            if (-exitcode == getattr(signal, "SIGKILL", 9))
            else ""
        )
        return f"the worker process exporting this case was killed by {name}{cause}; the other cases went on"
    return f"the worker process exporting this case ended unexpectedly (exit code {exitcode}); the other cases went on"


def _work(conn, task: Callable, stages, parent_pid: int) -> None:
    """A worker process: cases in, rows out, one at a time, until told to stop."""
    _init_worker(stages, parent_pid)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if item is None:
            break
        index, case = item
        try:
            conn.send((index, task(case), None))
        except BaseException as error:  # export_case never raises for a bad case; anything else is a crash
            conn.send((index, None, f"the worker process failed: {type(error).__name__}: {error}"))
    conn.close()


def _drain(stages, on_stage) -> None:
    while stages is not None:
        try:
            case_id, message = stages.get_nowait()
        except queue_module.Empty:
            return
        on_stage(case_id, message)


def _stop(slots: list) -> None:
    """End the worker processes now (they ignore SIGINT): asked first, then terminated."""
    for slot in slots:
        with contextlib.suppress(OSError, ValueError):
            slot.conn.send(None)
    for slot in slots:
        slot.process.join(timeout=0.2 if slot.job is None else 0)
        if slot.process.is_alive():
            slot.process.terminate()
    for slot in slots:
        slot.process.join(timeout=5)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(timeout=5)
        with contextlib.suppress(OSError):
            slot.conn.close()


def run_dask(
    task: Callable,
    cases: list,
    scheduler: str,
    workers: int,
    on_result: Callable[[int, dict], None],
    on_lost: Optional[Callable[[object, str], dict]] = None,
    stop: Optional[Callable[[], bool]] = None,
    on_note: Optional[Callable[[str], None]] = None,
) -> None:
    """Run ``task(case)`` on a Dask cluster: ``scheduler`` is ``tcp://host:port`` or ``local``.

    ``local`` starts a LocalCluster of ``workers`` single-threaded processes on this machine.
    Workers elsewhere need the input and output folders at the same paths (a shared filesystem).
    A case whose worker is lost (Dask gives up on it) gets the row ``on_lost(case, reason)``; once
    ``stop()`` is true no further case is submitted. While a scheduler has no worker, ``on_note`` is told
    so at once and then every :data:`WORKER_WAIT_NOTE_SECONDS`.
    """
    lost = on_lost or (lambda _case, reason: {"status": "failed", "reason": reason})
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ImportError("--scheduler needs Dask: pip install 'dosealign[distributed]'") from None
    cluster = None
    started = time.monotonic()
    try:
        if scheduler == "local":
            import dask

            # a worker lost while it runs a case fails that case, as in the process pool: Dask would run it again up
            # to three times, each time taking a worker down; and Dask's own log lines (a restarted worker's
            # heartbeat traceback when the cluster closes) stay out of the export's output (eighteenth trial R8)
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}), _sigint_held_from_workers():
                cluster = LocalCluster(  # no more processes than cases, as the pool (12 for 3: fourteenth trial N11)
                    n_workers=max(1, min(workers, len(cases))),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    # the scheduler's HTTP routes (health, metrics) on a free port, not 8787 with Dask's warning
                    # when that is taken (twenty-first hostile trial U10)
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    host="127.0.0.1",
                    silence_logs=logging.CRITICAL,
                    # a worker that does not start (stuck in its imports, stopped) fails the cases by name instead
                    # of holding the export without a word and without end (U10)
                    death_timeout=local_worker_start_seconds(),
                )
            client = Client(cluster)
        else:
            client = Client(scheduler, timeout=2 * SCHEDULER_CONNECT_SECONDS)
    except BaseException as error:
        if not isinstance(error, Exception):  # stopped (SIGTERM, Ctrl-C) while the cluster starts
            if scheduler == "local":
                _quiet_asyncio()
                _end_local_workers()
            raise  # a worker killed while it started ("Nanny failed to start": fourteenth trial N8),
        # a scheduler that stopped after check_scheduler: each case a named failure, not Dask's traceback
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
        _end_local_workers()
        what = (
            "the Dask LocalCluster could not start" if scheduler == "local" else "the Dask scheduler cannot be reached"
        )
        if scheduler == "local" and time.monotonic() - started >= local_worker_start_seconds():
            what = f"its worker processes did not start within {local_worker_start_seconds():g} s"
        reason = f"not exported: --scheduler {scheduler}: {what} ({type(error).__name__}: {str(error)[:300]})"
        for index, case in enumerate(cases):
            on_result(index, lost(case, reason))
        return
    watching = threading.Event()  # set when the cases are done: the watch of the workers ends
    try:
        if cluster is None and cases:
            _wait_for_a_worker(client, scheduler, on_note or (lambda _message: None), stop)
        if cluster is not None:  # one case a worker at a time: a worker lost fails only the case it ran (R8)
            window = max(1, min(workers, len(cases)))
        else:
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
        case_of = {index: case for index, case in enumerate(cases)}
        if cluster is None:  # the workers may leave while cases run: said, not waited for without a word
            threading.Thread(
                target=_watch_workers,
                args=(lambda: len(client.scheduler_info().get("workers", {})), scheduler, on_note, watching),
                name="dosealign-dask-workers",
                daemon=True,
            ).start()
        for future in batch:
            index = index_of.pop(future.key)
            try:
                row = future.result()
            except Exception as error:  # e.g. KilledWorker: the worker died (out of memory) more than once
                row = lost(
                    case_of[index], f"the Dask worker exporting this case was lost ({type(error).__name__}: {error})"
                )
            on_result(index, row)
            raise_if_stopped()
            item = next(queue, None) if not (stop is not None and stop()) else None
            if item is not None:
                nxt = client.submit(task, item[1], pure=False)
                index_of[nxt.key] = item[0]
                batch.add(nxt)
    finally:
        watching.set()
        stopped = not isinstance(sys.exc_info()[1], (Exception, type(None)))
        try:
            if stopped and cluster is not None:
                # Ctrl-C or SIGTERM: the workers end now, as the pool's do. Closed the usual way, each finished the
                # case it ran into OUT after the count had stopped: the manifest listed fewer cases than OUT held
                # (twenty-third hostile trial W8). What they leave is this run's to remove (the batch does).
                _quiet_asyncio()
                _end_local_workers()
            client.close()
            if cluster is not None:
                cluster.close()
        finally:
            if cluster is not None:
                _end_local_workers()


@contextlib.contextmanager
def _sigint_held_from_workers():
    """SIGINT blocked in this thread while a LocalCluster starts: the threads Dask starts then (its event loop, the
    ones that spawn the worker processes) keep that mask, and so do the processes they spawn. A Ctrl-C in the
    terminal reaches the whole process group; the workers printed KeyboardInterrupt tracebacks (twenty-third hostile
    trial W8), and the command stops them itself. In this thread a SIGINT that came meanwhile is taken once the
    mask is restored."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    with contextlib.suppress(Exception):  # started here first: its start unblocks SIGINT in the thread that starts it
        _start_resource_tracker()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _start_resource_tracker() -> None:
    """Start Python's multiprocessing resource tracker with SIGHUP blocked. The tracker ignores SIGINT and SIGTERM
    but not SIGHUP: a closing terminal killed it, and the LocalCluster's workers printed a traceback each as a new
    one was started (seventy-second hostile trial BT4). The mask is inherited by the tracker and kept there; here a
    SIGHUP that came meanwhile is taken once it is restored."""
    from multiprocessing import resource_tracker

    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None:
        resource_tracker.ensure_running()
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {hangup})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _quiet_asyncio() -> None:
    """A stopped export's LocalCluster leaves tasks of Dask's event loop unfinished ("Nanny failed to start"); asyncio
    logged each at exit as "Task exception was never retrieved" with its traceback, about 1 run in 8 of a SIGTERM
    while the workers started. The process is ending: those lines say nothing of the export."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _end_local_workers() -> None:
    """Kill what is left of a LocalCluster's worker processes: one that never started (stopped, hung in its
    imports) ignores SIGTERM, and the interpreter's exit waited for it for good (twenty-first hostile trial U10)."""
    import atexit

    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # ("reaping stray process" at exit)
    _kill_local_workers()
    # Dask's event loop may start one more worker after this; at exit, multiprocessing unlinks the semaphores it
    # shares with it before it ends its children, and that worker printed a FileNotFoundError traceback as it
    # started (Python 3.9, a SIGTERM or SIGHUP while the workers start). Registered last, this runs first.
    atexit.register(_kill_local_workers)
    with contextlib.suppress(Exception):  # Dask's own close at exit of a cluster that never started: a traceback
        from distributed.deploy import spec

        atexit.unregister(spec.close_clusters)


def _kill_local_workers() -> None:
    """SIGKILL each LocalCluster worker process of this one, and wait for it."""
    import multiprocessing

    for process in multiprocessing.active_children():
        if process.name.startswith("Dask Worker process"):
            with contextlib.suppress(Exception):
                process.kill()
                process.join(timeout=5)


#: The most seconds a --scheduler local worker may take to start (less when DOSEALIGN_CASE_SECONDS is less).
LOCAL_WORKER_START_SECONDS = 120.0


def local_worker_start_seconds() -> float:
    """How long a LocalCluster's worker may take to start: a worker that cannot start within a case's time limit
    can export no case."""
    return min(LOCAL_WORKER_START_SECONDS, case_seconds())


#: Seconds to wait for a Dask scheduler to accept a connection before the export is refused.
SCHEDULER_CONNECT_SECONDS = 10.0

#: Seconds between the notes that a scheduler still has no worker.
WORKER_WAIT_NOTE_SECONDS = 60.0


def _wait_for_a_worker(client, scheduler: str, note: Callable[[str], None], stop: Optional[Callable[[], bool]]) -> None:
    """Return once ``scheduler`` has a worker, saying so while it has none. A scheduler no worker had joined
    made the export wait without a word (fourteenth hostile trial N12). It is not given up: a cluster that starts
    workers on demand (dask-jobqueue on Slurm) may take minutes; Ctrl-C stops the export."""
    from dask.distributed import TimeoutError as DaskTimeoutError

    if client.scheduler_info().get("workers"):
        return
    note(
        f"--scheduler {scheduler}: no Dask worker has joined this scheduler; the export waits for one "
        f"(start one with `dask worker {scheduler}`; Ctrl-C stops the export)"
    )
    started = time.monotonic()
    while stop is None or not stop():
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_NOTE_SECONDS)
            note(f"--scheduler {scheduler}: a Dask worker joined after {time.monotonic() - started:.0f} s")
            return
        except (DaskTimeoutError, TimeoutError):
            minutes = (time.monotonic() - started) / 60
            note(f"--scheduler {scheduler}: still no Dask worker after {minutes:.0f} min; the export waits")


#: How often a running export asks its scheduler how many workers it has (seconds).
WORKER_POLL_SECONDS = 2.0


def _watch_workers(
    count: Callable[[], int],
    scheduler: str,
    note: Optional[Callable[[str], None]],
    done: threading.Event,
    poll: float = WORKER_POLL_SECONDS,
) -> None:
    """While cases run on ``scheduler``, tell ``note`` when it has no worker left (``count()`` of them), at once and
    then every :data:`WORKER_WAIT_NOTE_SECONDS`, and when one has joined again. The only worker killed while it ran
    a case left the export waiting without a word and without end (thirty-seventh hostile trial AK2). Dask runs the
    case again on a worker that joins; the export waits for one (a cluster that starts workers on demand)."""
    if note is None:
        return
    gone_since, said = None, 0.0
    while not done.wait(poll):
        try:
            workers = count()
        except Exception:  # (the scheduler gone: the cases' futures fail, and say so)
            continue
        now = time.monotonic()
        if workers and gone_since is not None:
            note(f"--scheduler {scheduler}: a Dask worker joined again after {now - gone_since:.0f} s")
            gone_since = None
        elif not workers and gone_since is None:
            gone_since = said = now
            note(
                f"--scheduler {scheduler}: no Dask worker is connected any more; the cases not finished wait for one "
                f"(start one with `dask worker {scheduler}`; Ctrl-C stops the export)"
            )
        elif not workers and now - said >= WORKER_WAIT_NOTE_SECONDS:
            said = now
            note(
                f"--scheduler {scheduler}: still no Dask worker after {(now - gone_since) / 60:.0f} min; the export waits"
            )


def check_scheduler(address: str) -> None:
    """Refuse (ValueError, before anything is written) any scheduler when Dask is not installed, and a
    ``tcp://host:port`` scheduler nothing listens at.

    Other protocols (``tls://``, ``ucx://``) are refused. Without this check Dask
    retried for 30 s and ended in a traceback, after the output folder was made.
    """
    import importlib.util
    import socket
    from urllib.parse import urlsplit

    text = str(address).strip()
    try:
        missing = importlib.util.find_spec("distributed") is None
    except (ImportError, ValueError):
        missing = True
    if missing:  # said now, not as run_dask's traceback after the output folder was made
        raise ValueError(f"--scheduler {text} needs Dask: pip install 'dosealign[distributed]'; nothing was written")
    if text == "local":
        return
    parts = urlsplit(text if "://" in text else f"tcp://{text}")
    if parts.scheme != "tcp":  # tls:// needs Dask's security settings, ucx:// and ws:// their extras, inproc:// is
        # in this process: each case failed with Python's own message, exit 1 (twenty-fourth hostile trial X4)
        raise ValueError(
            f"--scheduler {text}: only tcp://host:port (or host:port) and 'local' are supported, not "
            f"{parts.scheme}://; nothing was written"
        )
    try:
        host, port = parts.hostname, parts.port
    except ValueError as error:  # a port that is no number
        raise ValueError(f"--scheduler {text}: not an address like tcp://host:8786 ({error})") from None
    if not host or port is None:
        raise ValueError(f"--scheduler {text}: not an address like tcp://host:8786")
    try:
        with socket.create_connection((host, port), timeout=SCHEDULER_CONNECT_SECONDS):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(
            f"--scheduler {text}: no Dask scheduler can be reached there ({reason}); nothing was written"
        ) from None
    problem = _dask_handshake(text, 2 * SCHEDULER_CONNECT_SECONDS)
    if problem:
        raise ValueError(f"--scheduler {text}: {problem}; nothing was written")


def _dask_handshake(address: str, seconds: float) -> Optional[str]:
    """Why ``address`` answers no Dask client within ``seconds`` (None when it does). Something else listening
    there (the dashboard's port 8787, a web server, a silent listener) made the export wait for ever, and a service
    answering "HTTP/1.1 400" ended it in a numpy traceback (fourteenth hostile trial N7): Dask's own connect
    timeout does not bound its handshake, so the attempt runs in a thread of its own and is given up."""
    import threading

    outcome: list = []

    def attempt() -> None:
        # one RPC on a loop of its own: a Client half made (a service that speaks first, an SSH banner, read as a
        # frame length) was closed by its finalizer, which waited 40 s and printed a traceback (sixteenth trial P14)
        import asyncio

        async def identity() -> dict:
            from distributed.core import rpc

            async with rpc(address, timeout=seconds) as remote:
                return await asyncio.wait_for(remote.identity(), seconds)

        try:
            answer = asyncio.run(identity())
            outcome.append(
                None
                if isinstance(answer, dict) and answer.get("type") == "Scheduler"
                else f"it says {str(answer)[:100]}"
            )
        except BaseException as error:  # anything that is no Dask scheduler's answer
            outcome.append(f"{type(error).__name__}: {str(error)[:200]}")

    thread = threading.Thread(target=attempt, name="dosealign-dask-handshake", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        return (
            f"no Dask scheduler answered within {seconds:g} s (another service listens there: the dashboard's "
            "port, 8787, instead of the scheduler's, 8786?)"
        )
    return None if outcome[0] is None else f"what answers there is no Dask scheduler ({outcome[0]})"


def default_workers() -> int:
    """One worker per core (the machine's, or the CPUs this process may use)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
