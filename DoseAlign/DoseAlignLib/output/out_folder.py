"""What an output folder already holds, and whether an export may write into it.

Before an export writes anything, :func:`inspect_output` lists ``OUT``: case folders (each with
its meta.json), the manifest, DoseAlign's own files, temporary leftovers of a killed run and
anything else. The batch runner then decides with it:

* a pseudonymized export never writes beside identifying content, nor a plain export beside
  pseudonymized content (:func:`pseudonymization_conflict`);
* ``--resume`` keeps a case only when its recorded request equals this run's
  (:func:`request_differences`: the alignment options, the DoseAlign version, the input files, the
  pseudonymization and the qa.png), otherwise the case is exported again;
* folders that are not cases of this run are reported, or kept in one manifest with ``--append``
  (hidden entries are not looked at: runs' temporary names and owner records, a desktop's files).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..dicom.headers import quick_text, read_header, surely_a_data_set
from ..errors import DoseAlignError, InputError
from ..limits import LimitError, open_regular, read_back
from .case_folder import case_problem, load_meta
from .manifest import parse_manifest

#: Files an export writes at the top of OUT (beside the case folders).
OWN_FILES = ("manifest.csv", "report.html", "dataset.json", "dataset.h5")
SHARD_MANIFEST = re.compile(r"manifest\.shard-\d+-of-\d+\.csv")
#: A top-level key of meta.json as json_text writes it (indent 1): only pseudonymized cases have it.
_PSEUDONYMIZED_KEY = b'\n "pseudonymized": '
#: How DoseAlign's meta.json begins (its first key, as json_text writes it): a user's meta.json that records a
#: DoseAlign version somewhere inside is not DoseAlign's (thirty-first hostile trial AE14).
_DOSEALIGN_META = b'{\n "dosealign_version": '
SHARD_SETTINGS = re.compile(r"manifest\.shard-\d+-of-\d+\.json")
#: The key's fingerprint in meta.json's ``pseudonymized`` object (output/pseudonym.py key_fingerprint).
_KEY_FINGERPRINT = re.compile(rb'\n "pseudonymized": \{[^{}]*?"key": "([0-9a-f]{16})"')
#: Case ids a pseudonymized export writes: ``P<12 hex>_<summation>_<8 hex>``, and ``<kind>_<10 hex>``
#: for rows that are no case (damaged files); see output/pseudonym.py.
#: (the summation's label keeps its digits: ``_plan2_``, thirty-fifth hostile trial AI9)
PSEUDONYMOUS_ID = re.compile(r"P[0-9a-f]{12}_[a-z0-9]+_[0-9a-f]{8}|[A-Za-z0-9.-]+_[0-9a-f]{10}")


@dataclass
class ExistingCase:
    """A case folder already in OUT."""

    case_id: str
    folder: Path
    complete: bool  # meta.json and the arrays present and whole (case_folder.case_problem)
    pseudonymized: Optional[bool]  # None: meta.json missing or unreadable
    key: Optional[str] = None  # the fingerprint of the pseudonym key (None: plain, or made before it was recorded)
    _meta: Optional[dict] = None
    problem: Optional[str] = None  # why it is not complete (a file cut short, meta.json unreadable...)

    @property
    def meta(self) -> Optional[dict]:
        """meta.json, read on first use (None when it cannot be read)."""
        if self._meta is None and self.complete:
            try:
                self._meta = load_meta(self.folder)
            except DoseAlignError:
                self._meta = None
        return self._meta


@dataclass
class OutputFolder:
    """What OUT holds before a run."""

    path: Path
    exists: bool = False
    cases: dict = field(default_factory=dict)  # case_id -> ExistingCase
    other: list = field(default_factory=list)  # names of entries that are neither cases nor DoseAlign's files
    dicom_files: list = field(default_factory=list)  # DICOM files directly in OUT (is it an input?)
    manifest_rows: list = field(default_factory=list)  # rows of OUT/manifest.csv
    manifest_problem: Optional[str] = None  # why OUT/manifest.csv could not be read (it is written anew)

    @property
    def empty(self) -> bool:
        return not self.cases and not self.other and not self.manifest_rows


def inspect_output(out_dir: Path) -> OutputFolder:
    """List what ``out_dir`` holds (nothing is read beyond a few bytes of each meta.json and the manifest)."""
    out_dir = Path(out_dir)
    found = OutputFolder(path=out_dir, exists=out_dir.is_dir())
    if not found.exists:
        return found
    for entry in sorted(out_dir.iterdir(), key=lambda p: p.name):
        name = entry.name
        # hidden entries: runs' temporary names and owner records (output/files.py), .DS_Store and the like
        if (
            name.startswith(".")
            or name in OWN_FILES
            or SHARD_MANIFEST.fullmatch(name)
            or SHARD_SETTINGS.fullmatch(name)
        ):
            continue  # (a shard's settings are DoseAlign's, for merge: thirty-second hostile trial AF9)
        # a case by DoseAlign's meta.json or arrays: a user's folder with another tool's meta.json is no export of
        # DoseAlign, plain or not (thirtieth hostile trial AD6)
        # (a link is no case folder of this OUT, whatever it points to: --resume vouched for another export's case
        # through one and wrote into it; thirty-third hostile trial AG4)
        real = entry.is_dir() and not entry.is_symlink()
        pseudonymized, key = meta_pseudonymization(entry / "meta.json") if real else (None, None)
        if real and (pseudonymized is not None or (entry / "pair.npz").is_file() or (entry / "ct.npy").is_file()):
            problem = case_problem(entry)  # damaged outputs (a truncated pair.npz) are not complete
            found.cases[name] = ExistingCase(name, entry, problem is None, pseudonymized, key=key, problem=problem)
        else:
            found.other.append(name + ("/" if entry.is_dir() else ""))
            if len(found.dicom_files) < 3 and len(found.other) <= 200 and _is_dicom(entry):
                found.dicom_files.append(name)
    manifest = out_dir / "manifest.csv"
    if os.path.lexists(manifest):
        found.manifest_rows, found.manifest_problem = read_manifest(manifest)
    return found


#: How much of an OUT-level file is read to tell whether DoseAlign wrote it.
HEAD_BYTES = 1 << 16


def foreign_file(path: Path) -> Optional[str]:
    """Why a regular file at one of the names a run writes at the top of OUT is not DoseAlign's (a user's
    ``manifest.csv`` of other columns, their own ``report.html``); None when DoseAlign wrote it, when it is
    empty (nothing to lose), absent, or no regular file (those are refused by name elsewhere).

    Told by how DoseAlign's files begin: a manifest's header, the report's "Written by DoseAlign", the datalist's
    name, a shard's settings object, dataset.h5's ``dosealign_version`` attribute.
    """
    try:
        with open_regular(path) as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return None
    if not head:
        return None
    name = path.name
    if name.endswith(".csv"):
        ours, told = head.startswith(b"case_id,status,"), "its first line is not a DoseAlign manifest's header"
    elif name.endswith(".html"):
        ours, told = b"Written by DoseAlign" in head, "no DoseAlign report"
    elif name == "dataset.json":
        ours, told = b'"name": "DoseAlign export"' in head, "no DoseAlign datalist"
    elif name.endswith(".json"):  # a shard's settings (manifest.shard-K-of-N.json)
        ours, told = head.lstrip().startswith(b'{\n "formats": '), "no DoseAlign shard settings"
    elif name.endswith(".h5"):
        ours = head.startswith(b"\x89HDF\r\n\x1a\n") and _dosealign_hdf5(path)
        told = "no DoseAlign dataset (no dosealign_version attribute)"
    else:
        ours, told = True, ""
    return None if ours else told


def _dosealign_hdf5(path: Path) -> bool:
    try:
        import h5py
    except ImportError:  # cannot look inside: an HDF5 file by this name counts as DoseAlign's
        return True
    try:
        with h5py.File(path, "r") as handle:
            return "dosealign_version" in handle.attrs
    except (OSError, ValueError):
        return False


def read_manifest(path: Path) -> tuple:
    """``(rows, problem)`` of a manifest.csv in OUT: its rows as dicts, or no rows and why it cannot be read
    (only a regular file of at most ``DOSEALIGN_MANIFEST_MB`` is read)."""
    try:
        text = read_back(path, "DOSEALIGN_MANIFEST_MB").decode("utf-8")
        return [row for _line, row in parse_manifest(text)[1]], None
    except LimitError as error:
        return [], f"{error.message} ({error.hint})"
    except (OSError, ValueError, csv.Error) as error:
        return [], f"cannot be read ({error if isinstance(error, OSError) else type(error).__name__})"


def _is_dicom(path: Path) -> bool:
    """A regular file named .dcm, or with DICOM's preamble, or a data set without it as the scan reads one (only its
    first 132 bytes are read; an input of such files given as OUT was written into: thirty-eighth hostile trial AL9)."""
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix.lower() == ".dcm" or path.name.upper() == "DICOMDIR":
        return True
    try:
        with open_regular(path) as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:] == b"DICM" or surely_a_data_set(head)


def meta_pseudonymization(meta_path: Path) -> tuple:
    """``(pseudonymized, key fingerprint)`` of a case's meta.json: ``(None, None)`` when it cannot be read or is
    not DoseAlign's (no ``dosealign_version``)."""
    try:  # a named pipe or device planted in OUT is never read, nor more than DOSEALIGN_META_MB
        data = read_back(meta_path, "DOSEALIGN_META_MB")
    except (OSError, LimitError):
        return None, None
    if not data.startswith(_DOSEALIGN_META):
        return _parsed_pseudonymization(data)
    key = _KEY_FINGERPRINT.search(data)
    return _PSEUDONYMIZED_KEY in data, key.group(1).decode("ascii") if key else None


