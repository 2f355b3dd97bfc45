"""Write case outputs and the manifest atomically: a case folder appears whole or not at all.

Layout (the output contract, see README):
``OUT/<case_id>/pair.npz`` (ct, dose and further arrays, axes k, j, i) and ``OUT/<case_id>/meta.json``;
``OUT/manifest.csv`` one row per case.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .npz import NpzStream

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
TEMP_PREFIX = ".tmp-"


def case_dir(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / case_id


def is_complete(out_dir: Path, case_id: str) -> bool:
    """True when the case's folder holds its outputs (folders only appear complete)."""
    folder = case_dir(out_dir, case_id)
    return (folder / "meta.json").is_file() and (folder / "pair.npz").is_file()


def write_case_output(result, out_dir: Path, extra_files: Sequence[Callable[[Path], None]] = ()) -> Path:
    """Write ``pair.npz`` and ``meta.json`` of a :class:`CaseResult` into ``out_dir/<case_id>``.

    The files go into a temporary folder that is renamed into place at the end; an existing
    output of the same case is replaced only then. Each of ``extra_files`` is called with the
    temporary folder to add its files there (e.g. qa.png), while pair.npz is written; it may
    still update ``result.meta`` but must not change the arrays.
    """
    return CaseOutput(out_dir).finish(result, extra_files)


class CaseOutput:
    """One case's output folder in the making: ``pair.npz`` is written while the case is computed.

    Give :func:`.pipeline.run_case` :meth:`add_array` as its ``sink``: the CT and the dose are
    written as soon as each is final. :meth:`finish` adds the rest and renames the temporary
    folder into place; :meth:`discard` (or a failing ``finish``) removes it.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # no case id in the name: the id may still be pseudonymized
        self.temp = self.out_dir / f"{TEMP_PREFIX}case-{uuid.uuid4().hex[:12]}"
        self.temp.mkdir()
        self._npz = NpzStream(self.temp / "pair.npz", leading=("ct", "dose"))  # reproducible bytes, see npz.py
        self._added: dict = {}

    def add_array(self, name: str, array: np.ndarray) -> None:
        self._added[name] = array
        self._npz.add(name, array)

    def finish(self, result, extra_files: Sequence[Callable[[Path], None]] = ()) -> Path:
        try:
            arrays = {"ct": result.ct.array, "dose": result.dose.array, **result.extra_arrays}
            for name, array in arrays.items():
                if name not in self._added:
                    self.add_array(name, array)
                elif self._added[name] is not array:
                    raise ValueError(f"{name}: the array written early is not the result's")
            try:
                for write_extra in extra_files:  # beside the pair.npz writer (mostly I/O, outside the GIL)
                    write_extra(self.temp)
            finally:
                self._npz.close()
            (self.temp / "meta.json").write_text(json_text(result.meta), encoding="utf-8")
            final = case_dir(self.out_dir, result.case_id)
            _replace_dir(self.temp, final)
        except BaseException:
            self.discard()
            raise
        return final

    def discard(self) -> None:
        self._npz.abort()
        shutil.rmtree(self.temp, ignore_errors=True)


def _replace_dir(temp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f"{TEMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(temp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, final)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


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


def clean_temp(out_dir: Path) -> list:
    """Remove temporary folders and files a killed run left behind; return their names."""
    removed = []
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return removed
    for entry in out_dir.iterdir():
        if entry.name.startswith(TEMP_PREFIX):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _cell(value) -> str:
    if value is None:
        return ""
    return str(value).replace("\n", " ")


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
