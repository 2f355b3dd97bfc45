"""What every export format needs: one case's arrays, geometry and masks, whichever way they come.

A :class:`CaseData` holds the CT, the dose, the ROI masks and the body mask of one case on its
output grid, and the case's meta.json. It is built either from a fresh
:class:`~DoseAlignLib.pipeline.CaseResult` (during an export) or from a finished case folder
(``pair.npz`` + ``meta.json``, to add formats to cases exported earlier).

Masks arrive from the structures step in ``pair.npz`` as ``masks`` (bit-packed along i,
``(N, K, J, ceil(I/8))`` uint8, or unpacked ``(N, K, J, I)``) with their names in
``meta["structures"]["names"]``, and ``body`` packed the same way; cases without structures have
neither, and every writer works without them. The masks stay packed: a :class:`MaskSequence` unpacks one
ROI when it is asked for, so a writer that takes them in turn holds one unpacked ROI at a time, whatever
the number of ROIs (an auto-segmented structure set has hundreds).

Nothing here imports an optional package; :func:`require` does, where a format needs one.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import DoseAlignError
from ..geometry.grid import Grid, Volume

#: The optional-dependency group of pyproject.toml that brings every format's package.
FORMATS_EXTRA = "formats"


class FormatDependencyError(DoseAlignError):
    """A format was asked for whose Python package is not installed."""


def require(module: str, package: str, fmt: str):
    """Import ``module`` for format ``fmt`` or raise an error that names the package and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise FormatDependencyError(
            f"--format {fmt} needs the Python package {package!r} ({error})",
            hint=f"pip install 'dosealign[{FORMATS_EXTRA}]' or pip install {package}",
        ) from None


def _unpack(array: np.ndarray, shape: tuple) -> Optional[np.ndarray]:
    """A mask stack or single mask as bool ``(..., K, J, I)``: unpacked if stored bit-packed along i."""
    array = np.asarray(array)
    if tuple(array.shape[-3:]) == tuple(shape):
        return array.astype(bool)
    packed_width = (shape[2] + 7) // 8
    if array.dtype == np.uint8 and tuple(array.shape[-3:]) == (shape[0], shape[1], packed_width):
        return np.unpackbits(array, axis=-1, count=int(shape[2])).astype(bool)
    return None


class MaskSequence(Sequence):
    """A case's ROI masks as ``(name, (K, J, I) bool array)`` pairs, made one at a time when asked for.

    ``names`` are the channels' names in order; ``make(n)`` makes channel ``n``'s mask (unpacks it from the
    packed stack, resamples it, ...). Nothing is kept: indexing or iterating makes each mask anew, so code that
    takes them in turn holds one at a time, and ``len``, ``names`` and truth make none.
    """

    def __init__(self, names: Sequence[str], make: Callable[[int], np.ndarray]) -> None:
        self._names = [str(n) for n in names]
        self._make = make

    @property
    def names(self) -> list:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[n] for n in range(*index.indices(len(self)))]
        n = range(len(self))[index]  # an IndexError beyond the end, as a list's; negative indices count back
        return self._names[n], self._make(n)

    def __repr__(self) -> str:
        return f"MaskSequence({self._names!r})"