def _parsed_pseudonymization(data: bytes) -> tuple:
    """:func:`meta_pseudonymization` of a meta.json not laid out as DoseAlign writes it: parsed, DoseAlign's when it
    has DoseAlign's ``dosealign_version`` and ``case_id`` at its top (keys sorted by a tool too: thirty-third hostile
    trial AG1; a DoseAlign version recorded further in is a user's file: thirty-first AE14)."""
    if b'"dosealign_version"' not in data:
        return None, None
    try:
        meta = json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(meta, dict) or not {"dosealign_version", "case_id"} <= set(meta):
        return None, None
    recorded = meta.get("pseudonymized")
    key = recorded.get("key") if isinstance(recorded, dict) else None
    return "pseudonymized" in meta, key if isinstance(key, str) and re.fullmatch(r"[0-9a-f]{16}", key) else None


def pseudonymization_conflict(found: OutputFolder, pseudonymized: bool, key: Optional[str] = None) -> Optional[str]:
    """Why a (plain or pseudonymized) export must not write into ``found``; None when it may.

    A pseudonymized OUT is meant to be shared: one identifying case folder or manifest row in it
    would leak identity, and a plain case folder beside pseudonymized ones would be shared with them.
    ``key``, for a pseudonymized export, is its key's fingerprint ("" for a key not made yet): cases made with
    another key are refused too (one patient would be in OUT under two pseudonyms); cases that record no
    fingerprint (made before it was recorded) cannot be told apart and are not refused.
    """
    if pseudonymized and key is not None:
        others = sorted({c.key for c in found.cases.values() if c.pseudonymized and c.key and c.key != key})
        if others:
            made = [c.case_id for c in found.cases.values() if c.pseudonymized and c.key in others]
            this = f"this key's is {key}" if key else "this run would make a new key"
            return (
                f"it holds a pseudonymized export made with another key (key fingerprint {', '.join(others)}; "
                f"{this}): {some_names(made)}; the same patient would be in it under two pseudonyms "
                "(use --key-file with the key it was made with)"
            )
    # a case folder whose meta.json tells nothing (gone, damaged) is plain unless its name is a pseudonym: a plain
    # case's name is the PatientID's (thirty-third hostile trial AG1)
    plain = [
        c.case_id
        for c in found.cases.values()
        if c.pseudonymized is False or c.pseudonymized is None and not PSEUDONYMOUS_ID.fullmatch(c.case_id)
    ]
    pseudo = [
        c.case_id
        for c in found.cases.values()
        if c.pseudonymized or c.pseudonymized is None and PSEUDONYMOUS_ID.fullmatch(c.case_id)
    ]  # (named as a pseudonym, its meta.json gone: the other way round of AG1, thirty-fourth hostile trial AH4)
    # a row whose case folder's meta.json says what it is goes by that (a plain case id may read as a pseudonym:
    # PatientID P3fa9b2c41d0e and no plan, thirty-second hostile trial AF1)
    told = {c.case_id for c in found.cases.values() if c.pseudonymized is not None}
    rows = [r.get("case_id", "") for r in found.manifest_rows if r.get("case_id", "") not in told]
    plain_rows = [r for r in rows if r and not PSEUDONYMOUS_ID.fullmatch(r)]
    pseudo_rows = [r for r in rows if r and PSEUDONYMOUS_ID.fullmatch(r)]
    if pseudonymized and (plain or plain_rows):
        examples = plain or plain_rows
        return (
            f"it holds a plain (not pseudonymized) export: {some_names(examples)}; a pseudonymized export beside it "
            "would be shared with the identifying outputs"
        )
    if not pseudonymized and (pseudo or (pseudo_rows and not plain_rows)):
        examples = pseudo or pseudo_rows
        return (
            f"it holds a pseudonymized export: {some_names(examples)}; a plain export would put identifying outputs "
            "into a folder meant to be shared (add --pseudonymize, with the same key)"
        )
    return None


