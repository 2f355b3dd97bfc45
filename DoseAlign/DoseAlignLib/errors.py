"""Exceptions of the engine: each names the file, the DICOM tag and what to do about it."""

from __future__ import annotations

import contextlib
import errno
import threading
from typing import Optional

try:  # imported now: at the open-file limit, importing it would need a file it cannot open
    import resource as _resource
except ImportError:  # Windows
    _resource = None  # type: ignore[assignment]


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm, ``kill``), raised where the command was when it came, as Ctrl-C's
    KeyboardInterrupt is (the command installs the handler that raises it, see cli.py): the export ends
    the same clean way. Defined here, in a module the command has imported whole before the handler is
    installed: the handler imports nothing (a signal during an import must not meet a half-imported module)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``terminated``) during an export: ``done`` of ``total`` cases were finished (and
    are in manifest.csv). Defined here for the reason :class:`Terminated` is: the command's ``except`` clause
    names it, and a Ctrl-C during an import must not make that clause import anything."""

    def __init__(self, done: int, total: int, terminated: bool = False) -> None:
        super().__init__(f"{'stopped by SIGTERM' if terminated else 'interrupted'} after {done} of {total} cases")
        self.done = done
        self.total = total
        self.terminated = terminated


class DoseAlignError(Exception):
    """Base class of every error the engine raises on purpose.

    ``path`` is the offending file (or folder), ``tag`` the DICOM attribute at fault, e.g.
    ``"(3004,000C) GridFrameOffsetVector"``, and ``hint`` what the user can do.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Optional[str] = None,
        tag: Optional[str] = None,
        hint: Optional[str] = None,
    ) -> None:
        message = terminal_safe(shortened(message))
        super().__init__(message)
        self.message = message
        self.path = None if path is None else path_text(str(path))
        self.tag = tag
        self.hint = hint

    def __str__(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}:")
        if self.tag:
            parts.append(f"{self.tag}:")
        parts.append(self.message)
        text = " ".join(parts)
        if self.hint:
            text += f" ({self.hint})"
        return text


#: How many characters of an error's message are kept: one quoting a whole header value (a GridFrameOffsetVector of
#: 40 MB) made a 160 MB manifest.csv and report.html and took 1.3 GB (seventy-second hostile trial BT8).
MAX_MESSAGE = 2000


def shortened(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text``, or its beginning and end with how many characters were left out between them."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]} ... ({len(text) - 2 * keep} characters left out) ... {text[-keep:]}"


def printable(text: str) -> str:
    """``text`` that every output can hold: bytes of a name that is not UTF-8 (kept by the file
    system as surrogates) are shown escaped, e.g. ``caf\\xe9.dcm``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: Control characters a terminal acts on (ESC starts colour, cursor and title sequences; CR, BS rewrite the
#: line); a file name may hold any of them. Newline and tab are kept: DoseAlign's own text uses them.
_TERMINAL_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}


def terminal_safe(text: str) -> str:
    """``text`` as :func:`printable` gives it, with the control characters a terminal would act on shown
    escaped (``\\x1b``): a file named ``x\\x1b[31m.dcm`` must not colour or move the user's terminal."""
    return printable(text).translate(_TERMINAL_CONTROLS)


#: Every control character, newline and tab too: in a file's name they are the name's, not DoseAlign's layout.
_PATH_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]}


def path_text(text: str) -> str:
    """A file's path as every output shows it (as the scan's ``display_path`` does): bytes that are not UTF-8 and
    every control character escaped. A newline in a name started a line of its own in a failed case's line
    (twenty-first hostile trial U4)."""
    return printable(text).translate(_PATH_CONTROLS)


def hdf5_text(value) -> str:
    """``value`` as an HDF5 string attribute holds it: HDF5's variable-length strings end at a NUL, so a NUL
    (a damaged PatientID or ROI name) is written as the four characters ``\\x00`` (meta.json keeps it)."""
    return str(value).replace("\x00", "\\x00")


class NothingToExport(DoseAlignError):
    """The input holds no case to export (no RTDOSE, or no readable DICOM at all); nothing was written.
    Here, not in batch.py: the command's ``except`` clause names it (see :class:`Interrupted`)."""


