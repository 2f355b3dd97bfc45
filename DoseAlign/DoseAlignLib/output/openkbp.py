"""OpenKBP-style samples: a fixed 128^3 grid around the PTV (or the dose) in OpenKBP's sparse CSV layout.

OpenKBP (the AAPM 2020 dose-prediction challenge, repository ababier/open-kbp) gives each patient
a folder of CSV files on a 128 x 128 x 128 grid, read by its ``load_file`` with
``pandas.read_csv(path, index_col=0)``:

* ``ct.csv``, ``dose.csv``: header ``,data``, then ``<flat index>,<value>`` for every voxel whose
  value is > 0 (a sparse vector; the rest is 0). Dose is in Gy. CT values are non-negative
  integers stored as floats, soft tissue near 1000 and air absent (0): CT numbers shifted by +1000
  and clipped to the 12-bit range 0..4095.
* ``<ROI>.csv`` and ``possible_dose_mask.csv``: header ``,data``, then ``<flat index>,`` (empty
  value) for every voxel inside the mask; OpenKBP writes no file for an absent ROI.
* ``voxel_dimensions.csv``: the three voxel sizes (mm), one per line; the slice thickness last.

The flat index is C order over the array axes (row j, column i, slice k), i.e.
``index = (j * 128 + i) * 128 + k``: OpenKBP's voxel_dimensions put the slice axis last, and its
arrays are (row, column, slice). ``geometry.json`` (not part of OpenKBP) removes any doubt: it
gives ``index_to_lps``, the 4x4 matrix from ``(a0, a1, a2, 1)`` in that array order to DICOM
patient mm, DoseAlign's ``ijk_to_lps`` of the same grid, the source files and UIDs, and how the
sample was made.

The grid has the output grid's axes (the CT's), the chosen spacing, and is centred on the
bounding box of the PTV ROIs (RTROIInterpretedType PTV, or names starting with PTV) when the case
has any, else on the bounding box of the dose above 10 % of its maximum (``reference.custom_grid``
with a cube box makes it). CT and dose are resampled onto it with linear interpolation (the dose
from its native grid when the case was just computed, else from the output grid), ROI masks with
nearest neighbour. The possible-dose mask is the case's body mask (EXTERNAL ROI, or the CT body
outline) or, without one, the CT above -500 HU.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
from ..geometry.grid import Grid, Volume
from ..geometry.reference import Region, auto_region, box_of, custom_grid
from ..geometry.resample import resample
from ..limits import check_spacing
from ..options import OPENKBP_SPACING, AlignOptions, CustomBox, Interpolator, ReferenceGrid
from ..structures.names import is_target
from .case_data import CaseData, MaskSequence
from .file_names import unique_file_names
from .files import json_text

SIZE = 128
#: Default spacing (mm, along i, j, k; see :data:`~DoseAlignLib.options.OPENKBP_SPACING`).
DEFAULT_SPACING = OPENKBP_SPACING
CT_OFFSET = 1000.0
CT_MAX = 4095.0
#: Without a body mask the possible-dose mask is the CT above this (HU).
BODY_THRESHOLD_HU = -500.0
FOLDER = "openkbp"
#: Array axes of the OpenKBP arrays, as a permutation of DoseAlign's (k, j, i) arrays.
AXES_FROM_KJI = (1, 2, 0)


@dataclass(frozen=True)
class OpenKBPSettings:
    """Spacing (mm along i, j, k), cube size (voxels per side), centre ("auto", "ptv" or "dose")."""

    spacing: tuple = DEFAULT_SPACING
    size: int = SIZE
    centre: str = "auto"
    ct_offset: float = CT_OFFSET

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", check_spacing(self.spacing, "OpenKBP spacing"))
        if int(self.size) < 1:
            raise ValueError(f"OpenKBP size must be positive, got {self.size}")
        object.__setattr__(self, "size", int(self.size))
        if self.centre not in ("auto", "ptv", "dose"):
            raise ValueError(f"OpenKBP centre must be auto, ptv or dose, got {self.centre!r}")


def to_openkbp_axes(array_kji: np.ndarray) -> np.ndarray:
    """A DoseAlign ``[k, j, i]`` array in OpenKBP's (row j, column i, slice k) order."""
    return np.transpose(array_kji, AXES_FROM_KJI)


def index_to_lps(grid: Grid) -> np.ndarray:
    """4x4 matrix from OpenKBP array indices ``(a0, a1, a2) = (j, i, k)`` to LPS mm."""
    permute = np.zeros((4, 4))
    permute[1, 0] = permute[0, 1] = permute[2, 2] = permute[3, 3] = 1.0  # (j, i, k) -> (i, j, k)
    return grid.affine @ permute


