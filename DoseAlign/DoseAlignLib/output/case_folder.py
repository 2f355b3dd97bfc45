"""Case folders written atomically: a case folder appears whole or not at all.

Layout (the output contract, see README): ``OUT/<case_id>/pair.npz`` (ct, dose and further arrays,
axes k, j, i) and ``OUT/<case_id>/meta.json``; ``OUT/manifest.csv`` (:mod:`.manifest`) one row per case.
With the ``npy`` layout each array is its own ``OUT/<case_id>/<name>.npy`` instead of a pair.npz member.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import DoseAlignError, output_fault
from ..limits import LimitError, entry_kind, open_regular, read_back
from .dvh_csv import write_dvh_csv
from .file_check import format_file_problem, values_digest
from .file_names import unique_file_names
from .files import (
    RunClaim,
    claim_for,
    dead_claims,
    fsync_path,
    fsync_tree,
    is_run_entry,
    json_text,
    remove_dead,
)
from .npz import NpyStream, NpzStream


def case_dir(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / case_id


def is_complete(out_dir: Path, case_id: str) -> bool:
    """True when the case's folder holds its outputs whole (see :func:`case_problem`)."""
    return case_problem(case_dir(out_dir, case_id)) is None


def read_meta(path: Path):
    """A case folder's meta.json, parsed; read only when it is a regular file (a named pipe or a device
    planted in OUT would block or never end) of at most ``DOSEALIGN_META_MB``: :class:`OSError` otherwise,
    :class:`~DoseAlignLib.limits.LimitError` for a larger file, ``ValueError`` when it does not parse (also
    when nested too deeply to parse). :func:`load_meta` also checks what it holds."""
    text = read_back(path, "DOSEALIGN_META_MB").decode("utf-8")
    try:
        return json.loads(text)
    except RecursionError:  # nested deeper than Python's parser goes: not one of ours
        raise ValueError("meta.json is nested too deeply") from None


class DamagedOutput(DoseAlignError):
    """A case folder's meta.json cannot be read, is not DoseAlign's, or holds a value no export writes."""


def load_meta(folder: Path) -> dict:
    """The meta.json of a finished case folder, for everything that reads one back (``--resume``, the
    manifest, report.html, merge, the dataset files): read as :func:`read_meta` does and checked by
    :func:`meta_problem`; :class:`DamagedOutput` naming the file and the reason otherwise."""
    folder = Path(folder)
    problem = _meta_file_problem(folder / "meta.json")
    if isinstance(problem, str):
        raise DamagedOutput(problem, path=folder / "meta.json")
    damaged = meta_problem(problem, folder.name)
    if damaged:
        raise DamagedOutput(f"meta.json is damaged ({damaged})", path=folder / "meta.json")
    return problem


def _meta_file_problem(path: Path):
    """meta.json parsed (a dict of DoseAlign's), or why it is not (a str)."""
    kind = entry_kind(path)
    if kind == "missing":
        return "meta.json is missing"
    if kind is not None:
        return f"meta.json is {kind}, not a regular file"
    try:
        meta = read_meta(path)
    except LimitError as error:
        return f"meta.json {error.message} ({error.hint})"
    except (OSError, ValueError) as error:
        return f"meta.json cannot be read ({type(error).__name__})"
    if not isinstance(meta, dict) or "dosealign_version" not in meta:
        return "meta.json is not DoseAlign's"
    return meta


def case_problem(folder: Path) -> Optional[str]:
    """Why a case folder is not a complete output (None when it is).

    meta.json must be DoseAlign's, readable, and hold values an export writes (:func:`meta_problem`);
    ``pair.npz`` must be a whole zip archive (its directory at the end, every member inside the file)
    whose ``ct`` and ``dose`` headers read, whose sizes agree with them and whose shape is meta.json's;
    in the ``npy`` layout each ``.npy`` file must be as long as its header says; the arrays' types and the mask
    channels (one per ROI name) must be what meta.json says (:func:`_arrays_disagreement`). Data bytes are not read:
    a file cut short, or a folder a killed or failing run left, is found; bit rot inside an array is not.
    """
    folder = Path(folder)
    meta = _meta_file_problem(folder / "meta.json")
    if isinstance(meta, str):
        return meta
    damaged = meta_problem(meta, folder.name)
    if damaged:
        return f"meta.json is damaged ({damaged})"
    shape = tuple(meta["shape"])
    headers: dict = {}  # name -> (shape, dtype) of each array, from its .npy header
    npz_kind = entry_kind(folder / "pair.npz")
    if npz_kind is None:
        problem = _npz_problem(folder / "pair.npz", shape, headers)
        return problem or _arrays_disagreement(meta, headers, "pair.npz")
    if entry_kind(folder / "ct.npy") is None:
        for path in sorted(folder.glob("*.npy")):
            problem = _npy_problem(path, shape if path.stem in ("ct", "dose") else None, headers)
            if problem:
                return problem
        dose_kind = entry_kind(folder / "dose.npy")
        if dose_kind is not None:
            return f"dose.npy is {dose_kind}" + _NOT_REGULAR * (dose_kind != "missing")
        return _arrays_disagreement(meta, headers, "the .npy files")
    return f"pair.npz is {npz_kind}" + _NOT_REGULAR * (npz_kind != "missing")


def _arrays_disagreement(meta: dict, headers: dict, where: str) -> Optional[str]:
    """What meta.json says of the arrays that their headers (``{name: (shape, dtype)}``, read from ``where``)
    contradict: the CT's and the dose's type, one mask channel per name of ``structures.names``, the masks and
    the body on the grid of ``shape``."""
    problem = _headers_disagreement(meta, headers)
    return f"meta.json disagrees with {where} ({problem})" if problem else None