class InputError(DoseAlignError, ValueError):
    """A file that cannot be read or lacks what the engine needs."""


class UnreadableError(InputError):
    """A file or folder that cannot be read at all (permissions, an I/O error): never silently left out."""


class GeometryError(DoseAlignError, ValueError):
    """Position, orientation, spacing or frame offsets that do not describe a usable grid."""


class UnitsError(DoseAlignError, ValueError):
    """Dose values whose unit is not absolute dose (e.g. DoseUnits RELATIVE)."""


class LinkError(DoseAlignError, ValueError):
    """Objects that cannot be paired (a dose without a CT, a frame-of-reference mismatch)."""


class OutputFault(DoseAlignError):
    """Writing the output failed (disk full, I/O error, read-only or vanished folder): no case can be
    written, so the batch stops after this one, with a valid manifest and its own exit code."""


#: The options an export that stopped is run again with to finish (set by each export as it starts: an --append run
#: run again with --resume alone left the other input's rows out of manifest.csv, seventieth hostile trial BR2).
_AGAIN = ["--resume"]


def set_resume_options(text: str) -> None:
    """Say how the export now starting is run again to finish (``--append --resume``, ``--shard 2/4 --resume``)."""
    _AGAIN[0] = text


def resume_options() -> str:
    """How the last export started in this process is run again to finish (``--resume`` and what it needs)."""
    return _AGAIN[0]


#: ``(done, total)`` once an export's cases have all run (its summaries are written after them), else None.
_CASES_RUN: list = [None]


def note_cases_run(done: Optional[int], total: int = 0) -> None:
    """Say that the export now running has run its cases (``done`` of ``total`` finished), or forget it (None)."""
    _CASES_RUN[0] = None if done is None else (done, total)


def cases_run() -> Optional[tuple]:
    """``(done, total)`` when a stop came after the cases of the export had run, while it wrote its summaries: it
    was said to have come "before any case was exported" (seventy-second hostile trial BT1)."""
    return _CASES_RUN[0]


#: What to run again instead, where the command is no export (the demo has no --resume: seventy-second trial BT7).
_RERUN: list = [None]


def set_rerun(advice: Optional[str]) -> None:
    """Say what the command now starting is run again with to finish, where that is not an export's ``--resume``."""
    _RERUN[0] = advice


def resume_advice() -> str:
    """``run again with --resume`` (and the options it needs), or what the command now running advises instead."""
    return _RERUN[0] or f"run again with {_AGAIN[0]}"


def output_fault(error: OSError, where=None, then: Optional[str] = None) -> OutputFault:
    """An :class:`OutputFault` from the operating system's error: the output folder ``where`` (else the
    file), the file being written and the cause, e.g. ``No space left on device (ENOSPC)``; ``then`` says what to
    do once it is fixed (merge: run merge again)."""
    import errno as errno_names
    import os

    while error.errno is None and isinstance(error.__cause__, OSError):  # pydicom re-raises "With tag ... got
        error = error.__cause__  # exception: [Errno 28] ... Traceback ..." as a new OSError without the errno
    code = errno_names.errorcode.get(error.errno or 0, "")
    cause = f"{error.strerror or error}" + (f" ({code})" if code else "")
    filename = getattr(error, "filename", None)
    what = f"writing {os.path.basename(str(filename))}" if filename and where is not None else "writing the output"
    then = then if then is not None else f"{resume_advice()}; the export stopped here"
    hint = f"free space or fix the output folder, then {then}"
    limit_reached = too_many_open_files(error)
    if limit_reached:  # not the disk: the process's open-file limit
        cause += f": {limit_reached}"
        hint = f"raise the limit (ulimit -n) or use fewer --workers, then {then}"
    elif error.errno == errno_names.EXDEV:  # not the disk: an overlay cannot rename its lower layer's folders (62nd)
        cause += ": its file system cannot rename this entry in place (e.g. a folder of an overlay's lower layer)"
        hint = f"remove the entry or choose an output folder on another file system, then {then}"
    fault = OutputFault(f"{what} failed: {cause}", path=where if where is not None else filename, hint=hint)
    fault.cause = cause
    return fault


