"""The public API of the DoseAlign engine: the one surface the ``dosealign`` command, the Slicer
module, its batch script, the notebook and the README use.

A case goes through the stages in this order; each name below belongs to one of them::

    read DICOM      scan_folder, scan_files, read_ct, ct_geometry, read_rtdose, read_structure_set
    link            form_cases -> Case; header_refusal (what export refuses in the dose headers)
    geometry        Grid, Volume, reference_grid, resample; Resampler (what backends differ in)
    structures      load_roi_map, unpack_masks
    audit           (inside run_case; thresholds: DEFAULT_THRESHOLDS)
    output          write_case_output, write_manifest, manifest_row, write_report, qa_png_writer,
                    release_claims (a long-lived process ends its hold on an output folder), ...
    one case        run_case(case, options, resampler=...) -> CaseResult: the one path of every backend
    a folder        export_folder -> BatchReport, export_case (one case of a batch), merge_shards; how a stopped
                    export is finished: resume_advice, cases_run (set_rerun, note_cases_run for a command's own)

Everything else in the package is internal and may change between releases. Names are imported on
first use (PEP 562), so ``from DoseAlignLib.api import export_folder`` costs only what it needs.

>>> from DoseAlignLib.api import AlignOptions, export_folder
>>> report = export_folder("dicom/", "out/", AlignOptions(reference="ct"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import __version__

# name -> module (relative to this package) that defines it
_EXPORTS = {
    # errors and options
    "DoseAlignError": ".errors",
    "GeometryError": ".errors",
    "InputError": ".errors",
    "UnitsError": ".errors",
    "LinkError": ".errors",
    "Cancelled": ".errors",
    "resume_advice": ".errors",
    "set_rerun": ".errors",
    "note_cases_run": ".errors",
    "cases_run": ".errors",
    "AlignOptions": ".options",
    "ReferenceGrid": ".options",
    "Interpolator": ".options",
    "CustomBox": ".options",
    # 1. read DICOM
    "scan_folder": ".dicom.scan",
    "scan_files": ".dicom.scan",
    "ScanResult": ".dicom.scan",
    "read_ct": ".dicom.ct",
    "ct_geometry": ".dicom.ct",
    "read_rtdose": ".dicom.rtdose",
    "read_structure_set": ".dicom.rtstruct",
    # 2. link
    "form_cases": ".link.cases",
    "header_refusal": ".link.dose_headers",
    "Case": ".link.case",
    "safe_name": ".link.cases",
    # 3. geometry
    "Grid": ".geometry.grid",
    "GRID_ATOL_MM": ".geometry.grid",
    "Volume": ".geometry.grid",
    "reference_grid": ".geometry.reference",
    "resample": ".geometry.resample",
    "Resampler": ".geometry.resample",
    "EngineResampler": ".geometry.resample",
    "ENGINE_RESAMPLER": ".geometry.resample",
    # 4. structures
    "load_roi_map": ".structures.names",
    "unpack_masks": ".structures.masks",
    "voxel_volumes_cc": ".structures.masks",
    "STORAGE_NOTE": ".structures.masks",
    "reference_dvh": ".structures.reference_dvh",
    "ReferenceDvh": ".structures.reference_dvh",
    # 5. audit
    "DEFAULT_THRESHOLDS": ".audit.thresholds",
    "add_structures_and_audit": ".audit.case",
    # 6. output
    "write_case_output": ".output.case_folder",
    "case_dir": ".output.case_folder",
    "is_complete": ".output.case_folder",
    "clean_temp": ".output.case_folder",
    "release_claims": ".output.files",
    "write_manifest": ".output.manifest",
    "manifest_row": ".output.manifest",
    "masks_from_arrays": ".output.case_data",
    "ExportFormats": ".output.formats",
    "parse_formats": ".output.formats",
    "DEFAULT_NRRD_COMPRESSION": ".options",
    "OpenKBPSettings": ".output.openkbp",
    "OPENKBP_SPACING": ".options",
    "qa_png_writer": ".output.qa_png",
    "matplotlib_available": ".output.qa_png",
    "write_report": ".output.report",
    "inspect_output": ".output.out_folder",
    "make_pseudonymizer": ".output.pseudonym",
    "key_is_private": ".output.pseudonym",
    # one case, a folder
    "run_case": ".pipeline",
    "CaseResult": ".pipeline",
    "export_folder": ".batch",
    "export_case": ".batch",
    "merge_shards": ".batch",
    "BatchReport": ".batch",
    "Interrupted": ".errors",
    "Terminated": ".errors",
    "start_thread": ".errors",
    "termination_is_held": ".errors",
    "suspensions_counted": ".limits",
    "stop_seen": ".errors",
    "forget_stops": ".errors",
    "OutputFault": ".errors",
    "output_fault": ".errors",
    "terminal_safe": ".errors",
    "NothingToExport": ".errors",
    "what_was_found": ".batch",
    "check_export_target": ".batch",
    "check_writable": ".batch",
    "default_workers": ".parallel",
    "check_scheduler": ".parallel",
    "options_from_args": ".arguments",
    "parse_floats": ".arguments",
    "parse_ints": ".arguments",
    "parse_crop": ".arguments",
    "parse_shard": ".parallel",
    # synthetic studies and training
    "PhantomSpec": ".phantom",
    "write_phantom": ".phantom",
    "demo_spec": ".phantom",
    "DoseAlignDataset": ".training",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __package__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list:
    return list(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    pass