def mask_sequence(stack: np.ndarray, names: Sequence[str], shape: tuple) -> Optional[MaskSequence]:
    """The masks of a stack as stored in pair.npz (bit-packed along i, or unpacked ``(N, K, J, I)``), unpacked one
    ROI at a time; None when the stack is neither for ``shape``."""
    stack = np.asarray(stack)
    shape = tuple(int(n) for n in shape)
    if stack.ndim != 4:
        return None
    if tuple(stack.shape[-3:]) == shape:

        def make(n: int) -> np.ndarray:
            return stack[n].astype(bool)

    elif stack.dtype == np.uint8 and tuple(stack.shape[-3:]) == (shape[0], shape[1], (shape[2] + 7) // 8):

        def make(n: int) -> np.ndarray:
            return np.unpackbits(stack[n], axis=-1, count=shape[2]).view(bool)  # 0/1 bytes: bool without a copy

    else:
        return None
    names = list(names)
    if len(names) != stack.shape[0]:
        names = [f"mask_{n}" for n in range(stack.shape[0])]
    return MaskSequence(names, make)


@dataclass
class CaseData:
    """One case on its output grid: arrays ``[k, j, i]``, the grid, masks and meta.json.

    ``masks`` is a sequence of ``(name, (K, J, I) bool array)`` in the order of
    ``meta["structures"]["names"]`` (a :class:`MaskSequence`, unpacking a mask each time one is taken, when
    built from pair.npz arrays; take them in turn rather than all at once); ``mask_types`` maps a name to its RTROIInterpretedType
    where meta.json gives it; ``body`` is the body mask or None. ``native_dose`` is the dose on
    its own grid when the case was just computed (None when read back from a folder).
    """

    case_id: str
    ct: np.ndarray
    dose: np.ndarray
    grid: Grid
    meta: dict
    masks: list = field(default_factory=list)
    mask_types: dict = field(default_factory=dict)
    body: Optional[np.ndarray] = None
    native_dose: Optional[Volume] = None

    @property
    def mask_names(self) -> list:
        names = getattr(self.masks, "names", None)  # a MaskSequence knows them without unpacking a mask
        return list(names) if names is not None else [name for name, _mask in self.masks]

    @property
    def roi_present(self) -> list:
        """Per mask channel: whether the case has that ROI (False: an all-zero ``--rois`` channel)."""
        present = (self.meta.get("structures") or {}).get("roi_present")
        if isinstance(present, list) and len(present) == len(self.masks):
            return [bool(p) for p in present]
        return [True] * len(self.masks)

    @property
    def patient_id(self) -> str:
        return str(self.meta.get("patient_id") or "")

    @classmethod
    def from_result(cls, result) -> CaseData:
        """From a :class:`~DoseAlignLib.pipeline.CaseResult`."""
        grid = result.ct.grid
        masks, types, body = masks_from_arrays(result.extra_arrays, result.meta, grid.shape)
        return cls(
            result.case_id,
            result.ct.array,
            result.dose.array,
            grid,
            result.meta,
            masks,
            types,
            body,
            getattr(result, "native_dose", None),
        )

    @classmethod
    def from_folder(cls, folder: Path) -> CaseData:
        """From a finished case folder (``pair.npz`` + ``meta.json``)."""
        from .case_folder import load_meta  # checked as --resume checks it (a damaged one: DamagedOutput)

        folder = Path(folder)
        meta = load_meta(folder)
        arrays = read_arrays(folder)
        grid = grid_from_meta(meta)
        masks, types, body = masks_from_arrays(arrays, meta, grid.shape)
        dose = np.asarray(arrays["dose"], dtype=np.float32)  # float16 storage: the same values as float32
        return cls(meta.get("case_id") or folder.name, arrays["ct"], dose, grid, meta, masks, types, body)


def read_arrays(folder: Path, mmap: bool = False) -> dict:
    """A case folder's arrays by name, from ``pair.npz`` or (npy layout) its ``<name>.npy`` files.

    ``mmap`` maps ``.npy`` files instead of reading them (pair.npz members are always read).
    """
    folder = Path(folder)
    if (folder / "pair.npz").is_file():
        with np.load(folder / "pair.npz") as npz:
            return {key: npz[key] for key in npz.files}
    if not (folder / "ct.npy").is_file():
        raise DoseAlignError("no pair.npz or ct.npy: not a finished case folder", path=folder)
    return {p.stem: np.load(p, mmap_mode="r" if mmap else None) for p in sorted(folder.glob("*.npy"))}


def grid_from_meta(meta: dict) -> Grid:
    """The output grid a meta.json describes (shape [K, J, I] and ijk_to_lps)."""
    return Grid(
        tuple(meta["shape"]), np.array(meta["ijk_to_lps"], dtype=np.float64), meta.get("frame_of_reference_uid")
    )


def masks_from_arrays(arrays: dict, meta: dict, shape: tuple) -> tuple:
    """``(masks, mask_types, body)`` from pair.npz arrays and meta.json; empty when there are none.

    ``masks`` is a :class:`MaskSequence` of ``(name, bool array)`` (each mask unpacked when it is taken), or ``[]``.
    """
    shape = tuple(int(n) for n in shape)
    structures = meta.get("structures") or {}
    masks: Sequence = []
    stack = arrays.get("masks")
    if stack is not None:
        masks = mask_sequence(stack, list(structures.get("names") or []), shape) or []
    types = {}
    for roi in structures.get("rois") or []:
        if isinstance(roi, dict) and "name" in roi:
            types[str(roi["name"])] = str(roi.get("interpreted_type") or "")
    body = arrays.get("body")
    if body is not None:
        body = _unpack(body, shape)
        if body is not None and body.ndim != 3:
            body = None
    return masks, types, body


def geometry_attributes(grid: Grid) -> dict:
    """The voxel -> patient mapping of a grid, as plain lists (for JSON and HDF5 attributes)."""
    return {
        "shape": list(grid.shape),
        "spacing": grid.spacing.tolist(),
        "origin_lps": grid.origin.tolist(),
        "direction": grid.direction.tolist(),
        "ijk_to_lps": grid.affine.tolist(),
        "ijk_to_ras": grid.ras_affine().tolist(),
    }
