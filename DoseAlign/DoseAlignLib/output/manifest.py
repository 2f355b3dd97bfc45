"""``manifest.csv``: one row per case (and per damaged input file), columns fixed first, extras after."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from .files import write_text_atomic

MANIFEST_COLUMNS = [
    "case_id",
    "status",
    "reason",
    "patient",
    "summation_type",
    "files",
    "ct_folder",
    "shape",
    "spacing",
    "reference",
    "interpolator",
    "dmax_gy",
    "warnings",
]


def write_manifest(out_dir: Path, rows: list, name: str = "manifest.csv") -> Path:
    """Write ``manifest.csv`` (rows are dicts keyed by MANIFEST_COLUMNS, extra keys appended)."""
    columns = list(MANIFEST_COLUMNS)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    path = Path(out_dir) / name
    write_text_atomic(path, buffer.getvalue())
    return path


def manifest_row(case, status: str, reason: str = "", meta: Optional[dict] = None) -> dict:
    """The manifest row of a case; geometry columns come from its meta.json when it has one."""
    row = {
        "case_id": case.case_id,
        "status": status,
        "reason": reason,
        "patient": case.patient_id,
        "summation_type": case.summation_type,
        "files": ";".join(case.dose_files),
        "ct_folder": (case.ct.folder or ".") if case.ct is not None else "",
    }
    if meta:
        row.update(
            {
                "shape": "x".join(str(n) for n in meta["shape"]),
                "spacing": "x".join(f"{s:.6g}" for s in meta["spacing"]),
                "reference": meta["resampling"]["reference"],
                "interpolator": meta["resampling"]["interpolator"],
                "dmax_gy": f"{meta['dose']['max_gy_output']:.6g}",
                "warnings": " | ".join(meta.get("warnings", [])),
            }
        )
        row.update(meta.get("manifest_extra", {}))
    return row


def _cell(value) -> str:
    if value is None:
        return ""
    return str(value).replace("\n", " ")


def relative_reason(row: dict, input_root: Path) -> dict:
    """The row with the input root cut from the paths in its reason: files are named as in meta.json."""
    reason = str(row.get("reason") or "")
    for root in {str(Path(input_root)), str(Path(input_root).absolute())}:
        reason = reason.replace(root.rstrip("/") + "/", "")
    return {**row, "reason": reason} if reason != row.get("reason") else row