def _headers_disagreement(meta: dict, headers: dict) -> Optional[str]:
    k, j, i = meta["shape"]
    stored = (meta.get("storage") or {}).get("dtypes")
    for name in ("ct", "dose"):
        described = (meta.get("arrays") or {}).get(name)
        dtype = described.get("dtype") if isinstance(described, dict) else None
        found = headers[name][1] if name in headers else None
        if dtype is not None and found is not None and found != dtype:
            return f"arrays.{name}.dtype: {dtype}, but {name} is {found}"
        if isinstance(stored, dict) and name in stored and found is not None and stored[name] != found:
            return f"storage.dtypes.{name}: {stored[name]}, but {name} is {found}"
    names = (meta.get("structures") or {}).get("names") or []
    packed = (k, j, (i + 7) // 8)
    if "masks" not in headers:
        return f"structures.names: {len(names)} names, but no masks" if names else None
    expected = {"masks": (len(names), *packed), "body": packed, "masks_fraction": (len(names), k, j, i)}
    for name, want in expected.items():
        if name not in headers:
            continue
        found, dtype = headers[name]
        if name != "body" and found[:1] != want[:1]:
            return f"structures.names: {len(names)} names, but {name} has {found[0]} channels"
        if found != want or dtype != "uint8":
            return f"shape: {name} is {_shape(found)} {dtype}, not {_shape(want)} uint8 on this grid"
    return None


_NOT_REGULAR = ", not a regular file"


def meta_problem(meta: dict, case_id: Optional[str] = None) -> Optional[str]:
    """What in a DoseAlign meta.json no export writes (an edited or damaged file), or None.

    The one check of every field read back from a case folder: by ``--resume`` (options, source,
    resampling, version, pseudonymized), the manifest (shape, spacing, reference, interpolator, dose
    maximum, warnings, manifest_extra, patient, summation type, source files), report.html (audit
    flags), ``merge`` and the dataset files (case_id, ijk_to_lps, frame of reference, arrays,
    structures, exports). Values must be of their kind and possible: a shape of positive integers,
    a spacing finite and > 0, a case_id that is the folder's name (``case_id``, when given); and the file must
    agree with itself (:func:`_disagreement`: the grid records, the dose's records, the ROI names). What it
    says of the arrays is checked against their headers by :func:`case_problem`.
    """

    def texts(value, optional: bool = True) -> bool:
        return (optional and value is None) or (isinstance(value, list) and all(isinstance(v, str) for v in value))

    def dict_of(value, optional: bool = True) -> bool:
        return (optional and value is None) or isinstance(value, dict)

    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_integer(n) and n >= 1 for n in shape)):
        return "shape: not three positive integers"
    spacing = meta.get("spacing")
    if not (isinstance(spacing, list) and len(spacing) == 3 and all(_number(s) and s > 0 for s in spacing)):
        return "spacing: not three finite numbers > 0"
    matrix = meta.get("ijk_to_lps")
    if not (
        isinstance(matrix, list)
        and len(matrix) == 4
        and all(isinstance(row, list) and len(row) == 4 and all(_number(v) for v in row) for row in matrix)
    ):
        return "ijk_to_lps: not a 4 x 4 matrix of finite numbers"
    columns = [math.sqrt(sum(matrix[r][c] ** 2 for r in range(3))) for c in range(3)]
    if any(abs(a - b) > 1e-3 * max(b, 1e-6) for a, b in zip(columns, spacing)):
        return "spacing: not the spacing of ijk_to_lps"
    if not isinstance(meta.get("dosealign_version"), str):
        return "dosealign_version"
    if not isinstance(meta.get("case_id"), str) or (case_id is not None and meta["case_id"] != case_id):
        return "case_id: not the name of its folder"
    for key in ("patient_id", "frame_of_reference_uid"):
        if not isinstance(meta.get(key, ""), (str, type(None))):
            return key
    for key in ("options", "source", "resampling", "dose", "manifest_extra", "arrays", "structures", "audit"):
        if not dict_of(meta.get(key)):
            return f"{key}: not an object"
    for key in ("exports", "storage", "pseudonymized", "qa_png"):
        if key in meta and not isinstance(meta[key], dict):
            return f"{key}: not an object"
    resampling, dose = meta.get("resampling") or {}, meta.get("dose") or {}
    if not all(isinstance(resampling.get(k), str) for k in ("reference", "interpolator")):
        return "resampling"
    if not isinstance(resampling.get("backend", ""), str):
        return "resampling.backend"
    if not _number(dose.get("max_gy_output")):
        return "dose.max_gy_output: not a finite number"
    if not all(isinstance(dose.get(k, ""), str) for k in ("summation_type", "units")):
        return "dose"
    source = meta.get("source") or {}
    if not all(texts(source.get(k)) for k in ("ct_files", "rtdose_files", "rtstruct_files")):
        return "source: file lists"
    if not isinstance(source.get("rtplan_file"), (str, type(None))):
        return "source.rtplan_file"
    if not texts(meta.get("warnings", []), optional=False):
        return "warnings: not a list of texts"
    extra = meta.get("manifest_extra") or {}
    if not all(isinstance(v, (str, int, float, bool, type(None))) for v in extra.values()):
        return "manifest_extra: not a row of values"
    for name, array in (meta.get("arrays") or {}).items():
        if not isinstance(array, dict) or not isinstance(array.get("outside_value", 0), (int, float)):
            return f"arrays.{name}"
    structures = meta.get("structures") or {}
    if not texts(structures.get("names")):
        return "structures.names: not a list of texts"
    rois = structures.get("rois")
    if not (rois is None or isinstance(rois, list) and all(isinstance(r, dict) for r in rois)):
        return "structures.rois: not a list of objects"
    if any(not isinstance(r.get("name", ""), str) for r in rois or []):
        return "structures.rois: a name that is not a text"
    if not dict_of(structures.get("body")):
        return "structures.body: not an object"
    flags = (meta.get("audit") or {}).get("flags")
    if not (flags is None or isinstance(flags, list) and all(isinstance(f, dict) for f in flags)):
        return "audit.flags: not a list of objects"
    for fmt, entry in (meta.get("exports") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("files", {}), dict):
            return f"exports.{fmt}: not an object with files"
    nifti = (meta.get("exports") or {}).get("nifti")
    if nifti is not None:
        problem = _nifti_files_problem(nifti.get("files"), structures.get("names") or [])
        if problem:
            return f"exports.nifti.files: {problem}"
    return _disagreement(meta)


#: The file name of each NIfTI mask, as the writer makes it: under masks/, one folder level, no way out of it.
_NIFTI_MASK = re.compile(r"masks/[^/\\]+\.nii\.gz")


def _nifti_files_problem(files, names: list) -> Optional[str]:
    """What is wrong with a case's ``exports.nifti.files`` (dataset.json's paths are made from it), else None: the
    files the NIfTI writer names, a mask per ROI name at most, each under masks/. A missing ``ct`` ended --resume,
    --append and merge in a KeyError; ``ct`` set to ``dose.nii.gz`` made the datalist's image the dose
    (twenty-second hostile trial V1, V2)."""
    if not isinstance(files, dict):
        return "not an object"
    if files.get("ct") != "ct.nii.gz" or files.get("dose") != "dose.nii.gz":
        return "not ct.nii.gz and dose.nii.gz"
    if files.get("body") not in (None, "body.nii.gz"):
        return "a body mask that is not body.nii.gz"
    masks = files.get("masks", {})
    if not isinstance(masks, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in masks.items()):
        return "masks: not an object of file names"
    if any(".." in v.split("/") or not _NIFTI_MASK.fullmatch(v) for v in masks.values()):
        return "a mask file that is not masks/<name>.nii.gz"
    if set(masks) - set(names) or len(set(masks.values())) != len(masks):
        return "masks that are not the case's ROIs, one file each"
    # each ROI's file as the writer names it, in the order it wrote them: two files swapped made dataset.json's
    # channel PTV the cord's mask (twenty-third hostile trial W1)
    expected = [f"masks/{name}.nii.gz" for name in unique_file_names(list(masks))]
    if list(masks.values()) != expected:
        return "mask files that are not the ones the writer names for their ROIs"
    return None


# ---- meta.json agrees with itself (fourth hostile trial D4) ----------------------------------------------------
# Besides the kinds above, every value an export writes in two places, or derives from another, must agree:
# a disagreement is an edit (or damage) and the case is exported again. Each rule names the field it found wrong.