def sample_grid(case: CaseData, settings: OpenKBPSettings) -> tuple:
    """The OpenKBP grid of a case and a dict saying what it is centred on.

    The rule is the custom cube's (:func:`~DoseAlignLib.geometry.reference.auto_region`): the PTVs'
    box when the case has PTV masks (unless ``settings.centre`` is "dose"), else the dose above
    10 % of its maximum, else the whole output grid.
    """
    union, targets = None, []
    if settings.centre in ("auto", "ptv"):  # the PTVs' masks taken one at a time (a case may have hundreds of ROIs)
        for n, name in enumerate(case.mask_names):
            if not is_target(name, case.mask_types.get(name, "")):
                continue
            mask = case.masks[n][1]
            if mask.any():
                union = mask.copy() if union is None else np.logical_or(union, mask, out=union)
                targets.append(name)
    ptv = None
    if targets:
        box = box_of(union)
        about = {"on": "ptv", "rois": targets, "box_kji": [[s.start, s.stop] for s in box]}
        ptv = Region.of_box(case.grid, box, about)
    elif settings.centre == "ptv":
        raise ValueError("OpenKBP centre 'ptv' asked for, but the case has no PTV mask")
    everything = (slice(None), slice(None), slice(None))
    whole = Region.of_box(case.grid, everything, {"on": "output grid", "reason": "no dose above 0", "box_kji": None})
    region = auto_region(ptv, [Volume(case.dose, case.grid)], whole)
    options = AlignOptions(
        reference=ReferenceGrid.CUSTOM,
        custom_spacing=settings.spacing,
        custom_box=CustomBox.CUBE,
        custom_size=(settings.size,) * 3,
    )
    grid, _how = custom_grid(case.grid, case.grid, options, centre=region)
    centre = dict(region.about)
    centre["centre_lps"] = region.centre().tolist()
    centre["grid_size"] = settings.size
    centre["grid_spacing_mm_ijk"] = list(settings.spacing)
    # prose without the numbers themselves (a patient ID 128 is no leak in every case's text: W2)
    centre["grid"] = "grid_size^3 voxels at grid_spacing_mm_ijk on the output grid's axes, centred on the box above"
    return grid, centre


def sample_arrays(case: CaseData, settings: OpenKBPSettings) -> dict:
    """Everything of one OpenKBP sample, dense, in DoseAlign's ``[k, j, i]`` order on the sample grid.

    Returns ``{"grid", "centre", "ct" (OpenKBP CT units), "ct_hu", "dose" (Gy), "masks" [(name, bool)],
    "possible_dose_mask", "possible_dose_source", "dose_source"}``; ``masks`` is a
    :class:`~.case_data.MaskSequence` that resamples a ROI's mask when it is taken (one at a time).
    """
    grid, centre = sample_grid(case, settings)
    fill = float((case.meta.get("arrays", {}).get("ct", {}) or {}).get("outside_value", -1000.0))
    ct_hu = resample(Volume(case.ct, case.grid), grid, Interpolator.LINEAR, fill=fill)
    ct = np.clip(np.rint(ct_hu) + settings.ct_offset, 0.0, CT_MAX).astype(np.float32)
    if case.native_dose is not None:
        dose = resample(case.native_dose, grid, Interpolator.LINEAR, fill=0.0)
        dose_source = "the dose on its native grid (one interpolation)"
    else:
        dose = resample(Volume(case.dose, case.grid), grid, Interpolator.LINEAR, fill=0.0)
        dose_source = "the dose on the case's output grid"
    np.maximum(dose, 0.0, out=dose)

    def resampled_mask(n: int) -> np.ndarray:
        values = resample(Volume(case.masks[n][1].astype(np.uint8), case.grid), grid, Interpolator.NEAREST, fill=0.0)
        return values > 0.5

    masks = MaskSequence(case.mask_names, resampled_mask)
    if case.body is not None:
        body = resample(Volume(case.body.astype(np.uint8), case.grid), grid, Interpolator.NEAREST, fill=0.0) > 0.5
        body_source = "the case's body mask, nearest neighbour"
        body_meta = (case.meta.get("structures") or {}).get("body") or {}
        if body_meta.get("source"):
            body_source += f" ({body_meta['source']})"
    else:
        body = ct_hu > BODY_THRESHOLD_HU
        body_source = f"CT > {BODY_THRESHOLD_HU:g} HU (the case has no body mask)"
    return {
        "grid": grid,
        "centre": centre,
        "ct": ct,
        "ct_hu": ct_hu,
        "dose": dose,
        "masks": masks,
        "possible_dose_mask": body,
        "possible_dose_source": body_source,
        "dose_source": dose_source,
    }


def _flat(array_kji: np.ndarray) -> np.ndarray:
    return to_openkbp_axes(array_kji).ravel(order="C")


def _write_values(path: Path, values: np.ndarray, fmt: str) -> int:
    index = np.flatnonzero(values > 0)
    with open(path, "w", encoding="ascii", newline="") as handle:
        handle.write(",data\n")
        handle.writelines(f"{i},{fmt % v}\n" for i, v in zip(index.tolist(), values[index].tolist()))
    return int(index.size)


def _write_mask(path: Path, mask_flat: np.ndarray) -> int:
    index = np.flatnonzero(mask_flat)
    with open(path, "w", encoding="ascii", newline="") as handle:
        handle.write(",data\n")
        handle.writelines(f"{i},\n" for i in index.tolist())
    return int(index.size)


