"""``manifest.csv``: one row per case (and per damaged input file), columns fixed first, extras after."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from ..errors import path_text, printable
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
#: The audit's summary columns (audit/flags.py ``manifest_columns``): every manifest has them, empty for
#: cases that failed, so that manifests of every run have the same columns.
AUDIT_COLUMNS = [
    "audit_flags",
    "dmax_native_gy",
    "dmax_output_gy",
    "dmax_diff_pct",
    "outside_integral_pct",
    "worst_dvh_delta_gy",
    "worst_dvh_roi",
    "n_rois",
    "beam_sum_max_diff_gy",
]


def parse_manifest(text: str) -> tuple:
    """``(columns, [(line number, row dict), ...])`` of a manifest's text, however long its fields.

    A field is as long as export wrote it: csv's default limit (128 KiB per field) is raised to the text's
    length for this reading (the file's size is bounded by whoever read it). Raises ``csv.Error``.
    """
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = list(reader.fieldnames or [])
        rows = [(reader.line_num, row) for row in reader]
    finally:
        csv.field_size_limit(limit)
    return columns, rows


def write_manifest(out_dir: Path, rows: list, name: str = "manifest.csv") -> Path:
    """Write ``manifest.csv`` (rows are dicts keyed by MANIFEST_COLUMNS and AUDIT_COLUMNS, which every
    manifest has, even with no row; other keys are appended)."""
    columns = MANIFEST_COLUMNS + AUDIT_COLUMNS
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
    return _with_meta(row, meta)


def row_from_meta(case_id: str, status: str, meta: dict, reason: str = "") -> dict:
    """The manifest row of a case folder known only by its meta.json (a case of another input in OUT)."""
    source = meta.get("source") or {}
    ct_files = source.get("ct_files") or []
    folders = {f.rsplit("/", 1)[0] if "/" in f else "." for f in ct_files}
    row = {
        "case_id": case_id,
        "status": status,
        "reason": reason,
        "patient": meta.get("patient_id", ""),
        "summation_type": (meta.get("dose") or {}).get("summation_type", ""),
        "files": ";".join(source.get("rtdose_files") or []),
        "ct_folder": folders.pop() if len(folders) == 1 else "",
    }
    return _with_meta(row, meta)


def _with_meta(row: dict, meta: Optional[dict]) -> dict:
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


def differs_from_meta(row: dict, meta: dict) -> list:
    """The columns of a manifest ``row`` that its case folder's meta.json says otherwise (the folder was exported
    again after the row was written): empty when the row describes the folder."""
    expected = _with_meta({}, meta)
    return sorted(key for key, value in expected.items() if _cell(value) != (row.get(key) or ""))


def _cell(value) -> str:
    if value is None:
        return ""
    return printable(str(value)).replace("\n", " ")


def relative_reason(row: dict, input_root: Path) -> dict:
    """The row with the input root cut from the paths in its reason: files are named as in meta.json."""
    reason = str(row.get("reason") or "")
    for root in {path_text(str(Path(input_root))), path_text(str(Path(input_root).absolute()))}:
        reason = reason.replace(root.rstrip("/") + "/", "")
    return {**row, "reason": reason} if reason != row.get("reason") else row
