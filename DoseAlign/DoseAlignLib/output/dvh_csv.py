"""``dvh.csv`` of a case: the reference DVH of each ROI, cumulative, one row per ROI and dose.

Columns ``roi, dose_gy, volume_cc, volume_pct``: the volume of the ROI receiving at least ``dose_gy``
(cm^3 and % of the ROI's reference volume), on the dose axis of pair.npz (``dvh_dose_gy``), each
ROI's rows ending at the first dose no part of it receives. How the curves were made is in
meta.json (``audit.reference_dvh``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

COLUMNS = ("roi", "dose_gy", "volume_cc", "volume_pct")


def dvh_csv_text(result) -> str:
    """The text of dvh.csv for a case result ("" when it has no reference DVH)."""
    curves = result.extra_arrays.get("dvh_reference")
    bins = result.extra_arrays.get("dvh_dose_gy")
    if curves is None or bins is None:
        return ""
    volumes = {
        e["name"]: e["reference"]["points"].get("volume_cc")
        for e in (result.meta.get("audit") or {}).get("rois", [])
        if e.get("reference")
    }
    names = (result.meta.get("structures") or {}).get("names") or []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for name, curve in zip(names, curves):
        total = volumes.get(name)
        if not total:
            continue
        zero = np.flatnonzero(curve <= 0)
        stop = int(zero[0]) + 1 if zero.size else curve.size
        for dose, volume in zip(bins[:stop], curve[:stop]):
            writer.writerow(
                (name, f"{float(dose):.5g}", f"{float(volume):.6g}", f"{100.0 * float(volume) / total:.5g}")
            )
    return out.getvalue()


def write_dvh_csv(folder: Path, result) -> None:
    """Write ``folder/dvh.csv`` when the case has reference DVHs."""
    text = dvh_csv_text(result)
    if text:
        (Path(folder) / "dvh.csv").write_text(text.replace("\x00", "\\x00"), encoding="utf-8")  # CSV holds no NUL
