"""Export formats beyond pair.npz: ``--format npz|nifti|nrrd|hdf5|openkbp`` (several at once).

``npz`` (``pair.npz`` + ``meta.json``, the output contract) is always written. The others:

=========  ==========================================================  =====================
format     files (per case, in ``OUT/<case_id>/``; per dataset in OUT)  module
=========  ==========================================================  =====================
nifti      ct.nii.gz, dose.nii.gz, body.nii.gz, masks/<ROI>.nii.gz;     :mod:`.nifti`
           OUT/dataset.json (MONAI datalist, splits by patient)         :mod:`.datalist`
nrrd       ct.nrrd, dose.nrrd, body.nrrd, masks/<ROI>.nrrd              :mod:`.nrrd`
hdf5       case.h5; OUT/dataset.h5 (a group per case)                   :mod:`.hdf5`
openkbp    openkbp/{ct,dose,possible_dose_mask,<ROI>,voxel_dimensions}  :mod:`.openkbp`
           .csv and openkbp/geometry.json
=========  ==========================================================  =====================

A case's format files are written inside the case's temporary folder, before it is renamed into
place (:func:`~DoseAlignLib.output.case_folder.write_case_output` calls :meth:`ExportFormats.write_case`), so a case
appears with all its files or not at all; meta.json lists them under ``exports``. At the end of a
batch :meth:`ExportFormats.finish` adds the formats that cases exported earlier (``--resume``)
lack, rebuilds ``dataset.h5`` and writes ``dataset.json``.

The packages (nibabel, pynrrd, h5py) are optional (``pip install 'dosealign[formats]'``) and
imported only by the format that needs them; :meth:`ExportFormats.check` names what is missing
before any case is computed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import DoseAlignError, output_fault, resume_options
from ..limits import entry_kind
from .case_data import CaseData, require
from .case_folder import file_digests, load_meta, recorded_files, written_files
from .files import json_text, temp_path, write_text_atomic
from .nrrd import DEFAULT_COMPRESSION as DEFAULT_NRRD_COMPRESSION
from .openkbp import OpenKBPSettings

logger = logging.getLogger(__name__)

FORMAT_NAMES = ("npz", "nifti", "nrrd", "hdf5", "openkbp")
#: The Python module and the PyPI package each format imports.
DEPENDENCIES = {"nifti": [("nibabel", "nibabel")], "nrrd": [("nrrd", "pynrrd")], "hdf5": [("h5py", "h5py")]}
#: A file whose presence in a case folder says the format was written (written last, or atomically).
SENTINELS = {"nifti": "ct.nii.gz", "nrrd": "ct.nrrd", "hdf5": "case.h5", "openkbp": "openkbp/geometry.json"}


def _listed_files(entry) -> list:
    """The relative file names a format's meta.json ``exports`` entry lists (under ``files`` and ``structures``)."""
    found: list = []

    def collect(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, str) and value and not value.startswith(("/", "..")):
            found.append(value)

    if isinstance(entry, dict):
        for key in ("files", "structures"):
            collect(entry.get(key))
    return found