#: How far (mm) two records of one position may differ (JSON keeps floats exactly; the audit rounds to 1 um).
_POSITION_MM = 0.01
#: LPS -> RAS: x and y change sign.
_RAS_SIGNS = (-1.0, -1.0, 1.0, 1.0)


def _disagreement(meta: dict) -> Optional[str]:
    """The first field of ``meta`` (whose kinds :func:`meta_problem` checked) that disagrees with another field
    or holds a value no export writes, as ``"<field>: why"``; None when all agree."""
    for check in (_non_finite, _geometry_disagreement, _dose_disagreement, _structures_disagreement):
        problem = check(meta)
        if problem:
            return problem
    return None


def _non_finite(meta: dict) -> Optional[str]:
    """The first number in ``meta`` that is not finite (NaN, Infinity: DoseAlign writes none), by its path.
    Walked without recursion: a file nested as deep as the parser goes is read to its end, not to a crash."""
    pending = [("", meta)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            where = where if len(where) <= 120 else f"{where[:117]}..."
            return f"{where or 'meta.json'}: not a finite number ({value})"
        if isinstance(value, dict):
            items = [(f"{where}.{key}" if where else str(key), item) for key, item in value.items()]
        elif isinstance(value, list):
            items = [(f"{where}[{n}]", item) for n, item in enumerate(value)]
        else:
            continue
        pending.extend(reversed(items))  # depth first, in the file's order
    return None


def _number(value) -> bool:
    """A finite JSON number, not a bool, of a size DoseAlign writes (under 1e150, so that its square, which the checks
    take of a matrix's columns, is one too: 1e200 overflowed there, eighty-sixth hostile trial CH3); a whole number
    beyond a float's range is none (a kept meta.json holding one ended every later run in an OverflowError's
    traceback: eighty-fourth hostile trial CF5)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and abs(value) < 1e150
    except OverflowError:
        return False


def _matrix(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(row, list) and len(row) == 4 and all(_number(v) for v in row) for row in value)
    )


def _close(a: Sequence, b: Sequence, atol: float) -> bool:
    """Whether the numbers of ``a`` are within ``atol`` of ``b``'s; a value of ``a`` that is no number :func:`_number`
    takes is not (a whole number of 400 digits in spacing_kji overflowed here: eighty-sixth hostile trial CH3)."""
    return len(a) == len(b) and all(_number(x) and _number(y) and abs(x - y) <= atol for x, y in zip(a, b))


def _grid_disagreement(grid: dict, where: str, ras: bool = True) -> Optional[str]:
    """What in a grid record (``Grid.to_dict``: shape, spacing, origin_lps, direction, ijk_to_lps, and with
    ``ras`` ijk_to_ras) disagrees with the rest of it; each field is checked when present."""
    shape = grid.get("shape")
    if shape is not None and not (
        isinstance(shape, list) and len(shape) == 3 and all(_integer(n) and n >= 1 for n in shape)
    ):
        return f"{where}shape: not three positive integers"
    matrix = grid.get("ijk_to_lps")
    if not _matrix(matrix):
        return f"{where}ijk_to_lps: not a 4 x 4 matrix of finite numbers"
    if matrix[3] != [0, 0, 0, 1]:
        return f"{where}ijk_to_lps: its last row is not 0 0 0 1"
    columns = [[matrix[r][c] for r in range(3)] for c in range(3)]
    norms = [math.sqrt(sum(v * v for v in column)) for column in columns]
    if min(norms) <= 0:
        return f"{where}ijk_to_lps: a column of length 0"
    spacing = grid.get("spacing")
    if spacing is not None and not (
        isinstance(spacing, list)
        and len(spacing) == 3
        and all(_number(s) and s > 0 for s in spacing)
        and all(abs(a - b) <= 1e-3 * b for a, b in zip(norms, spacing))
    ):
        return f"{where}spacing: not the spacing of ijk_to_lps (the lengths of its columns)"
    origin = grid.get("origin_lps")
    if origin is not None and not (isinstance(origin, list) and _close(origin, [row[3] for row in matrix[:3]], 1e-6)):
        return f"{where}origin_lps: not the origin of ijk_to_lps"
    direction = grid.get("direction")
    if direction is not None and not (
        isinstance(direction, list)
        and len(direction) == 3
        and all(
            isinstance(row, list) and _close(row, [columns[c][r] / norms[c] for c in range(3)], 1e-6)
            for r, row in enumerate(direction)
        )
    ):
        return f"{where}direction: not the axes of ijk_to_lps"
    ras_matrix = grid.get("ijk_to_ras") if ras else None
    if ras_matrix is not None and not (
        _matrix(ras_matrix)
        and all(_close(ras_matrix[r], [_RAS_SIGNS[r] * v for v in matrix[r]], 1e-6) for r in range(4))
    ):
        return f"{where}ijk_to_ras and {where}ijk_to_lps: not one grid (ijk_to_ras is ijk_to_lps with x and y reversed)"
    return None


def _geometry_disagreement(meta: dict) -> Optional[str]:
    """The output grid's fields against each other, against the grid it was taken from (the CT's or the dose's
    own grid, when it is that grid unchanged) and against the audit's dose maximum (its voxel and position)."""
    problem = _grid_disagreement(meta, "", ras=False)  # ijk_to_ras last: ijk_to_lps is checked against the others
    if problem:
        return problem
    spacing, matrix, shape = meta["spacing"], meta["ijk_to_lps"], meta["shape"]
    kji = meta.get("spacing_kji")
    if kji is not None and not (isinstance(kji, list) and _close(kji, spacing[::-1], 1e-9)):
        return "spacing_kji: not spacing in the order k, j, i"
    geometry = meta.get("geometry")
    ct = geometry.get("ct") if isinstance(geometry, dict) else None
    native = ct.get("native_grid") if isinstance(ct, dict) else None
    if native is not None:
        if not isinstance(native, dict):
            return "geometry.ct.native_grid: not an object"
        problem = _grid_disagreement(native, "geometry.ct.native_grid.")
        if problem:
            return problem
    dose = meta.get("dose") or {}
    grids = dose.get("native_grids")
    if grids is not None and not (isinstance(grids, list) and all(isinstance(g, dict) for g in grids)):
        return "dose.native_grids: not a list of objects"
    for n, grid in enumerate(grids or []):
        problem = _grid_disagreement(grid, f"dose.native_grids[{n}].")
        if problem:
            return problem
    how = (meta.get("resampling") or {}).get("reference_grid")
    taken = None  # the grid the output grid is, unchanged: the CT's (not regularized, not cropped) or the dose's
    if how == "the CT grid" and isinstance(ct, dict) and ct.get("regularized") is False:
        taken = native, "geometry.ct.native_grid"
    elif how == "the dose grid" and grids:
        taken = grids[0], "dose.native_grids[0]"
    if taken is not None and taken[0] is not None:
        grid, name = taken
        if grid.get("shape") is not None and grid["shape"] != shape:
            return f"shape: not the shape of {name}, the grid it is"
        if not all(_close(matrix[r], grid["ijk_to_lps"][r], 1e-6) for r in range(3)):
            return f"ijk_to_lps: not the ijk_to_lps of {name}, the grid it is"
    output = ((meta.get("audit") or {}).get("dose") or {}).get("output")
    if isinstance(output, dict) and "dmax_index" in output:
        index, lps = output.get("dmax_index"), output.get("dmax_lps")
        if not (
            isinstance(index, list)
            and len(index) == 3
            and all(_integer(v) and 0 <= v < n for v, n in zip(index, shape))
            and isinstance(lps, list)
            and len(lps) == 3
            and all(_number(v) for v in lps)
        ):
            return "audit.dose.output.dmax_index: not a voxel of the grid"
        k, j, i = index
        mapped = [matrix[r][0] * i + matrix[r][1] * j + matrix[r][2] * k + matrix[r][3] for r in range(3)]
        if not _close(mapped, lps, _POSITION_MM):
            return "ijk_to_lps: does not map the dose maximum's voxel (audit.dose.output.dmax_index) to its position"
    return _grid_disagreement({"ijk_to_lps": matrix, "ijk_to_ras": meta.get("ijk_to_ras")}, "")


