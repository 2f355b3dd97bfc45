"""The Nelms table of issue 16: DVH points against the analytic values, n / failures at 3 % / worst error.

    python Testing/Python/nelms_table.py export OUT_FOLDER       # an export's meta.json audit (before)
    python Testing/Python/nelms_table.py reference               # the reference DVH (after)
    python Testing/Python/nelms_table.py reference --between slab   # the reference DVH under the slab rule

``export`` reads every case folder of a ``dosealign export`` of ../shared/data/nelms-dvh-phantom and
compares the DVH points meta.json reports per ROI (``audit.rois[].output``: on the output grid, the
CT's; ``.native``: on the dose grid; ``.reference.points``: the reference DVH) with :mod:`nelms_analytic`. ``reference`` computes the
reference DVH of every structure of every CT (1, 2, 3 mm) with every dose grid (1, 2, 3 mm, both
gradients) from the contours and the native dose; the slab thickness is the structure's own CT step.

Both print Markdown tables, per metric and grid: ``n / failures / worst %``, against the analytic
values of the ``capped`` reading (the published convention) and of the ``slab`` reading (the solid
the contours define under the engine's rule); see :mod:`nelms_analytic`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "DoseAlign"))
sys.path.insert(0, str(HERE))

from nelms_analytic import ALL_KEYS, analytic_points, fit_shape, shape_from_name  # noqa: E402

PHANTOM = HERE.parents[2] / "shared" / "data" / "nelms-dvh-phantom"
LIMIT_PCT = 3.0
CONVENTIONS = ("capped", "slab")


def _fit(path: Path, thickness: float):
    from DoseAlignLib.dicom.rtstruct import read_structure_set

    rois = [r for r in read_structure_set(path, plane_normal=[0, 0, 1]) if r.skipped is None]
    if len(rois) != 1:
        raise ValueError(f"{path.name}: expected one ROI with contours, found {len(rois)}")
    return rois[0], fit_shape(rois[0], thickness).shape


def rows_from_export(folder: Path, phantom: Path = PHANTOM) -> list:
    """One row per (case, ROI, grid): the grid's name, the field, the structure, got and analytic values."""
    rows = []
    for meta_path in sorted(Path(folder).glob("*/meta.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        dose_file = meta["source"]["rtdose_files"][0]
        field = "AntPost" if "AntPost" in dose_file else "SupInf"
        dose_mm = int(dose_file.split("_")[-2].rstrip("m"))
        thickness = float(meta["structures"]["slab_thickness_mm"])
        ct = meta["source"]["ct_files"][0].split("/")[1]
        sources = {r["name"]: r["source"] for r in meta["structures"]["rois"]}
        for entry in meta["audit"]["rois"]:
            source = phantom / sources[entry["name"]]
            _roi, shape = _fit(source, thickness)
            truth = {c: analytic_points(shape, field, c) for c in CONVENTIONS}
            for grid in ("output", "native", "reference"):
                got = (entry.get("reference") or {}).get("points") if grid == "reference" else entry[grid]
                if not got:
                    continue
                rows.append(
                    {
                        "grid": f"{grid} (dose {dose_mm} mm, {ct})",
                        "field": field,
                        "structure": source.stem,
                        "got": got,
                        "truth": truth,
                    }
                )
    return rows


def rows_from_reference(phantom: Path = PHANTOM, between: str = "interpolated") -> list:
    """Reference DVHs of the 45 structures of the 1, 2, 3 mm CTs with the 6 doses (``between``: how
    the reference DVH models the solid between contour planes)."""
    from DoseAlignLib.dicom.rtdose import read_rtdose
    from DoseAlignLib.structures.reference_dvh import reference_dvh

    structures = []
    for path in sorted((phantom / "STRUCTURES").glob("*.dcm")):
        named = shape_from_name(path.stem)
        if named["ct_mm"] < 1:
            continue  # the 0.2 mm CT is not in the set
        roi, shape = _fit(path, named["ct_mm"])
        structures.append((path.stem, named["ct_mm"], roi, shape))
    rows = []
    for dose_mm in (1, 2, 3):
        for field in ("AntPost", "SupInf"):
            dose = read_rtdose(phantom / "DOSE GRIDS" / f"Linear_{field}_{dose_mm}mm_Aligned.dcm")[0]
            for stem, ct_mm, roi, shape in structures:
                got = reference_dvh(roi, dose, ct_mm, between_planes=between).points
                truth = {c: analytic_points(shape, field, c) for c in CONVENTIONS}
                rows.append(
                    {
                        "grid": f"CT {ct_mm:g} mm, dose {dose_mm} mm",
                        "field": field,
                        "structure": stem,
                        "got": got,
                        "truth": truth,
                    }
                )
    return rows


def error_pct(got: dict, truth: dict, key: str):
    if got.get(key) is None or truth.get(key) in (None, 0):
        return None
    return 100.0 * (got[key] - truth[key]) / truth[key]


def summary(rows: list, convention: str) -> dict:
    """``{(grid, key): (n, failures, worst error %, where)}``."""
    out: dict = {}
    for row in rows:
        for key in ALL_KEYS:
            e = error_pct(row["got"], row["truth"][convention], key)
            if e is None:
                continue
            n, fails, worst, where = out.get((row["grid"], key), (0, 0, 0.0, ""))
            if abs(e) > abs(worst):
                worst, where = e, f"{row['structure']} {row['field']}"
            out[(row["grid"], key)] = (n + 1, fails + (abs(e) > LIMIT_PCT), worst, where)
    return out


def markdown(rows: list, convention: str) -> str:
    table = summary(rows, convention)
    grids = sorted({g for g, _ in table}, key=lambda g: (not g.startswith("output"), g))
    lines = ["| metric | " + " | ".join(grids) + " |", "|---|" + "---|" * len(grids)]
    for key in ALL_KEYS:
        cells = []
        for g in grids:
            n, fails, worst, _ = table.get((g, key), (0, 0, 0.0, ""))
            cells.append(f"{n} / {fails} / {worst:+.1f}")
        lines.append(f"| {key[:-3] if key.endswith('_gy') else key} | " + " | ".join(cells) + " |")
    totals = [sum(table[(g, k)][1] for k in ALL_KEYS if (g, k) in table) for g in grids]
    points = [sum(table[(g, k)][0] for k in ALL_KEYS if (g, k) in table) for g in grids]
    lines.append("| **all** | " + " | ".join(f"{p} / {f}" for p, f in zip(points, totals)) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    export = sub.add_parser("export")
    export.add_argument("folder", type=Path)
    reference = sub.add_parser("reference")
    reference.add_argument("--between", choices=("interpolated", "slab"), default="interpolated")
    args = parser.parse_args(argv)
    rows = rows_from_export(args.folder) if args.what == "export" else rows_from_reference(between=args.between)
    for convention in CONVENTIONS:
        print(f"\n### against the `{convention}` analytic values (n / failures at 3 % / worst error %)\n")
        print(markdown(rows, convention))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
