"""The ``dosealign`` command: scan a DICOM-RT folder, export CT + dose on one grid, run the demo.

Exit codes: 0 all cases ok, 1 some case failed, 2 usage or input-folder errors.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

from . import api
from .api import (
    CustomBox,
    DoseAlignError,
    Interpolator,
    ReferenceGrid,
    options_from_args,
    parse_floats,
    parse_ints,
)


def _demo_spec():
    # a small head-and-neck-sized study: 2 mm pixels, 3 mm slices, a plan-like dose on an offset
    # 3 mm grid inside the CT, a PLAN dose and its three BEAM doses
    return api.PhantomSpec(
        ct_size=(128, 128, 48),
        ct_pixel_spacing=(2.0, 2.0),
        ct_slice_spacing=3.0,
        dose_size=(84, 64, 44),
        dose_pixel_spacing=(3.0, 3.0),
        dose_frame_spacing=3.0,
        dose_center_offset_lps=(4.3, -2.8, 1.4),
        dose_shape="plan",
        write_beam_doses=True,
    )


def _get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dosealign",
        description="Put DICOM CT, RTDOSE and structures on one voxel grid, geometry from the raw tags.",
    )
    parser.add_argument("--version", action="version", version=f"dosealign {api.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    scan = sub.add_parser("scan", help="list the cases an export would write and every object left out")
    scan.add_argument("input", type=Path, help="folder with DICOM files (searched recursively)")
    scan.set_defaults(func=_cmd_scan)

    export = sub.add_parser("export", help="export every case below INPUT into OUT")
    export.add_argument("input", type=Path, help="folder with DICOM files (searched recursively; never modified)")
    export.add_argument("output", type=Path, help="output folder (created; see README for the layout)")
    _add_align_options(export)
    add_format_arguments(export)
    export.add_argument("--resume", action="store_true", help="skip cases whose outputs are already complete")
    _add_pseudonym_options(export)
    scale = export.add_argument_group("scale")
    scale.add_argument(
        "--workers", type=int, default=None, help="cases exported in parallel processes (default: one per core)"
    )
    scale.add_argument(
        "--shard", metavar="K/N", help="export only the K-th of N deterministic parts (e.g. a Slurm array task)"
    )
    scale.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run cases on a Dask cluster: tcp://host:port, or 'local' for a LocalCluster on this machine",
    )
    export.add_argument("--quiet", action="store_true", help="no progress output")
    export.set_defaults(func=_cmd_export)

    merge = sub.add_parser("merge", help="combine the shard manifests of OUT into OUT/manifest.csv")
    merge.add_argument("output", type=Path)
    merge.set_defaults(func=_cmd_merge)

    demo = sub.add_parser("demo", help="write a synthetic DICOM-RT study to OUT/dicom and export it to OUT/export")
    demo.add_argument("output", type=Path)
    _add_align_options(demo)
    add_format_arguments(demo)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _add_pseudonym_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pseudonymization (see README)")
    group.add_argument(
        "--pseudonymize",
        action="store_true",
        help="outputs without PatientID, names, dates, folder names or (unless --keep-uids) UIDs: keyed pseudonyms",
    )
    group.add_argument(
        "--key-file",
        type=Path,
        metavar="K",
        help="secret key of the pseudonyms (created, mode 0600, if absent; default: OUT/../dosealign-pseudonym.key)",
    )
    group.add_argument("--keep-uids", action="store_true", help="keep the DICOM UIDs in meta.json (else keyed hashes)")
    group.add_argument(
        "--map-file",
        type=Path,
        metavar="M",
        help="local mapping pseudonym -> original (mode 0600; default: OUT/../<OUT name>.pseudonym-map.csv)",
    )


def _pseudonymizer(args: argparse.Namespace):
    """The export's Pseudonymizer (None without --pseudonymize); says where the key and map are."""
    if not getattr(args, "pseudonymize", False):
        if args.key_file or args.keep_uids or args.map_file:
            raise ValueError("--key-file, --keep-uids and --map-file go with --pseudonymize")
        return None
    pseudonymizer, key_path, map_path, created = api.make_pseudonymizer(
        args.output, args.key_file, args.keep_uids, args.map_file
    )
    state = "created" if created else "used"
    print(f"pseudonymized export: key {key_path} ({state}), map {map_path}; keep both out of what you share")
    if not api.key_is_private(key_path):
        print(f"warning: {key_path} is readable by other users (chmod 600 it)", file=sys.stderr)
    return pseudonymizer


