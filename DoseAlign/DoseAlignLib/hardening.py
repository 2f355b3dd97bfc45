"""Guards of a batch export against hostile inputs and hostile output folders.

* :func:`damaged_file_rows`: a file that is DICOM (preamble ``DICM`` or a ``.dcm`` name) but cannot
  be read or says nothing usable about itself gets a failed manifest row naming the file and the
  tag, so that a truncated dose never just disappears from the batch.
* :func:`check_output_folder`: the output folder can be created and written, or the command stops
  at once with the reason (exit code 2), instead of failing every case one by one.
* :func:`check_overlap`: a dose grid that lies wholly outside its CT is refused (its output would
  be all zero), naming the dose file and ImagePositionPatient.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
import warnings
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np
from pydicom.datadict import keyword_for_tag
from pydicom.filereader import read_partial
from pydicom.tag import Tag

from .errors import DoseAlignError, GeometryError

DAMAGED_PREFIX = "damaged-file"
#: File names that are DICOM even without the 128-byte preamble.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
TAG_PATTERN = re.compile(r"\([0-9A-F]{4},[0-9A-F]{4}\)")


def looks_like_dicom(path: Path) -> bool:
    """A DICOM Part 10 preamble, or a DICOM file name."""
    path = Path(path)
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def damaged_file_rows(scan) -> list:
    """Failed manifest rows for the DICOM files of a scan that could not be used.

    Files that are not DICOM at all (notes, pictures) are left out: ``dosealign scan`` lists them.
    """
    rows = []
    for rel, reason in scan.skipped:
        if not looks_like_dicom(Path(scan.root) / rel):
            continue
        stem = PurePosixPath(rel).stem
        digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8]
        safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-.")[:40] or "file"
        if not TAG_PATTERN.search(reason):
            reason = f"{reason}; {locate_damage(Path(scan.root) / rel)}"
        rows.append(
            {
                "case_id": f"{DAMAGED_PREFIX}_{safe}_{digest}",
                "status": "failed",
                "reason": f"{rel}: {reason} (export the file again, or remove it from the input folder)",
                "patient": "",
                "summation_type": "",
                "files": rel,
                "ct_folder": "",
            }
        )
    return rows


def locate_damage(path: Path) -> str:
    """Where reading a damaged DICOM file stops, naming the tag."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
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
        with open(path, "rb") as handle, warnings.catch_warnings():
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


def relative_reason(row: dict, input_root: Path) -> dict:
    """The row with the input root cut from the paths in its reason: files are named as in meta.json."""
    reason = str(row.get("reason") or "")
    for root in {str(Path(input_root)), str(Path(input_root).absolute())}:
        reason = reason.replace(root.rstrip("/") + "/", "")
    return {**row, "reason": reason} if reason != row.get("reason") else row


def check_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and prove it writable; raise a :class:`DoseAlignError` otherwise."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DoseAlignError("the output path exists and is not a folder", path=out_dir, hint="choose a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DoseAlignError(
            f"cannot create the output folder: {error.strerror or error}",
            path=out_dir,
            hint="choose a folder you can write to",
        ) from None
    probe = out_dir / f".tmp-write-test-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"dosealign")
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise DoseAlignError(
            f"cannot write to the output folder: {error.strerror or error}",
            path=out_dir,
            hint="make it writable or choose another folder; nothing was exported",
        ) from None


def check_overlap(ct_grid, dose_grid, dose_path: Optional[Path]) -> None:
    """The dose grid must reach the CT: a dose wholly outside it would export as zeros."""
    extent = dose_grid.extent_in(ct_grid)  # rows i, j, k: (lo, hi) in CT index space
    sizes = np.array([ct_grid.shape[2], ct_grid.shape[1], ct_grid.shape[0]], dtype=float)
    lo = np.maximum(extent[:, 0], -0.5)
    hi = np.minimum(extent[:, 1], sizes - 0.5)
    if not np.all(np.isfinite(extent)) or np.any(hi <= lo):
        raise GeometryError(
            "the dose grid lies wholly outside the CT: its dose would be exported as zeros",
            path=dose_path,
            tag="(0020,0032) ImagePositionPatient",
            hint="the dose belongs to another CT, or its position is damaged",
        )
