"""Scan a folder tree: read DICOM headers only, classify objects and group CT slices into series.

Slices are grouped by SeriesInstanceUID *and* folder, because distinct volumes sometimes share one
SeriesInstanceUID (the Nelms DVH phantom's 1, 2 and 3 mm CTs do, each in a folder of its own). Within one
series and folder, slices whose geometry differs beyond a rounding stay together, so that the CT checks name
them and the case fails (never a silent split). One series of one geometry spread over several folders (a CD
layout DICOM/0001, DICOM/0002) whose positions interleave or abut without colliding is one CT.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import multiprocessing
import os
import re
import signal
import stat
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from ..errors import (
    DoseAlignError,
    InputError,
    UnreadableError,
    termination_held,
    too_many_open_files,
)
from ..limits import (
    Deadline,
    LimitError,
    SuspensionClock,
    die_with_parent,
    is_system_folder,
    open_regular,
    scan_file_seconds,
    special_kind,
)
from . import enhanced, headers

logger = logging.getLogger(__name__)
Progress = Optional[Callable[[float, str], None]]


@dataclass
class DicomObject:
    """One DICOM file as the scanner saw it: what it is, its UIDs and the references it makes."""

    path: Path
    rel_path: str
    kind: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"DicomObject({self.kind} {self.rel_path})"


@dataclass
class CtSeries:
    """CT slices that form one volume: same series, geometry, frame of reference and folder.

    A multi-frame (Enhanced) CT file gives one slice per frame, each naming the file (see :mod:`.enhanced`).
    """

    key: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    #: the folder of the slices; of a series spread over several folders, their names joined by " + "
    folder: str
    slices: list = field(default_factory=list)
    duplicate_files: list = field(default_factory=list)
    #: the scanned objects of those files (their ``path`` on disk; rel_paths may be escaped for display)
    duplicate_objects: list = field(default_factory=list)
    #: (SOPInstanceUID, [rel_paths]) of slices that share a UID but hold different images: the case fails
    conflicts: list = field(default_factory=list)
    #: every folder the slices lie in (more than one for a series spread over folders)
    folders: list = field(default_factory=list)
    #: the folders' slices interleave (one folder every other slice): a CD split, or two reconstructions of one extent
    interleaved: bool = False

    @property
    def files(self) -> list:
        return [s.path for s in self.file_objects]

    @property
    def file_objects(self) -> list:
        """One slice per file, in the slices' order: the frames of a multi-frame file are one file."""
        seen: set = set()
        kept = []
        for obj in self.slices:
            if obj.path not in seen:
                seen.add(obj.path)
                kept.append(obj)
        return kept

    @property
    def sop_instance_uids(self) -> set:
        return {s.sop_instance_uid for s in self.slices}

    def __repr__(self) -> str:
        return f"CtSeries({self.folder or '.'}: {len(self.slices)} slices, series {self.series_uid})"


@dataclass
class ScanResult:
    """Everything found below ``root``."""

    root: Path
    objects: list = field(default_factory=list)
    ct_series: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (rel_path, reason)
    ignored: list = field(default_factory=list)  # (rel_path, reason): not read at all (hidden, DICOMDIR, excluded)
    duplicates: list = field(default_factory=list)  # (sop_instance_uid, [rel_paths], what was done)
    unreadable: list = field(default_factory=list)  # (rel_path, reason): folders and files that could not be read
    paths: dict = field(default_factory=dict)  # rel_path -> path on disk, for skipped entries (names may be escaped)
    #: damaged RTSTRUCT files (also in ``skipped``) as far as they could be read: identity and references, no ROIs;
    #: ``info["damage"]`` says why the file is unusable (see :func:`damaged_object`)
    damaged: list = field(default_factory=list)
    #: damaged RTDOSE files (also in ``skipped``): their patient and frame of reference where still readable, so
    #: that ``--sum-plans`` can say a plan's dose may be missing from a sum (see :func:`damaged_object`)
    damaged_doses: list = field(default_factory=list)
    #: rel_paths of the files (also in ``skipped``) refused by a limit (time, reads, inflated size): never read again
    limited: list = field(default_factory=list)

    def of_kind(self, kind: str) -> list:
        return [o for o in self.objects if o.kind == kind]


#: Below this many files a folder is read in one process: forking would cost more than it saves.
MIN_FILES_PER_PROCESS = 64


