"""Headless batch export through Slicer: the engine's cases, resampled by the Resample CLI (or VTK, or the engine).

Usage (Linux needs a display even without the main window: ``xvfb-run -a`` or ``QT_QPA_PLATFORM=offscreen``;
the script lies in the installed extension's ``lib/Slicer-X.Y/qt-scripted-modules/``)::

    Slicer --no-splash --no-main-window --python-script /path/to/DoseAlignBatch.py --input DICOM_DIR --output OUT_DIR
        [--backend cli|inprocess|engine] [--reference ct|dose|custom] [--interpolator linear|nn|bs|ws]
        [--spacing 2 | 1,1,2.5] [--box dose|ct|cube] [--size 128] [--ct-fill -1000] [--ct-dtype int16|float32]
        [--allow-relative] [--no-structures] [--format npz|npz+nrrd] [--resume]

Writes ``OUT_DIR/<case>/pair.npz``, ``meta.json``, ``manifest.csv`` and ``report.html`` exactly as
``dosealign export`` does (the same cases, ids and files; only ``resampling.backend`` says what resampled).
No DICOM database is used or touched: the engine reads the files. Prints progress lines and one
``CASE <id>: ok|failed|skipped`` line per case. Exit code: 0 every case exported, 1 some case failed, 2 usage
or setup error, 3 nothing to export, cancelled or crashed. Every path ends in ``sys.exit``: ``--python-script`` does not
quit Slicer by itself, and an uncaught exception would leave it running. ``--help`` after the script
path shows Slicer's help: use ``--usage`` for this script's.

Slicer registers every ``.py`` file of a scripted-module folder as a module, so this file also
defines a hidden ``DoseAlignBatch`` module (and its ``DoseAlignBatchTest``); importing it runs nothing.
"""

import argparse
import logging
import sys
import time
import traceback

from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

EXIT_OK = 0
EXIT_CASES_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_NOTHING = 3  # nothing to export, as the dosealign command says it