def some_names(names: list, most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


#: The end of an option's name that meta.json records as a keyed hash of another option (see above).
KEYED = "_keyed_sha256"


def request_differences(meta: Optional[dict], request: dict) -> list:
    """How a case's recorded request (its meta.json) differs from this run's, as readable lines.

    ``request`` has ``options`` (``AlignOptions.to_dict()``), ``option_defaults`` (the same of
    ``AlignOptions()``, for options an older meta.json does not record), ``dosealign_version``,
    ``source`` (the input files and series the case is made of, as meta.json records them) and
    ``pseudonymized``; ``backend``, when given, what resamples (meta.json's ``resampling.backend``).
    """
    if not meta:
        return ["its meta.json cannot be read"]
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(key) or {}, dict) for key in ("options", "source", "resampling")
    ):  # edited or damaged: what it records cannot be compared
        return ["its meta.json is damaged (options, source or resampling is not an object)"]
    differences = []
    recorded_options = meta.get("options") or {}
    defaults = request.get("option_defaults", {})
    # an option recorded rewritten under pseudonymization is compared by its keyed hash where both record one
    # (``centre`` by ``centre_keyed_sha256``), as it was given; an older meta.json's by the rewritten text
    hashed = {key[: -len(KEYED)] for key in request["options"] if key.endswith(KEYED) and key in recorded_options}
    for key, wanted in request["options"].items():
        if key in hashed or (key.endswith(KEYED) and key not in recorded_options):
            continue
        had = recorded_options[key] if key in recorded_options else defaults.get(key)
        if _plain(had) != _plain(wanted):
            differences.append(f"{key} {_show(had)} -> {_show(wanted)}")
    for key in sorted(set(recorded_options) - set(request["options"])):
        if key.endswith(KEYED):  # the hash of an option now given otherwise: that option differs, said above
            continue
        differences.append(f"{key} {_show(recorded_options[key])} -> (not an option of this version)")
    version = meta.get("dosealign_version")
    if version != request["dosealign_version"]:
        differences.append(f"made by DoseAlign {version}, this is {request['dosealign_version']}")
    source = meta.get("source") or {}
    for key, wanted in request.get("source", {}).items():
        had = source.get(key)
        if key == "input_files":
            changed = _changed_files(had, wanted)
            if changed:
                differences.append(changed)
            continue
        if isinstance(wanted, list) and key == "ct_files":
            same = sorted(had or []) == sorted(wanted)
        else:
            same = _plain(had) == _plain(wanted)
        if not same:
            differences.append(f"input {key} changed")
    if bool(meta.get("pseudonymized")) != bool(request.get("pseudonymized")):
        differences.append("pseudonymized" if meta.get("pseudonymized") else "not pseudonymized")
    elif request.get("key") and recorded_key(meta) and recorded_key(meta) != request["key"]:
        differences.append(f"pseudonymized with another key (key fingerprint {recorded_key(meta)} -> {request['key']})")
    if "backend" in request:  # what resampled (the Slicer module's backends); older meta.json: the engine
        had = (meta.get("resampling") or {}).get("backend", "engine")
        if had != request["backend"]:
            differences.append(f"resampled by {had}, this run by {request['backend']}")
    return differences