def scan_folder(root: Path, progress: Progress = None, workers: int = 1, exclude=()) -> ScanResult:
    """Read the headers of every file below ``root`` (recursively, in sorted order).

    Files that are not DICOM or cannot be read are listed in ``skipped`` with the reason; what is
    not read at all (hidden files and folders, DICOMDIR, the folders in ``exclude``, e.g. an output
    folder inside the input) in ``ignored``. With ``workers`` > 1 (and enough files) the headers are
    read in that many forked processes; the result is the same, in the same order.
    """
    root = Path(root)
    if not root.is_dir():
        raise DoseAlignError("is not a folder", path=root)
    result = ScanResult(root=root)
    problems: list = []
    paths = sorted(_walk(root, exclude, result.ignored, problems))
    workers = min(workers, len(paths) // MIN_FILES_PER_PROCESS)
    entries = None
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        try:
            entries = _scan_in_processes(root, paths, workers, progress)
        except OSError as error:  # the readers' pipes or processes cannot be made: this process reads them all
            reason = too_many_open_files(error) or _no_process(error)
            if not reason:
                raise
            logger.info("reading the headers in one process: %s", reason)
        except _ReaderLost as lost:  # a reader killed (the out-of-memory killer, kill) or stuck: this one reads all
            logger.warning("a process reading the DICOM headers %s: this process reads them all again", lost.reason)
    if entries is None:
        entries = []
        for n, path in enumerate(paths):
            if progress is not None and (n % 50 == 0 or n == len(paths) - 1):
                progress(n / max(len(paths), 1), f"reading headers {n + 1}/{len(paths)}")
            entries.append(_scan_file(root, path))
    _sort_entries(result, problems + entries)
    result.ct_series = _group_ct(result)
    return result


def _sort_entries(result: ScanResult, entries: list) -> None:
    """Each entry of the walk and the header reading to its list of the result."""
    for entry in entries:
        if isinstance(entry, DicomObject):
            result.objects.append(entry)
            continue
        kind, rel, reason, path, *left = entry
        if left and left[0] is not None:
            (result.damaged_doses if left[0].kind == "RTDOSE" else result.damaged).append(left[0])
        if kind == "ignored":
            result.ignored.append((rel, reason))
            continue
        if kind == "limited":
            result.limited.append(rel)
        result.skipped.append((rel, reason))
        result.paths[rel] = path
        if kind == "unreadable":
            result.unreadable.append((rel, reason))
    for found in (result.skipped, result.unreadable, result.ignored):
        found.sort(key=lambda item: item[0])


def scan_files(paths, progress: Progress = None) -> ScanResult:
    """Read the headers of exactly these files, walking no folder (e.g. the files of one case that a
    DICOM database holds). Names are relative to the files' common folder (absolute where there is none,
    as across Windows drives); the rest is as :func:`scan_folder`."""
    paths = sorted({Path(os.path.abspath(p)) for p in paths})
    if not paths:
        raise DoseAlignError("no files to scan")
    try:
        root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    except ValueError:  # different drives
        root = Path(paths[0].anchor)
    result = ScanResult(root=root)
    entries = []
    for n, path in enumerate(paths):
        if progress is not None and (n % 50 == 0 or n == len(paths) - 1):
            progress(n / len(paths), f"reading headers {n + 1}/{len(paths)}")
        entries.append(_scan_file(root, path))
    _sort_entries(result, entries)
    result.ct_series = _group_ct(result)
    return result


def _scan_file(root: Path, path: Path):
    """A file's :class:`DicomObject`, or ``(kind, rel_path, reason, path)`` when it is not used.

    ``kind`` is ``"skipped"`` (not DICOM, damaged), ``"limited"`` (refused by a limit: skipped, and never read
    again), ``"unreadable"`` (it cannot be read at all) or ``"ignored"`` (a DICOMDIR). Reading one header is
    bounded by the scan's per-file time limit and reads limit.
    """
    rel = display_path(path, root)
    try:  # before the header is read: a file changed after this still differs from the record next time
        status = os.stat(path)
    except OSError as error:  # it vanished or cannot be looked at since the walk
        return ("unreadable", rel, f"cannot be looked at: {error.strerror or error}", path)
    try:
        deadline = Deadline(scan_file_seconds(), "reading this file's header", "DOSEALIGN_SCAN_FILE_SECONDS")
        ds = headers.read_header(path, defer_large=True, deadline=deadline, removed="it was removed during the scan")
        if _is_dicomdir(ds):
            return ("ignored", rel, DICOMDIR_REASON, path)
        _check_identity(ds, path)
        obj = _record(path, rel, ds)
        # what identifies the file's content cheaply (as make and rsync do): --resume compares it
        obj.info["size"], obj.info["mtime_ns"] = status.st_size, status.st_mtime_ns
        obj.info["inode"] = (status.st_dev, status.st_ino)  # (another file moved to its path: the case compares)
        obj.info["ctime_ns"] = status.st_ctime_ns  # (rewritten in place with its time set back, cp -p: the same)
        return obj
    except UnreadableError as error:
        return ("unreadable", rel, _reason(error), path)
    except LimitError as error:  # read no further, here or later (damage.locate_damage): it would cost as much
        return ("limited", rel, _reason(error), path, None)
    except DoseAlignError as error:
        left = None  # what a damaged DICOM file still says (never read again: not DICOM)
        if error.message != NOT_DICOM:
            left = damaged_object(path, rel, _reason(error))
        return ("skipped", rel, _reason(error), path, left)
    except Exception as error:  # a header value the scanner cannot interpret: the file is unusable
        reason = f"header cannot be interpreted: {type(error).__name__}: {error}"
        return ("skipped", rel, reason, path, damaged_object(path, rel, reason))


#: The reason :func:`~.headers.read_header` gives a file that is not DICOM at all.
NOT_DICOM = "not a DICOM file"
#: A damaged file is read again only up to here: (3006,0020) StructureSetROISequence, where the ROIs begin.
_STRUCTURE_SET_ROIS = 0x30060020


def damaged_object(path: Path, rel: str, damage: str) -> Optional[DicomObject]:
    """What a damaged RTSTRUCT or RTDOSE still says about itself, or None (another kind, or not even that is readable).

    The file is read again up to where an RTSTRUCT's ROIs begin: its SOPInstanceUID, patient and the CT it
    references are usually intact when the contours are cut off (a truncated copy, a full disk), so
    that the case whose plan or CT it belongs to can say that its structure set is present but
    damaged, rather than export without masks as if it had none. Of an RTDOSE only its patient and frame of
    reference are kept: with ``--sum-plans`` the cases of that patient say that a plan's dose may be missing from
    their sum (the boost was exported alone, ok, without a word: seventy-eighth hostile trial BZ2).
    ``info["damage"]`` holds ``damage``.
    """
    from pydicom.filereader import read_partial

    try:
        deadline = Deadline(scan_file_seconds(), "reading this file's header", "DOSEALIGN_SCAN_FILE_SECONDS")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with headers.DicomFile(path, deadline=deadline) as handle:
                ds = read_partial(handle, stop_when=lambda tag, _vr, _length: tag >= _STRUCTURE_SET_ROIS, force=True)
        kind = headers.kind_of(ds)
        if kind == "RTDOSE":
            return _damaged_dose(path, rel, ds, damage)
        if kind != "RTSTRUCT" or not headers.quick_text(ds, "SOPInstanceUID"):
            return None
        obj = _record(path, rel, ds)
    except Exception:  # nothing usable before the damage either: the skipped entry says why
        return None
    obj.info["damage"] = damage
    return obj


def _damaged_dose(path: Path, rel: str, ds, damage: str) -> DicomObject:
    """A damaged RTDOSE as far as :func:`damaged_object` needs it; a value it cannot read is left empty."""

    last = max(ds.keys(), default=None)  # where a file cut short ends: its value may be cut too (a FrameOfReferenceUID
    # cut inside read as another frame, and the plans' case said nothing: eighty-second hostile trial CD2)

    def readable(keyword: str) -> str:
        if last is not None and tag_for_keyword(keyword) == last:
            return ""
        try:
            return headers.quick_text(ds, keyword)
        except Exception:  # (the damage may be right here)
            return ""

    return DicomObject(
        path=path,
        rel_path=rel,
        kind="RTDOSE",
        sop_instance_uid=readable("SOPInstanceUID"),
        series_uid="",
        study_uid="",
        frame_of_reference_uid=readable("FrameOfReferenceUID"),
        patient_id=readable("PatientID"),
        info={"damage": damage},
    )


def _plan_number(value) -> Optional[float]:
    """One number of an RTPLAN's Type 3 element that only the audit reads (None for none, several, or no number):
    such a value is left out, not a reason to drop the plan (fifteenth hostile trial O11)."""
    if value is None or (hasattr(value, "__len__") and not isinstance(value, (str, bytes))):  # several values
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def display_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (posix), as text every output can hold.

    Names that are not valid UTF-8 (bytes the file system kept as they were) are shown with their
    bytes escaped (``caf\\xe9.dcm``); the file itself is still read by its real name.
    """
    try:
        rel = Path(path).relative_to(root).as_posix()
    except ValueError:  # another drive than the root (scan_files)
        rel = Path(path).as_posix()
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        rel = os.fsencode(rel).decode("utf-8", "backslashreplace")
    # a newline in a name printed as it is starts a line of its own, which may read as an exported case
    # (fifteenth hostile trial O8): every control character is shown escaped, as a terminal's are
    return rel.translate(_NAME_CONTROLS)


_NAME_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]}


DICOMDIR_REASON = "DICOMDIR (a media index, not needed: the files below are read directly)"
#: Media Storage Directory Storage: the SOP class of a DICOMDIR, whatever the file is called.
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_DICOMDIR_NAME = re.compile(r"dicomdir[.;0-9]*", re.IGNORECASE)


def _is_dicomdir(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    claimed = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return claimed == MEDIA_DIRECTORY or headers.quick_text(ds, "SOPClassUID") == MEDIA_DIRECTORY


def _no_process(error: OSError) -> Optional[str]:
    """Why a header reader could not be forked (memory, the limit of processes), or None for other faults."""
    if error.errno in (errno.EAGAIN, errno.ENOMEM):
        return "no process can be started (the memory limit, ulimit -v, or the limit of processes, ulimit -u)"
    return None


def _scan_files(root: Path, paths: list, alive: Optional[Callable[[], None]] = None) -> list:
    """:func:`_scan_file` of each path; ``alive()`` after each (a forked reader's sign of life)."""
    entries = []
    for path in paths:
        entries.append(_scan_file(root, path))
        if alive is not None:
            alive()
    return entries


def _scan_in_processes(root: Path, paths: list, workers: int, progress: Progress) -> list:
    """:func:`_scan_file` of every path: this process reads the first part, ``workers - 1`` forked ones the
    rest (this one would otherwise only wait); results in path order. Raises :class:`_ReaderLost` when a
    reader died (the out-of-memory killer, kill -9) before it sent all it read."""
    pieces = 4 * workers  # several pieces per reader: a slow stretch of files is shared out, not one reader's
    bounds = [len(paths) * n // pieces for n in range(pieces + 1)]
    chunks = [paths[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    own = pieces // workers  # this process's share, read while the others read theirs
    shares = [list(range(own + k, pieces, workers - 1)) for k in range(workers - 1)]
    context = multiprocessing.get_context("fork")
    # Each reader has a pipe of its own, whose sending end only it holds: a reader that dies mid-message
    # is an end of file here. (concurrent.futures' pool shares one result pipe among its processes and this
    # one; a reader killed by the group's SIGTERM while it wrote left that pool's thread waiting for the rest
    # of the message for ever, and the export hung instead of stopping.)
    readers: list = []
    try:
        for share in shares:
            receiving, sending = context.Pipe(duplex=False)
            reader = context.Process(
                target=_read_share,
                args=(sending, root, [chunks[n] for n in share], os.getpid()),
                name="dosealign-scan",
                daemon=True,
            )
            try:
                with termination_held():  # a fork's own handlers run inside it
                    reader.start()
            finally:
                sending.close()
            readers.append((reader, receiving))
        read: dict = {}
        for n in range(own):
            read[n] = _scan_files(root, chunks[n])
            if progress is not None:
                progress((n + 1) / pieces, f"reading headers {sum(map(len, read.values()))}/{len(paths)}")
        for share, (_reader, receiving) in zip(shares, readers):
            for n in share:
                read[n] = _receive(receiving)
                if progress is not None:
                    progress(len(read) / pieces, f"reading headers {sum(map(len, read.values()))}/{len(paths)}")
        return [entry for n in range(pieces) for entry in read[n]]
    finally:
        for reader, receiving in readers:
            if reader.is_alive():
                reader.kill()  # stopped (Ctrl-C, SIGTERM) or lost a sibling: what it reads is not wanted
            reader.join()
            receiving.close()


class _ReaderLost(Exception):
    """A forked header reader died before it sent what it read, or stopped answering."""

    def __init__(self, reason: str = "was killed") -> None:
        super().__init__(reason)
        self.reason = reason


#: Seconds between a forked reader's signs of life while it reads (each a small message: one write, never half).
ALIVE_SECONDS = 1.0
#: Seconds beyond the per-file limit after which a reader that gave no sign of life counts as stuck (stopped, or a
#: read hung in the kernel): it is stopped and its files are read again here.
READER_GRACE_SECONDS = 10.0


def _receive(receiving):
    """The next chunk a reader sends, its signs of life passed over; :class:`_ReaderLost` when it died, or when it
    gave none for longer than a file may take (eleventh hostile trial K3: a stopped reader was waited for for ever).
    The time this process stood stopped (Ctrl-Z, a suspended job) is not counted."""
    clock = SuspensionClock()
    while True:
        if receiving.poll(0.5):
            try:
                message = receiving.recv()
            except (EOFError, OSError) as error:  # (OSError: "got end of file during message")
                raise _ReaderLost() from error
            if message is not None:
                return message
            clock = SuspensionClock()
        elif clock.elapsed() > scan_file_seconds() + READER_GRACE_SECONDS:
            raise _ReaderLost(
                f"gave no sign of life for {clock.elapsed():.0f} s (stopped, or a read hung) and was stopped"
            )


def _read_share(sending, root: Path, chunks: list, parent_pid: int) -> None:
    """A forked header reader: it dies with the scanning process and leaves Ctrl-C to it (no traceback
    per process); SIGTERM ends it at once (the scanning process's handler, inherited through fork, is not its
    own). It reads its whole share before sending it (a send blocks until the scanning process, busy with its
    own share, reads it), and says it is alive every :data:`ALIVE_SECONDS` meanwhile."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:  # an ignore the command inherited holds here too
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    said = [time.monotonic()]

    def alive() -> None:
        if time.monotonic() - said[0] >= ALIVE_SECONDS:
            sending.send(None)
            said[0] = time.monotonic()

    read = [_scan_files(root, chunk, alive) for chunk in chunks]
    for entries in read:
        sending.send(entries)
    sending.close()


def _reason(error: DoseAlignError) -> str:
    """The message of a skipped file, with the tag at fault when there is one (and a limit's way out)."""
    text = f"{error.tag}: {error.message}" if error.tag else error.message
    return f"{text} ({error.hint})" if isinstance(error, LimitError) and error.hint else text


def _check_identity(ds: Dataset, path: Path) -> None:
    """A DICOM object says what it is: SOPClassUID and Modality present and not contradicting each other."""
    sop_kind = headers.SOP_CLASS_KIND.get(headers.quick_text(ds, "SOPClassUID"))
    modality = headers.quick_text(ds, "Modality").upper()
    if not sop_kind and not modality and not headers.text(ds, "SOPClassUID"):
        meta = getattr(ds, "file_meta", None)
        claimed = meta.get("MediaStorageSOPClassUID") if meta is not None else None
        name = getattr(claimed, "name", str(claimed)) if claimed else ""
        raise InputError(
            "neither SOPClassUID nor Modality could be read"
            + (f" (the file meta says {name})" if name else "")
            + ": the data set is damaged or truncated",
            path=path,
            tag="(0008,0016) SOPClassUID",
            hint="export the file again or remove it",
        )
    known = ("CT", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE")
    if headers.kind_of(ds) == "CT" and not headers.quick_text(ds, "SeriesInstanceUID"):
        raise InputError(
            "SeriesInstanceUID is missing: the slice belongs to no series (the file is damaged or truncated)",
            path=path,
            tag="(0020,000E) SeriesInstanceUID",
            hint="export the file again or remove it",
        )
    if sop_kind and modality in known and modality != sop_kind:
        raise InputError(
            f"SOPClassUID says {sop_kind} but (0008,0060) Modality says {modality}: the header contradicts itself",
            path=path,
            tag="(0008,0016) SOPClassUID",
            hint="export the file again or remove it",
        )


def _walk(root: Path, exclude=(), ignored: Optional[list] = None, problems: Optional[list] = None):
    """Regular files below ``root``, symbolic links followed, each folder and file once.

    What is left out on purpose goes to ``ignored`` as ``(rel_path, reason)``: hidden entries,
    DICOMDIR (in any spelling), the folders in ``exclude``, a link to a folder or file that is
    scanned under its own name, and a folder reached again (a link loop). What cannot be used goes
    to ``problems`` as ``(kind, rel_path, reason, path)``: a folder that cannot be listed and a file
    that cannot be looked at (``"unreadable"``), a named pipe, socket or device, and a link to
    nothing (``"skipped"``: never opened). ``root`` itself must be listable.
    """
    left_out = ignored if ignored is not None else []
    problems = problems if problems is not None else []
    excluded = {os.path.realpath(str(e)) for e in exclude}
    excluded_ids = set()  # and by identity: a bind mount shows an excluded folder under another path
    for folder in excluded:
        with contextlib.suppress(OSError):
            info = os.stat(folder)
            excluded_ids.add((info.st_dev, info.st_ino))
    real_root = os.path.realpath(str(root))
    try:
        first = os.stat(root)
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as error:
        raise UnreadableError(
            f"the input folder cannot be read: {error.strerror or error}",
            path=root,
            hint="check that it exists and that you may read it",
        ) from None
    seen_folders = {(first.st_dev, first.st_ino): "."}
    seen_files: dict = {}

    def rel(path: str) -> str:
        return display_path(Path(path), root)

    def scanned_elsewhere(target: str) -> bool:
        """A link's target inside the root that the walk reaches under its own name."""
        if target != real_root and not target.startswith(real_root.rstrip(os.sep) + os.sep):
            return False
        parts = Path(os.path.relpath(target, real_root)).parts
        inside = [os.path.join(real_root, *parts[: n + 1]) for n in range(len(parts))]
        return not any(p.startswith(".") for p in parts) and not any(i in excluded for i in inside)

    # Breadth first: a folder reached twice is scanned under its shortest path. Each listing goes
    # with its folder's resolved path, so a folder that is no link resolves from its parent's in
    # constant time (realpath of every folder walks every ancestor: O(depth^2) for a deep chain).
    queue = deque([(entries, real_root)])
    while queue:
        listing, real_parent = queue.popleft()
        for entry in listing:
            path, name = entry.path, entry.name
            if name.startswith("."):
                kind = "folder" if _is_folder(entry) else "file"
                left_out.append(
                    (rel(path) + ("/" if kind == "folder" else ""), f"hidden {kind} (name starts with '.')")
                )
                continue
            link = entry.is_symlink()
            try:
                info = os.stat(path)  # through links
            except FileNotFoundError:
                gone = "a symbolic link whose target does not exist" if link else "removed while the folder was read"
                problems.append(("skipped", rel(path), gone, Path(path)))
                continue
            except OSError as error:
                problems.append(
                    ("unreadable", rel(path), f"cannot be looked at: {error.strerror or error}", Path(path))
                )
                continue
            if stat.S_ISDIR(info.st_mode):
                real = os.path.realpath(path) if link else os.path.join(real_parent, name)
                if real in excluded or (info.st_dev, info.st_ino) in excluded_ids:
                    left_out.append((rel(path) + "/", "the output folder"))
                    continue
                if link and scanned_elsewhere(real):
                    target = display_path(Path(real), Path(real_root)) if real != real_root else "."
                    left_out.append((rel(path) + "/", f"a symbolic link to the folder {target}/, scanned there"))
                    continue
                if link and (real_root.startswith(real.rstrip(os.sep) + os.sep) or is_system_folder(real)):
                    # a link to a folder that holds the input (``/``) or to the kernel's (``/proc``) walked the whole
                    # machine, other processes' folders too (thirty-sixth hostile trial AJ25)
                    what = "a folder that holds the input" if not is_system_folder(real) else "a system folder"
                    left_out.append((rel(path) + "/", f"a symbolic link to {real}, {what}: not followed"))
                    continue
                key = (info.st_dev, info.st_ino)
                if key in seen_folders:
                    left_out.append((rel(path) + "/", f"the same folder as {seen_folders[key]}/ (a link loop)"))
                    continue
                seen_folders[key] = rel(path)
                try:
                    listing_below = sorted(os.scandir(path), key=lambda e: e.name)
                except OSError as error:
                    problems.append(
                        (
                            "unreadable",
                            rel(path) + "/",
                            f"the folder cannot be listed: {error.strerror or error}",
                            Path(path),
                        )
                    )
                    continue
                queue.append((listing_below, real))
            elif stat.S_ISREG(info.st_mode):
                if _DICOMDIR_NAME.fullmatch(name):
                    left_out.append((rel(path), DICOMDIR_REASON))
                    continue
                if link and scanned_elsewhere(os.path.realpath(path)):
                    target = display_path(Path(os.path.realpath(path)), Path(real_root))
                    left_out.append((rel(path), f"a symbolic link to {target}, read there"))
                    continue
                key = (info.st_dev, info.st_ino)
                if key in seen_files:
                    left_out.append((rel(path), f"the same file as {seen_files[key]}"))
                    continue
                seen_files[key] = rel(path)
                yield Path(path)
            else:
                problems.append(
                    (
                        "skipped",
                        rel(path),
                        f"{special_kind(info.st_mode)}: not opened (only regular files are read)",
                        Path(path),
                    )
                )


def _is_folder(entry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _record(path: Path, rel: str, ds: Dataset) -> DicomObject:
    kind = headers.kind_of(ds)
    obj = DicomObject(
        path=path,
        rel_path=rel,
        kind=kind,
        sop_instance_uid=headers.quick_text(ds, "SOPInstanceUID"),
        series_uid=headers.quick_text(ds, "SeriesInstanceUID"),
        study_uid=headers.quick_text(ds, "StudyInstanceUID"),
        frame_of_reference_uid=headers.quick_text(ds, "FrameOfReferenceUID"),
        patient_id=headers.text(ds, "PatientID"),
    )
    info = obj.info
    info["modality"] = headers.quick_text(ds, "Modality")
    info["patient_name"] = headers.text(ds, "PatientName")
    other_ids, other_names = headers.other_identity(ds)
    if other_ids or other_names:  # for --pseudonymize, which reads other headers of one CT slice per series only
        info["other_ids"], info["other_names"] = other_ids, other_names
    if kind == "CT":
        # each slice's dates, for --pseudonymize, which reads one slice a series: a scan across midnight dates its
        # later slices a day on (the twenty-first hostile trial's idea)
        dates, ids, names = headers.slice_identity(ds)  # each slice's every date, ID and name (Y4, Z1)
        info["dates"] = sorted(dates.union(*(headers.quick_dates(ds, keyword) for keyword in _SLICE_DATE_KEYWORDS)))
        if ids:
            info["other_ids"] = sorted(set(info.get("other_ids", ())) | set(ids))
            # (numbers of a visit, an issuer: removed from text from five characters on, the patient's IDs from three)
            keywords = ("AccessionNumber", "StudyID", "IssuerOfPatientID")
            visits = {v.strip() for keyword in keywords for v in headers.text(ds, keyword).split("\\")}
            if visits - {""}:
                info["visit_ids"] = sorted(visits - {""})
        if names:
            info["other_names"] = sorted(set(info.get("other_names", ())) | set(names))
        info["image_position"] = headers.quick_floats(ds, "ImagePositionPatient")
        info["image_orientation"] = headers.quick_floats(ds, "ImageOrientationPatient")
        info["pixel_spacing"] = headers.quick_floats(ds, "PixelSpacing")
        info["rows"] = headers.quick_int(ds, "Rows")
        info["columns"] = headers.quick_int(ds, "Columns")
        info["pixel_position"] = headers.pixel_data_position(ds)
        info["rescale"] = (ds.get("RescaleSlope"), ds.get("RescaleIntercept"))
        if ds.get("ModalityLUTSequence"):  # (0028,3000): values to HU by a table, which DoseAlign does not apply
            info["modality_lut"] = True  # (an empty one, as some writers leave it, is no table: 74th trial BV6)
        info["rescale_type"] = headers.text(ds, "RescaleType").upper()  # (0028,1054): given only when not HU
        if enhanced.is_multi_frame(ds):  # an Enhanced CT: its geometry per frame, from the functional groups
            _record_frames(path, ds, info)
    elif kind == "RTDOSE":
        info["summation_type"] = headers.text(ds, "DoseSummationType").upper()
        info["dose_units"] = headers.text(ds, "DoseUnits").upper()
        info["dose_type"] = headers.text(ds, "DoseType").upper()
        info["plan_uids"] = [  # (an item naming no plan ties the dose to none: fifty-sixth hostile trial BD4)
            uid
            for uid in (
                headers.text(item, "ReferencedSOPInstanceUID") for item in ds.get("ReferencedRTPlanSequence", [])
            )
            if uid
        ]
        beams, groups = [], set()
        for plan_item in ds.get("ReferencedRTPlanSequence", []):
            for group in plan_item.get("ReferencedFractionGroupSequence", []):
                groups.add(_group_number(group, "ReferencedFractionGroupNumber"))
                for beam in group.get("ReferencedBeamSequence", []):
                    if "ReferencedBeamNumber" in beam:
                        beams.append(int(beam.ReferencedBeamNumber))
        info["beam_numbers"] = sorted(beams)
        # (300C,0022): a beam's doses in two fraction groups (a boost with the same fields) are two doses
        info["fraction_group"] = groups.pop() if len(groups) == 1 else None
        info["image_position"] = headers.quick_floats(ds, "ImagePositionPatient")
    elif kind == "RTPLAN":
        info["plan_label"] = headers.text(ds, "RTPlanLabel") or headers.text(ds, "RTPlanName")
        info["plan_intent"] = headers.text(ds, "PlanIntent").upper()  # (300A,000A): VERIFICATION is no patient's
        # (300C,0002) with (300A,0055) RTPlanRelationship: an ALTERNATIVE of another plan, the plan it derives from
        info["related_plans"] = [
            [headers.text(item, "ReferencedSOPInstanceUID"), headers.text(item, "RTPlanRelationship").upper()]
            for item in ds.get("ReferencedRTPlanSequence", [])
        ]
        info["struct_uids"] = [
            headers.text(item, "ReferencedSOPInstanceUID") for item in ds.get("ReferencedStructureSetSequence", [])
        ]
        beam_seq = ds.get("BeamSequence", None) or ds.get("IonBeamSequence", [])
        info["beam_numbers"] = sorted(int(b.BeamNumber) for b in beam_seq if "BeamNumber" in b)
        prescriptions, ignored = [], []
        for ref in ds.get("DoseReferenceSequence", []):
            value = ref.get("TargetPrescriptionDose")
            if value not in (None, ""):
                dose = _plan_number(value)
                # (300A,0026) is Type 3: a value that is no dose (-60, NaN, inf, two values "60\70") is left out,
                # not used (a division by zero failed the case, NaN reached meta.json: fourteenth hostile trial N9;
                # two values made the whole plan a damaged file: fifteenth trial O11)
                if dose is not None and math.isfinite(dose) and dose > 0:
                    prescriptions.append(dose)
                else:
                    ignored.append(headers.value_text(value) if dose is None else str(dose))
        info["prescription_gy"] = max(prescriptions) if prescriptions else None
        if ignored:
            info["prescriptions_ignored"] = ignored
        # (300A,0202) BrachyTreatmentType, (300A,0230) ApplicationSetupSequence: a source's dose is many times the
        # prescription near it (the audit's upper bound on Dmax does not apply)
        info["brachytherapy"] = "BrachyTreatmentType" in ds or "ApplicationSetupSequence" in ds
        fractions = [_plan_number(g.get("NumberOfFractionsPlanned")) for g in ds.get("FractionGroupSequence", [])]
        info["fractions"] = next((int(f) for f in fractions if f is not None and f.is_integer() and f > 0), None)
        info["treated_beams"] = _treated_beams(ds)
        info["treated_by_group"] = [
            [_group_number(group, "FractionGroupNumber"), _treated_beams(ds, group)]
            for group in ds.get("FractionGroupSequence", [])
        ]
    elif kind == "RTSTRUCT":
        series, frames, images = [], [], set()
        for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
            frames.append(headers.text(frame, "FrameOfReferenceUID"))
            for study in frame.get("RTReferencedStudySequence", []):
                for ser in study.get("RTReferencedSeriesSequence", []):
                    series.append(headers.text(ser, "SeriesInstanceUID"))
                    for image in ser.get("ContourImageSequence", []):
                        images.add(headers.text(image, "ReferencedSOPInstanceUID"))
        info["ct_series_uids"] = [s for s in series if s]
        info["frame_uids"] = [f for f in frames if f]
        # each ROI's own frame ((3006,0024); "" when absent): a set may hold ROIs drawn on other images
        info["roi_frame_uids"] = [
            headers.text(item, "ReferencedFrameOfReferenceUID") for item in ds.get("StructureSetROISequence", [])
        ]
        if not images:  # the referenced series lists no images: the contours' own references, read item by item
            headers.decode_nested_un_sequences(ds, path)  # a ContourSequence stored as UN (bounded by the charge)
            for roi in ds.get("ROIContourSequence", []):
                for contour in roi.get("ContourSequence", []):
                    for image in contour.get("ContourImageSequence", []):
                        images.add(headers.text(image, "ReferencedSOPInstanceUID"))
        info["ct_image_uids"] = sorted(u for u in images if u)
        if not obj.frame_of_reference_uid and info["frame_uids"]:
            obj.frame_of_reference_uid = info["frame_uids"][0]
        info["label"] = headers.text(ds, "StructureSetLabel")
    return obj


def _record_frames(path: Path, ds: Dataset, info: dict) -> None:
    """A multi-frame CT image's frames into ``info`` (see :func:`.enhanced.frame_geometry`); the series holds one
    slice per frame (:func:`.enhanced.frame_slices`). The header is read again whole: the scan's reading
    leaves large values such as a long (5200,9230) PerFrameFunctionalGroupsSequence unread."""
    whole = headers.read_header(path) if _has_deferred(ds) else ds
    info.update(enhanced.frame_geometry(whole))
    info["pixel_position"] = headers.pixel_data_position(ds, frames=info["frames"])
    first = (info.get("frame_list") or [{}])[0]
    for key in ("image_position", "image_orientation", "pixel_spacing"):  # how the file is grouped into series
        info[key] = first.get(key, info.get(key))


def _has_deferred(ds: Dataset) -> bool:
    """Whether a data set read with deferred large values left any of them (other than the pixel data) unread."""
    for tag, element in getattr(ds, "_dict", {}).items():
        if tag != 0x7FE00010 and getattr(element, "value", b"") is None and getattr(element, "length", 0):
            return True
    return False


def _group_number(item: Dataset, keyword: str) -> Optional[int]:
    """A fraction group's number (IS), or None when absent or not a number."""
    try:
        return int(item.get(keyword))
    except (TypeError, ValueError):
        return None


def _treated_beams(ds: Dataset, group: Optional[Dataset] = None) -> list:
    """Beams of a plan that deliver dose: in fraction group ``group`` (default the first), meterset not 0, not
    SETUP. A plan without a fraction scheme ((300A,0070) FractionGroupSequence is Type U): its beams that are not
    SETUP."""
    beam_sequence = ds.get("BeamSequence", None) or ds.get("IonBeamSequence", [])
    setup = {
        int(b.BeamNumber)
        for b in beam_sequence
        if "BeamNumber" in b and headers.text(b, "TreatmentDeliveryType").upper() == "SETUP"
    }
    if not ds.get("FractionGroupSequence"):
        return sorted(int(b.BeamNumber) for b in beam_sequence if "BeamNumber" in b and int(b.BeamNumber) not in setup)
    if group is None:
        group = ds.FractionGroupSequence[0]
    beams = []
    for ref in group.get("ReferencedBeamSequence", []):
        meterset = ref.get("BeamMeterset")
        if "ReferencedBeamNumber" not in ref or (meterset not in (None, "") and float(meterset) == 0):
            continue
        if int(ref.ReferencedBeamNumber) not in setup:
            beams.append(int(ref.ReferencedBeamNumber))
    return sorted(beams)


#: Slice positions closer than this (mm) along the slice normal are the same position.
SAME_POSITION_MM = 0.01
#: PixelSpacing values of one series that differ by at most this fraction are one spacing written with another
#: rounding (2.0 and 2.0001, "0.9765625" and "0.976562"): at most half a pixel across 512 columns.
SPACING_TOLERANCE = 1e-3
#: Direction cosines of one series that differ by at most this are one orientation written with another rounding
#: (1e-4 rad, 0.006 deg: 0.05 mm across a 500 mm image).
ORIENTATION_TOLERANCE = 1e-4


def slice_geometry(obj) -> tuple:
    """What every slice of one volume shares, as written: orientation, pixel spacing, rows and columns."""
    info = obj.info

    def values(name):
        found = info.get(name)
        return None if found is None else tuple(float(v) if np.isfinite(v) else str(v) for v in found)

    return (values("image_orientation"), values("pixel_spacing"), info.get("rows"), info.get("columns"))


def geometry_difference(first: tuple, second: tuple) -> Optional[int]:
    """Index (0 orientation, 1 pixel spacing, 2 rows, 3 columns) of the first element in which two
    :func:`slice_geometry` values differ beyond a rounding (:data:`ORIENTATION_TOLERANCE`,
    :data:`SPACING_TOLERANCE`); None when they are one geometry."""
    for n, (a, b) in enumerate(zip(first, second)):
        if n >= 2 or a is None or b is None or len(a) != len(b):
            if a != b:
                return n
            continue
        limit = ORIENTATION_TOLERANCE if n == 0 else SPACING_TOLERANCE
        for x, y in zip(a, b):
            if isinstance(x, str) or isinstance(y, str):
                if x != y:
                    return n
            elif abs(x - y) > limit * (1.0 if n == 0 else max(abs(x), abs(y))):
                return n
    return None


def _geometry_key(obj: DicomObject, known: list) -> tuple:
    """The first of the ``known`` geometries that ``obj`` shares within a rounding, else its own (added)."""
    mine = slice_geometry(obj)
    for geometry in known:
        if geometry_difference(geometry, mine) is None:
            return geometry
    known.append(mine)
    return mine


def _group_ct(result: ScanResult) -> list:
    groups: dict = {}
    known: dict = {}  # geometries seen, by series, frame of reference and folder
    for obj in result.of_kind("CT"):
        folder = str(Path(obj.rel_path).parent.as_posix())
        where = (obj.series_uid, obj.frame_of_reference_uid, folder)
        key = where + (_geometry_key(obj, known.setdefault(where, [])),)
        groups.setdefault(key, []).append(obj)
    series_list = []
    _merge_geometries_of_one_folder(groups)
    interleaved: set = set()
    folders_of = _merge_split_folders(groups, interleaved)
    for key, objects in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], str(kv[0][3]))):
        series_uid, frame_uid, folder, _ = key
        unique: dict = {}
        duplicates, conflicts = [], []
        for obj in objects:
            first = unique.get(obj.sop_instance_uid)
            if first is None:
                unique[obj.sop_instance_uid] = obj
            elif same_content(first.path, obj.path):
                duplicates.append(obj)
            else:
                conflicts.append(obj)
        name = f"{series_uid}|{folder}|{len(series_list)}"
        slices = [frame for obj in unique.values() for frame in enhanced.frame_slices(obj)]
        series = CtSeries(
            key=name,
            series_uid=series_uid,
            study_uid=objects[0].study_uid,
            frame_of_reference_uid=frame_uid,
            patient_id=objects[0].patient_id,
            folder=folder,
            slices=slices,
            duplicate_files=[d.rel_path for d in duplicates],
            duplicate_objects=list(duplicates),
            folders=folders_of.get(key, [folder]),
            interleaved=key in interleaved,
        )
        for dup in duplicates:
            first = unique[dup.sop_instance_uid]
            result.duplicates.append(
                (dup.sop_instance_uid, [first.rel_path, dup.rel_path], "CT slice kept once (first file by path)")
            )
        for other in conflicts:
            first = unique[other.sop_instance_uid]
            series.conflicts.append((other.sop_instance_uid, [first.rel_path, other.rel_path]))
            result.duplicates.append(
                (
                    other.sop_instance_uid,
                    [first.rel_path, other.rel_path],
                    "CT slices sharing one SOPInstanceUID hold different images: their case fails",
                )
            )
        series_list.append(series)
    _report_cross_duplicates(result)
    _report_slices_in_two_series(result, series_list)
    return series_list


def _report_slices_in_two_series(result: ScanResult, series_list: list) -> None:
    """A slice's SOPInstanceUID in two CT series (a copy in another folder): each series keeps its own, the user is told."""
    where: dict = {}
    for series in series_list:
        for obj in series.file_objects:  # a multi-frame file's frames are one image
            where.setdefault(obj.sop_instance_uid, []).append(obj)
    for uid, objects in sorted(where.items()):
        if len(objects) > 1 and uid:
            same = all(same_content(objects[0].path, o.path) for o in objects[1:])
            result.duplicates.append(
                (
                    uid,
                    [o.rel_path for o in objects],
                    f"one CT slice in {len(objects)} series (folders): "
                    + ("copies, each series keeps its own" if same else "different images, each series keeps its own"),
                )
            )


#: What two files sharing a SOPInstanceUID must agree on to be copies of one image.
CONTENT_KEYWORDS = (
    "PixelData",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "DoseGridScaling",
    "DoseUnits",
    "DoseType",
    "GridFrameOffsetVector",
)


def same_content(first: Path, second: Path) -> bool:
    """Whether two CT files that share a SOPInstanceUID are copies of one image (RTDOSE files: :func:`same_dose`).

    The same bytes, or the same pixel data, geometry and scaling (a re-export may differ in other
    tags). Files that cannot be read count as different.
    """
    try:
        if _same_bytes(first, second):
            return True
        a = headers.read_header(first)  # headers first: pixel data are read only when they are to be compared
        b = headers.read_header(second)
        if not _same_values(a, b):
            return False
        sizes = headers.decoded_size(a), headers.decoded_size(b)
        if None in sizes or sizes[0] != sizes[1] or sizes[0] > MAX_COMPARED_PIXEL_BYTES:
            return False  # other sizes hold other images; beyond the bound they are not read to be compared
        a = headers.read_header(first, stop_before_pixels=False)
        b = headers.read_header(second, stop_before_pixels=False)
    except (OSError, DoseAlignError):
        return False
    if not _same_values(a, b):
        return False  # changed since their headers were compared
    # the same values stored otherwise (compressed, big endian)?
    return a.get("PixelData") == b.get("PixelData") or _same_pixels(a, b, first, second)


def dose_key(path: Path) -> Optional[tuple]:
    """A key that two RTDOSE files share when they hold the same dose as the export reads it
    (:func:`.rtdose.content_digest`: the computed grid, units, type and values in Gy), or the same bytes when their
    pixels are beyond :data:`MAX_COMPARED_PIXEL_BYTES`; None when the file cannot be read. Each file is read once, so
    N files of one UID cost N reads, not N² (seventeenth hostile trial Q5: 80 doses of one UID, 40 s)."""
    from .rtdose import content_digest

    try:
        size = headers.decoded_size(headers.read_header(path))
        if size is None or size > MAX_COMPARED_PIXEL_BYTES:
            return ("bytes", _file_digest(path))
        ds = headers.read_header(path, stop_before_pixels=False)
        if headers.decoded_size(ds) != size:
            return None  # changed since the line above
        return ("values", content_digest(ds, path))
    except (OSError, DoseAlignError, MemoryError, AttributeError, TypeError, ValueError):
        return None


#: The dates a CT slice's header may give that differ from slice to slice.
_SLICE_DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "AcquisitionDateTime")


def dose_belongs_to(dose) -> tuple:
    """What a scanned RTDOSE says it belongs to: its summation, plan, beams and fraction group, its patient (PatientID
    as the pairing compares it: case and surrounding blanks left out), study and frame of reference. Two files of one
    dose (:func:`dose_key`) that agree here are one dose, in one input and under ``--append`` alike: the same values
    under another plan are another case (seventeenth and eighteenth hostile trials Q3, R5), and a re-send whose frames
    are stored the other way round or whose PatientName was corrected is the same (twentieth trial T3: the facts as
    written made such a file a second case). Its plans are a set: a re-send that lists them in another order is the
    same dose."""
    info = getattr(dose, "info", {}) or {}
    return (
        str(info.get("summation_type") or ""),
        tuple(sorted({str(uid) for uid in info.get("plan_uids") or ()})),  # (in any order: twenty-first trial)
        tuple(info.get("beam_numbers") or ()),
        info.get("fraction_group"),
        str(getattr(dose, "patient_id", "") or "").strip().casefold(),
        str(getattr(dose, "study_uid", "") or ""),
        str(getattr(dose, "frame_of_reference_uid", "") or ""),
    )


def same_dose(first: Path, second: Path) -> bool:
    """Whether two RTDOSE files hold the same dose (:func:`dose_key`); files that cannot be read are different."""
    if same_bytes(first, second):
        return True
    key = dose_key(first)
    return key is not None and key == dose_key(second)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same_values(a: Dataset, b: Dataset) -> bool:
    """Whether two data sets agree in :data:`CONTENT_KEYWORDS` other than the pixel data."""
    for keyword in CONTENT_KEYWORDS:
        if keyword == "PixelData":
            continue
        x, y = a.get(keyword), b.get(keyword)
        if (x is None) != (y is None):
            return False
        if x is None or x == y:
            continue
        if isinstance(x, (bytes, bytearray)) or str(x) != str(y):  # values, or their text as written
            return False
    return True


#: What of a structure set the export reads (the scan, the links, :mod:`.rtstruct`, the identity checks): two
#: files sharing a SOPInstanceUID are one structure set when these agree, decoded. The encoding (transfer syntax,
#: character set) and elements nothing reads (a StructureSetDescription, a creation time) may differ.
STRUCTURE_SET_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "StructureSetLabel",
    "ReferencedFrameOfReferenceSequence",
    "StructureSetROISequence",
    "ROIContourSequence",
    "RTROIObservationsSequence",
)


@dataclass
class CopyComparison:
    """Two files that share a SOPInstanceUID, compared decoded (see :func:`compare_structure_sets`)."""

    used: Optional[str]  # the first element the export reads that differs (a path such as ROIContourSequence[1]...)
    others: list  # elements nothing reads that differ (top-level keywords)
    encodings: tuple  # the two files' transfer syntaxes (names)


def compare_structure_sets(first: Path, second: Path) -> CopyComparison:
    """Compare two RTSTRUCT files that share a SOPInstanceUID by their decoded contents: whether they differ in
    an element of :data:`STRUCTURE_SET_KEYWORDS` (``used``, named by its path), and in which other elements.
    A file that cannot be read differs in everything (``used`` says so)."""
    try:
        a = headers.read_header(first, stop_before_pixels=False)
        b = headers.read_header(second, stop_before_pixels=False)
    except (OSError, DoseAlignError) as error:
        return CopyComparison(f"(it cannot be read again: {error})", [], ("", ""))
    used = None
    for keyword in STRUCTURE_SET_KEYWORDS:
        x, y = _element(a, keyword), _element(b, keyword)
        if keyword == "PatientName" and x is not None and y is not None:
            used = None if headers.same_person_name(x.value, y.value) else keyword
        else:
            used = _element_difference(x, y, keyword)
        if used:
            break
    others = []
    for tag in sorted(set(a.keys()) | set(b.keys())):
        keyword = keyword_for_tag(tag) or str(tag)  # (not a[tag]: that would read a value left in the file)
        if keyword in STRUCTURE_SET_KEYWORDS or tag.element == 0 or tag.group == 0xFFFC:
            continue  # read above; group lengths and padding are encoding
        if keyword == "SpecificCharacterSet":
            continue  # the values are compared decoded
        large = [_unread_length(ds, tag) for ds in (a, b)]
        if any(length is not None for length in large):  # beyond LARGE_VALUE_BYTES: not read to be compared
            if large[0] != large[1]:
                others.append(keyword)
            continue
        if _element_difference(_element(a, tag), _element(b, tag), keyword):
            others.append(keyword)
    return CopyComparison(used, others, (_encoding(a), _encoding(b)))


def _unread_length(ds: Dataset, tag) -> Optional[int]:
    """The length of ``ds``'s element ``tag`` when its value was left in the file (larger than
    :data:`~.headers.LARGE_VALUE_BYTES`), else None."""
    element = getattr(ds, "_dict", {}).get(tag)
    if element is not None and getattr(element, "value", b"") is None and getattr(element, "length", 0):
        return int(element.length)
    return None


def _element(ds: Dataset, key):
    """The data element ``key`` (a keyword or a tag) of ``ds``, or None."""
    try:  # ds.get(keyword) gives the value, not the element
        return ds[key]
    except KeyError:
        return None


def _encoding(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return getattr(uid, "name", "") or str(uid or "no file meta")


def _element_difference(x, y, where: str) -> Optional[str]:
    """``where`` (or the path below it) when the elements ``x`` and ``y`` (either may be None: absent) differ
    in their decoded values; None when they agree."""
    if x is None or y is None:
        return None if x is None and y is None else where
    return _value_difference(x.value, y.value, where)


def _value_difference(x, y, where: str) -> Optional[str]:
    if isinstance(x, Dataset) or isinstance(y, Dataset):
        if not (isinstance(x, Dataset) and isinstance(y, Dataset)):
            return where
        for tag in sorted(set(x.keys()) | set(y.keys())):
            if tag.element == 0:
                continue
            keyword = (x[tag] if tag in x else y[tag]).keyword or str(tag)
            found = _element_difference(_element(x, tag), _element(y, tag), f"{where}.{keyword}")
            if found:
                return found
        return None
    x_many = isinstance(x, (list, tuple)) or type(x).__name__ in ("MultiValue", "Sequence")
    y_many = isinstance(y, (list, tuple)) or type(y).__name__ in ("MultiValue", "Sequence")
    if x_many or y_many:
        xs, ys = (list(x) if x_many else [x]), (list(y) if y_many else [y])
        if len(xs) != len(ys):
            return where
        for n, (u, v) in enumerate(zip(xs, ys)):
            found = _value_difference(u, v, f"{where}[{n}]" if isinstance(u, Dataset) else where)
            if found:
                return found
        return None
    if isinstance(x, (bytes, bytearray)) or isinstance(y, (bytes, bytearray)):
        return None if isinstance(x, (bytes, bytearray)) and isinstance(y, (bytes, bytearray)) and x == y else where
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):  # DS and IS too: 1.50 is 1.5
        return None if float(x) == float(y) else where
    return None if str(x).strip() == str(y).strip() else where


#: The most decoded bytes of one file :func:`same_content` decodes to compare two files' pixels (a 1000-frame
#: Enhanced CT is 0.5 GB). Beyond it the files count as different: two small RLE files of 32 768² pixels (2 GiB
#: decoded each) took 4.4 GB in the scan, two of 134 MB 17 GB and 73 s (sixteenth hostile trial P5).
MAX_COMPARED_PIXEL_BYTES = 1 << 29


def _same_pixels(a: Dataset, b: Dataset, first: Path, second: Path) -> bool:
    if headers.decoded_size(a) != headers.decoded_size(b):
        return False  # changed since their headers were compared
    try:
        return bool(np.array_equal(headers.pixel_array(a, first), headers.pixel_array(b, second)))
    except (DoseAlignError, MemoryError):
        return False


def same_bytes(first: Path, second: Path) -> bool:
    """Whether two files hold the same bytes (a file that cannot be read counts as different)."""
    try:
        return _same_bytes(first, second)
    except OSError:
        return False


def _same_bytes(first: Path, second: Path) -> bool:
    with open_regular(first) as a, open_regular(second) as b:
        if os.fstat(a.fileno()).st_size != os.fstat(b.fileno()).st_size:
            return False
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _merge_geometries_of_one_folder(groups: dict) -> None:
    """Slices of one series, frame and folder whose geometry differs beyond a rounding join the largest volume.

    They are damaged (a missing or broken PixelSpacing, orientation, Rows...) or slices of another volume
    written under the series' UID; kept apart, they would be a CT of their own and leave silent holes in
    this one, which would be interpolated over. Joined, the CT checks name them and the case fails. A
    multi-frame file of another geometry stays a volume of its own; so do slices in another folder (the
    Nelms phantom's CTs).
    """
    by_volume: dict = {}
    for key in groups:
        by_volume.setdefault((key[0], key[2]), []).append(key)  # series and folder
    for keys in by_volume.values():
        if len(keys) < 2:
            continue
        largest = max(keys, key=lambda k: (len(groups[k]), bool(k[1]), str(k[3])))
        for key in keys:
            # slices of the same frame of reference, or whose frame of reference is lost (a multi-frame file is a
            # volume of its own)
            single = all("frames" not in obj.info for obj in groups[key])
            if key != largest and single and key[1] in (largest[1], ""):
                groups[largest].extend(groups.pop(key))


def _merge_split_folders(groups: dict, interleaved: Optional[set] = None) -> dict:
    """One series of one geometry and frame of reference in several folders (a CD layout DICOM/0001,
    DICOM/0002) is one CT when its slices, put together, are at least as regular as in each folder: no two
    at one position, every step a whole number of the joint step, no gap that no folder has itself, and
    the slice origins on one line along the normal. Copies of a series (positions collide) and volumes of
    other slice steps sharing the UID (the Nelms phantom's) stay apart. Returns the folders of each joined
    group's key (the key's folder is their names joined by " + "); ``interleaved`` gets the keys of those whose
    folders' slices interleave (two reconstructions shifted by half a step look the same: thirty-sixth hostile
    trial AJ14)."""
    by_volume: dict = {}
    for key, objects in groups.items():
        if all("frames" not in obj.info for obj in objects):
            by_volume.setdefault((key[0], key[1], key[3]), []).append(key)
    folders_of: dict = {}
    for (series_uid, frame_uid, geometry), keys in by_volume.items():
        if len(keys) < 2 or not series_uid:
            continue
        keys = sorted(keys, key=lambda k: k[2])
        parts = [_positions_along_normal(groups[k], geometry) for k in keys]
        if any(p is None for p in parts) or not _one_stack(parts):
            continue
        folders = [k[2] for k in keys]
        joined = (series_uid, frame_uid, " + ".join(folders), geometry)
        spans = sorted((float(part[:, 0].min()), float(part[:, 0].max())) for part in parts)
        if interleaved is not None and any(b[0] < a[1] - SAME_POSITION_MM for a, b in zip(spans, spans[1:])):
            interleaved.add(joined)
        groups[joined] = [obj for k in keys for obj in groups.pop(k)]
        folders_of[joined] = folders
    return folders_of


def _positions_along_normal(objects: list, geometry: tuple) -> Optional[np.ndarray]:
    """``(n, 4)``: each slice's position along the slice normal, then its origin; None when one is unusable."""
    iop = geometry[0]
    if iop is None or len(iop) != 6 or any(isinstance(v, str) for v in iop):
        return None
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    if not 0.99 < np.linalg.norm(normal) < 1.01:
        return None
    rows = []
    for obj in objects:
        ipp = obj.info.get("image_position")
        if ipp is None or len(ipp) != 3 or not np.all(np.isfinite(ipp)):
            return None
        rows.append([float(np.dot(ipp, normal)), *ipp])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def _one_stack(parts: list) -> bool:
    """Whether the slices of several folders (:func:`_positions_along_normal`) are one evenly stepped stack."""
    union = np.concatenate(parts)
    union = union[np.argsort(union[:, 0], kind="stable")]
    steps = np.diff(union[:, 0])
    if steps.size == 0 or np.any(steps < SAME_POSITION_MM):
        return False  # copies, or volumes that overlap
    # the slice origins on one straight line (a tilted stack's too), as the CT checks want them
    offsets = union[:, 0] - union[0, 0]
    moved = union[:, 1:] - union[0, 1:]
    if np.max(np.linalg.norm(moved - np.outer(offsets, moved[-1] / offsets[-1]), axis=1)) > 10 * SAME_POSITION_MM:
        return False

    def gaps(positions: np.ndarray, step: float) -> Optional[int]:
        """Steps longer than one ``step`` (whole multiples of it), or None when a step is no whole multiple."""
        ratios = np.diff(positions) / step
        whole = np.rint(ratios)
        if np.any(whole < 1) or np.any(np.abs(ratios - whole) > 0.01):
            return None
        return int(np.count_nonzero(whole > 1))

    typical = float(np.median(steps))
    joint = gaps(union[:, 0], typical)
    if joint is None:
        return False
    own = 0
    for part in parts:
        positions = np.sort(part[:, 0])
        if positions.size > 1:
            found = gaps(positions, float(np.median(np.diff(positions))))
            own += found if found is not None else positions.size
    return joint <= own


#: What the link step makes of non-CT files that share a SOPInstanceUID, as the scan says it.
_SHARED_UID_RULES = {
    "RTDOSE": "RTDOSE files sharing one SOPInstanceUID: a copy (the same dose, plan and patient) is used once, "
    "other doses stay, each its own",
    "RTPLAN": "RTPLAN files sharing one SOPInstanceUID: a copy is used once; files that differ in what the export "
    "reads fail their case",
    "RTSTRUCT": "RTSTRUCT files sharing one SOPInstanceUID: a copy is used once; files that differ in what the "
    "export reads fail their case",
}


def _report_cross_duplicates(result: ScanResult) -> None:
    """Non-CT objects that share a SOPInstanceUID: the user is told, with the rule the link step applies (the scan
    said "each kept as its own object" where a copy was used once: eighteenth hostile trial R7's output)."""
    seen: dict = {}
    for obj in result.objects:
        if obj.kind == "CT":
            continue
        seen.setdefault(obj.sop_instance_uid, []).append(obj)
    for uid, objects in sorted(seen.items()):
        if len(objects) > 1 and uid:
            kinds = {o.kind for o in objects}
            rule = _SHARED_UID_RULES.get(next(iter(kinds))) if len(kinds) == 1 else None
            result.duplicates.append(
                (
                    uid,
                    [o.rel_path for o in objects],
                    rule or "files of different kinds sharing one SOPInstanceUID: each kept as its own object",
                )
            )
