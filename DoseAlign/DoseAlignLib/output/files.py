"""Files as every DoseAlign output writes them: JSON text, atomic replacement, temporary names it owns.

Everything DoseAlign writes goes first to a temporary name and is renamed into place when complete
(after its data reached the disk: :func:`fsync_tree`), so a reader never sees a half-written file.

DoseAlign deletes only what it made. A process that writes into an output folder first *claims* it
(:class:`RunClaim`): an owner record ``.tmp-dosealign-<token>.owner`` (pid, host, boot, process start
time) locked for the process's life. Every temporary entry it makes is ``.tmp-dosealign-<token>-...``
directly in that folder. A later run removes leftovers only of claims whose owner is provably dead
(:func:`dead_claims`: lock free, same host, and the pid gone, reused, or the machine rebooted since the
record was written); a live run's work, another host's, and anything else that starts with ``.tmp-``
(a user's ``.tmp-notes.txt``) are never touched. :func:`live_runs` tells an export which other runs write into
its folder: this machine's by pid and lock, another host's or container's by its lock, and another
machine's whose lock is free here as undecided.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import printable, termination_held

#: Every temporary entry of DoseAlign starts with this (kept for readers that look for it).
TEMP_PREFIX = ".tmp-"
#: A run's temporary entries: ``.tmp-dosealign-<16 hex token>-...``; its owner record ``...<token>.owner``.
RUN_PREFIX = ".tmp-dosealign-"
OWNER_SUFFIX = ".owner"
#: An empty owner record older than this, with its lock free, is a run killed as it made its claim.
EMPTY_RECORD_SECONDS = 60.0
#: A younger one is too once it stayed empty and unlocked this long (a live run locks it at once, and writes it
#: a moment later).
EMPTY_RECORD_WAIT = 2.0
_ENTRY = re.compile(r"^\.tmp-dosealign-([0-9a-f]{16})(\.owner|-.+)$")

try:  # POSIX advisory locks; elsewhere ownership rests on pid and host alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


# ---- claims: what this process owns ------------------------------------------------------------


def is_run_entry(name: str) -> bool:
    """Whether ``name`` is a run's temporary entry or owner record (``.tmp-dosealign-<token>...``)."""
    return bool(_ENTRY.match(name))


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _boot_time() -> float:
    """When this machine booted (seconds since the epoch, Linux's ``btime``); 0.0 where it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _process_start(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot, Linux), so that a reused pid is not taken for the owner."""
    return _proc_stat(pid)[1]