def recorded_key(meta: Optional[dict]) -> Optional[str]:
    """The pseudonym key's fingerprint a case's meta.json records (None: plain, or not recorded)."""
    pseudonymized = (meta or {}).get("pseudonymized") if isinstance(meta, dict) else None
    key = pseudonymized.get("key") if isinstance(pseudonymized, dict) else None
    return key if isinstance(key, str) and key else None


def _input_objects(case) -> list:
    """The scanned objects of ``case``'s input files: its RTDOSEs, RTPLAN, RTSTRUCTs and CT files (a multi-frame
    file once)."""
    objects = list(case.doses) + ([case.plan] if case.plan is not None else []) + list(case.structs)
    return objects + (list(case.ct.file_objects) if case.ct is not None else [])


def input_files(case) -> list:
    """meta.json's ``source.input_files``: per input file of ``case`` (its RTDOSEs, RTPLAN, RTSTRUCTs and CT
    slices), the path relative to the input, the SOPInstanceUID, and the size and modification time (ns) the
    scan saw, which tell cheaply whether the file was changed since (as make and rsync tell)."""
    objects = _input_objects(case)
    return [
        {
            "file": obj.rel_path,
            "sop_instance_uid": obj.sop_instance_uid,
            "size": obj.info.get("size"),
            "mtime_ns": obj.info.get("mtime_ns"),
        }
        for obj in objects
    ]


