"""Resource limits every stage shares: time per file and per case, memory per case, inflated bytes.

Hostile or broken inputs must not stop or starve a batch, so each limit is stated here, checked
before the work it bounds where that is possible, and named in the error when it is reached. Each
can be changed through an environment variable (read when the limit is used), e.g. for a cohort
of unusually large cases::

    DOSEALIGN_SCAN_FILE_SECONDS     time to read one file's header during the scan     (default 30)
    DOSEALIGN_CASE_SECONDS          time for one case (rasterizer, pool worker)         (default 3600)
    DOSEALIGN_MEMORY_MULTIPLE       a case's working memory / the bytes of its outputs  (default 4)
    DOSEALIGN_MEMORY_FLOOR_MB       working memory every case may use whatever its size (default 2048)
    DOSEALIGN_INFLATE_MB            inflated size of one deflated file during the scan  (default 512)
    DOSEALIGN_HEADER_READS          reads of one file's header during the scan          (default 2000000)
    DOSEALIGN_META_MB               a meta.json (or other JSON file) read back from OUT (default 32)
    DOSEALIGN_MANIFEST_MB           a manifest.csv (or shard manifest) read back from OUT (default 256)
    DOSEALIGN_MAP_LOCK_SECONDS      wait for another run's hold on a shared pseudonym map (default 60)
    DOSEALIGN_OTHER_NAMES           other patient names and IDs --pseudonymize takes    (default 2000)
    DOSEALIGN_IDENTITY_CHARS        the longest name or ID value --pseudonymize takes   (default 1024)
    DOSEALIGN_OUT_ENTRIES           entries looked at within three levels of OUT         (default 1000000)

Helpers here: :class:`Deadline` (a time limit checked where the work loops), :func:`die_with_parent`
(helper processes end with the process that started them) and :func:`memory_available`.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import threading
import time
from typing import Optional

from .errors import DoseAlignError

#: Pixel spacings and slice steps (mm) beyond this, or below the minimum, describe no image grid (headers and
#: the grid options alike).
MAX_SPACING_MM = 1.0e3
MIN_SPACING_MM = 1.0e-3


def check_spacing(values, what: str) -> tuple:
    """``values`` (one or three mm) as three floats; ValueError naming ``what`` unless each is finite and in bounds."""
    spacing = tuple(float(v) for v in values)
    if len(spacing) == 1:
        spacing = spacing * 3
    if len(spacing) != 3 or not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in spacing):  # NaN fails too
        raise ValueError(
            f"{what} needs one or three spacings from {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm, got "
            + ",".join(f"{float(v):g}" for v in values)
        )
    return spacing


DEFAULTS = {
    "DOSEALIGN_SCAN_FILE_SECONDS": 30.0,
    "DOSEALIGN_CASE_SECONDS": 3600.0,
    "DOSEALIGN_MEMORY_MULTIPLE": 4.0,
    "DOSEALIGN_MEMORY_FLOOR_MB": 2048.0,
    "DOSEALIGN_INFLATE_MB": 512.0,
    "DOSEALIGN_HEADER_READS": 2.0e6,
    "DOSEALIGN_META_MB": 32.0,
    "DOSEALIGN_MANIFEST_MB": 256.0,
    "DOSEALIGN_MAP_LOCK_SECONDS": 60.0,
    "DOSEALIGN_OTHER_NAMES": 2000.0,
    "DOSEALIGN_IDENTITY_CHARS": 1024.0,
    "DOSEALIGN_OUT_ENTRIES": 1.0e6,
}


class LimitError(DoseAlignError):
    """A case or file needs more time or memory than its stated limit; the error names the limit."""


#: The most bytes any limit stands for: a limit set to ``inf`` (or beyond) means no limit, not an overflow.
NO_LIMIT_BYTES = 1 << 62


def megabytes(value: float) -> int:
    """A limit in MiB as bytes, ``inf`` as :data:`NO_LIMIT_BYTES`."""
    return int(min(value * 1024 * 1024, NO_LIMIT_BYTES))


def limit(name: str) -> float:
    """The value of a limit: its environment variable when set to a positive number (``inf``: no limit),
    else the default."""
    text = os.environ.get(name, "")
    try:
        value = float(text)
    except ValueError:
        return DEFAULTS[name]
    return value if value > 0 else DEFAULTS[name]


def scan_file_seconds() -> float:
    return limit("DOSEALIGN_SCAN_FILE_SECONDS")


def case_seconds() -> float:
    return limit("DOSEALIGN_CASE_SECONDS")


def inflate_bytes() -> int:
    return megabytes(limit("DOSEALIGN_INFLATE_MB"))


def header_reads() -> int:
    """The most reads one header may take during the scan: pydicom reads each data element's header and value and
    each sequence item's tag once (an empty item costs three reads), so what it builds from a header is bounded by
    this, not by the file's size (eleventh hostile trial K4: 8 bytes of file, an empty item, become ~700 bytes of
    objects; 30 M of them in a 351 KB deflated file took over 3.8 GB).

    The default, 2 000 000, bounds the objects of one header at about 650 MB (~330 bytes per read at worst, empty
    items on pydicom 2.4; ~40 bytes per read for plain elements; the trial's file is refused at 0.4-0.73 GB peak
    for the whole scan) and the parsing at some seconds (the per-file time limit applies as well). Real headers
    need far fewer: the scan defers large values and never reads into pixel data; a CT slice of the test data
    takes about 100 reads, the largest structure set of the shared data (121 contours in sequences of undefined
    length, 1 400 elements) 3 924: 32 reads per contour, so the limit admits some 60 000 contours. The items of a
    sequence of defined length, which pydicom parses from memory when it is first used, are charged three reads each
    when the header is read (headers._charge_unparsed_items)."""
    return int(min(limit("DOSEALIGN_HEADER_READS"), NO_LIMIT_BYTES))


def limit_multiple() -> float:
    return limit("DOSEALIGN_MEMORY_MULTIPLE")


def memory_floor() -> int:
    return megabytes(limit("DOSEALIGN_MEMORY_FLOOR_MB"))


def memory_limit_bytes(output_bytes: float) -> int:
    """The working memory a case with ``output_bytes`` of arrays may use."""
    return int(min(max(limit_multiple() * output_bytes, memory_floor()), NO_LIMIT_BYTES))


#: How many times this process was continued after a stop (SIGCONT: Ctrl-Z then ``fg``, a suspended cluster job),
#: counted while :func:`suspensions_counted` is in force (and in the processes forked meanwhile).
_CONTINUED = [0]


def _on_continue(_signum, _frame) -> None:
    _CONTINUED[0] += 1


def continued() -> int:
    """The count of SIGCONTs seen (see :func:`suspensions_counted`)."""
    return _CONTINUED[0]


@contextlib.contextmanager
def suspensions_counted():
    """Within the block, a SIGCONT is counted, so that :class:`Deadline` and the pool's time limit leave out the
    time the job was stopped (Ctrl-Z, ``scontrol suspend``): a case did no work then (tenth hostile trial J8:
    every running case failed "took longer than the limit" after a suspension). Only in the main thread and
    where SIGCONT has its default disposition; otherwise suspension counts as time as before."""
    import signal

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGCONT"):
        yield
        return
    if signal.getsignal(signal.SIGCONT) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGCONT, _on_continue)  # the process still continues; the handler only counts
    try:
        yield
    finally:
        signal.signal(signal.SIGCONT, signal.SIG_DFL)


#: A gap between two looks shorter than this is not a stop, whatever SIGCONT came (anyone may send one to a running
#: process: SIGCONTs every 0.3 s let a 3 s case pass a 1 s limit; twelfth hostile trial L3).
MIN_STOP_SECONDS = 2.0


class SuspensionClock:
    """Seconds since a start, less the time this process was stopped: when a SIGCONT came since the last
    look and that look is more than :data:`MIN_STOP_SECONDS` ago, the whole time since it is left out (at most
    one look's interval of work goes uncounted)."""

    def __init__(self) -> None:
        now = time.monotonic()
        self.start = now
        self._looked = (now, continued())

    def elapsed(self) -> float:
        now = time.monotonic()
        last, seen = self._looked
        if continued() != seen and now - last > MIN_STOP_SECONDS:
            self.start += now - last
        self._looked = (now, continued())
        return now - self.start


class Deadline:
    """A time limit: :meth:`check` raises :class:`LimitError` once ``seconds`` have passed since creation
    (time the process was stopped left out, see :class:`SuspensionClock`)."""

    def __init__(self, seconds: float, what: str, variable: str = "DOSEALIGN_CASE_SECONDS") -> None:
        self.seconds = float(seconds)
        self.what = what
        self.variable = variable
        self.clock = SuspensionClock()

    def expired(self) -> bool:
        return self.clock.elapsed() > self.seconds

    def check(self, path: Optional[str] = None) -> None:
        if self.expired():
            raise LimitError(
                f"{self.what} took longer than the limit of {self.seconds:g} s",
                path=path,
                hint=f"set {self.variable} to allow more time",
            )


def die_with_parent(parent_pid: Optional[int] = None) -> None:
    """Linux: this (helper) process gets SIGKILL when the process that started it dies.

    Called first in every worker and forked header reader, so that no orphan keeps reading or
    writing after a killed export; ``parent_pid`` (the starter's pid) lets a helper whose parent
    died before the call end at once. Elsewhere a no-op.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before the call
                os._exit(1)
        except (OSError, AttributeError):
            pass


def memory_available() -> Optional[int]:
    """Bytes of memory this machine can give without swapping (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def format_bytes(count: float) -> str:
    """``1.5 GiB``, ``320 MiB``: sizes as messages give them."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(count) >= size:
            return f"{count / size:.3g} {unit}"
    return f"{int(count)} B"


def open_regular(path, what: str = "file"):
    """Open ``path`` for binary reading only if it is a regular file (following symlinks), never blocking.

    A named pipe, socket or device would block a reader forever (or never end): they are refused with
    an :class:`OSError` whose message says what the entry is. Returns a buffered binary file object.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    mode = os.stat(path).st_mode  # before opening: opening a FIFO or a device can itself have effects
    if not stat.S_ISREG(mode):
        raise OSError(f"not a regular {what} ({special_kind(mode)}): not opened")
    # The file object owns the descriptor from its first moment: closed by it alone. (Closing the descriptor
    # ourselves when Ctrl-C came after os.fdopen had wrapped it closed it twice: the second close took the next
    # file's descriptor, read as "Bad file descriptor"; eleventh hostile trial K1.) A Ctrl-C between the two
    # calls leaves the descriptor open in a process that is stopping: never closed twice.
    handle = open(os.open(str(path), flags), "rb")  # noqa: SIM115 (returned open)
    try:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):  # replaced between the two looks
            raise OSError(f"not a regular {what} ({special_kind(mode)}): not opened")
        if hasattr(os, "set_blocking"):
            os.set_blocking(handle.fileno(), True)
        return handle
    except BaseException:
        handle.close()
        raise


def read_back(path, variable: str = "DOSEALIGN_META_MB") -> bytes:
    """The bytes of a file DoseAlign wrote and reads back from OUT (meta.json, manifest.csv, ...): only a
    regular file (:func:`open_regular`), and only up to the limit ``variable`` names (``DOSEALIGN_META_MB`` or
    ``DOSEALIGN_MANIFEST_MB``), checked before reading: a planted or damaged file of gigabytes (sparse, or a
    link to a device) must not fill memory. :class:`OSError` for what is no regular file, :class:`LimitError`
    (naming the size, the limit and its variable) for a larger file."""
    most = megabytes(limit(variable))
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(min(most, size) + 1) if size <= most else b""  # never a buffer of the limit's size
    if size > most or len(data) > most:  # a file that grew while it was read counts as well
        raise LimitError(
            f"is larger ({format_bytes(max(size, len(data)))}) than the limit of {format_bytes(most)} for a file "
            "read back from the output folder",
            path=path,
            hint=f"set {variable} to allow more",
        )
    return data


#: Largest option file (--roi-map, --audit-thresholds, --ct CSV) read: each holds a few lines.
MAX_OPTION_FILE_BYTES = 16 * 1024 * 1024


def read_option_text(path, what: str) -> str:
    """The text of a small file the user names in an option: only a regular file (a named pipe or device is
    refused, never waited on), at most :data:`MAX_OPTION_FILE_BYTES`, UTF-8 (a leading BOM dropped).
    ValueError naming the option, the file and the reason."""
    try:
        with open_regular(path, what) as handle:
            data = handle.read(MAX_OPTION_FILE_BYTES + 1)
    except OSError as error:
        raise ValueError(f"{what} {path}: cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_OPTION_FILE_BYTES:
        raise ValueError(f"{what} {path}: larger than {format_bytes(MAX_OPTION_FILE_BYTES)}; not read")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_option_json(path, what: str):
    """:func:`read_option_text` parsed as JSON; ValueError also for JSON nested too deeply to parse, and for an
    object that names one key twice (JSON keeps the last: a channel of --roi-map named twice lost its first list
    without a word, thirteenth hostile trial M14)."""
    text = read_option_text(path, what)

    def no_key_twice(pairs: list) -> dict:
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise ValueError(f"{what} {path}: the key {key!r} is given twice in one object; give it once")
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=no_key_twice)
    except RecursionError:
        raise ValueError(f"{what} {path}: nested too deeply to be read as JSON") from None
    except ValueError as error:
        if str(error).startswith(f"{what} {path}: "):  # named above
            raise
        raise ValueError(f"{what} {path}: cannot be read as JSON ({error})") from None


def entry_kind(path) -> Optional[str]:
    """None when ``path`` is a regular file (or a symlink to one); else what it is, in words: "missing",
    "a named pipe", "a symbolic link to a character device", "a symbolic link to nothing", ..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symbolic link to nothing" if os.path.islink(path) else "missing"
    except OSError as error:
        return f"not readable ({error.strerror or error})"
    except (ValueError, UnicodeError):  # a NUL or a character the file system cannot name
        return "no usable file name"
    if stat.S_ISREG(mode):
        return None
    kind = special_kind(mode)
    return f"a symbolic link to {kind}" if os.path.islink(path) else kind


def special_kind(mode: int) -> str:
    """What a non-regular directory entry is, in words."""
    for test, name in (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


_CASE = threading.local()


@contextlib.contextmanager
def case_deadline(seconds: Optional[float] = None, what: str = "the case"):
    """The per-case time limit (``DOSEALIGN_CASE_SECONDS``) for the code this thread runs inside the block.

    Long loops (contour reading and nesting, the rasterizer, the audit's per-ROI work) call
    :func:`check_case_time`, which raises :class:`LimitError` once the limit has passed.
    """
    previous = getattr(_CASE, "deadline", None)
    _CASE.deadline = Deadline(case_seconds() if seconds is None else seconds, what)
    try:
        yield _CASE.deadline
    finally:
        _CASE.deadline = previous


def check_case_time(path: Optional[str] = None) -> None:
    """Raise :class:`LimitError` when the running case's time limit has passed (no-op outside a case)."""
    deadline = getattr(_CASE, "deadline", None)
    if deadline is not None:
        deadline.check(path)


#: Folders of the kernel and devices (Linux): no link into them is followed, by the scan nor by the looks around OUT.
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")


def is_system_folder(real: str) -> bool:
    """Whether the resolved path ``real`` is in /proc, /sys or /dev (their "files" are the kernel's: reading
    /proc/kmsg consumes the kernel's log; thirty-sixth and thirty-eighth hostile trials AJ25, AL8)."""
    return any(real == top or real.startswith(top + "/") for top in SYSTEM_FOLDERS)