#: The sample's own files beside the ROI masks (``<name>.csv``, geometry.json): an ROI named so gets another name.
OWN_FILES = ("ct", "dose", "possible_dose_mask", "voxel_dimensions", "geometry")


def write_openkbp(case: CaseData, folder: Path, settings: Optional[OpenKBPSettings] = None) -> dict:
    """Write ``folder/openkbp/`` (CSV files and geometry.json); return what was written."""
    settings = settings or OpenKBPSettings()
    sample = sample_arrays(case, settings)
    grid = sample["grid"]
    out = Path(folder) / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    spacing_ijk = grid.spacing
    voxel_dimensions = [spacing_ijk[1], spacing_ijk[0], spacing_ijk[2]]  # array axes j, i, k
    counts = {
        "ct": _write_values(out / "ct.csv", _flat(sample["ct"]), "%.1f"),
        "dose": _write_values(out / "dose.csv", _flat(sample["dose"]), "%.9g"),
        "possible_dose_mask": _write_mask(out / "possible_dose_mask.csv", _flat(sample["possible_dose_mask"])),
    }
    np.savetxt(out / "voxel_dimensions.csv", np.asarray(voxel_dimensions))
    structures, empty = {}, []
    names = sample["masks"].names
    for (name, mask), file_name in zip(sample["masks"], unique_file_names(names, reserved=OWN_FILES)):
        if not mask.any():
            empty.append(name)  # OpenKBP has no file for a ROI that is absent
            continue
        counts[name] = _write_mask(out / f"{file_name}.csv", _flat(mask))
        structures[name] = f"{file_name}.csv"
    dose_outside = sample["dose"][~sample["possible_dose_mask"]]
    geometry = {
        "format": "OpenKBP sparse CSV (as ababier/open-kbp provided-data) plus this geometry file",
        "dosealign_version": __version__,
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "shape": [settings.size] * 3,
        "array_axes": ["j (row)", "i (column)", "k (slice)"],
        # the prose names the numbers it uses rather than holding them: a patient ID 128 is then no leak in the
        # text of every case (twenty-third hostile trial W2)
        "flat_index": "C order over array_axes: index = (j * shape[1] + i) * shape[2] + k",
        "index_to_lps": index_to_lps(grid).tolist(),
        "ijk_to_lps": grid.affine.tolist(),
        "ijk_to_ras": grid.ras_affine().tolist(),
        "spacing_ijk_mm": spacing_ijk.tolist(),
        "voxel_dimensions_mm": voxel_dimensions,
        "frame_of_reference_uid": case.meta.get("frame_of_reference_uid"),
        "centre": sample["centre"],
        "ct": {
            "file": "ct.csv",
            "values": "round(HU) + offset_hu, clipped to [0, max_value]; voxels of 0 not listed",
            "offset_hu": settings.ct_offset,
            "max_value": CT_MAX,
            "interpolator": "linear",
            "outside_ct": "the case's CT fill value (--ct-fill, air by default) plus offset_hu, clipped as values",
        },
        "dose": {
            "file": "dose.csv",
            "units": (case.meta.get("dose") or {}).get("units", "GY"),
            "values": "Gy, voxels with dose > 0 only",
            "interpolator": "linear",
            "source": sample["dose_source"],
            "max_gy": float(sample["dose"].max()),
        },
        "possible_dose_mask": {
            "file": "possible_dose_mask.csv",
            "source": sample["possible_dose_source"],
            "dose_outside_max_gy": float(dose_outside.max()) if dose_outside.size else 0.0,
        },
        "structures": structures,
        "structures_empty_on_grid": empty,
        **(
            {"channels": names, "roi_present": case.roi_present}
            if (case.meta.get("structures") or {}).get("channels")
            else {}
        ),
        "masks_interpolator": "nearest neighbour from the case's output grid",
        "nonzero_counts": counts,
        "source": case.meta.get("source", {}),
    }
    (out / "geometry.json").write_text(json_text(geometry), encoding="utf-8")  # last: marks the sample complete
    names = OWN_FILES
    files = {n: f"{FOLDER}/{n}.{'json' if n == 'geometry' else 'csv'}" for n in names}
    return {"files": files, "structures": {n: f"{FOLDER}/{f}" for n, f in structures.items()}}


def read_sparse_csv(path: Path, size: int = SIZE) -> np.ndarray:
    """Decode one OpenKBP CSV into a dense ``(size, size, size)`` array in OpenKBP's axis order.

    Value files give float32 values; mask files (empty values) give a bool mask.
    """
    indices, values, is_mask = [], [], None
    with open(path, newline="", encoding="ascii") as handle:
        rows = csv.reader(handle)
        next(rows)  # header ",data"
        for row in rows:
            if not row:
                continue
            indices.append(int(row[0]))
            value = row[1] if len(row) > 1 else ""
            if is_mask is None:
                is_mask = value == ""
            values.append(0.0 if is_mask else float(value))
    dense = np.zeros(size**3, dtype=bool if is_mask in (None, True) else np.float32)
    if indices:
        dense[np.asarray(indices)] = True if is_mask else np.asarray(values, dtype=np.float32)
    return dense.reshape((size, size, size))