def _dose_disagreement(meta: dict) -> Optional[str]:
    """The dose's units, type, scalings and maximum: values the RTDOSE reader accepts, recorded alike."""
    from ..dicom.rtdose import DOSE_TYPES, MAX_DOSE_GY, MIN_SCALING  # only when a case folder is read back

    dose, arrays = meta.get("dose") or {}, meta.get("arrays") or {}
    units = dose.get("units")
    if units not in ("GY", "RELATIVE"):
        return f"dose.units: {units!r} is not a unit DoseAlign writes (GY, or RELATIVE with allow_relative)"
    if units == "RELATIVE" and not (meta.get("options") or {}).get("allow_relative"):
        return "dose.units: RELATIVE without the option allow_relative"
    dose_array = arrays.get("dose")
    if isinstance(dose_array, dict) and dose_array.get("units") != units:
        return f"arrays.dose.units: {dose_array.get('units')!r} is not dose.units ({units})"
    ct_array = arrays.get("ct")
    if isinstance(ct_array, dict) and ct_array.get("units") != "HU":
        return f"arrays.ct.units: {ct_array.get('units')!r} is not HU"
    if "type" in dose and dose["type"] not in DOSE_TYPES:
        return f"dose.type: {dose['type']!r} is not a DoseType DoseAlign exports"
    if not -MAX_DOSE_GY <= dose["max_gy_output"] <= MAX_DOSE_GY:
        return "dose.max_gy_output: beyond any dose DoseAlign reads"
    scalings = dose.get("dose_grid_scaling")
    if scalings is not None and not (
        isinstance(scalings, list)
        and scalings
        and all(_number(s) and MIN_SCALING <= s <= MAX_DOSE_GY for s in scalings)
    ):
        return f"dose.dose_grid_scaling: not DoseGridScalings DoseAlign accepts ({MIN_SCALING:g}..{MAX_DOSE_GY:g})"
    bits = dose.get("bits_allocated")
    if bits is not None and not (isinstance(bits, list) and all(b in (16, 32) and _integer(b) for b in bits)):
        return "dose.bits_allocated: not 16 or 32"
    source = meta.get("source") or {}
    files = source.get("rtdose_files")
    if isinstance(files, list):  # the doses read (summed, when several): one record of each per file
        for key, value in (
            ("source.rtdose_sop_uids", source.get("rtdose_sop_uids")),
            *((f"dose.{k}", dose.get(k)) for k in ("dose_grid_scaling", "bits_allocated", "native_grids")),
        ):
            if isinstance(value, list) and len(value) != len(files):
                return f"{key}: {len(value)} values for {len(files)} RTDOSE files (source.rtdose_files)"
    for name, array in arrays.items():
        dtype = array.get("dtype")
        if dtype is not None and dtype not in _DTYPES:
            return f"arrays.{name}.dtype: {dtype!r} is not a type DoseAlign writes"
        if not _number(array.get("outside_value", 0)):
            return f"arrays.{name}.outside_value: not a finite number"
    fill = (meta.get("options") or {}).get("ct_fill_hu")
    if isinstance(ct_array, dict) and fill is not None and ct_array.get("outside_value") != fill:
        return f"arrays.ct.outside_value: not options.ct_fill_hu ({fill})"
    return None


#: The array types DoseAlign writes (pair.npz members, .npy files).
_DTYPES = frozenset({"int16", "float32", "float16", "uint8", "bool", "int32", "int64", "float64", "uint16"})


def _structures_disagreement(meta: dict) -> Optional[str]:
    """The ROI names (one per mask channel) against the per-ROI records and the presence flags."""
    structures = meta.get("structures") or {}
    names = structures.get("names") or []
    if len(set(names)) != len(names):
        return "structures.names: a name twice (DoseAlign makes them unique)"
    present = structures.get("roi_present")
    if present is not None and not (isinstance(present, list) and all(isinstance(p, bool) for p in present)):
        return "structures.roi_present: not a list of true/false"
    rois = structures.get("rois")
    if rois is not None and len(rois) != len(names):
        return f"structures.names: {len(names)} names, but {len(rois)} ROIs in structures.rois"
    if present is not None and len(present) != len(names):
        return f"structures.names: {len(names)} names, but {len(present)} flags in structures.roi_present"
    for n, (name, roi) in enumerate(zip(names, rois or [])):
        if roi.get("index", n) != n or roi.get("name") != name:
            return f"structures.names: name {n} ({name!r}) is not structures.rois[{n}] ({roi.get('name')!r})"
        if present is not None and present[n] != ("absent" not in roi):
            return f"structures.roi_present[{n}]: not what structures.rois[{n}] says"
    return None


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _npz_problem(path: Path, shape: Optional[tuple] = None, headers: Optional[dict] = None) -> Optional[str]:
    """Why ``path`` is no whole pair.npz whose ct and dose have ``shape`` (None when it is); ``headers`` (when
    given) gets ``{name: (shape, dtype name)}`` of the members meta.json describes besides (masks, body)."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            for name in ("ct.npy", "dose.npy"):
                if name not in members:
                    return f"pair.npz has no {name[:-4]}"
            for info in members.values():
                if info.header_offset + info.compress_size > size:
                    return f"pair.npz is cut short inside {info.filename}"
            for name in ("masks.npy", "body.npy", "masks_fraction.npy"):
                if headers is not None and name in members:
                    with archive.open(name) as member:
                        headers[name[:-4]] = _npy_header(member, dtype=True)[1:]
            for name in ("ct.npy", "dose.npy"):
                with archive.open(name) as member:
                    expected, found, dtype = _npy_header(member, dtype=True)
                if headers is not None:
                    headers[name[:-4]] = (found, dtype)
                if expected is not None and expected != members[name].file_size:
                    return f"pair.npz: {name} holds {members[name].file_size} bytes, its header says {expected}"
                if shape is not None and found != shape:
                    return f"pair.npz: {name[:-4]} has the shape {_shape(found)}, meta.json says {_shape(shape)}"
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as error:
        return f"pair.npz is damaged or cut short ({type(error).__name__})"
    return None


def _npy_problem(path: Path, shape: Optional[tuple] = None, headers: Optional[dict] = None) -> Optional[str]:
    try:
        with open_regular(path) as handle:
            expected, found, dtype = _npy_header(handle, dtype=True)
        if headers is not None:
            headers[path.stem] = (found, dtype)
        if expected is not None and expected != path.stat().st_size:
            return f"{path.name} holds {path.stat().st_size} bytes, its header says {expected}"
        if shape is not None and found != shape:
            return f"{path.name} has the shape {_shape(found)}, meta.json says {_shape(shape)}"
    except (OSError, ValueError) as error:
        return f"{path.name} is damaged ({type(error).__name__})"
    return None


def _shape(shape: tuple) -> str:
    return "x".join(str(n) for n in shape)


def _npy_header(handle, dtype: bool = False) -> tuple:
    """``(length, shape)`` of an .npy stream, from its header: the length it must have (None for object
    arrays) and the array's shape; ``(length, shape, dtype name)`` with ``dtype``."""
    version = np.lib.format.read_magic(handle)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, found = reader(handle)
    length = None if found.hasobject else handle.tell() + int(np.prod(shape, dtype=np.int64)) * found.itemsize
    return (length, tuple(shape), found.name) if dtype else (length, tuple(shape))