def _add_align_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("alignment")
    group.add_argument(
        "--reference",
        choices=[r.value for r in ReferenceGrid],
        help="grid of the outputs: ct (dose onto CT, default), dose (CT onto dose), custom (see --spacing, --box; "
        "implied by --spacing, --box or --size)",
    )
    group.add_argument(
        "--interpolator",
        choices=[i.value for i in Interpolator],
        default="linear",
        help="as in Slicer's Resample CLI: linear (default), nn, bs (B-spline), ws (windowed sinc)",
    )
    group.add_argument("--spacing", type=parse_floats, help="custom grid spacing in mm: one value or i,j,k")
    group.add_argument(
        "--box",
        choices=[b.value for b in CustomBox],
        help="custom grid extent (default: the dose's; cube when --size is given)",
    )
    group.add_argument("--size", type=parse_ints, help="voxels of a --box cube: one value or i,j,k (default 128)")
    group.add_argument("--ct-fill", type=float, default=-1000.0, help="HU written outside the CT (default -1000)")
    group.add_argument("--ct-dtype", choices=["int16", "float32"], default="int16")
    group.add_argument("--allow-relative", action="store_true", help="export DoseUnits RELATIVE doses (not Gy)")
    qa = parser.add_argument_group("structures and audit")
    qa.add_argument("--no-structures", action="store_true", help="no ROI masks or DVHs (the dose audit still runs)")
    qa.add_argument(
        "--roi-map", type=Path, metavar="FILE", help='JSON {"PTV70": ["PTV_70", "ptv70"]}: ROI names to use'
    )
    qa.add_argument(
        "--fractional-masks",
        type=int,
        default=0,
        metavar="N",
        help="also store partial-volume masks from N x N x N sub-samples per voxel (N >= 2)",
    )
    qa.add_argument(
        "--rois",
        metavar="NAMES",
        help="fixed mask channels, e.g. PTV,CTV,SpinalCord (names after --roi-map, any case, in this order; "
        "a ROI a case lacks is an all-zero channel)",
    )
    qa.add_argument("--audit-thresholds", type=Path, metavar="FILE", help="JSON overriding audit flag thresholds")
    qa.add_argument("--no-qa-png", action="store_true", help="no qa.png picture per case")


def _formats(args: argparse.Namespace):
    """The --format choices, with every package they need checked before any case is computed."""
    formats = formats_from_args(args)
    formats.check()
    return formats


