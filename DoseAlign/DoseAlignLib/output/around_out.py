"""What lies around an output folder: the folders above it and below it, read for another export or a case folder
that must not be shared with this one.

A pseudonymized export is meant to be shared, with the folders below it: :func:`nested_conflict` refuses a plain
export inside one (any folder above OUT, :func:`export_kinds`), and a pseudonymized export above a plain export or
case folder (:data:`NESTED_LEVELS` down, :func:`entries_below`); :func:`leftover_conflict` refuses a dead run's
leftover that the run could not remove. What OUT itself holds is :mod:`.out_folder`'s.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import deque
from pathlib import Path
from typing import Iterator, Optional

from ..dicom.headers import surely_a_data_set
from ..limits import LimitError, is_system_folder, limit, open_regular
from .case_folder import CASE_FOLDERS
from .files import RUN_PREFIX, claim_details, dead_claims, is_run_entry
from .out_folder import (
    HEAD_BYTES,
    OWN_FILES,
    PSEUDONYMOUS_ID,
    SHARD_MANIFEST,
    SHARD_SETTINGS,
    meta_pseudonymization,
    some_names,
)

#: The same first key after a copy changed the layout (CRLF line ends, another indentation, a byte-order mark: a
#: plain case so copied was no longer seen as one, thirty-second hostile trial AF6); such a meta.json is parsed.
_DOSEALIGN_META_LOOSE = re.compile(rb'\A(?:\xef\xbb\xbf)?\s*\{\s*"dosealign_version"\s*:')

#: How many levels below OUT an export looks for what must not be shared with it (a key, a map, an identifying
#: export), and how many levels of folders above OUT it reads as exports.
NESTED_LEVELS = 3


def is_case_meta(path: Path) -> bool:
    """Whether ``path`` is a meta.json DoseAlign wrote, by how it begins (only a regular file's first bytes are
    read)."""
    try:
        with open_regular(path) as handle:
            return bool(_DOSEALIGN_META_LOOSE.match(handle.read(4096)))
    except OSError:
        return False


def _too_many(where: Path, most: float, what: str) -> LimitError:
    return LimitError(
        f"holds more than {most:.0f} entries {what}, more than are looked through for a pseudonym key or map, or "
        "another export, that would be shared with this one",
        path=where,
        hint="choose an output folder elsewhere, or raise DOSEALIGN_OUT_ENTRIES; nothing was written",
    )


def entries_below(out_dir: Path, levels: int = NESTED_LEVELS) -> Iterator[tuple]:
    """``(entry, level)`` for each entry of ``out_dir`` (level 0) and of its folders ``levels - 1`` deep, breadth
    first, by name. Links to folders are followed, as a copy or an archive of OUT follows them (each folder once;
    thirty-first hostile trial AE3); DoseAlign's case folders' own folders (``masks``, ``openkbp``) are not gone
    into (a big cohort's masks filled the bound: AE5, AE10); unreadable folders are passed. Raises
    :class:`LimitError` beyond ``DOSEALIGN_OUT_ENTRIES`` entries: a look cut short must not answer "nothing there"
    (thirtieth hostile trial AD2)."""
    most, seen = limit("DOSEALIGN_OUT_ENTRIES"), 0
    pending, visited = deque([(Path(out_dir), 0)]), set()
    top = os.path.realpath(out_dir)
    while pending:
        folder, level = pending.popleft()
        entries = []
        if level:  # (a folder that holds OUT, reached through a link to /, or one of the kernel's: not read)
            real = os.path.realpath(folder)
            if is_system_folder(real) or top.startswith(real.rstrip(os.sep) + os.sep):
                continue
        try:
            status = os.stat(folder)
            if (status.st_dev, status.st_ino) in visited:
                continue
            visited.add((status.st_dev, status.st_ino))
            with os.scandir(folder) as listing:
                for entry in listing:
                    seen += 1
                    if seen > most:
                        raise _too_many(Path(out_dir), most, f"within {levels} levels")
                    entries.append(entry)
        except OSError:
            continue
        entries.sort(key=lambda e: e.name)
        a_case = level >= 1 and any(e.name == "meta.json" and is_case_meta(Path(e.path)) for e in entries)
        for entry in entries:
            if _into_the_system(entry):  # a link into /proc, /sys or /dev: neither listed nor read (AL8)
                continue
            yield entry, level
            # a case folder's own folders are DoseAlign's; any other in it is a user's, gone into (a plain case
            # folder dropped into a pseudonymized one: thirty-fifth hostile trial AI8)
            owned = a_case and entry.name in CASE_FOLDERS
            if not owned and level + 1 < levels and _is_folder(entry):
                pending.append((Path(entry.path), level + 1))


def _into_the_system(entry) -> bool:
    """Whether a directory entry is a link into /proc, /sys or /dev: the look below a pseudonymized OUT opened every
    file of /proc/self through one (thirty-eighth hostile trial AL8)."""
    try:
        return entry.is_symlink() and is_system_folder(os.path.realpath(entry.path))
    except OSError:
        return True


def _is_folder(entry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


#: The name of a case folder: every case id ends in 8 hex digits of its doses' paths (link/cases.py).
_CASE_NAME = re.compile(r".+_[0-9a-f]{8}")
#: At most this many of a manifest's first rows tell its kind (an export's rows are of one kind).
_ROWS_TOLD = 10


def _manifest_kinds(path: Path) -> Optional[set]:
    """The kinds of cases (plain, pseudonymized) a DoseAlign manifest or shard manifest at ``path`` lists in its
    first :data:`HEAD_BYTES`: each row's case folder beside it tells by its meta.json, else the case id's shape (a
    plain id may read as a pseudonym: thirty-second hostile trial AF1, AF2). Only the head is read (every manifest
    within three levels is, and 100 links to one of 50 MB held an export 319 s: thirty-first AE16); a row's first
    cell is enough (a first row of 100 kB: AF4). None when it is no DoseAlign manifest."""
    try:
        with open_regular(path) as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return None
    # as DoseAlign writes it, or as a spreadsheet saves it again (a byte-order mark, every field quoted, ";"
    # between them: thirty-fourth hostile trial AH7)
    # (and with a Mac's CR line ends, tabs, or in UTF-16: thirty-fifth hostile trial AI4)
    encoding = "utf-16" if head[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    text = head.decode(encoding, "replace").replace("\r\n", "\n").replace("\r", "\n")
    first = text.split("\n", 1)[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first), ",")
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except csv.Error:
        return None
    if not rows or [cell.strip() for cell in rows[0][:2]] != ["case_id", "status"]:
        return None
    rows = rows[1:]
    kinds = set()
    for row in rows[:_ROWS_TOLD]:
        if len(row) < 2 or not row[0]:  # (the last row, cut short before its first comma)
            continue
        flag = None
        if row[0] not in (".", "..") and "/" not in row[0] and "\0" not in row[0]:
            flag, _key = meta_pseudonymization(path.parent / row[0] / "meta.json")
        if flag is None:
            flag = bool(PSEUDONYMOUS_ID.fullmatch(row[0]))
        kinds.add("pseudonymized" if flag else "plain")
    if not kinds and len(head) == HEAD_BYTES:  # not one case id in the head: taken for plain, as unreadable
        kinds.add("plain")
    return kinds


def export_kinds(folder: Path, wanted: Optional[str] = None) -> set:
    """What DoseAlign export ``folder`` holds: ``{"plain"}``, ``{"pseudonymized"}``, both, ``{"export"}`` (an export
    of no case yet), or nothing. Told by its manifest.csv or its shard manifests (``--shard`` jobs not merged yet),
    and else by its case folders' meta.json where it holds nothing but DoseAlign's (an export stopped before its
    manifest: thirty-first hostile trial AE1, AE2; one case folder copied into a home folder makes no export of it:
    thirty-second AF5). It stops reading case folders once it holds ``wanted`` ("plain", "pseudonymized", or
    "export": any). Beyond ``DOSEALIGN_OUT_ENTRIES`` entries a folder that holds anything else is told by its
    manifest.csv alone (its shard manifests are not looked for); one of case folders alone raises
    :class:`LimitError` (the answer would be a guess)."""
    folder = Path(folder)
    kinds: set = set()
    exported, foreign, folders = False, False, []
    most, seen = limit("DOSEALIGN_OUT_ENTRIES"), 0
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                seen += 1
                if seen > most:
                    if not foreign:  # (an export of that many case folders: too many to read)
                        raise _too_many(folder, most, "(a folder above the output folder, read for an export)")
                    # a folder of anything is an export by its manifest alone, whose own name is looked up (a home
                    # folder of many files refused every plain export below it: thirty-sixth hostile trial AJ23)
                    if not exported and (folder / "manifest.csv").is_file():
                        found = _manifest_kinds(folder / "manifest.csv")
                        exported = found is not None
                        kinds |= found or set()
                    break
                name = entry.name
                if name == "manifest.csv" or SHARD_MANIFEST.fullmatch(name):
                    found = _manifest_kinds(Path(entry.path))
                    exported = exported or found is not None
                    kinds |= found or set()
                elif name.startswith(".") or name in OWN_FILES or SHARD_SETTINGS.fullmatch(name):
                    continue
                elif not foreign and _CASE_NAME.fullmatch(name) and _is_folder(entry):
                    folders.append(Path(entry.path))
                else:  # (then no sub-folder is opened: a dead network mount beside OUT hung every export below)
                    foreign = True
    except OSError:
        pass
    if not exported and not foreign:  # a folder of case folders alone, if they are DoseAlign's
        foreign = not all(is_case_meta(case / "meta.json") for case in folders)
    if not kinds and (exported or not foreign):  # (a manifest's rows tell it without reading every case)
        for case in folders:
            if kinds >= {"plain", "pseudonymized"} or wanted in kinds or wanted == "export" and kinds:
                break
            flag, _key = meta_pseudonymization(case / "meta.json")
            if flag is not None:
                kinds.add("pseudonymized" if flag else "plain")
    return kinds or ({"export"} if exported else set())


def nested_conflict(out_dir: Path, pseudonymized: bool) -> Optional[str]:
    """Why an export must not write into ``out_dir`` for what lies around it, None when it may: a plain export
    inside a pseudonymized export's folder (any folder above, as given or with links resolved), and a pseudonymized
    export above a plain export or case folder (:data:`NESTED_LEVELS` down). What is shared holds the folders
    below it (thirtieth hostile trial AD5; OUT's own entries are :func:`pseudonymization_conflict`'s)."""
    out_dir = Path(out_dir)
    if not pseudonymized:
        linked = _linked_pseudonymized_cases(out_dir)
        if linked:  # (a link is no case of OUT, but what it shows is shared with OUT: thirty-fourth trial AH1)
            return (
                f"it holds a link to a pseudonymized case folder: {some_names(linked)}; a plain export would put "
                "identifying outputs beside it (add --pseudonymize, with the same key)"
            )
        given = Path(os.path.abspath(out_dir))
        resolved = Path(os.path.realpath(out_dir))
        for folder in dict.fromkeys([*given.parents, *resolved.parents]):
            if "pseudonymized" in export_kinds(folder, wanted="pseudonymized"):
                return (
                    f"it lies inside {folder}, a pseudonymized export's output folder, which is meant to be shared: "
                    "a plain export there would be shared with it (add --pseudonymize, with its key, or choose a "
                    "folder outside it)"
                )
        return None
    dead = set(dead_claims(out_dir)) if out_dir.is_dir() else set()  # (their entries this run removes)
    for entry, level in entries_below(out_dir):
        if _is_plain_content(entry, level, dead):
            where = Path(entry.path).parent.relative_to(out_dir).as_posix()
            return (
                f"it holds a plain (not pseudonymized) export in {where}; a pseudonymized export above it would be "
                "shared with the identifying outputs"
            )
        if level >= 1 and _is_dicom_file(entry):  # (OUT's own DICOM files: inspect_output's)
            where = Path(entry.path).relative_to(out_dir).as_posix()
            return (
                f"it holds DICOM files ({where}); a pseudonymized export above them would be shared with their "
                "identifying headers"
            )
    return None


#: The endings of the files DoseAlign writes and of common files that are no DICOM: their first bytes are not read.
_NOT_DICOM = (
    ".npz",
    ".npy",
    ".json",
    ".csv",
    ".png",
    ".html",
    ".h5",
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".txt",
    ".md",
    ".pdf",
    ".jpg",
    ".jpeg",
    ".zip",
    ".gz",
    ".py",
    ".log",
    ".xml",
    ".key",
    ".owner",
)


def _is_dicom_file(entry) -> bool:
    """Whether a directory entry below OUT is a DICOM file: by its name (``.dcm``, ``DICOMDIR``), or by the preamble
    of a regular file of another name (UIDs as names: ``1.2.840....5``). A copy of the input's files below OUT was
    shared with a pseudonymized export, every header identifying (thirty-sixth hostile trial AJ6)."""
    name = entry.name.lower()
    if name.endswith(_NOT_DICOM) or name.startswith("."):
        return False
    try:
        if not entry.is_file():
            return False
    except OSError:
        return False
    if name.endswith((".dcm", ".dicom", ".ima")) or name == "dicomdir":
        return True
    try:
        with open_regular(Path(entry.path)) as handle:
            head = handle.read(132)
    except OSError:
        return False
    # the preamble, or a data set without it as older exports write them (thirty-eighth hostile trial AL6)
    return head[128:] == b"DICM" or surely_a_data_set(head)


def leftover_conflict(out_dir: Path, stuck: list, pseudonymized: bool, key: Optional[str] = None) -> Optional[str]:
    """Why an export must not write beside ``stuck``, ``(name, reason)`` of the dead runs' temporary entries in
    ``out_dir`` that could not be removed (an immutable file in them), None when it may. :func:`nested_conflict`
    passes over a dead run's entries, as the run removes them before it writes; one that stays, stays beside this
    export (thirty-fifth hostile trial AI6). A pseudonymized export (of key fingerprint ``key``) takes none that is
    plain, of another key, or of a kind that cannot be told (a temporary report.html, a case folder whose meta.json
    is gone: thirty-sixth AJ9); a plain export none that is pseudonymized (AJ1)."""
    for name, reason in stuck:
        path = Path(out_dir) / name
        if path.is_symlink():  # (a link is removed, never followed: what it shows is not OUT's)
            continue
        kind, its_key = _leftover_kind(path)
        if kind == "unknown":  # its run's owner record tells (a case folder whose meta.json went first: AL10)
            token = name[len(RUN_PREFIX) :][:16]
            recorded = claim_details(out_dir, token).get("pseudonyms") if is_run_entry(name) else None
            if recorded == "none":
                kind = "plain"
            elif isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{16}", recorded):
                kind, its_key = "pseudonymized", recorded
        if pseudonymized and kind == "pseudonymized" and key and its_key and its_key != key:
            what = f"a pseudonymized case made with another key (key fingerprint {its_key})"
        elif pseudonymized and kind != "pseudonymized" and kind != "empty":
            what = (
                "plain (not pseudonymized) outputs" if kind == "plain" else "outputs that cannot be told pseudonymized"
            )
        elif not pseudonymized and kind == "pseudonymized":
            what = "a pseudonymized case or manifest"
        else:
            continue
        beside = "a pseudonymized export" if pseudonymized else "a plain export"
        return (
            f"it holds {what} that an earlier DoseAlign run left and that could not be removed: {name} ({reason}); "
            f"{beside} beside it would be shared with it"
        )
    return None


def _leftover_kind(path: Path) -> tuple:
    """``(kind, key fingerprint)`` of a dead run's temporary entry: ``pseudonymized``, ``plain``, ``empty`` or
    ``unknown``; a case folder by its meta.json, a manifest by its rows."""
    if path.is_dir():
        flag, key = meta_pseudonymization(path / "meta.json")
        if flag is None:
            return ("unknown" if _holds_anything(path) else "empty"), None
        return ("pseudonymized" if flag else "plain"), key
    try:
        if path.stat().st_size == 0:
            return "empty", None
    except OSError:
        return "unknown", None
    kinds = _manifest_kinds(path) if "manifest" in path.name else None
    if kinds == {"pseudonymized"}:
        return "pseudonymized", None
    return ("plain" if kinds and "plain" in kinds else "unknown"), None


def _holds_anything(folder: Path) -> bool:
    """Whether ``folder`` has an entry; True when it cannot be listed (what it holds cannot be told)."""
    try:
        with os.scandir(folder) as listing:
            return next(listing, None) is not None
    except OSError:
        return True


def _linked_pseudonymized_cases(out_dir: Path) -> list:
    """The names of OUT's top-level links to a pseudonymized case folder."""
    try:
        entries = sorted(os.scandir(out_dir), key=lambda e: e.name)
    except OSError:
        return []
    found, told = [], {}
    for entry in entries:
        if not entry.is_symlink():
            continue
        meta = Path(entry.path) / "meta.json"
        try:  # each folder read once, however many links show it (sixty to one 30 MB meta.json: thirty-fifth AI7)
            status = os.stat(meta)
            flag = told.setdefault((status.st_dev, status.st_ino), meta_pseudonymization(meta)[0])
        except OSError:
            flag = None
        # named as a pseudonym, its meta.json gone, as a case folder in OUT is told (AI3)
        named = PSEUDONYMOUS_ID.fullmatch(entry.name) and os.path.isfile(Path(entry.path) / "pair.npz")
        if flag or flag is None and named:
            found.append(entry.name)
    return found


def _is_plain_content(entry, level: int, dead: frozenset = frozenset()) -> bool:
    """Whether a directory entry found ``level`` folders below OUT marks a plain export in its folder: a DoseAlign
    manifest or shard manifest of plain case ids, or a case folder's plain meta.json (at OUT's top, a case folder
    under a hidden name too: thirty-first hostile trial AE4)."""
    if level >= 1 and (entry.name == "manifest.csv" or SHARD_MANIFEST.fullmatch(entry.name)):
        return "plain" in (_manifest_kinds(Path(entry.path)) or set())
    parent = Path(entry.path).parent
    if level == 1 and is_run_entry(parent.name) and parent.name[len(RUN_PREFIX) :][:16] in dead:
        # a dead run's temporary case folder in OUT: this run removes it (a killed plain export's refused the next
        # --pseudonymize: thirty-second trial AF7); any other is read, one further down (thirty-third AG3) or of a
        # run not known dead (a container's gone run, no owner record: thirty-fourth AH2)
        return False
    # OUT's own case folders are read by inspect_output already (a big cohort's meta.json once, not twice), but not
    # those under a hidden name (AE4) nor links (inspect_output takes no link for a case: thirty-fourth AH1)
    if entry.name == "meta.json" and (
        level >= 2 or level == 1 and (parent.name.startswith(".") or parent.is_symlink())
    ):
        return meta_pseudonymization(Path(entry.path))[0] is False
    if entry.name in ("pair.npz", "ct.npy") and level >= 1 and meta_pseudonymization(parent / "meta.json")[0] is None:
        # (gone, or unreadable: empty, cut short; thirty-fifth hostile trial AI2)
        # a case folder whose meta.json is gone is plain unless named as a pseudonym, below OUT as in it (AG1; at
        # any depth: thirty-fourth hostile trial AH6); a folder of another name is a user's
        return bool(_CASE_NAME.fullmatch(parent.name)) and not PSEUDONYMOUS_ID.fullmatch(parent.name)
    return False