#: The file that holds (the first of) a case's arrays, per layout.
ARRAY_FILES = {"npz": "pair.npz", "npy": "ct.npy"}


def storage_of(options) -> dict:
    """How a case's arrays are stored: ``{"layout", "compress", "dtypes"}`` from :class:`AlignOptions` (or None)."""
    layout = getattr(options, "layout", "npz") or "npz"
    dtypes = {"dose": np.float16} if getattr(options, "dose_dtype", "float32") == "float16" else {}
    return {"layout": layout, "compress": bool(getattr(options, "compress", False)), "dtypes": dtypes}


def write_case_output(result, out_dir: Path, extra_files: Sequence[Callable[[Path], None]] = (), options=None) -> Path:
    """Write ``pair.npz`` and ``meta.json`` of a :class:`CaseResult` into ``out_dir/<case_id>``.

    The files go into a temporary folder that is renamed into place at the end; an existing
    output of the same case is replaced only then. Each of ``extra_files`` is called with the
    temporary folder to add its files there (e.g. qa.png), while pair.npz is written; it may
    still update ``result.meta`` but must not change the arrays. ``options`` (:class:`AlignOptions`)
    chooses the storage (layout, compression, dose type).
    """
    return CaseOutput(out_dir, options).finish(result, extra_files)


class CaseOutput:
    """One case's output folder in the making: ``pair.npz`` is written while the case is computed.

    Give :func:`~DoseAlignLib.pipeline.run_case` :meth:`add_array` as its ``sink``: the CT and the dose are
    written as soon as each is final. :meth:`finish` adds the rest and renames the temporary
    folder into place; :meth:`discard` (or a failing ``finish``) removes it.
    """

    def __init__(self, out_dir: Path, options=None) -> None:
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # no case id in the name (it may still be pseudonymized); the run's own temporary name
            self.temp = claim_for(self.out_dir).temp("case")
            self.temp.mkdir()
        except OSError as error:
            raise output_fault(error, self.out_dir) from None
        self.storage = storage_of(options)
        dtypes = self.storage["dtypes"]
        # the arrays are fsynced by the writer thread as they are written (fsync_tree then finds them on disk)
        if self.storage["layout"] == "npy":
            self._npz = NpyStream(self.temp, leading=("ct", "dose"), dtypes=dtypes, sync=True)
        else:  # reproducible bytes, see npz.py
            self._npz = NpzStream(
                self.temp / "pair.npz",
                leading=("ct", "dose"),
                dtypes=dtypes,
                compress=self.storage["compress"],
                sync=True,
            )
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
            if self.storage["layout"] != "npz" or self.storage["compress"] or self.storage["dtypes"]:
                result.meta["storage"] = self._storage_meta(arrays)
            write_dvh_csv(self.temp, result)  # the reference DVHs (audit), when the case has them
            # what this export wrote: a later export replaces only a folder that holds nothing else
            result.meta["case_files"] = sorted(_files_below(self.temp) + ["meta.json"])
            # what each file holds, bound to this meta.json: a kept case's files swapped with another case's (same
            # grid, so the same names, shapes and types) stayed "complete" (twenty-fourth hostile trial X6)
            result.meta["file_sha256"] = file_digests(self.temp, result.meta["case_files"])
            (self.temp / "meta.json").write_text(json_text(result.meta), encoding="utf-8")
            fsync_tree(self.temp)  # the data are on the disk before the folder appears complete
            final = case_dir(self.out_dir, result.case_id)
            _replace_dir(self.temp, final, result.meta)
            fsync_path(self.out_dir)
        except BaseException as error:
            self.discard()  # frees what the case took (on a full disk: room for the manifest)
            if isinstance(error, OSError):
                raise output_fault(error, self.out_dir) from None
            raise
        return final

    def _storage_meta(self, arrays: dict) -> dict:
        npy = self.storage["layout"] == "npy"
        dtypes = self.storage["dtypes"]
        return {
            "layout": self.storage["layout"],
            "files": {n: f"{n}.npy" for n in arrays} if npy else {n: f"pair.npz:{n}" for n in arrays},
            "compressed": self.storage["compress"],
            "dtypes": {n: np.dtype(dtypes.get(n, np.asarray(a).dtype)).name for n, a in arrays.items()},
            "read": "np.load(f'{case}/<name>.npy', mmap_mode='r') maps an array without reading it"
            if npy
            else "np.load(f'{case}/pair.npz')[name]",
        }

    def discard(self) -> None:
        self._npz.abort()
        shutil.rmtree(self.temp, ignore_errors=True)


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _digested(meta: dict) -> set:
    """The files of ``meta``'s ``case_files`` whose digest ``file_sha256`` must hold: all but meta.json, and HDF5
    files, which exports before the twenty-sixth hostile trial's Z4 recorded none (compared where recorded)."""
    return {name for name in written_files(meta) or () if name != "meta.json" and not name.endswith(".h5")}


def file_digests(folder: Path, names) -> dict:
    """``{name: SHA-256 of its bytes}`` of the files ``names`` below ``folder``, meta.json left out. Of an HDF5 file
    the SHA-256 of its datasets' values (:func:`~.file_check.values_digest`): HDF5 1.14 writes the time into each file, so
    a digest of its bytes would make meta.json differ from run to run; its attributes are compared with meta.json
    (its case id among them)."""
    digests = {}
    for name in sorted(names):
        if name == "meta.json":
            continue
        if name.endswith(".h5"):
            digests[name] = values_digest(Path(folder) / name)
        else:
            digests[name] = _sha256(Path(folder) / name)
    return digests


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, "case file") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_below(folder: Path) -> list:
    """The files below ``folder``, as paths relative to it (posix)."""
    found = []
    for base, _dirs, files in os.walk(folder):
        found.extend(Path(base, name).relative_to(folder).as_posix() for name in files)
    return found


