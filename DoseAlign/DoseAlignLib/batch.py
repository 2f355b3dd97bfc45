"""Export every case found below an input folder: one bad case never stops the batch."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .errors import Cancelled, DoseAlignError
from .link import form_cases
from .options import AlignOptions
from .pipeline import run_case
from .scan import scan_folder
from .writers import case_dir, clean_temp, is_complete, manifest_row, write_case_output, write_manifest

logger = logging.getLogger(__name__)
Progress = Optional[Callable[[float, str], None]]


@dataclass
class BatchReport:
    rows: list = field(default_factory=list)
    orphans: list = field(default_factory=list)
    skipped_files: list = field(default_factory=list)

    @property
    def failed(self) -> list:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def export_folder(
    input_root: Path,
    out_dir: Path,
    options: AlignOptions,
    *,
    resume: bool = False,
    progress: Progress = None,
    case_filter: Optional[Callable] = None,
) -> BatchReport:
    """Scan ``input_root``, form cases, export each into ``out_dir`` and write ``manifest.csv``.

    With ``resume``, cases whose outputs are complete are not computed again (their manifest rows
    are rebuilt from meta.json). Returns the manifest rows; ``exit_code`` is 1 when a case failed.
    """
    input_root, out_dir = Path(input_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_temp(out_dir)
    scan = scan_folder(input_root, progress=None)
    linked = form_cases(scan)
    report = BatchReport(orphans=linked.orphans, skipped_files=scan.skipped)
    cases = [c for c in linked.cases if case_filter is None or case_filter(c)]
    for n, case in enumerate(cases):
        if progress is not None:
            progress(n / max(len(cases), 1), f"case {n + 1}/{len(cases)}: {case.case_id}")
        report.rows.append(export_case(case, out_dir, options, resume=resume))
        write_manifest(out_dir, report.rows)
    if progress is not None:
        progress(1.0, f"{len(cases)} cases, {len(report.failed)} failed")
    write_manifest(out_dir, report.rows)
    return report


def export_case(case, out_dir: Path, options: AlignOptions, *, resume: bool = False) -> dict:
    """Export one case; return its manifest row (never raises for a bad case)."""
    if resume and is_complete(out_dir, case.case_id):
        meta = json.loads((case_dir(out_dir, case.case_id) / "meta.json").read_text(encoding="utf-8"))
        return manifest_row(case, "ok", "", meta)
    try:
        result = run_case(case, options)
        write_case_output(result, out_dir)
        return manifest_row(case, "ok", "", result.meta)
    except Cancelled:
        raise
    except DoseAlignError as error:
        logger.info("case %s failed: %s", case.case_id, error)
        return manifest_row(case, "failed", str(error))
    except MemoryError:
        return manifest_row(case, "failed", "out of memory")
    except Exception as error:  # an engine bug must not stop the batch; the row says what happened
        logger.exception("case %s: unexpected error", case.case_id)
        return manifest_row(case, "failed", f"internal error ({type(error).__name__}: {error}); please report it")
