"""Damaged DICOM files: each gets a failed manifest row naming the file and where reading stops.

A file that is DICOM (preamble ``DICM`` or a ``.dcm`` name) but cannot be read or says nothing
usable about itself gets a failed row naming the file and the tag, so that a truncated dose never
just disappears from the batch. Files that are not DICOM at all are only listed by the scan.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from pathlib import Path, PurePosixPath

from pydicom.datadict import keyword_for_tag
from pydicom.filereader import read_partial
from pydicom.tag import Tag

from ..limits import open_regular

DAMAGED_PREFIX = "damaged-file"
UNREADABLE_PREFIX = "unreadable"
#: File names that are DICOM even without the 128-byte preamble.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
TAG_PATTERN = re.compile(r"\([0-9A-F]{4},[0-9A-F]{4}\)")


def looks_like_dicom(path: Path) -> bool:
    """A DICOM Part 10 preamble, or a DICOM file name (regular files only: a pipe is never opened)."""
    path = Path(path)
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open_regular(path) as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def damaged_file_rows(scan) -> list:
    """Failed manifest rows for the DICOM files of a scan that could not be used, and for every folder
    or file that could not be read at all (it may hold a case's slices: nothing unread goes unsaid).

    Files that are not DICOM at all (notes, pictures) are left out: ``dosealign scan`` lists them.
    """
    rows = []
    unreadable = dict(getattr(scan, "unreadable", []))
    limited = set(getattr(scan, "limited", ()))
    paths = getattr(scan, "paths", {})
    for rel, reason in scan.skipped:
        path = paths.get(rel, Path(scan.root) / rel)
        if rel in unreadable or not _regular(path) or not looks_like_dicom(path):
            continue
        # a file a limit refused is not read again to locate damage: that reading would be unbounded (eleventh
        # hostile trial K4: 3.8 GB and 215 s for a file the scan had refused within its limits)
        if not TAG_PATTERN.search(reason) and rel not in limited:
            reason = f"{reason}; {locate_damage(path)}"
        rows.append(_row(DAMAGED_PREFIX, rel, f"{reason} (export the file again, or remove it from the input folder)"))
    for rel, reason in sorted(unreadable.items()):
        what = "folder" if rel.endswith("/") else "file"
        rows.append(
            _row(
                UNREADABLE_PREFIX,
                rel,
                f"{reason}: the cases below the input may lack what this {what} holds "
                f"(make it readable and export again)",
            )
        )
    return rows


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _row(prefix: str, rel: str, reason: str) -> dict:
    stem = PurePosixPath(rel.rstrip("/")).stem
    digest = hashlib.sha1(rel.encode("utf-8", "backslashreplace")).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-.")[:40] or "file"
    return {
        "case_id": f"{prefix}_{safe}_{digest}",
        "status": "failed",
        "reason": f"{rel}: {reason}",
        "patient": "",
        "summation_type": "",
        "files": rel,
        "ct_folder": "",
    }


def locate_damage(path: Path) -> str:
    """Where reading a damaged DICOM file stops, naming the tag."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open_regular(path) as handle:
            head = handle.read(132)
    except OSError as error:
        return f"it cannot be opened: {error.strerror or error}"
    if head[128:132] != b"DICM":
        if size < 132:
            return (
                f"the file is {size} bytes long: it ends before the DICOM header and its (0002,0010) TransferSyntaxUID"
            )
        return "no 'DICM' preamble at byte 128: no file meta, (0002,0010) TransferSyntaxUID missing"
    tags: list = []

    def record(tag, _vr, _length) -> bool:
        tags.append(Tag(tag))
        return False

    try:
        with open_regular(path) as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_partial(handle, stop_when=record, force=True)
    except Exception as error:
        where = _tag_name(tags[-1]) if tags else "(0002,0000) FileMetaInformationGroupLength (the file meta)"
        return f"reading stops at {where}: {type(error).__name__}"
    if tags:
        return f"the data set ends after {_tag_name(tags[-1])} (the file is {size} bytes long)"
    return "the data set is empty after (0002,0000) FileMetaInformationGroupLength (the file meta)"


def _tag_name(tag) -> str:
    return f"({tag.group:04X},{tag.element:04X}) {keyword_for_tag(tag) or 'private tag'}"