#: Why a case folder cannot be moved aside that is the folder's own (its attributes, a process in it, a folder of an
#: overlay's lower layer: EXDEV, sixty-second hostile trial), not the disk's.
_NOT_MOVABLE = {errno.EPERM, errno.EACCES, errno.EBUSY, errno.EXDEV}


def _replace_dir(temp: Path, final: Path, meta: Optional[dict] = None) -> None:
    if os.path.lexists(final):
        problem = replacement_problem(final, meta)
        if problem is not None:
            raise problem
        old = claim_for(final.parent).temp("old")
        try:
            os.replace(final, old)
        except OSError as error:
            if error.errno not in _NOT_MOVABLE:
                raise
            # this folder, not the output: the case fails and the batch goes on (an immutable case folder stopped
            # every --resume as if the disk were full: thirty-sixth hostile trial AJ7)
            code = errno.errorcode.get(error.errno or 0, "")
            raise DoseAlignError(
                f"cannot be replaced ({error.strerror or error}{f' ({code})' if code else ''}): the case is not "
                "exported again",
                path=final,
                hint=(
                    "its file system cannot rename it (a folder of an overlay's lower layer): remove it, then run again"
                    if error.errno == errno.EXDEV
                    else "check the folder's permissions and attributes (chattr -i), or move it away"
                )
                + "; the other cases are exported",
            ) from None
        try:
            os.replace(temp, final)
        except OSError:
            os.replace(old, final)  # the case as it was, not a hole
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, final)


def withdraw_case(out_dir: Path, case_id: str) -> Optional[str]:
    """Remove the case folder this run has just written for ``case_id`` (its row then failed after the folder was
    in place: a complete folder behind a failed row would pass for the case). None when it is gone, else why not."""
    final = case_dir(out_dir, case_id)
    if not os.path.isdir(final) or os.path.islink(final):
        return None
    aside = claim_for(final.parent).temp("old")
    try:
        os.replace(final, aside)  # gone at once; removing it may take a while
    except OSError as error:
        return f"its folder could not be removed ({error.strerror or error})"
    shutil.rmtree(aside, ignore_errors=True)
    return None


class OtherCase(DoseAlignError):
    """A case folder holds another input's case under the same case id (see :func:`other_case`)."""


def replacement_problem(folder: Path, meta: Optional[dict] = None) -> Optional[DoseAlignError]:
    """Why the DoseAlign case folder ``folder`` must not be replaced by a new export of the case ``meta``
    describes (None when it may): it holds another input's case (:func:`other_case`; an :class:`OtherCase`), or
    entries DoseAlign did not write (:func:`foreign_entries`), or it is no DoseAlign case folder at all
    (:func:`not_replaceable`)."""
    refusal = not_replaceable(folder)
    if refusal:
        return DoseAlignError(refusal, path=folder, hint="move it away, or export into another folder")
    other = other_case(folder, meta) if meta is not None else None
    if other:
        return OtherCase(
            f"holds another input's case with this case id ({other}): it is left alone and this case is not exported",
            path=folder,
            hint="export both inputs from their common parent folder (their case ids then differ), or into "
            "another output folder",
        )
    try:
        foreign = foreign_entries(folder)
    except OSError as error:
        return DoseAlignError(
            f"cannot be listed ({error.strerror or error}): it is not replaced",
            path=folder,
            hint="check its permissions",
        )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return DoseAlignError(
            f"holds entries DoseAlign did not write ({shown}): the case is not exported again, so that they are "
            "not deleted",
            path=folder,
            hint="move them out of the case folder and export again; --resume keeps the case as it is while its "
            "input is unchanged",
        )
    return None


def other_case(folder: Path, meta: dict) -> str:
    """What shows that the case folder ``folder`` holds another case than the one ``meta`` describes ('' when
    it does not): another patient, or other RTDOSE SOPInstanceUIDs on another CT series. The same patient's
    dose exported again (a new SOPInstanceUID) on the same CT is this case, changed since."""
    try:  # a damaged meta.json tells nothing: such a case is exported again (see case_problem)
        old = load_meta(Path(folder))
    except DoseAlignError:
        return ""
    if not isinstance(meta, dict):
        return ""
    had = old.get("source") if isinstance(old.get("source"), dict) else {}
    wanted = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    if "patient_id" in old and "patient_id" in meta and str(old["patient_id"]) != str(meta["patient_id"]):
        return f"patient {old['patient_id']}"
    old_uids, new_uids = had.get("rtdose_sop_uids"), wanted.get("rtdose_sop_uids")
    if not isinstance(old_uids, list) or not isinstance(new_uids, list):
        return ""
    if uid_form(old) != uid_form(meta):  # real UIDs against keyed hashes (--keep-uids toggled): not comparable,
        return ""  # the same patient's case made another way (fifteenth hostile trial O12 refused it as another's)
    if sorted(str(u) for u in old_uids) == sorted(str(u) for u in new_uids):
        return ""
    if had.get("ct_series_uid") is not None and had.get("ct_series_uid") == wanted.get("ct_series_uid"):
        return ""
    return f"RTDOSE SOPInstanceUID {', '.join(str(u) for u in old_uids[:2])} on CT series {had.get('ct_series_uid')}"


def uid_form(meta: dict) -> str:
    """How a case's meta.json records UIDs: as read ("plain"), or pseudonymized: "kept" or "keyed hashes"."""
    recorded = meta.get("pseudonymized")
    if not isinstance(recorded, dict):
        return "plain"
    return str(recorded.get("uids", "keyed hashes"))


#: Entries of a DoseAlign case folder, whatever the formats and the version (besides those meta.json names).
CASE_FILES = frozenset(
    {"meta.json", "pair.npz", "qa.png", "dvh.csv", "case.h5"}
    | {f"{n}.{x}" for n in ("ct", "dose", "body") for x in ("nii.gz", "nrrd")}
)
#: Folders of a DoseAlign case folder (masks of --format nifti and nrrd, --format openkbp's files).
CASE_FOLDERS = ("masks", "openkbp")
#: Files desktops leave in any folder they show: nobody's work (see :func:`is_litter`).
_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
#: The first bytes of an AppleDouble file (``._name``, the resource fork macOS writes beside a file on other disks).
APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"


def is_litter(path) -> bool:
    """Whether the entry ``path`` is desktop litter, nobody's work: a regular file (not a link, not a folder) named
    ``.DS_Store``, ``Thumbs.db`` or ``desktop.ini``, or an AppleDouble file: named ``._*`` and starting with
    :data:`APPLEDOUBLE_MAGIC`. A folder by such a name, or a ``._notes.txt`` of other content, is someone's."""
    name = os.path.basename(path)
    if name not in _LITTER and not name.startswith("._"):
        return False
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        if name in _LITTER:
            return True
        with open_regular(path) as handle:
            return handle.read(len(APPLEDOUBLE_MAGIC)) == APPLEDOUBLE_MAGIC
    except OSError:  # gone or unreadable: not known to be litter
        return False