def _proc_stat(pid: int) -> tuple:
    """``(state, start time)`` of a process from /proc (``("", "")`` where there is none)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "", ""


def _lock_for_life(fd: int) -> None:
    """Take the owner record's exclusive lock (held until the process and its helpers end).

    Another run that judges the records of OUT takes a shared lock for a moment, and one that removes a dead run's
    leftovers the exclusive lock while it does (:func:`remove_dead`): that is waited for, so that a claim never goes
    on unlocked (a filesystem without locks: pid and host still tell)."""
    if fcntl is None:
        return
    end = time.monotonic() + 60.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > end:
                return
            time.sleep(0.001)
        except OSError:
            return


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named, opened = os.stat(str(path), follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


class RunClaim:
    """This process's claim on an output folder: the owner record and the temporary names it may use."""

    def __init__(self, folder: Path, details: Optional[dict] = None) -> None:
        self.folder = Path(os.path.realpath(folder))
        self.pid = os.getpid()
        self._fd: Optional[int] = None
        for _attempt in range(3):
            self.token = secrets.token_hex(8)
            self.record = self.folder / f"{RUN_PREFIX}{self.token}{OWNER_SUFFIX}"
            if self._make_record(details):
                return
        raise OSError(f"the owner record {self.record.name} was removed as it was made")

    def _make_record(self, details: Optional[dict]) -> bool:
        """Create, lock and write the owner record; False when another run removed it meanwhile (it judged the
        record, empty and unlocked for :data:`EMPTY_RECORD_WAIT` s, a dead run's: this process was stopped)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(str(self.record), flags, 0o644)
        try:
            _lock_for_life(self._fd)
            owner = {
                "dosealign_run": self.token,
                "pid": self.pid,
                "host": socket.gethostname(),
                "boot_id": _boot_id(),
                "process_start": _process_start(self.pid),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **{key: value for key, value in (details or {}).items() if key not in ("dosealign_run", "pid")},
            }
            os.write(self._fd, (json.dumps(owner) + "\n").encode("utf-8"))
            self._owner = owner
            if _same_file(self._fd, self.record):
                return True
            os.close(self._fd)
            self._fd = None
            return False
        except BaseException:
            self.release()
            raise

    def temp(self, what: str) -> Path:
        """A fresh temporary path in the claimed folder (nothing is created)."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", what)[:60] or "x"
        return self.folder / f"{RUN_PREFIX}{self.token}-{safe}-{uuid.uuid4().hex[:8]}"

    def release(self) -> None:
        """Remove what is left of this claim's temporary entries (e.g. a lost worker's case folder) and the
        owner record (only the process that made the claim does), and free the lock."""
        if self._fd is None:
            return
        if os.getpid() == self.pid:
            stuck: list = []
            with contextlib.suppress(OSError):
                remove_owned(self.folder, self.token, stuck)
            if not stuck:
                with contextlib.suppress(OSError):
                    self.record.unlink()
            else:  # the record stays, marked ended, so that a later run removes what could not be removed now (a
                # process that lives on, Slicer's, is no live run for it)
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, 0)
                    os.pwrite(self._fd, (json.dumps({**self._owner, "released": True}) + "\n").encode("utf-8"), 0)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        with _CLAIMS_LOCK:
            if _CLAIMS.get(str(self.folder)) is self:
                del _CLAIMS[str(self.folder)]

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


#: Claims of this process (and, after a fork, of its parent: a forked helper uses its parent's
#: claim, and dies with it), by the folder's real path.
_CLAIMS: dict = {}
_CLAIMS_LOCK = threading.RLock()


def claim_folder(folder: Path, details: Optional[dict] = None) -> RunClaim:
    """A new claim of this process on ``folder`` (a batch makes one and releases it at its end); ``details``
    go into the owner record (what other runs may need to know of this one, see :func:`live_runs`).

    Raises OSError when the owner record cannot be written (the folder is not writable, the disk is full).
    """
    # a SIGTERM (or Ctrl-C) while the owner record is made but not yet known here left it behind (a test's
    # SIGTERM at 0.65 s, on a loaded machine): the signal is taken once the claim is listed
    with _CLAIMS_LOCK, termination_held():
        claim = RunClaim(Path(folder), details)
        _CLAIMS[str(claim.folder)] = claim
    return claim


def claim_for(folder: Path, details: Optional[dict] = None) -> RunClaim:
    """The claim whose folder is ``folder`` or holds it; a new one on ``folder`` when none does.

    Claims are released by :func:`release_claims` (a batch at its end, a worker before it exits, and
    at interpreter exit at the latest).
    """
    real = os.path.realpath(folder)
    # one claim however many threads ask at once: two threads of a Dask worker starting cases of one export made
    # two owner records, and the one the worker did not release refused every later run (twenty-fifth trial Y3)
    with _CLAIMS_LOCK:
        for key, claim in _CLAIMS.items():
            if real == key or real.startswith(key.rstrip(os.sep) + os.sep):
                return claim
        if not _AT_EXIT:
            atexit.register(release_claims)
            _AT_EXIT.append(True)
        return claim_folder(Path(folder), details)


_AT_EXIT: list = []


def within(path: Path, folder: Path) -> Optional[Path]:
    """The ancestor of ``path`` (or ``path`` itself) that is ``folder``, or None; ``path`` need not exist.

    Decided by the resolved paths and, for the parts that exist, by folder identity (device and inode): a
    bind mount or a second mount of one file system shows ``folder`` under another path that no resolving
    of links reveals. The ancestor is given as a part of ``path`` resolved (``path`` relative to it names
    what lies below ``folder``).
    """
    real, real_folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    if real == real_folder or real_folder in real.parents:
        return real_folder
    try:
        target = os.stat(real_folder)
    except OSError:
        return None
    for candidate in [real, *real.parents]:
        try:
            info = os.stat(candidate)
        except OSError:  # not there yet (or not reachable): its parent may be
            continue
        if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
            return candidate
    return None


