"""Export every case found below an input folder: one bad case never stops the batch."""

from __future__ import annotations

import csv
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .dicom.damage import damaged_file_rows
from .dicom.scan import scan_folder
from .errors import Cancelled, DoseAlignError
from .link.cases import form_cases
from .options import AlignOptions
from .output.case_folder import CaseOutput, case_dir, check_output_folder, clean_temp, is_complete
from .output.files import claim_for, release_claims
from .output.manifest import manifest_row, relative_reason, write_manifest
from .output.qa_png import qa_png_writer
from .output.report import write_report
from .parallel import in_shard, run_dask, run_pool
from .pipeline import run_case

logger = logging.getLogger(__name__)
Progress = Optional[Callable[[float, str], None]]


@dataclass
class BatchReport:
    rows: list = field(default_factory=list)
    orphans: list = field(default_factory=list)
    skipped_files: list = field(default_factory=list)
    manifest: Optional[Path] = None  # the manifest this run wrote (manifest.csv, or a shard's)
    notes: list = field(default_factory=list)  # what the user should know (e.g. dataset.json has no label)

    @property
    def failed(self) -> list:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def _owning_output(function: Callable) -> Callable:
    """The run's claim on its output folder (see :mod:`.output.files`) is released when it ends, however it ends."""

    @functools.wraps(function)
    def run(input_root, out_dir, *args, **kwargs):
        try:
            return function(input_root, out_dir, *args, **kwargs)
        finally:
            release_claims(Path(out_dir))

    return run


@_owning_output
def export_folder(
    input_root: Path,
    out_dir: Path,
    options: AlignOptions,
    *,
    resume: bool = False,
    progress: Progress = None,
    case_filter: Optional[Callable] = None,
    workers: int = 1,
    shard: Optional[tuple] = None,
    scheduler: Optional[str] = None,
    qa_png: bool = True,
    report_html: bool = True,
    formats=None,
    pseudonymizer=None,
) -> BatchReport:
    """Scan ``input_root``, form cases, export each into ``out_dir`` and write ``manifest.csv``.

    With ``resume``, cases whose outputs are complete are not computed again (their manifest rows
    are rebuilt from meta.json). ``workers`` > 1 runs cases in a process pool; ``scheduler``
    (``tcp://host:port`` or ``local``) on a Dask cluster; ``shard`` ``(K, N)`` exports only the
    K-th of N deterministic parts and writes ``manifest.shard-K-of-N.csv`` (see :func:`merge_shards`).
    ``qa_png`` adds each case's qa.png, ``report_html`` the batch's report.html (not per shard).
    ``formats`` (:class:`~DoseAlignLib.output.formats.ExportFormats`) adds NIfTI, NRRD, HDF5 or OpenKBP files per
    case and, at the end (not per shard), dataset.h5 and dataset.json.
    Returns the manifest rows in case order; ``exit_code`` is 1 when a case failed.
    """
    input_root, out_dir = Path(input_root), Path(out_dir)
    check_output_folder(out_dir)  # unwritable: stop now with the reason (exit 2), not once per case
    claim_for(out_dir)  # this run's owner record, before workers start (they use it)
    clean_temp(out_dir)  # only dead runs' leftovers: a live shard's or another run's work stays
    scan = scan_folder(input_root, workers=1 if scheduler else workers)
    linked = form_cases(scan)
    report = BatchReport(orphans=linked.orphans, skipped_files=scan.skipped)
    cases = [c for c in linked.cases if (case_filter is None or case_filter(c)) and in_shard(c.case_id, shard)]
    extra_rows = damaged_file_rows(scan) if shard is None or shard[0] == 1 else []  # unreadable DICOM files
    if pseudonymizer is not None:  # pseudonymous case ids and rows from here on; the map is written now
        extra_rows = pseudonymizer.prepare(scan, cases, extra_rows)
    manifest_name = "manifest.csv" if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.csv"
    rows: list = [None] * len(cases)
    done = [0]

    def record(index: int, row: dict) -> None:
        row = relative_reason(row, input_root)  # files named relative to the input, as in meta.json
        if pseudonymizer is not None:
            row = pseudonymizer.row(row)
        rows[index] = row
        done[0] += 1
        report.rows = [r for r in rows if r is not None]
        write_manifest(out_dir, report.rows, manifest_name)
        if progress is not None:
            progress(done[0] / max(len(cases), 1), f"{done[0]}/{len(cases)} cases: {row['case_id']} {row['status']}")

    task = functools.partial(
        export_case,
        out_dir=out_dir,
        options=options,
        resume=resume,
        qa_png=qa_png,
        formats=formats,
        pseudonymizer=pseudonymizer,
    )
    if scheduler:
        run_dask(task, cases, scheduler, workers, record)
    elif workers > 1 and len(cases) > 1:
        run_pool(task, cases, workers, record)
    else:
        for index, case in enumerate(cases):
            record(index, task(case))
    report.rows = [r for r in rows if r is not None]
    report.rows.extend(extra_rows)
    if progress is not None:
        progress(1.0, f"{len(cases)} cases, {len(report.failed)} failed")
    if formats is not None and shard is None:
        finished = formats.finish(out_dir, report.rows)  # formats of resumed cases, dataset.h5, dataset.json
        report.notes.extend(finished.get("notes", []))
    report.manifest = write_manifest(out_dir, report.rows, manifest_name)
    if report_html and shard is None:
        write_report(
            out_dir,
            report.rows,
            source="input: (pseudonymized)" if pseudonymizer is not None else f"input: {input_root}",
        )
    return report