class _ProgressLine:
    """One updating line on a terminal, occasional plain lines otherwise (logs, CI)."""

    def __init__(self, stream=None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr  # looked up now: tests and notebooks replace sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet:
            return
        width = 28
        bar = "#" * int(round(fraction * width))
        line = f"[{bar:<{width}}] {fraction:4.0%} {message}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if fraction >= 1.0:
                self.stream.write("\n")
        elif fraction >= 1.0 or time.monotonic() - self.last > 2.0:
            self.stream.write(line + "\n")
            self.last = time.monotonic()
        self.stream.flush()


def _cmd_scan(args: argparse.Namespace) -> int:
    scan = api.scan_folder(args.input)
    linked = api.form_cases(scan)
    print(
        f"{args.input}: {len(scan.objects)} DICOM objects, {len(scan.ct_series)} CT series, {len(scan.skipped)} other files"
    )
    print(f"\nCases ({len(linked.cases)}):")
    for case in linked.cases:
        status = (
            "cannot export: " + case.error
            if case.error
            else f"CT {case.ct.folder or '.'} ({len(case.ct.slices)} slices)"
        )
        print(f"  {case.case_id}  [{case.summation_type}]  {', '.join(case.dose_files)}")
        print(f"      {status}")
        for note in case.notes:
            print(f"      - {note}")
        for path, reason in case.left_out:
            print(f"      - left out {path}: {reason}")
        if case.structs:
            print(
                f"      - structures: {', '.join(s.rel_path for s in case.structs[:5])}"
                + (" ..." if len(case.structs) > 5 else "")
            )
    if linked.orphans:
        print(f"\nNot part of any case ({len(linked.orphans)}):")
        for path, kind, reason in linked.orphans:
            print(f"  {kind} {path}: {reason}")
    if scan.duplicates:
        print(f"\nDuplicate SOPInstanceUIDs ({len(scan.duplicates)}):")
        for uid, paths, action in scan.duplicates:
            print(f"  {uid}: {', '.join(paths)} -> {action}")
    if scan.skipped:
        print(f"\nSkipped files ({len(scan.skipped)}):")
        for path, reason in scan.skipped:
            print(f"  {path}: {reason}")
    return 1 if any(c.error for c in linked.cases) else 0


def _cmd_export(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    formats = _formats(args)
    workers = api.default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    pseudonymizer = _pseudonymizer(args)
    report = api.export_folder(
        args.input,
        args.output,
        options,
        resume=args.resume,
        progress=_ProgressLine(quiet=args.quiet),
        workers=workers,
        shard=api.parse_shard(args.shard) if args.shard else None,
        scheduler=args.scheduler,
        qa_png=not args.no_qa_png,
        formats=formats,
        pseudonymizer=pseudonymizer,
    )
    _print_summary(report, args.output)
    return report.exit_code


def _cmd_merge(args: argparse.Namespace) -> int:
    import csv

    path = api.merge_shards(args.output)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"{len(rows)} cases ({len(failed)} failed) -> {path}")
    return 1 if failed else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    formats = _formats(args)
    dicom_dir = args.output / "dicom"
    export_dir = args.output / "export"
    truth = api.write_phantom(dicom_dir, _demo_spec())
    print(
        f"wrote a synthetic DICOM-RT study to {dicom_dir} ({len(truth.ct_files)} CT slices, {len(truth.dose_files)} RTDOSE)"
    )
    report = api.export_folder(
        dicom_dir,
        export_dir,
        options,
        progress=_ProgressLine(quiet=args.quiet),
        qa_png=not args.no_qa_png,
        formats=formats,
    )
    _print_summary(report, export_dir)
    return report.exit_code


def _print_summary(report, out_dir: Path) -> None:
    ok = [r for r in report.rows if r["status"] == "ok"]
    manifest = report.manifest or Path(out_dir) / "manifest.csv"
    print(
        f"{len(ok)} ok, {len(report.failed)} failed, {len(report.rows) - len(ok) - len(report.failed)} skipped -> {manifest}"
    )
    for row in report.rows:
        mark = "ok " if row["status"] == "ok" else row["status"]
        detail = f"{row.get('shape', '')} dmax {row.get('dmax_gy', '')} Gy" if row["status"] == "ok" else row["reason"]
        if row.get("audit_flags"):
            detail += f"  flags: {row['audit_flags']}"
        print(f"  {mark:7} {row['case_id']}: {detail}")
    for note in getattr(report, "notes", []):
        print(f"note: {note}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _get_parser()
    args = parser.parse_args(argv)
    # pydicom warns about every odd-but-readable value; the engine reports what matters itself
    warnings.filterwarnings("ignore", module="pydicom")
    try:
        return int(args.func(args))
    except ValueError as error:
        if isinstance(error, DoseAlignError):
            print(f"dosealign: {error}", file=sys.stderr)
        else:
            parser.error(str(error))
        return 2
    except DoseAlignError as error:
        print(f"dosealign: {error}", file=sys.stderr)
        return 2


def add_format_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--format`` options of ``dosealign export`` and ``demo``."""
    group = parser.add_argument_group("output formats")
    group.add_argument(
        "--format",
        dest="formats",
        action="append",
        metavar="FORMATS",
        help="also write nifti, nrrd, hdf5 and/or openkbp (comma-separated or repeated); "
        "pair.npz + meta.json are always written",
    )
    group.add_argument(
        "--openkbp-spacing",
        type=parse_floats,
        default=api.OpenKBPSettings().spacing,
        help="voxel size (mm) of the 128^3 OpenKBP grid: one value or i,j,k (default 4,4,2)",
    )
    group.add_argument("--split-seed", type=int, default=0, help="seed of the training/validation split by patient")
    group.add_argument(
        "--validation-fraction", type=float, default=0.2, help="fraction of patients for validation (default 0.2)"
    )


def formats_from_args(args: argparse.Namespace) -> api.ExportFormats:
    """The :class:`ExportFormats` of parsed command-line arguments (ValueError for bad values)."""
    return api.ExportFormats(
        formats=api.parse_formats(getattr(args, "formats", None)),
        openkbp=api.OpenKBPSettings(spacing=getattr(args, "openkbp_spacing", api.OpenKBPSettings().spacing)),
        split_seed=getattr(args, "split_seed", 0),
        validation_fraction=getattr(args, "validation_fraction", 0.2),
    )


if __name__ == "__main__":
    sys.exit(main())