def _same_instance(obj) -> bool:
    """Whether the file at ``obj``'s path holds the SOPInstanceUID the scan saw there (a header read again)."""
    try:
        ds = read_header(obj.path, defer_large=True)
    except Exception:  # unreadable now: not the file the scan read
        return False
    # (read as the scan read it: a UID of two values is their text joined, as the scan recorded it, fifty-eighth hostile
    # trial BF3)
    return quick_text(ds, "SOPInstanceUID") == obj.sop_instance_uid


def check_unchanged_since_scan(case) -> None:
    """Raise :class:`~DoseAlignLib.errors.InputError` when an input file of ``case`` is not, now that the case has
    read it, the size or modification time the scan saw: the case was formed from what the scan read, its arrays
    from what the files hold now. A CT slice replaced by another while the export ran was read at the first one's
    position, status ok (forty-fifth hostile trial AS1); so was one of the same size and time moved in its place (its
    inode differs: AU1). A file gone is named as such."""
    changed = []
    held: dict = {}  # path -> whether it holds the SOPInstanceUID the scan saw (a multi-frame file read once)

    def same_instance(obj) -> bool:
        if obj.path not in held:
            held[obj.path] = _same_instance(obj)
        return held[obj.path]

    for obj in _input_objects(case):
        size, mtime = obj.info.get("size"), obj.info.get("mtime_ns")
        if size is None or mtime is None:  # not from a scan of files (nothing to compare)
            continue
        try:
            status = os.stat(obj.path)
        except OSError as error:
            changed.append((obj, f"it cannot be looked at now: {error.strerror or error}"))
            continue
        facts = (("size", size, status.st_size), ("modification time", mtime, status.st_mtime_ns))
        what = [label for label, old, new in facts if old != new]
        inode = obj.info.get("inode")
        if what:
            changed.append((obj, f"its {' and '.join(what)} changed"))
        elif (
            inode is not None
            and (
                inode[0] != status.st_dev
                or inode[1] != status.st_ino
                or obj.info.get("ctime_ns") not in (None, status.st_ctime_ns)
            )
            and not same_instance(obj)
        ):
            # another file of the same size and time moved to its path (files unpacked from one archive share
            # whole-second times: forty-seventh hostile trial AU1), or written over it with its time set back (cp -p:
            # forty-ninth AW4): its inode or the inode's change time differs, and so does the SOPInstanceUID it holds
            # (a file system whose inode numbers change, FAT's, or a chmod, keep it: no refusal there). A Dask worker
            # on another node sees the share under its own device number, where inodes say nothing (AW1): there the
            # SOPInstanceUID of every file is read again (two slices swapped were exported at each other's place:
            # fifty-fourth trial BB1)
            changed.append((obj, "its contents changed, its size and time kept: another SOPInstanceUID or none"))
    if changed:
        first, why = changed[0]
        more = f"; and {len(changed) - 1} more of the case's input files changed" if len(changed) > 1 else ""
        raise InputError(
            f"changed since the input was scanned ({why}){more}: the case may hold what the file holds now",
            path=first.path,
            hint="export once the input is complete and no longer written; --resume exports this case again",
        )