def merge_shards(out_dir: Path) -> Path:
    """Combine every ``manifest.shard-K-of-N.csv`` in ``out_dir`` into ``manifest.csv`` (sorted by case id)."""
    out_dir = Path(out_dir)
    parts = sorted(out_dir.glob("manifest.shard-*-of-*.csv"))
    if not parts:
        raise DoseAlignError("no shard manifests (manifest.shard-K-of-N.csv) to merge", path=out_dir)
    totals = {p.name.rsplit("-of-", 1)[1] for p in parts}
    if len(totals) != 1:
        raise DoseAlignError(f"shard manifests of different splits: {sorted(p.name for p in parts)}", path=out_dir)
    expected = int(totals.pop().split(".")[0])
    if len(parts) != expected:
        raise DoseAlignError(f"{len(parts)} of {expected} shard manifests present", path=out_dir)
    rows = []
    for part in parts:
        with open(part, newline="", encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    rows.sort(key=lambda r: r["case_id"])
    path = write_manifest(out_dir, rows)
    write_report(out_dir, rows, source="merged shards")
    return path


def export_case(
    case,
    out_dir: Path,
    options: AlignOptions,
    resume: bool = False,
    qa_png: bool = True,
    formats=None,
    pseudonymizer=None,
) -> dict:
    """Export one case; return its manifest row (never raises for a bad case). ``qa_png`` adds its picture,
    ``formats`` (:class:`~DoseAlignLib.output.formats.ExportFormats`) its other formats."""
    if resume and is_complete(out_dir, case.case_id):
        meta = json.loads((case_dir(out_dir, case.case_id) / "meta.json").read_text(encoding="utf-8"))
        return manifest_row(case, "ok", "", meta)
    output = None
    try:
        output = CaseOutput(out_dir)  # pair.npz gets the CT and the dose while the rest is computed
        result = run_case(case, options, sink=output.add_array)
        if pseudonymizer is not None:
            pseudonymizer.result(result)  # before meta.json and the extra files: meta, case id, text arrays
        extra = [qa_png_writer(result)] if qa_png else []
        if formats is not None and formats.extra:
            extra.append(formats.case_writer(result))
        output.finish(result, extra)
        output = None
        return manifest_row(case, "ok", "", result.meta)
    except Cancelled:
        raise
    except DoseAlignError as error:
        logger.info("case %s failed: %s", case.case_id, error)
        named = error.path or any(f in str(error) for f in case.dose_files)  # else say which dose it was
        return manifest_row(case, "failed", str(error) if named else f"{';'.join(case.dose_files)}: {error}")
    except MemoryError:
        return manifest_row(case, "failed", "out of memory")
    except Exception as error:  # an engine bug must not stop the batch; the row says what happened
        logger.exception("case %s: unexpected error", case.case_id)
        return manifest_row(case, "failed", f"internal error ({type(error).__name__}: {error}); please report it")
    finally:
        if output is not None:  # the case failed: its unfinished folder goes
            output.discard()