def given_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it as written, no link resolved (``..`` taken as written too), the
    folder also as resolved.

    ``in/link/out``, with ``in/link`` a link to a folder elsewhere, resolves outside ``in``, yet the scan of ``in``
    follows the link and walks it (sixty-seventh hostile trial BO2); so does ``in/link/sub/../out``, and ``out`` given
    from a shell in ``in/link``, whose working folder the system names by its resolved path (seventy-second BT2);
    and ``lin/link/out`` with ``lin`` a link to ``in`` or a bind mount of it: a part of the path as written that is
    ``folder`` (:func:`within`) holds the rest (seventy-fourth BV1).
    """
    given = Path(_as_given(path))
    parts = given.parts
    holders = (Path(holder).parts for holder in {_as_given(folder), os.path.realpath(folder)})
    if any(parts[: len(holder)] == holder for holder in holders):
        return True
    return any(within(Path(*parts[:end]), folder) is not None for end in range(1, len(parts)))


def _as_given(path: Path) -> str:
    """``path`` made absolute from the working folder as the shell names it (``$PWD``, where it is that folder),
    ``..`` and ``.`` taken as written."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        here = os.environ.get("PWD") or ""
        try:
            logical = os.path.isabs(here) and os.path.samefile(here, os.curdir)
        except OSError:
            logical = False
        text = os.path.join(here if logical else os.getcwd(), text)
    return os.path.normpath(text)


def release_claims(folder: Optional[Path] = None) -> None:
    """Release the claims this process made (on ``folder`` and below it, or all)."""
    real = os.path.realpath(folder) if folder is not None else None
    with _CLAIMS_LOCK:
        claims = list(_CLAIMS.items())
    for key, claim in claims:
        inside = real is None or key == real or key.startswith(real.rstrip(os.sep) + os.sep)
        if inside and claim.pid == os.getpid():
            claim.release()


# ---- leftovers of dead runs ---------------------------------------------------------------------


#: Larger than any process id (Linux allows at most 2**22).
MAX_PID = 1 << 22