def foreign_entries(folder: Path) -> list:
    """Entries of the case folder ``folder`` that DoseAlign did not write (a user's ``notes.txt``, an
    ``annotations/`` folder, a file among the masks), as paths relative to it (folders end with ``/``).

    DoseAlign's are the files its meta.json lists as written (``case_files``), runs' temporary entries; desktop
    litter (:func:`is_litter`: regular files only) is nobody's. A meta.json of an earlier version, without
    ``case_files``: its fixed names (:data:`CASE_FILES`), the files it lists (``exports``, ``storage``), inside
    :data:`CASE_FOLDERS` (when it lists none there: the whole folder). A damaged meta.json: the fixed names, the
    ``.npy`` files and the whole of :data:`CASE_FOLDERS`.
    """
    folder = Path(folder)
    try:
        meta = load_meta(folder)
    except DoseAlignError:  # damaged: what it lists is not trusted, its folders and .npy files count as DoseAlign's
        meta = None
    written = written_files(meta)
    if written is not None:
        return _not_written(folder, written)
    recorded = recorded_files(meta) if isinstance(meta, dict) else None
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name
        if is_run_entry(name) or is_litter(entry.path):
            continue
        is_dir = entry.is_dir(follow_symlinks=False)
        if not is_dir and (name in CASE_FILES or (name.endswith(".npy") and (recorded is None or name in recorded))):
            continue
        if is_dir and name in CASE_FOLDERS:
            below = {p for p in recorded or () if p.startswith(name + "/")}
            if below:
                found.extend(_unlisted(folder, Path(entry.path), below))
            continue
        found.append(name + ("/" if is_dir else ""))
    return found


def _usable_name(name: str) -> bool:
    """Whether ``name``, a file name meta.json records, can name a file on this system (no NUL, nothing the file
    system's encoding cannot write)."""
    try:
        os.fsencode(name)
    except UnicodeError:
        return False
    return "\0" not in name


def written_files(meta) -> Optional[set]:
    """The files meta.json records as written by its export (``case_files``), or None when it records none."""
    listed = meta.get("case_files") if isinstance(meta, dict) else None
    if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
        return None
    return set(listed)


def _not_written(folder: Path, written: set) -> list:
    """:func:`foreign_entries` of a case folder whose meta.json records the files its export wrote."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name
        if is_run_entry(name) or is_litter(entry.path):
            continue
        if entry.is_dir(follow_symlinks=False):
            below = {p for p in written if p.startswith(name + "/")}
            if below:  # a folder it wrote (masks/, openkbp/): what else is in it
                found.extend(_unlisted(folder, Path(entry.path), below))
            else:
                found.append(name + "/")
        elif name not in written:
            found.append(name)
    return found


def _unlisted(case: Path, folder: Path, listed: set) -> list:
    """Files below ``folder`` (relative to ``case``) that are not ``listed``."""
    out = []
    for base, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(base, d))]:
            rel = Path(base, name).relative_to(case).as_posix()
            path = os.path.join(base, name)
            if rel not in listed and not is_run_entry(name) and not is_litter(path):
                out.append(rel)
    return out


def recorded_files(meta: dict) -> set:
    """The files of a case folder its meta.json names: ``exports.<format>.files`` and ``.structures``, and the
    ``storage.files`` of the npy layout."""
    names: set = set()

    def collect(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)
        elif isinstance(value, str):
            names.add(value)

    exports = meta.get("exports")
    for entry in exports.values() if isinstance(exports, dict) else ():
        if isinstance(entry, dict):
            collect(entry.get("files"))
            collect(entry.get("structures"))
    storage = meta.get("storage")
    if isinstance(storage, dict):
        collect(storage.get("files"))
    return names


#: File names a DICOM file may carry (besides the 'DICM' preamble, checked too).
_DICOM_NAMES = (".dcm", ".dicom", ".ima")


def is_case_folder(folder: Path) -> bool:
    """Whether ``folder`` is a case folder DoseAlign wrote, which a new export of the case may replace
    (see :func:`not_replaceable`)."""
    return not_replaceable(folder) is None


def not_replaceable(folder: Path) -> Optional[str]:
    """Why an existing ``folder`` of a case's name is not one DoseAlign wrote, so that no export may replace it
    (the whole message: what was found, and that it is not replaced); None when it may be replaced.

    It must be a real folder (not a symlink) with DoseAlign's meta.json (``dosealign_version``) or a
    pair.npz, hold only regular files (a named pipe or device is no output of DoseAlign) and no DICOM file:
    an input folder that happens to carry a case's name is never replaced.
    """
    folder = Path(folder)
    why = _foreign(folder)
    return None if why is None else f"exists and is not a DoseAlign case folder: {why}; it is not replaced"


def _foreign(folder: Path) -> Optional[str]:
    if folder.is_symlink():
        return "it is a symbolic link"
    if not folder.is_dir():
        return "it is not a folder"
    meta = _meta_file_problem(folder / "meta.json")
    arrays = entry_kind(folder / "pair.npz") is None or (  # (--layout npy: its ct.npy, whole: twentieth trial T9)
        entry_kind(folder / "ct.npy") is None and _npy_problem(folder / "ct.npy") is None
    )
    if isinstance(meta, str) and not arrays:
        return "it holds no meta.json, pair.npz or ct.npy of DoseAlign"
    for base, _dirs, files in os.walk(folder):
        for name in sorted(files):
            path = os.path.join(base, name)
            rel = os.path.relpath(path, folder)
            if name.lower().endswith(_DICOM_NAMES):
                return f"it holds DICOM files ({rel})"
            kind = entry_kind(path)
            if kind is not None:
                return f"{rel} is {kind}{_NOT_REGULAR}"
            try:
                with open_regular(path) as handle:
                    handle.seek(128)
                    if handle.read(4) == b"DICM":
                        return f"it holds DICOM files ({rel})"
            except OSError as error:  # unreadable: not something DoseAlign wrote
                return f"{rel} cannot be read ({error.strerror or type(error).__name__})"
    return None


def clean_temp(out_dir: Path, failed: Optional[list] = None) -> list:
    """Remove what killed DoseAlign runs left in ``out_dir``; return the names removed.

    Only entries of runs whose owner is provably dead go (see :mod:`.files`): a live run's
    temporary folders, another machine's, and any other ``.tmp-*`` entry (a user's) stay.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    removed = []
    for token in dead_claims(out_dir):
        removed.extend(remove_dead(out_dir, token, failed))
    return removed