class Cancelled(DoseAlignError):
    """Raised by a progress callback to stop the work cleanly."""


def open_files_limit() -> Optional[int]:
    """How many files this process may have open at once (``ulimit -n``, its soft limit), or None if unknown."""
    if _resource is None:  # Windows
        return None
    soft, _hard = _resource.getrlimit(_resource.RLIMIT_NOFILE)
    return None if soft == _resource.RLIM_INFINITY else int(soft)


def too_many_open_files(error: BaseException) -> Optional[str]:
    """For an error of this process's (or the system's) limit on open files (EMFILE, ENFILE), what happened,
    in words that name the limit (not the file being opened: it is not at fault); otherwise None."""
    number = getattr(error, "errno", None)
    if number == errno.EMFILE:
        most = open_files_limit()
        said = f"of {most} " if most is not None else ""
        return f"this process reached its limit {said}open files (ulimit -n)"
    if number == errno.ENFILE:
        return "the system reached its limit of open files"
    return None


def no_semaphores(error: BaseException) -> Optional[str]:
    """For the OSError of a process pool's lock or queue that cannot be made (POSIX semaphores live in
    /dev/shm: read-only, full or absent in some containers), what happened; otherwise None."""
    if not isinstance(error, OSError):
        return None
    trace = error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename.replace("\\", "/").endswith("multiprocessing/synchronize.py"):
            return f"no semaphore for worker processes can be made ({error.strerror or error}; /dev/shm)"
        trace = trace.tb_next
    return None


def thread_not_started(error: BaseException) -> bool:
    """True for the error of a thread that could not be started: no memory for its stack (``ulimit -v``) or the
    limit of threads or processes (``ulimit -u``) reached. A resource of this process, not a fault of the input."""
    return isinstance(error, RuntimeError) and "start new thread" in str(error)


#: What a case's row says when a thread it needed could not be started (as "out of memory": named, no bug).
THREAD_NOT_STARTED = (
    "out of memory: a thread could not be started (the memory limit, ulimit -v, or the limit of threads, ulimit -u)"
)


#: How many :func:`termination_held` blocks are open (in this process; a forked child inherits the count, and
#: its own signal handling replaces the parent's).
_TERMINATION_HELD = [0]


@contextlib.contextmanager
def termination_held():
    """A block that a SIGTERM must not cut in two: a process being forked (the fork's own handlers, e.g.
    logging's lock release, run inside it) or a pool whose processes and thread are being started (an
    exception there leaves a pool that cannot be shut down). A handler that sees :func:`termination_is_held`
    sends the signal again a moment later instead of raising."""
    _TERMINATION_HELD[0] += 1
    try:
        yield
    finally:
        _TERMINATION_HELD[0] -= 1


#: Set by the command's SIGINT and SIGTERM handlers when they raise (True for SIGTERM): a library's own ``except``
#: around what it was doing may swallow that exception (pydicom's ``except ValueError`` met it in the scan, and the
#: export ran to its end with exit 0; eleventh hostile trial K1). :func:`raise_if_stopped` raises it again.
_STOPPED: list = []


def stop_seen(terminated: bool) -> None:
    """Called by a signal handler as it raises (imports nothing)."""
    _STOPPED.append(terminated)


def forget_stops() -> None:
    """A new command starts: no stop seen."""
    del _STOPPED[:]


def raise_if_stopped() -> None:
    """Raise :class:`Terminated` or KeyboardInterrupt again if a handler raised one since :func:`forget_stops` (a
    check between steps: after the scan, before each case); a no-op outside the command."""
    if _STOPPED:
        raise Terminated() if _STOPPED[-1] else KeyboardInterrupt()


def termination_is_held() -> bool:
    """True inside a :func:`termination_held` block."""
    return _TERMINATION_HELD[0] > 0


def start_thread(thread: threading.Thread) -> bool:
    """Start ``thread``; False when it cannot be started (:func:`thread_not_started`), for threads that only
    speed the work up: the caller then does that work in its own thread."""
    try:
        thread.start()
    except RuntimeError as error:
        if not thread_not_started(error):
            raise
        return False
    return True