def _owner_state(record: Path) -> str:
    """``"live"``, ``"dead"``, ``"undecided"`` or ``"unknown"`` (unreadable, not a DoseAlign record).

    Dead means: the record's lock is free (its helpers, which hold it too, are gone) and its owner
    process is gone, its pid belongs to another process now, or this machine restarted since.
    A record its run marked ``released`` (it ended, leaving entries it could not remove) is dead too.
    A record of this host name but another boot id is this machine's from before it restarted only when it
    was written before this boot; a younger one is of another machine of the same name, judged as below.
    A record of another host name is live while its lock is held (a lock is seen across PID and UTS
    namespaces of one machine, and across the hosts of a network file system whose locks are shared);
    with the lock free, one of this machine (the same boot id: a container's run) is gone ("unknown":
    neither refused nor cleaned up), one of another machine is "undecided": whether it lives cannot be
    told from here (its file system may not share locks).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(str(record), flags)
    except OSError:
        return "unknown"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "unknown"
        data = os.read(fd, 4096)
        if not data:  # killed between creating its record and writing it (a live run locks it at once, then
            # writes it): the killed-runs test's final --resume, started at once, left one (twice on 3.9)
            return "dead" if _stays_empty_and_free(fd) else "unknown"
        try:
            owner = json.loads(data.decode("utf-8"))
            match = _ENTRY.match(record.name)
            if isinstance(owner, dict) and owner.get("released") is True and match:  # (an empty record marked ended
                # by the run that removes it: remove_dead)
                return "dead" if owner.get("dosealign_run") == match.group(1) else "unknown"
            pid = int(owner["pid"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError, OverflowError):
            return "unknown"
        if not 0 < pid <= MAX_PID or not isinstance(owner, dict):  # no process has it: not a record we wrote
            return "unknown"
        match = _ENTRY.match(record.name)
        if not match or owner.get("dosealign_run") != match.group(1):
            return "unknown"
        if owner.get("released") is True:  # its run ended, leaving entries it could not remove
            return "dead"
        if owner.get("host") != socket.gethostname():  # another machine's run (shared storage), or a container's
            lock = _lock_state(fd)
            if lock == "held":
                return "live"
            if lock == "free" and owner.get("boot_id") and owner.get("boot_id") == _boot_id():
                return "unknown"  # this machine's kernel holds no lock for it: gone (its files: not ours to judge)
            return "undecided"
        same_boot = not owner.get("boot_id") or owner["boot_id"] == _boot_id()
        if not same_boot and not _made_before_boot(fd):
            # another boot id, yet the record is younger than this boot: a machine or container of the same host
            # name (cloned nodes, a fixed container hostname) on shared storage, judged as another machine's
            return "live" if _lock_state(fd) == "held" else "undecided"
        if same_boot and _alive(pid, owner.get("process_start") or ""):  # this process too (its own start)
            return "live"
        # the owner is gone; its helper processes die with it (and hold the lock until then)
        return "dead" if _lock_frees(fd, seconds=5.0) else "live"
    finally:
        os.close(fd)


#: When this process first saw each empty owner record (by device, inode and time written).
_EMPTY_SEEN: dict = {}


def _note_empty_records(entries: list) -> None:
    """Start watching every empty owner record among ``entries`` at once, so that judging them one after another
    waits :data:`EMPTY_RECORD_WAIT` once, not once each."""
    now = time.monotonic()
    for entry in entries:
        match = _ENTRY.match(entry.name)
        if not match or match.group(2) != OWNER_SUFFIX:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and not info.st_size:
            with _CLAIMS_LOCK:
                _EMPTY_SEEN.setdefault((info.st_dev, info.st_ino, info.st_mtime_ns), now)


def _stays_empty_and_free(fd: int) -> bool:
    """Whether an empty owner record is a dead run's: unlocked, and older than :data:`EMPTY_RECORD_SECONDS` or
    still empty and unlocked after :data:`EMPTY_RECORD_WAIT` s."""
    try:
        info = os.fstat(fd)
    except OSError:
        return False
    old = time.time() - info.st_mtime > EMPTY_RECORD_SECONDS
    # watched from when this process first saw it empty: a run judges OUT's records several times, and each wait
    # was 2 s anew (five planted ones held a run for 36 s: sixty-second hostile trial)
    with _CLAIMS_LOCK:
        first_seen = _EMPTY_SEEN.setdefault((info.st_dev, info.st_ino, info.st_mtime_ns), time.monotonic())
    end = first_seen + (0.0 if old else EMPTY_RECORD_WAIT)
    while True:
        if _lock_state(fd) != "free":
            return False
        try:
            if os.fstat(fd).st_size:
                return False
        except OSError:
            return False
        if time.monotonic() >= end:
            return True
        time.sleep(0.05)


def _made_before_boot(fd: int) -> bool:
    """Whether the record was last written before this machine booted: written by this machine before it
    restarted (False where either time is unknown)."""
    booted = _boot_time()
    try:
        written = os.fstat(fd).st_mtime
    except OSError:
        return False
    return 0.0 < written < booted


def _alive(pid: int, started: str) -> bool:
    """Whether process ``pid`` exists and is the one that started at ``started`` (when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists (another user's)
    state, now = _proc_stat(pid)
    if state in ("Z", "X"):  # a zombie: it has ended, its parent has not yet collected it
        return False
    return not started or not now or now == started


def _lock_frees(fd: int, seconds: float) -> bool:
    """Whether the record's lock can be taken within ``seconds`` (True where there are no locks)."""
    if fcntl is None:
        return True
    end = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        except OSError:
            return True  # no locks on this filesystem: the pid decided


def _lock_state(fd: int) -> str:
    """``"held"`` (by another open file), ``"free"``, or ``"none"`` (no locks here), asked once."""
    if fcntl is None:
        return "none"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    except OSError:
        return "none"
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    return "free"


def claim_details(folder: Path, token: str) -> dict:
    """What the owner record of run ``token`` in ``folder`` says of its run (``pseudonyms``: the key's fingerprint,
    or "none"); {} when it cannot be read."""
    record = Path(folder) / f"{RUN_PREFIX}{token}{OWNER_SUFFIX}"
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(str(record), flags)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        owner = json.loads(os.read(fd, 4096).decode("utf-8"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)


def dead_claims(folder: Path) -> list:
    """Tokens of the runs whose owner records in ``folder`` belong to provably dead processes."""
    tokens = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return tokens
    _note_empty_records(entries)
    for entry in entries:
        match = _ENTRY.match(entry.name)
        if match and match.group(2) == OWNER_SUFFIX and _owner_state(Path(entry.path)) == "dead":
            tokens.append(match.group(1))
    return sorted(tokens)


def live_runs(folder: Path) -> list:
    """The owner records in ``folder`` of other processes' runs that are alive, or of another machine and
    may be, as ``{"pid", "started", "host", "record", "undecided", "owner"}`` dicts (this process's claims are
    not counted). ``undecided``: another machine's record whose lock is free or cannot be tested here; ``owner``:
    the whole record (with the ``details`` its run claimed with)."""
    runs = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return runs
    _note_empty_records(entries)
    for entry in entries:
        match = _ENTRY.match(entry.name)
        if not match or match.group(2) != OWNER_SUFFIX:
            continue
        state = _owner_state(Path(entry.path))
        if state not in ("live", "undecided"):
            continue
        try:
            with open(entry.path, encoding="utf-8") as handle:
                owner = json.loads(handle.read(4096))
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(owner, dict) or match.group(1) in _claimed_tokens():
            continue
        this_process = owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
        if this_process and owner.get("process_start") in (None, "", _process_start(os.getpid())):
            continue
        runs.append(
            {
                "pid": owner.get("pid"),
                "started": owner.get("started", ""),
                "host": printable(str(owner.get("host", ""))),
                "record": entry.name,
                "undecided": state == "undecided",
                "owner": owner,
            }
        )
    return sorted(runs, key=lambda run: str(run["started"]))


def _claimed_tokens() -> set:
    return {claim.token for claim in _CLAIMS.values()}


def remove_dead(folder: Path, token: str, failed: Optional[list] = None) -> list:
    """Remove what run ``token``, judged dead (:func:`dead_claims`), left in ``folder`` and its owner record, holding
    the record's lock meanwhile; nothing where the run took its lock since, or lives after all.

    A run stopped between creating its record and locking it was judged dead (its record empty and unlocked for
    :data:`EMPTY_RECORD_WAIT`); it went on, and its live case folder was removed with its record (sixty-fourth hostile
    trial BL5). With the lock held here, such a run waits, then finds its record gone and claims anew."""
    record = Path(folder) / f"{RUN_PREFIX}{token}{OWNER_SUFFIX}"
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(str(record), os.O_RDWR | flags)
    except OSError:
        try:  # (a record this process may not write: judged all the same)
            fd = os.open(str(record), os.O_RDONLY | flags)
        except OSError:
            return []
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # locked since it was judged: a live run's
                return []
            except OSError:
                pass
        if not _still_dead(fd):
            return []
        # marked ended while its lock is held here: a run that judges OUT's records meanwhile reads a dead run's
        # record, not a live one whose lock is held (a requeued shard was refused: sixty-sixth hostile trial BN5)
        with contextlib.suppress(OSError, ValueError):
            os.lseek(fd, 0, os.SEEK_SET)
            owner = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
            if isinstance(owner, dict) and owner.get("released") is not True:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, (json.dumps({**owner, "dosealign_run": token, "released": True}) + "\n").encode("utf-8"))
        return remove_owned(folder, token, failed)
    finally:
        os.close(fd)


def _still_dead(fd: int) -> bool:
    """Whether an owner record judged dead, whose lock this process now holds, is still a dead run's: empty (no run
    holds its lock), marked released, or of a process of this machine that is gone."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        if not data:
            return True
        owner = json.loads(data.decode("utf-8"))
        if owner.get("released") is True:
            return True
        if owner.get("host") != socket.gethostname() or owner.get("boot_id", "") not in ("", _boot_id()):
            return True  # (judged dead for its boot or its machine; no process here to ask)
        return not _alive(int(owner["pid"]), owner.get("process_start") or "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError):
        return False


def remove_owned(folder: Path, token: str, failed: Optional[list] = None, record_too: bool = True) -> list:
    """Remove the temporary entries of run ``token`` directly in ``folder``, then its owner record (unless not
    ``record_too``: the run goes on).

    Only names of that run (``.tmp-dosealign-<token>-...``) are touched; a symlink is removed, never
    followed; a folder is removed with its content (which that run made). Returns the names removed;
    ``failed`` (when given) gets ``(name, reason)`` of each entry that could not be removed.
    """
    removed, stuck = [], 0
    prefix = f"{RUN_PREFIX}{token}-"
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.name.startswith(prefix):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
        except OSError as error:
            if failed is not None:
                inner = os.path.basename(str(error.filename)) if getattr(error, "filename", None) else ""
                where = f"{inner} in it" if inner and inner != entry.name else "it"
                failed.append((entry.name, f"{printable(where)}: {error.strerror or error}"))
            stuck += 1
            continue
    if not record_too or stuck:  # an entry that stays keeps its record: a later run tries again
        return removed
    record = Path(folder) / f"{RUN_PREFIX}{token}{OWNER_SUFFIX}"
    with contextlib.suppress(OSError):
        record.unlink()
        removed.append(record.name)
    return removed


# ---- writing ---------------------------------------------------------------------------------------


class DescriptorReserve:
    """A few descriptors (of /dev/null) held from a run's start and given back when the run reaches its
    open-file limit (``ulimit -n``), so that it can still write the manifest that names what happened."""

    def __init__(self, count: int = 3) -> None:
        self._fds: list = []
        for _ in range(count):
            try:
                self._fds.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:  # already at the limit: a smaller reserve
                break

    def release(self) -> bool:
        """Close the reserve; True if there was one to give back."""
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        return bool(fds)

    def __del__(self) -> None:
        self.release()


def temp_path(path: Path) -> Path:
    """A temporary path for ``path`` (renamed onto it when complete), owned by this process's claim.

    It lies in the claimed output folder (``path``'s folder or one above it), so that a run's
    leftovers are all in one place.
    """
    path = Path(path)
    return claim_for(path.parent).temp(path.name)


def fsync_path(path: Path) -> None:
    """Flush a file's or folder's data to the disk (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (22, 95):  # EINVAL, EOPNOTSUPP: not for this kind of file
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder below ``folder`` (and itself), e.g. before renaming it into place."""
    for base, dirs, files in os.walk(folder):
        for name in files:
            fsync_path(Path(base) / name)
        for name in dirs:
            fsync_path(Path(base) / name)
    fsync_path(folder)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file that is synced and renamed into place.

    On failure (e.g. a full disk) the temporary file is removed and ``path`` keeps its old content.
    Bytes of file names that are not UTF-8 are written escaped (:func:`~DoseAlignLib.errors.printable`), and so is
    a NUL (``\\x00``): Python 3.9's csv module refuses a line holding one.
    """
    path = Path(path)
    temp = temp_path(path)
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(printable(text).replace("\x00", "\\x00"))  # a NUL (a damaged name) ends a CSV line
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def json_text(data) -> str:
    """JSON as every DoseAlign file writes it (numpy scalars and arrays, paths as text), newline-ended."""
    return json.dumps(data, indent=1, default=_json_default) + "\n"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def replace_atomic(temp: Path, final: Path) -> None:
    """Move a finished temporary file into place in one step."""
    os.replace(temp, final)