def _gzip_whole(path: Path, meta: Optional[dict] = None) -> bool:
    """Whether a .nii.gz ends where its NIfTI header says: the gzip trailer's length (ISIZE, mod 2**32) equals
    the header's voxel offset plus its voxels' bytes (a file cut short ends in other bytes). Reads the header
    and the last 4 bytes only. With ``meta`` (the case's meta.json) the header must also describe its grid:
    the voxel counts of ``shape`` and, when it has an sform, ``ijk_to_ras``."""
    import gzip
    import struct

    try:
        with gzip.open(path, "rb") as stream:
            header = stream.read(352)
        if len(header) < 348:
            return False
        order = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        dims = struct.unpack(order + "8h", header[40:56])
        bits = struct.unpack(order + "h", header[72:74])[0]
        offset = struct.unpack(order + "f", header[108:112])[0]
        if meta is not None and not _nifti_grid_agrees(header, order, dims, meta):
            return False
        voxels = 1
        for size in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
            voxels *= max(int(size), 1)
        with open(path, "rb") as handle:
            handle.seek(-4, 2)
            stored = struct.unpack("<I", handle.read(4))[0]
        return stored == (int(offset) + voxels * bits // 8) % (1 << 32)
    except (OSError, EOFError, ValueError, struct.error):
        return False


def _nifti_grid_agrees(header: bytes, order: str, dims: tuple, meta: dict) -> bool:
    """Whether a NIfTI-1 header's voxel counts (i, j, k) are meta.json's ``shape`` and its sform (when its code
    is set) is meta.json's ``ijk_to_ras`` (to float32's precision): a header edited or of another case is not."""
    import struct

    k, j, i = meta["shape"]
    if int(dims[0]) < 3 or tuple(int(n) for n in dims[1:4]) != (i, j, k):
        return False
    if struct.unpack(order + "h", header[254:256])[0] > 0:  # sform_code: srow_x, srow_y, srow_z follow
        rows = struct.unpack(order + "12f", header[280:328])
        ras = meta.get("ijk_to_ras") or []
        for r in range(3):
            for c in range(4):
                want = ras[r][c] if len(ras) > r and len(ras[r]) > c else None
                if want is None or abs(rows[4 * r + c] - want) > 1e-3 + 1e-5 * abs(want):
                    return False
    return True


def _h5_grid_agrees(attrs, meta: dict) -> bool:
    """Whether a case.h5's grid attributes (``shape``, ``ijk_to_lps``) are meta.json's."""
    import numpy as np

    try:
        shape, matrix = attrs.get("shape"), attrs.get("ijk_to_lps")
        if shape is not None and [int(n) for n in np.ravel(shape)] != list(meta["shape"]):
            return False
        return matrix is None or bool(np.allclose(np.asarray(matrix, dtype=float), meta["ijk_to_lps"], atol=1e-6))
    except (TypeError, ValueError):
        return False


def _as_written(folder: Path, rel: str, meta: dict) -> bool:
    """:func:`_whole`, and the bytes its export wrote where meta.json records them (``file_sha256``): a format file
    of another case of the same grid, put in its place, was kept (twenty-fourth hostile trial X6)."""
    if not _whole(folder / rel, meta):
        return False
    digests = meta.get("file_sha256") if isinstance(meta, dict) else None
    if not isinstance(digests, dict) or rel not in digests:
        return True
    try:
        return file_digests(folder, [rel]).get(rel) == digests[rel]
    except Exception:  # (unreadable, or an HDF5 file h5py cannot read through: not the file written)
        return False


def _whole(path: Path, meta: Optional[dict] = None) -> bool:
    """Whether a format's file is there and not damaged: a regular file, not empty; a case.h5 that HDF5 can
    open (else it is written again from pair.npz, rather than crash dataset.h5); a .nii.gz not cut short. With
    ``meta`` (the case's meta.json), a .nii.gz header and case.h5's attributes must describe its grid."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    if path.name.endswith(".nii.gz"):
        return _gzip_whole(path, meta)
    if path.suffix == ".h5":
        try:
            import h5py
        except ImportError:
            return True
        try:
            with h5py.File(path, "r") as handle:
                return bool(list(handle.keys())) and (meta is None or _h5_grid_agrees(handle.attrs, meta))
        except (OSError, ValueError):
            return False
    return True


def parse_formats(values: Optional[Sequence[str]]) -> tuple:
    """Format names from ``--format`` values (each may be comma-separated); npz always first."""
    names = []
    for value in values or ():
        for part in str(value).split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in FORMAT_NAMES:
                raise ValueError(f"unknown format {name!r}: choose from {', '.join(FORMAT_NAMES)}")
            names.append(name)
    return tuple(n for n in FORMAT_NAMES if n == "npz" or n in names)


def base_exports(meta: dict) -> dict:
    """meta.json's ``exports`` entry of the arrays every case has: pair.npz, or the npy layout's files."""
    if ((meta.get("options") or {}).get("layout") or "npz") == "npy":
        return {"npy": {"files": {"arrays": "<name>.npy (see storage)", "meta": "meta.json"}}}
    return {"npz": {"files": {"arrays": "pair.npz", "meta": "meta.json"}}}


@dataclass(frozen=True)
class ExportFormats:
    """The formats of an export and their settings.

    ``formats``: names from :data:`FORMAT_NAMES` (npz is always added). ``openkbp``: the OpenKBP
    grid settings. ``split_seed`` and ``validation_fraction``: the patient split of dataset.json
    and dataset.h5. ``nrrd_compression``: the gzip level of NRRD files, 1-9, or 0 for raw data
    (see :data:`~.nrrd.DEFAULT_COMPRESSION`).
    """

    formats: tuple = ("npz",)
    openkbp: OpenKBPSettings = OpenKBPSettings()
    split_seed: int = 0
    validation_fraction: float = 0.2
    nrrd_compression: int = DEFAULT_NRRD_COMPRESSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        if not 0.0 <= float(self.validation_fraction) < 1.0:
            raise ValueError(f"validation fraction must be in [0, 1), got {self.validation_fraction}")
        if not 0 <= int(self.nrrd_compression) <= 9:
            raise ValueError(f"NRRD compression is a gzip level 1-9, or 0 for none; got {self.nrrd_compression}")

    @property
    def extra(self) -> tuple:
        """The formats besides npz."""
        return tuple(f for f in self.formats if f != "npz")

    def check(self) -> None:
        """Raise :class:`~.case_data.FormatDependencyError` naming each missing package."""
        for fmt in self.extra:
            for module, package in DEPENDENCIES.get(fmt, []):
                require(module, package, fmt)

    def to_dict(self) -> dict:
        return {
            "formats": list(self.formats),
            "openkbp": {
                "spacing": list(self.openkbp.spacing),
                "size": self.openkbp.size,
                "centre": self.openkbp.centre,
            },
            "split_seed": self.split_seed,
            "validation_fraction": self.validation_fraction,
            "nrrd_compression": self.nrrd_compression,
        }

    # ---- one case ------------------------------------------------------------------------------

    def write_case(self, result, folder: Path, say: Optional[Callable[[str], None]] = None) -> dict:
        """Write the extra formats of a just-computed case into ``folder``; return meta.json's ``exports``."""
        if say is not None:
            say(f"preparing {', '.join(self.extra)}")
        return self.write_case_data(CaseData.from_result(result), folder, say=say)

    def case_writer(self, result, say: Optional[Callable[[str], None]] = None):
        """A callable for ``write_case_output(..., extra_files=[...])``: writes the formats of ``result``
        into the case's temporary folder and records them in ``result.meta["exports"]``; ``say(message)``
        hears each format as it is begun."""

        def write(folder: Path) -> None:
            result.meta["exports"] = self.write_case(result, folder, say)

        return write

    def write_case_data(
        self,
        case: CaseData,
        folder: Path,
        formats: Optional[Sequence[str]] = None,
        say: Optional[Callable[[str], None]] = None,
    ) -> dict:
        """Write ``formats`` (default: all extra formats) of ``case`` into ``folder``."""
        from .hdf5 import write_case_h5
        from .nifti import write_nifti
        from .nrrd import write_nrrd
        from .openkbp import write_openkbp

        writers = {
            "nifti": write_nifti,
            "nrrd": lambda c, f: write_nrrd(c, f, self.nrrd_compression),
            "hdf5": write_case_h5,
            "openkbp": lambda c, f: write_openkbp(c, f, self.openkbp),
        }
        exports = base_exports(case.meta)
        for fmt in formats if formats is not None else self.extra:
            if say is not None:
                say(f"writing {fmt}")
            exports[fmt] = writers[fmt](case, Path(folder))
        return exports

    def missing(self, folder: Path) -> list:
        """The extra formats a finished case folder lacks: its entry in meta.json's exports, or any file that entry
        lists (removed, not a regular file, empty, or a .nii.gz cut short), or a sentinel HDF5 cannot open, or a
        .nii.gz header or case.h5 whose grid is not meta.json's (voxel counts, affine)."""
        folder = Path(folder)
        meta = load_meta(folder)  # a damaged meta.json: DamagedOutput, the case fails
        exports = meta.get("exports") or {}

        def lacks(kind: str) -> bool:
            if kind not in exports:
                return True
            # the sentinel first, and each file once: it is among the files listed (each read whole, a .nii.gz
            # decompressed, to tell it complete)
            names = dict.fromkeys([SENTINELS[kind], *_listed_files(exports[kind])])
            return not all(_as_written(folder, rel, meta) for rel in names)

        return [f for f in self.extra if lacks(f)]

    def _lacks_formats(self, folder: Path) -> bool:
        """Whether a finished case folder lacks a requested format (or cannot be read to tell)."""
        try:
            return bool(self.missing(folder))
        except Exception:
            return True

    def add_to_case(self, folder: Path) -> list:
        """Write the formats a finished case folder lacks, from its pair.npz and meta.json.

        Each file is written in a temporary folder and moved into place on its own; meta.json's
        ``exports`` is updated last. Returns the formats added.
        """
        folder = Path(folder)
        missing = self.missing(folder)
        if not missing:
            return []
        case = CaseData.from_folder(folder)
        work = temp_path(folder.parent / "add")
        work.mkdir()
        try:
            exports = self.write_case_data(case, work, missing)
            sentinels = {work / SENTINELS[f] for f in missing}
            files = sorted(p for p in work.rglob("*") if p.is_file())
            moves = [
                (p, folder / p.relative_to(work)) for p in [p for p in files if p not in sentinels] + sorted(sentinels)
            ]
            ours = recorded_files(case.meta) | set(written_files(case.meta) or ())
            for _path, target in moves:  # all checked before any is moved (nineteenth hostile trial S4, S5)
                _check_target(folder, target, ours)
            for path, target in moves:
                target.parent.mkdir(parents=True, exist_ok=True)
                path.replace(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        meta = dict(case.meta)
        merged = dict(meta.get("exports") or base_exports(meta))
        merged.update({k: v for k, v in exports.items() if k not in ("npz", "npy")})
        meta["exports"] = merged
        added = [p.relative_to(work).as_posix() for p in files]
        if isinstance(meta.get("case_files"), list):  # the files added are the case folder's own too
            meta["case_files"] = sorted(set(meta["case_files"]) | set(added))
        if isinstance(meta.get("file_sha256"), dict):  # and what they hold (X6)
            meta["file_sha256"] = {**meta["file_sha256"], **file_digests(folder, added)}
        temp = temp_path(folder / "meta.json")
        temp.write_text(json_text(meta), encoding="utf-8")
        temp.replace(folder / "meta.json")
        return missing

    # ---- the dataset -------------------------------------------------------------------------

    def finish(self, out_dir: Path, rows: list) -> dict:
        """After a batch: complete earlier cases, rebuild dataset.h5, write dataset.json.

        ``rows`` are the manifest rows; a case whose formats cannot be added is marked failed
        in its row (the manifest is written after this). Returns a summary.
        """
        out_dir = Path(out_dir)
        summary = {"added": {}, "dataset_h5": None, "dataset_json": None, "notes": []}
        if not self.extra:
            return summary
        ok = []
        for index, row in enumerate(rows):
            if row.get("status") not in ("ok", "skipped"):  # skipped: kept by --resume
                continue
            folder = out_dir / row["case_id"]
            try:
                added = self.add_to_case(folder)
            except DoseAlignError as error:
                row.update(status="failed", reason=f"export formats: {error}")
                continue
            except OSError as error:  # the output cannot be written (a full disk, EPERM): the export stops (exit 4),
                # as when a case is first written; it printed a traceback for each case (twenty-second and
                # twenty-third hostile trials V6, W4), and the cases not reached say so (W3)
                row.update(status="failed", reason=f"export formats: {output_fault(error, folder)}")
                for later in rows[index + 1 :]:
                    if later.get("status") in ("ok", "skipped") and self._lacks_formats(out_dir / later["case_id"]):
                        later["reason"] = "; ".join(
                            r for r in (later.get("reason"), "its formats were not added: the export stopped") if r
                        )
                raise
            except Exception as error:  # one case must not stop the others
                logger.exception("case %s: adding formats failed", row["case_id"])
                row.update(status="failed", reason=f"export formats: {type(error).__name__}: {error}")
                continue
            if added:
                summary["added"][row["case_id"]] = added
            ok.append(row)
        from .datalist import (
            DATALIST_FILE,
            common_labels,
            label_note,
            patients_of_cases,
            split_by_patient,
            write_datalist,
        )

        patients = patients_of_cases(out_dir, {row["case_id"]: row.get("patient") or "" for row in ok})

        splits = split_by_patient(patients, self.split_seed, self.validation_fraction)
        if "hdf5" in self.formats:
            from .hdf5 import build_dataset

            summary["dataset_h5"] = str(build_dataset(out_dir, [row["case_id"] for row in ok], splits))
        if "nifti" in self.formats:
            cases = []
            for row in ok:
                meta = load_meta(out_dir / row["case_id"])  # checked when its formats were added just now
                cases.append((row["case_id"], patients[row["case_id"]], meta["exports"]["nifti"]["files"]))
            summary["dataset_json"] = str(write_datalist(out_dir, cases, splits))
            note = label_note([list(files.get("masks", {})) for _c, _p, files in cases], common_labels(cases))
            if note:
                summary["notes"].append(f"{DATALIST_FILE}: {note}")
        return summary


#: The files that describe a whole output folder in one format, and the format each is made of.
DATASET_FILES = (("dataset.h5", "hdf5"), ("dataset.json", "nifti"))


def remove_stale_datasets(out_dir: Path, rows: list, written: Sequence[str] = ()) -> list:
    """Remove the dataset files (``DATASET_FILES``) an earlier run wrote that no longer describe OUT's cases; return
    notes saying so. ``written``: the names this run (re)built, which are current.

    A dataset file is stale when a case of ``rows`` (ok or kept) lacks its format (exported again without it), is
    not in the file, or is in it as it was made before: dataset.h5 records each case's meta.json (``meta_json``),
    compared less what a later run adds to a folder (formats, its file list). So is a file that lists a case the rows
    do not hold. Such a file was left as it was: dataset.h5 kept the first run's CT-grid arrays under case ids whose
    folders then held dose-grid cases, and dataset.json named NIfTI files that were gone (fifteenth hostile trial
    O9). Adding a format, or copying OUT, changes no case: the file stays (sixteenth trial P1: a comparison of
    modification times removed it). Only a file DoseAlign made is removed (an HDF5 file with its
    ``dosealign_version`` attribute, a JSON datalist whose ``reference`` names DoseAlign)."""
    out_dir = Path(out_dir)
    cases = [row["case_id"] for row in rows if row.get("status") in ("ok", "skipped")]
    notes = []
    for name, fmt in DATASET_FILES:
        path = out_dir / name
        if name in written or path.is_symlink() or not path.is_file():
            continue
        if not _made_by_dosealign(path, fmt):
            locked = _unreadable_hdf5(path) if fmt == "hdf5" else None
            if locked:  # (it may describe cases as they were: said, BN7)
                notes.append(
                    f"{name} cannot be read ({locked}): another program may hold it open; whether it describes the "
                    "cases as they are now cannot be told: close that program and run again with --resume, or remove it"
                )
            continue  # not DoseAlign's (or unreadable): not ours to judge
        listed = _dataset_cases(path, fmt, cases)
        if isinstance(listed, str):  # not as DoseAlign wrote it: nothing of it was read
            listed, outside = {}, [f"{name} {listed}"]
        else:
            outside = []
        lacking, changed = [], []
        for case_id in cases:
            try:
                meta = load_meta(out_dir / case_id)
            except (DoseAlignError, OSError):
                lacking.append(case_id)
                continue
            if fmt not in (meta.get("exports") or {}) or case_id not in listed:
                lacking.append(case_id)
            elif listed[case_id] is not None and listed[case_id] != _case_essence(meta):
                changed.append(case_id)
        extra = sorted(set(listed) - set(cases))
        if outside:
            lacking = []  # nothing of it was read: the one reason is its links
        if not (lacking or changed or extra or outside):
            continue
        parts = []
        for named, what in ((lacking, f"now without --format {fmt} or not in it"), (changed, "made again since"),
                            (extra, "no longer among the cases"),
                            (outside, "(DoseAlign writes no such file)")):  # fmt: skip
            if named:
                parts.append(
                    ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "") + f" {what}"
                )
        why = "; ".join(parts)
        try:
            path.unlink()
        except OSError as error:
            notes.append(f"{name} no longer describes this folder's cases ({why}) and could not be removed: {error}")
            continue
        notes.append(
            f"{name} of an earlier run removed: it described cases as they were before ({why}); "
            f"export with --format {fmt} {resume_options()} to build it again"
        )
    return notes


def retire_summaries(
    out_dir: Path,
    case_ids: Sequence[str],
    formats: Sequence[str] = (),
    shard: bool = False,
    stuck: Optional[list] = None,
) -> list:
    """Remove DoseAlign's dataset files that describe any of ``case_ids``, the cases a run is about to make (again),
    and its report.html: should the run stop before it writes them anew (a full disk, a failed dataset.h5, SIGTERM or
    SIGKILL), they would hold those cases as they were (fifty-sixth hostile trial BD1-BD3: dataset.h5 held a case's
    dose from before a --resume that exported it again). A ``shard`` run, which writes none of them, also takes the
    rows of ``case_ids`` out of merge's manifest.csv (sixty-second trial BJ1: they said ok with the old dose); its
    other rows stay (another input's cases added with --append, which merge keeps: sixty-fourth BL4).

    All or none: each is first moved to a temporary name of this run; where one cannot be (immutable, a read-only
    mount), every one is put back, and ``stuck`` (when given) gets ``(name, reason)`` of it (the run stops: BJ2, BL2).
    Returns ``(name, why)`` of each removed (or rewritten), ``formats`` the run's own."""
    out_dir = Path(out_dir)
    wanted = set(case_ids)
    summaries = (*DATASET_FILES, ("report.html", ""), *((("manifest.csv", "manifest"),) if shard else ()))
    with _folder_lock(out_dir):  # (shards retire side by side: one reads and rewrites manifest.csv at a time)
        chosen = []
        for name, fmt in summaries:
            try:
                chosen += [(name, fmt, kept) for kept in _describes(out_dir / name, fmt, wanted)]
            except OSError as error:
                if stuck is not None:
                    stuck.append((name, error.strerror or str(error), error.errno))
        if stuck:
            return []
        aside = []
        for name, fmt, kept in chosen:
            if kept:  # (rewritten in one rename below: a kill never loses its other rows, sixty-sixth trial BN2)
                continue
            temp = temp_path(out_dir / name)
            try:
                os.rename(out_dir / name, temp)
            except FileNotFoundError:  # (another shard of the run removed it)
                continue
            except OSError as error:
                if stuck is not None:
                    stuck.append((name, error.strerror or str(error), error.errno))
                continue
            aside.append((name, fmt, kept, temp))
        try:
            if stuck:
                raise OSError("put back")
            for name, fmt, kept in chosen:
                if kept:  # the rows of other cases, written in the file's place
                    write_text_atomic(out_dir / name, kept)
                    aside.append((name, fmt, kept, None))
        except OSError as error:  # none is removed where one cannot be: each put back as it was
            if stuck is not None and not stuck:
                stuck.append(("manifest.csv", error.strerror or str(error), error.errno))
            for name, _fmt, _kept, temp in aside:
                if temp is not None:
                    with contextlib.suppress(OSError):
                        os.replace(temp, out_dir / name)
            return []
        removed = []
        for name, fmt, kept, temp in aside:
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
            lacking = f", now without --format {fmt}" if fmt and fmt != "manifest" and fmt not in formats else ""
            what = (
                "this run makes cases it listed again: their rows were taken out"
                if kept
                else (f"this run made cases it described again{lacking}")
            )
            removed.append((name, what))
    return removed


def _describes(path: Path, fmt: str, wanted: set) -> list:
    """``[what to write back]`` where DoseAlign's summary file at ``path`` describes any of the cases ``wanted`` (``""``:
    nothing, it goes; for merge's manifest.csv, its header and rows of other cases, where it has any), else ``[]``."""
    from .out_folder import foreign_file

    if path.is_symlink() or not path.is_file():
        return []
    try:
        if fmt == "manifest":
            if foreign_file(path) is not None:
                return []
            kept = _manifest_without(path, wanted)
            return [] if kept is None else [kept]
        if fmt:
            if not _made_by_dosealign(path, fmt):
                locked = _unreadable_hdf5(path) if fmt == "hdf5" else None
                if locked:  # (it may describe these cases: the run stops, BN7)
                    raise OSError(errno.EBUSY, f"cannot be read: {locked}; another program may hold it open")
                return []
            listed = _dataset_cases(path, fmt, sorted(wanted))
            # (one not as DoseAlign wrote it is judged, and its reason said, at the run's end)
            return [""] if not isinstance(listed, str) and wanted & set(listed) else []
        # a user's own report.html stays (fifty-eighth trial BF1); DoseAlign's is written anew at the run's end (not
        # read whole: a planted 4 GB one, BF2)
        return [] if foreign_file(path) is not None else [""]
    except OSError as error:  # (unreadable: judged, and its reason said, at the run's end)
        if error.errno == errno.EBUSY:  # (but one another program holds: the run stops, BN7)
            raise
        return []


def _manifest_without(path: Path, case_ids: set) -> Optional[str]:
    """None where DoseAlign's manifest at ``path`` lists none of ``case_ids``; else its text without their rows (``""``
    when no other row is left). Read up to DOSEALIGN_MANIFEST_MB, never line by line unbounded (an 8 GiB line took
    5.7 GB before a MemoryError: sixty-fourth hostile trial BL1); a larger one, or one that is no CSV, goes whole
    (merge writes it anew)."""
    import csv

    from ..limits import LimitError, read_back

    try:
        text = read_back(path, "DOSEALIGN_MANIFEST_MB").decode("utf-8")
    except (LimitError, UnicodeDecodeError):
        return ""
    field_limit = csv.field_size_limit()
    csv.field_size_limit(
        max(field_limit, len(text) + 1)
    )  # (a field as long as export wrote it: 186 kB of warnings, BN1)
    kept: list = []
    writer = csv.writer(_Lines(kept), lineterminator="\n")
    found = others = 0
    try:  # row by row, the kept ones written at once (a list of 1.8 million rows took 5.7 GB: sixty-sixth trial BN6)
        reader = csv.reader(_lines_of(text))
        header = next(reader, [])
        if "case_id" not in header:
            return ""
        column = header.index("case_id")
        writer.writerow(header)
        for row in reader:
            if len(row) > column and row[column] in case_ids:
                found += 1
            else:
                others += 1
                writer.writerow(row)
    except csv.Error:
        return ""
    finally:
        csv.field_size_limit(field_limit)
    if not found:
        return None
    return "".join(kept) if others else ""


class _Lines:
    """A file-like object that keeps what is written as a list of strings."""

    def __init__(self, parts: list) -> None:
        self.write = parts.append


def _lines_of(text: str):
    """The lines of ``text`` with their line ends, one at a time (no copy of the whole text)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on ``folder`` itself while the block runs, among DoseAlign's runs, which hold it a moment;
    waited for two seconds at most (a user's ``flock OUT dosealign ...`` holds it for the whole run: that run goes on
    without it, sixty-sixth hostile trial BN4; none where folders cannot be locked)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(str(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        end = time.monotonic() + 2.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    break
                time.sleep(0.05)
            except OSError:
                break
        yield
    finally:
        os.close(fd)


#: What a later run may add to a case folder's meta.json without changing the case (see remove_stale_datasets).
_ADDED_LATER = ("exports", "case_files", "storage", "file_sha256")


def _case_essence(meta: dict) -> dict:
    return {key: value for key, value in meta.items() if key not in _ADDED_LATER}


def _dataset_cases(path: Path, fmt: str, cases: Sequence[str]):
    """``{case_id: its meta.json less _ADDED_LATER as the file records it}`` (None where the file records none: a
    datalist; ``{}`` for a group of dataset.h5 that is none of ``cases``, whose attributes are not read) of a
    DoseAlign dataset file; for an HDF5 file that links to other files, or holds more besides its arrays than the
    meta.json of those of ``cases`` it holds may take, why it is not read (a text)."""
    import json

    if fmt == "hdf5":
        import h5py

        from ..limits import limit, megabytes
        from .file_check import besides_arrays, outside_links

        with h5py.File(path, "r") as handle:
            found = {}
            outside = outside_links(h5py, handle)
            if outside is not None:  # not as DoseAlign wrote it (R9): nothing is read of it
                return f"links to other files ({outside})"
            besides = besides_arrays(h5py, handle, path)
            ours = set(handle) & set(cases)  # other groups (empty ones too) raise no bound (twenty-first trial U2)
            most = (2 * len(ours) + 2) * megabytes(limit("DOSEALIGN_META_MB")) + (1 << 20)
            if besides > most:  # its attributes, meta_json above all, read as meta.json is (twentieth trial T4)
                return f"holds {besides:,} bytes besides its arrays, more than its cases' meta.json may take"
            for case_id in handle:
                if case_id not in ours:
                    found[case_id] = {}  # no case of OUT's: the file is stale whatever it records
                    continue
                try:
                    found[case_id] = _case_essence(json.loads(handle[case_id].attrs["meta_json"]))
                except (KeyError, ValueError, TypeError, AttributeError):
                    found[case_id] = {}  # recorded otherwise: never equal, the file is rebuilt next time
            return found
    data = _datalist(path) or {}
    found = {}
    for part in ("training", "validation"):
        for entry in data.get(part) or []:
            meta = entry.get("meta")
            if isinstance(meta, str) and meta.endswith("/meta.json"):
                found[meta[: -len("/meta.json")]] = None
    return found


def _datalist(path: Path) -> Optional[dict]:
    """A dataset.json as DoseAlign writes it (an object whose ``training`` and ``validation`` are lists of
    objects), read within ``DOSEALIGN_META_MB``; None for anything else: a file too large, unreadable, or of another
    shape is not known to be DoseAlign's (eighteenth hostile trial R2: ``"training": 5`` ended export and merge in a
    traceback; R3: a sparse file of 2 GiB was read whole, 4.3 GB)."""
    import json

    from ..limits import read_back

    try:
        data = json.loads(read_back(path, "DOSEALIGN_META_MB").decode("utf-8"))
    except (OSError, DoseAlignError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    for part in ("training", "validation"):
        entries = data.get(part, [])
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            return None
    return data


def _unreadable_hdf5(path: Path) -> Optional[str]:
    """Why an HDF5 file (by its first bytes) cannot be opened, where it cannot: another program holds it open for
    writing (HDF5's file lock) and whether it is DoseAlign's, and what it holds, cannot be told (sixty-sixth hostile
    trial BN7: such a dataset.h5 kept the old doses of cases made again, exit 0, no note)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89HDF\r\n\x1a\n":
                return None
        import h5py

        with h5py.File(path, "r"):
            return None
    except ImportError:
        return None
    except Exception as error:  # (h5py raises OSError, sometimes others, for a locked or damaged file)
        return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _made_by_dosealign(path: Path, fmt: str) -> bool:
    """Whether a dataset file is DoseAlign's own (see :func:`remove_stale_datasets`)."""

    try:
        if fmt == "hdf5":
            import h5py

            with h5py.File(path, "r") as handle:
                return "dosealign_version" in handle.attrs
        data = _datalist(path)
        return data is not None and str(data.get("reference", "")).startswith("DoseAlign ")
    except Exception:  # unreadable, not HDF5 or JSON, h5py missing: not known to be ours
        return False


def _check_target(folder: Path, target: Path, ours: set) -> None:
    """A format file is added to a finished case folder only where nothing stands but a regular file DoseAlign
    wrote (one of ``ours``, the files its meta.json records): a folder, a named pipe or a symbolic link at its name
    (or at a folder's name on its way), or a file it does not record, is the user's, and the case fails naming it.
    Such a folder ended --resume in an IsADirectoryError traceback; a pipe was replaced without a word (nineteenth
    hostile trial S4, S5); a user's own dose.nii.gz was replaced (twenty-first trial U5)."""
    rel = target.relative_to(folder)
    for step in [folder / part for part in list(rel.parents)[::-1][1:]] + [target]:
        if not os.path.lexists(step):
            return
        if os.path.islink(step):
            kind = "a symbolic link"
        elif step == target:
            kind = entry_kind(step)
            if kind is None and rel.as_posix() not in ours:
                kind = "a file meta.json does not record as written"
        else:
            kind = None if step.is_dir() else "a file where a folder belongs"
        if kind is not None:
            raise DoseAlignError(
                f"{step.relative_to(folder).as_posix()} is {kind}, not DoseAlign's: it is not replaced",
                path=folder,
                hint="move it away and export again",
            )