class DoseAlignBatch(ScriptedLoadableModule):
    """Hidden module entry so that Slicer's module factory accepts this file."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "DoseAlign Batch"
        parent.categories = ["Radiotherapy"]
        parent.dependencies = ["DoseAlign"]
        parent.contributors = ["DoseAlign developers"]
        parent.helpText = (
            "Headless batch export: Slicer --no-main-window --python-script DoseAlignBatch.py "
            "--input DICOM_DIR --output OUT_DIR [options]"
        )
        parent.acknowledgementText = ""
        parent.hidden = True


class DoseAlignBatchTest(ScriptedLoadableModuleTest):
    """The batch on the engine's phantom with every backend: exit code 0, one ok case, the same case
    as the engine's export (ScriptedLoadableModule registers a self-test that needs this class)."""

    def runTest(self):
        import pathlib
        import shutil
        import tempfile

        folder = pathlib.Path(tempfile.mkdtemp(prefix="DoseAlignBatchTest-"))
        try:
            self._runIn(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # running the self-test again must not fill the temp folder

    def _runIn(self, folder):
        import json

        from DoseAlignLib.api import PhantomSpec, export_folder, options_from_args, write_phantom

        write_phantom(folder / "dicom", PhantomSpec())
        engine = export_folder(
            folder / "dicom",
            folder / "engine",
            options_from_args(_get_parser().parse_args(["--input", "x", "--output", "y"])),
        )
        for backend in ("engine", "inprocess", "cli"):
            out = folder / backend
            self.assertEqual(main(["--input", str(folder / "dicom"), "--output", str(out), "--backend", backend]), 0)
            (caseDir,) = [p for p in out.iterdir() if p.is_dir()]
            self.assertEqual(caseDir.name, engine.rows[0]["case_id"])
            meta = json.loads((caseDir / "meta.json").read_text(encoding="utf-8"))
            self.assertTrue(
                meta["resampling"]["backend"].startswith(
                    {"engine": "engine", "inprocess": "slicer-vtk", "cli": "slicer-cli"}[backend]
                )
            )


def _get_parser() -> argparse.ArgumentParser:
    from DoseAlignLib.api import parse_floats, parse_ints  # the dosealign command's own parsers

    parser = argparse.ArgumentParser(
        prog="DoseAlignBatch.py",
        description="Export every CT/dose case below a DICOM folder through Slicer (Resample CLI by default).",
        add_help=False,  # Slicer takes --help itself (ctkCommandLineParser, qSlicerCoreCommandOptions.cxx:399)
    )
    parser.add_argument("--usage", action="help", help="show this help and exit (Slicer takes --help and -h)")
    parser.add_argument("--input", required=True, help="folder with DICOM files (searched recursively; never modified)")
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument(
        "--backend",
        choices=["cli", "inprocess", "engine"],
        default="cli",
        help="what resamples: Resample Scalar/Vector/DWI Volume CLI (default), in-process VTK (linear), or the engine",
    )
    parser.add_argument(
        "--reference",
        choices=["ct", "dose", "custom"],
        help="grid of the outputs (default ct; custom if --spacing ...)",
    )
    parser.add_argument("--interpolator", choices=["linear", "nn", "bs", "ws"], default="linear")
    parser.add_argument("--spacing", type=parse_floats, help="custom grid spacing in mm: one value or i,j,k")
    parser.add_argument("--box", choices=["dose", "ct", "cube"], help="custom grid extent (default dose)")
    parser.add_argument("--size", type=parse_ints, help="voxels of a --box cube (default 128)")
    parser.add_argument("--ct-fill", type=float, default=-1000.0, help="HU written outside the CT")
    parser.add_argument("--ct-dtype", choices=["int16", "float32"], default="int16")
    parser.add_argument("--allow-relative", action="store_true", help="export DoseUnits RELATIVE doses (not Gy)")
    parser.add_argument("--no-structures", action="store_true", help="do not rasterize RTSTRUCT ROIs")
    parser.add_argument("--format", choices=["npz", "npz+nrrd"], default="npz", help="also write NRRD volumes")
    parser.add_argument("--resume", action="store_true", help="skip cases whose outputs are already complete")
    return parser


class _ProgressPrinter:
    """Plain progress lines (no carriage returns: Slicer's stdout is usually a log file)."""

    def __init__(self, stream=None, every_seconds: float = 1.0) -> None:
        self.stream = stream or sys.stdout
        self.every = every_seconds
        self.last = 0.0
        self.last_message = ""

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or message != self.last_message or now - self.last >= self.every:
            self.stream.write(f"[{fraction:4.0%}] {message}\n")
            self.stream.flush()
            self.last, self.last_message = now, message


def _print_row(case_id: str, status: str, reason: str = "", flags: str = "") -> None:
    line = f"CASE {case_id}: {status}"
    if reason:
        line += f" - {reason}"
    if flags:
        line += f" [{flags}]"
    print(line, flush=True)


def main(argv) -> int:
    """Run the batch and return the exit code; only unexpected bugs raise (the ``__main__`` guard catches them)."""
    try:
        parser = _get_parser()
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --usage (0) or a usage error (2): argparse already printed why
        return int(exit_request.code or 0)
    except ImportError as error:
        print(f"DoseAlignBatch: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    try:
        from DoseAlignLib.api import Cancelled, DoseAlignError, NothingToExport, options_from_args

        import DoseAlign

        options = options_from_args(args)
    except (ImportError, ValueError) as error:
        print(f"DoseAlignBatch: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    logic = DoseAlign.DoseAlignLogic()
    logic.logCallback = lambda text: print(text, flush=True)  # the only place lines go (not also to logging)
    logic.progressCallback = _ProgressPrinter()
    started = time.monotonic()
    try:
        rows = logic.exportFolder(
            args.input, args.output, options, args.backend, args.format, args.resume, rowCallback=_print_row
        )
    except Cancelled:
        print("DoseAlignBatch: cancelled", file=sys.stderr, flush=True)
        return EXIT_ABORTED
    except NothingToExport as error:  # as the dosealign command: exit 3, saying what was found
        print(f"DoseAlignBatch: {error}", file=sys.stderr, flush=True)
        return EXIT_NOTHING
    except (OSError, ValueError, RuntimeError, DoseAlignError) as error:  # bad folder, missing module: no case ran
        print(f"DoseAlignBatch: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    failed = [row for row in rows if row["status"] == "failed"]  # skipped: kept by --resume
    print(
        f"DoseAlignBatch: {len(rows) - len(failed)} of {len(rows)} cases exported to {args.output} "
        f"in {time.monotonic() - started:.1f} s; {len(failed)} failed",
        flush=True,
    )
    return EXIT_CASES_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    try:
        exit_code = main(sys.argv[1:])
    except BaseException:  # noqa: B036 - Slicer must exit whatever happened
        traceback.print_exc()
        logging.error("DoseAlignBatch crashed")
        exit_code = EXIT_ABORTED
    sys.exit(exit_code)