#: What :func:`dose_digest` hashes, as meta.json's ``source.rtdose_digest_scheme`` records it: 5, the grid DoseAlign
#: computes, the values in Gy and what the dose belongs to (:func:`~DoseAlignLib.dicom.scan.dose_belongs_to`; 3 wrote
#: those facts otherwise, 4 its plans in the order the file lists them). Digests of another scheme (or none: the file bytes, then
#: the grid as written) are not compared: the UIDs decide, as for a case that records no digest (nineteenth hostile
#: trial S9: an OUT of the day before took the same dose appended again as "other contents").
DIGEST_SCHEME = 5


def recorded_digest(source) -> Optional[str]:
    """The dose digest a meta.json's ``source`` records, when it is of this version's :data:`DIGEST_SCHEME`."""
    if not isinstance(source, dict) or source.get("rtdose_digest_scheme") != DIGEST_SCHEME:
        return None
    digest = source.get("rtdose_digest")
    return digest if isinstance(digest, str) and digest else None


def dose_digest(case, key: Optional[bytes] = None) -> Optional[str]:
    """A digest of what the case's RTDOSE files hold (each file's :func:`~DoseAlignLib.dicom.rtdose.content_digest` and
    :func:`~DoseAlignLib.dicom.scan.dose_belongs_to`, the files in any order), as a decimal number (no run of it reads as a date or an ID: it is all one number); keyed (HMAC) when
    ``key`` is given, as a pseudonymized export records it. None when a file cannot be read or decoded within the
    bound of :data:`~DoseAlignLib.dicom.scan.MAX_COMPARED_PIXEL_BYTES`.

    Two files under one SOPInstanceUID may hold other doses (the Nelms phantom's AntPost and SupInf fields):
    ``--append`` compares these, not only the UIDs (fifteenth hostile trial O14); the same dose encoded otherwise
    (Implicit VR, another file meta) has the same digest (sixteenth trial P2: the files' bytes were hashed)."""

    from ..dicom import headers, rtdose
    from ..dicom.scan import MAX_COMPARED_PIXEL_BYTES, dose_belongs_to

    parts = []
    try:
        for dose in case.doses:
            size = headers.decoded_size(headers.read_header(dose.path))  # the pixel data are read only within it
            if size is None or size > MAX_COMPARED_PIXEL_BYTES:
                return None
            ds = headers.read_header(dose.path, stop_before_pixels=False)
            if headers.decoded_size(ds) != size:
                return None  # changed since the line above
            one = hashlib.sha256(rtdose.content_digest(ds, dose.path))
            one.update(repr(dose_belongs_to(dose)).encode("utf-8"))
            parts.append(one.digest())
    except (OSError, DoseAlignError, LimitError, MemoryError, AttributeError, TypeError, ValueError):
        return None
    digest = hmac.new(key, b"dosealign|rtdose|", hashlib.sha256) if key is not None else hashlib.sha256()
    for part in sorted(parts):
        digest.update(part)
    return str(int.from_bytes(digest.digest(), "big"))


def keyed_stamps(records: list, key: bytes) -> tuple:
    """``(records without size and time, stamps)``: for a pseudonymized export, each file's size and
    modification time are recorded only as a keyed hash (a time would tell when the data were made)."""
    bare = [{k: v for k, v in r.items() if k not in ("size", "mtime_ns")} for r in records]
    stamps = [
        hmac.new(key, f"dosealign|stamp|{r.get('size')}|{r.get('mtime_ns')}".encode(), hashlib.sha256).hexdigest()[:16]
        for r in records
    ]
    return bare, stamps


def _changed_files(had, wanted: list) -> str:
    """'input files changed since: c3991a65.dcm (size, modified)', or '' when each file is as recorded."""
    if not isinstance(had, list):
        return "its meta.json does not record its input files' sizes and times (an earlier version)"
    recorded = {r.get("file"): r for r in had if isinstance(r, dict)}
    labels = (
        ("sop_instance_uid", "SOPInstanceUID"),
        ("size", "size"),
        ("mtime_ns", "modified"),
        ("stamp", "size or time"),
    )
    changed = []
    for record in wanted:
        old = recorded.get(record["file"])
        if old is None:  # a file added: the path lists say so
            continue
        what = [label for key, label in labels if key in record and old.get(key) != record[key]]
        if what:
            changed.append(f"{record['file']} ({', '.join(what)})")
    return f"input files changed since: {some_names(changed)}" if changed else ""


def _plain(value):
    """JSON's view of a value (tuples are lists, floats and ints compare as numbers)."""
    return json.loads(json.dumps(value, default=str))


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