def check_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and prove it writable; raise a :class:`DoseAlignError` otherwise."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DoseAlignError("the output path exists and is not a folder", path=out_dir, hint="choose a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _raise_if_storage_fault(error, out_dir)
        raise DoseAlignError(
            f"cannot create the output folder: {error.strerror or error}",
            path=out_dir,
            hint="choose a folder you can write to",
        ) from None
    try:  # the probe is an owner record: if this process is killed now, the next run removes it
        probe = RunClaim(out_dir)
        probe.release()
    except OSError as error:
        _raise_if_storage_fault(error, out_dir)
        raise DoseAlignError(
            f"cannot write to the output folder: {error.strerror or error}",
            path=out_dir,
            hint="make it writable or choose another folder; nothing was exported",
        ) from None
    if os.path.lexists(probe.record):  # an append-only folder (chattr +a): a case folder could be written there but
        # never renamed into place, nor its temporary entries removed (forty-third hostile trial AQ5)
        raise DoseAlignError(
            f"files can be made in the output folder but not removed; the probe {probe.record.name} stays there",
            path=out_dir,
            hint="remove the probe by hand, and make the folder one where files can be removed and renamed (not "
            "append-only) or choose another; nothing was exported",
        )


def _raise_if_storage_fault(error: OSError, out_dir: Path) -> None:
    """A full disk, a quota or an I/O error at the start is exit 4, as it is later in the run, not the usage error
    of a folder that cannot be used (fourteenth hostile trial N5: 0 bytes free gave exit 2)."""
    import errno

    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        raise output_fault(error, out_dir, then="run the command again; nothing was exported") from None


#: The arrays a pair.npz may hold (meta.json lists them under ``storage.files`` only for other than the default
#: storage): the CT and dose, the structure masks, and the DVH curves of the audit.
PAIR_MEMBERS = frozenset(
    f"{name}.npy"
    for name in (
        "ct",
        "dose",
        "masks",
        "body",
        "masks_fraction",
        "dvh_dose_gy",
        "dvh_output",
        "dvh_native",
        "dvh_reference",
    )
)


def _pair_members(meta) -> frozenset:
    """The members of pair.npz that ``meta`` (meta.json) lists under ``storage.files`` (``pair.npz:ct``)."""
    files = (meta.get("storage") or {}).get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict):
        return PAIR_MEMBERS
    return frozenset(
        f"{str(where)[len('pair.npz:') :]}.npy" for where in files.values() if str(where).startswith("pair.npz:")
    )


def archive_problem(folder: Path, meta: Optional[dict] = None) -> Optional[str]:
    """Why a complete case folder's files fail their own checks (None when they pass): every member's CRC-32 in
    ``pair.npz``, then each format file meta.json (``meta``, read from the folder when not given) lists under
    ``exports``: gzip data inflated through (``.nii.gz``, NRRD), raw data against their header's length, every
    chunk of ``case.h5`` read (see :mod:`.file_check`).

    Each file is read once, streamed: bytes changed inside a file of the right length (bit rot, a bad copy)
    are found, which :func:`case_problem` (headers and lengths only) does not find. The ``npy`` layout, the
    OpenKBP CSV files, dvh.csv and qa.png are not checked here (the first three have no checksums).
    """
    folder = Path(folder)
    path = folder / "pair.npz"
    if meta is None:
        meta = _meta_file_problem(folder / "meta.json")
    if entry_kind(path) is None:  # missing (npy layout) or not a regular file (case_problem says so)
        members = _pair_members(meta)
        try:
            with open_regular(path, "pair.npz") as handle, zipfile.ZipFile(handle) as archive:
                for info in archive.infolist():
                    # only the arrays meta.json lists, each inflated to no more than its .npy header says: an extra
                    # member of 4 GiB of zeros (5 MB in the file) took 11 s at every --resume (eighteenth trial R11)
                    if info.filename not in members:
                        return f"pair.npz holds {info.filename}, which DoseAlign does not write there"
                    with archive.open(info) as member:
                        expected = _npy_header(member)[0]
                        if expected is not None and expected != info.file_size:
                            return f"pair.npz: {info.filename} holds {info.file_size} bytes, its header says {expected}"
                        while member.read(1 << 20):
                            pass
        except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError, zlib.error) as error:
            return f"pair.npz fails its check: {type(error).__name__}: {error}"
    if not isinstance(meta, dict):  # case_problem says why
        return None
    for name in sorted(set(recorded_files(meta)) | set(written_files(meta) or ())):
        if not _usable_name(name):  # a NUL or an unencodable character stopped every run (twenty-first trial U6)
            return f"meta.json lists {name!r}, which is no name of a file in the case folder"
    for name in sorted(n for n in recorded_files(meta) if n and not os.path.isabs(n) and ".." not in Path(n).parts):
        kind = "a symbolic link" if os.path.islink(folder / name) else entry_kind(folder / name)
        if kind is None:
            problem = format_file_problem(folder / name, name, meta)
            if problem:
                return problem
        elif kind != "missing":  # (missing: the format is written again at the end) a pipe, a folder, a link: not
            # DoseAlign's file, and not to be read or vouched for (nineteenth hostile trial S4, S5)
            return f"{name} is {kind}, not a file DoseAlign wrote"
    for name in sorted(written_files(meta) or ()):  # every file its export wrote (dvh.csv too: twentieth trial T5)
        if name == "meta.json" or os.path.isabs(name) or ".." in Path(name).parts:
            continue
        kind = "a symbolic link" if os.path.islink(folder / name) else entry_kind(folder / name)
        if kind == "missing":
            return f"{name} is missing"
        if kind is not None:
            return f"{name} is {kind}, not a file DoseAlign wrote"
    digests = meta.get("file_sha256")
    if "file_sha256" in meta:  # (an export before X6 recorded none) what vouches for the files must be whole
        # (a string, a list or a missing entry in its place turned the check off: twenty-sixth hostile trial Z5)
        if not isinstance(digests, dict) or not all(
            isinstance(d, str) and _SHA256_HEX.fullmatch(d) for d in digests.values()
        ):
            return "meta.json's file_sha256 is not an object of SHA-256 digests"
        lacking = sorted(n for n in written_files(meta) or () if n not in digests and n in _digested(meta))
        if lacking:
            return f"meta.json's file_sha256 has no digest of {lacking[0]}, which its export wrote"
        # a format's files are checked where --resume decides to write the format again from pair.npz
        exports = meta.get("exports") if isinstance(meta.get("exports"), dict) else {}
        formats = recorded_files({"exports": {k: v for k, v in exports.items() if k not in ("npz", "npy")}})
        for name, wanted in sorted((n, d) for n, d in digests.items() if n not in formats):
            if not _usable_name(str(name)) or os.path.isabs(name) or ".." in Path(name).parts:
                return f"meta.json's file_sha256 lists {name!r}, which is no name of a file in the case folder"
            try:
                found = _sha256(folder / name) if entry_kind(folder / name) is None else None
            except OSError as error:
                return f"{name} cannot be read ({error.strerror or type(error).__name__})"
            if found is not None and found != wanted:
                return f"{name} is not the file this case's export wrote (its SHA-256 is not the one meta.json records)"
    return None
