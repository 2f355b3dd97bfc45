"""ROI masks held as boxes, their volumes, and how they are stored in pair.npz.

Storage in pair.npz
-------------------
``masks``: ``(N, K, J, ceil(I / 8))`` uint8, the binary masks bit-packed along i with
``np.packbits(..., axis=-1)`` (big bit order); read with
``np.unpackbits(npz["masks"], axis=-1, count=I).astype(bool)`` -> ``(N, K, J, I)``. The ROI
order is ``meta["structures"]["names"]``. ``body`` is packed the same way, ``(K, J, ceil(I/8))``.
``masks_fraction`` (only with fractional masks): ``(N, K, J, I)`` uint8, ``round(255 x fraction)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..dicom.rtstruct import RoiContours
from ..geometry.grid import Grid

STORAGE_NOTE = (
    "masks: (N, K, J, ceil(I/8)) uint8, binary masks bit-packed along i (np.packbits axis=-1, big bit order); "
    "unpack with np.unpackbits(npz['masks'], axis=-1, count=I).astype(bool); N follows structures.names. "
    "body: (K, J, ceil(I/8)) packed the same way. masks_fraction (fractional option): (N, K, J, I) uint8 = "
    "round(255 x fraction)."
)


ABSENT_NOTE = "no ROI of this name in the case's structure sets (or none that gives a mask): an all-zero channel"

RULE_NOTE = (
    "each contour plane is a slab [p - t/2, p + t/2) along the contour normal (t = slab_thickness_mm); a voxel "
    "centre takes the nearest plane whose slab holds it (half way: the plane further along the normal); no planes "
    "are invented beyond the first and last contour or in gaps wider than t; in-plane even-odd rule at the voxel "
    "centre (holes and islands)"
)


@dataclass
class RoiMask:
    """One ROI rasterized on a grid, held as its bounding box.

    Attributes
    ----------
    roi : RoiContours
        Where it came from.
    box : tuple of 3 slices
        ``(k, j, i)`` bounding box of the mask in the grid.
    binary : (k, j, i) bool array
        The mask inside ``box``.
    fraction : (k, j, i) float32 array or None
        Fraction of each voxel inside the ROI (fractional masks only).
    voxel_volume_cc : float or (k,) array
        Volume of one voxel (per slice for grids with uneven slices), cm^3.
    joined : list of RoiMask
        For a fixed channel several ROIs map to (see :func:`join_masks`): the masks of those ROIs, whose
        union this mask is (``roi`` is the first's); empty for the mask of one ROI.
    """

    roi: RoiContours
    box: tuple
    binary: np.ndarray
    fraction: Optional[np.ndarray] = None
    voxel_volume_cc: object = 0.0
    joined: list = field(default_factory=list)
    _count: Optional[int] = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.roi.name

    @property
    def voxel_count(self) -> int:
        """Voxels of the binary mask (counted once; the mask is not changed after rasterization)."""
        if self._count is None:
            self._count = int(np.count_nonzero(self.binary))
        return self._count

    @property
    def volume_cc(self) -> float:
        """Volume of the binary mask (cm^3)."""
        if np.ndim(self.voxel_volume_cc) == 0:
            return float(self.voxel_count * float(self.voxel_volume_cc))
        return _weighted_volume(self.binary, self.voxel_volume_cc)

    @property
    def fraction_volume_cc(self) -> Optional[float]:
        """Volume of the fractional mask (cm^3), when there is one."""
        return None if self.fraction is None else _weighted_volume(self.fraction, self.voxel_volume_cc)

    def full(self, shape: tuple) -> np.ndarray:
        """The binary mask on the whole grid, ``(K, J, I)`` bool."""
        out = np.zeros(shape, dtype=bool)
        out[self.box] = self.binary
        return out


def _weighted_volume(values: np.ndarray, voxel_cc: object) -> float:
    if values.dtype == bool:  # counts: the same numbers as a float64 sum, without converting every voxel
        if np.ndim(voxel_cc) == 0:
            return float(np.count_nonzero(values) * float(voxel_cc))
        per_slice = np.count_nonzero(values, axis=tuple(range(1, values.ndim))).astype(np.float64)
        return float(per_slice @ np.asarray(voxel_cc, dtype=np.float64))
    if np.ndim(voxel_cc) == 0:
        return float(np.sum(values, dtype=np.float64) * float(voxel_cc))
    per_slice = np.sum(values.reshape(values.shape[0], -1), axis=1, dtype=np.float64)
    return float(per_slice @ np.asarray(voxel_cc, dtype=np.float64))


#: Voxels per slab when bit-packing a boxed mask (a small buffer, reused: no fresh memory per mask).
PACK_SLAB_VOXELS = 1 << 20


def _pack_into(out: np.ndarray, box: tuple, binary: np.ndarray, width: int) -> None:
    """Bit-pack a boxed mask into ``out`` ((K, J, ceil(I/8)) uint8, zeros) as ``np.packbits`` of the full mask would."""
    if binary.size == 0:
        return
    kb, jb, ib = box
    first = ib.start // 8  # the byte holding the box's first column
    stop = min((ib.stop + 7) // 8, (width + 7) // 8)
    lead = ib.start - first * 8
    nk, nj, ni = binary.shape
    step = max(1, PACK_SLAB_VOXELS // max(nj * (stop - first) * 8, 1))
    padded = np.zeros((min(step, nk), nj, (stop - first) * 8), dtype=bool)  # byte-aligned columns
    for k in range(0, nk, step):
        n = min(step, nk - k)
        padded[:n, :, lead : lead + ni] = binary[k : k + n]
        out[kb.start + k : kb.start + k + n, jb, first:stop] = np.packbits(padded[:n], axis=-1)


def join_masks(masks: Sequence[RoiMask], grid: Grid) -> RoiMask:
    """The union of several ROIs' masks on one grid, as one mask (``joined`` lists them).

    Binary masks are OR-ed; fractional masks take the larger fraction of each voxel (the union's
    fraction is at least that; two ROIs that overlap are not counted twice).
    """
    masks = list(masks)
    filled = [m for m in masks if m.binary.size]
    if not filled:
        first = masks[0]
        return RoiMask(first.roi, first.box, first.binary, first.fraction, first.voxel_volume_cc, joined=masks)
    lo = [min(m.box[a].start for m in filled) for a in range(3)]
    hi = [max(m.box[a].stop for m in filled) for a in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    binary = np.zeros([b - a for a, b in zip(lo, hi)], dtype=bool)
    with_fractions = any(m.fraction is not None for m in masks)
    fraction = np.zeros(binary.shape, dtype=np.float32) if with_fractions else None
    for m in filled:
        inner = tuple(slice(m.box[a].start - lo[a], m.box[a].stop - lo[a]) for a in range(3))
        binary[inner] |= m.binary
        if fraction is not None and m.fraction is not None and m.fraction.size:
            np.maximum(fraction[inner], m.fraction, out=fraction[inner])
    volume_cc = voxel_volumes_cc(grid)
    if np.ndim(volume_cc) == 1:
        volume_cc = np.asarray(volume_cc)[box[0]]
    return RoiMask(masks[0].roi, box, binary, fraction, volume_cc, joined=masks)


def voxel_volumes_cc(grid: Grid) -> object:
    """Volume of a voxel (cm^3): one number, or ``(K,)`` per slice when slices are uneven.

    A slice of an uneven grid reaches half way to each neighbour (the end slices as far out as in).
    """
    if grid.is_uniform:
        return float(abs(np.linalg.det(grid.affine[:3, :3]))) / 1000.0
    area = float(np.linalg.norm(np.cross(grid.affine[:3, 0], grid.affine[:3, 1])))
    normal = np.cross(grid.direction[:, 0], grid.direction[:, 1])
    cos = abs(float(grid.direction[:, 2] @ normal)) / float(np.linalg.norm(normal))
    offsets = grid.k_offsets
    mid = (offsets[1:] + offsets[:-1]) / 2
    edges = np.concatenate([[2 * offsets[0] - mid[0]], mid, [2 * offsets[-1] - mid[-1]]])
    return np.diff(edges) * area * cos / 1000.0


def _channel_entry(index: int, m: RoiMask) -> dict:
    """What every channel's meta.json entry says first: which ROI, its name and look, its mask's size."""
    return {
        "index": index,
        "number": m.roi.number,
        "name": m.name,
        "original_name": m.roi.original_name,
        "source": m.roi.source,
        "interpreted_type": m.roi.interpreted_type,
        "color": list(m.roi.color) if m.roi.color else None,
        "voxel_count": m.voxel_count,
        "volume_cc": round(m.volume_cc, 6),
    }


@dataclass
class StructureMasks:
    """All ROI masks of a case on one grid, the ROIs left out, and the body mask.

    Attributes
    ----------
    grid : Grid
    masks : list of RoiMask
        One per ROI that gives a mask (possibly empty on this grid), in output order.
    skipped : list of dict
        ``{"source", "number", "name", "interpreted_type", "reason"}`` per ROI left out.
    thickness_mm : float
        Slab thickness used.
    supersampling : int
        Fractional-mask supersampling factor (0: none).
    body : (K, J, I) bool array or None
    body_source : str
    notes : list of str
    channels : list of str or None
        The fixed mask channels (``--rois``) in order, after :meth:`select`; None: one channel
        per mask in ``masks``. A channel whose ROI the case lacks is all zeros.
    """

    grid: Grid
    masks: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    thickness_mm: float = 0.0
    supersampling: int = 0
    body_source: str = ""
    notes: list = field(default_factory=list)
    #: The body when it is an ROI's mask (kept as its box; :attr:`body` makes the whole array on demand).
    body_mask: Optional[RoiMask] = None
    _body: Optional[np.ndarray] = field(default=None, repr=False)
    channels: Optional[list] = None
    not_in_rois: list = field(default_factory=list)

    @property
    def body(self) -> Optional[np.ndarray]:
        """The body mask on the whole grid, ``(K, J, I)`` bool, or None."""
        if self._body is None and self.body_mask is not None:
            self._body = self.body_mask.full(self.grid.shape)
        return self._body

    @body.setter
    def body(self, value: Optional[np.ndarray]) -> None:
        self._body = value
        self.body_mask = None

    @property
    def body_region(self):
        """The body for the audit: its ROI mask (a box) when it is one, else the whole array, or None."""
        return self.body_mask if self.body_mask is not None else self._body

    @property
    def names(self) -> list:
        """The names of the channels (with fixed channels, also those the case lacks)."""
        return list(self.channels) if self.channels is not None else [m.name for m in self.masks]

    def has(self, name: str) -> bool:
        """Whether channel ``name`` has a mask (False for a fixed channel the case lacks)."""
        return any(m.name == name for m in self.masks)

    def mask(self, name: str) -> RoiMask:
        """The mask of the ROI called ``name``."""
        return next(m for m in self.masks if m.name == name)

    def join_channels(self) -> list:
        """Make the masks of one name one mask, their union (:func:`join_masks`): the fixed channel that
        several ROIs of a case map to (``--rois`` with ``--roi-map``). Returns the joined masks."""
        groups: dict = {}
        for m in self.masks:
            groups.setdefault(m.name, []).append(m)
        if all(len(group) == 1 for group in groups.values()):
            return []
        joined = {name: join_masks(group, self.grid) for name, group in groups.items() if len(group) > 1}
        masks = []
        for m in self.masks:
            if m.name not in joined:
                masks.append(m)
            elif joined[m.name] not in masks:
                masks.append(joined[m.name])
        if self.body_mask is not None and any(self.body_mask in j.joined for j in joined.values()):
            self.body_mask = next(j for j in joined.values() if self.body_mask in j.joined)
        self.masks = masks
        return list(joined.values())

    def select(self, channels: Sequence[str], not_in_rois: Sequence[str] = ()) -> None:
        """Fix the channels: ``channels`` in this order (names matched exactly; see ``case_masks``).

        Masks of other names are dropped from the channels (the body keeps its own mask).
        """
        by_name = {m.name: m for m in self.masks}
        self.masks = [by_name[n] for n in channels if n in by_name]
        self.channels = list(channels)
        self.not_in_rois = list(not_in_rois)

    def _channel_masks(self) -> list:
        """``(channel index, mask or None)`` for every channel."""
        if self.channels is None:
            return list(enumerate(self.masks))
        by_name = {m.name: m for m in self.masks}
        return [(n, by_name.get(name)) for n, name in enumerate(self.names)]

    def packed(self) -> np.ndarray:
        """The binary masks bit-packed along i: ``(N, K, J, ceil(I/8))`` uint8."""
        k, j, i = self.grid.shape
        channels = self._channel_masks()
        out = np.zeros((len(channels), k, j, (i + 7) // 8), dtype=np.uint8)
        for n, m in channels:
            if m is not None:
                _pack_into(out[n], m.box, m.binary, i)
        return out

    def fraction_stack(self) -> Optional[np.ndarray]:
        """Fractional masks ``(N, K, J, I)`` uint8 (``round(255 x fraction)``), or None."""
        if self.supersampling < 2:
            return None
        channels = self._channel_masks()
        out = np.zeros((len(channels), *self.grid.shape), dtype=np.uint8)
        for n, m in channels:
            if m is not None and m.fraction is not None and m.fraction.size:
                out[n][m.box] = np.rint(np.clip(m.fraction, 0, 1) * 255).astype(np.uint8)
        return out

    def arrays(self) -> dict:
        """The arrays for pair.npz: ``masks``, ``body`` and (fractional) ``masks_fraction``."""
        out = {"masks": self.packed()}
        if self.body_mask is not None:
            owner = next((n for n, m in self._channel_masks() if m is self.body_mask), None)
            if owner is not None:  # the body is one of the ROIs: its packed mask, shared
                out["body"] = out["masks"][owner]
            else:
                k, j, i = self.grid.shape
                out["body"] = np.zeros((k, j, (i + 7) // 8), dtype=np.uint8)
                _pack_into(out["body"], self.body_mask.box, self.body_mask.binary, i)
        elif self._body is not None:
            out["body"] = np.packbits(self._body, axis=-1)
        fraction = self.fraction_stack()
        if fraction is not None:
            out["masks_fraction"] = fraction
        return out

    def _body_meta(self) -> dict:
        if self.body_mask is not None:
            m = self.body_mask
            count, volume = m.voxel_count, m.volume_cc
        elif self._body is not None:
            count = int(np.count_nonzero(self._body))
            volume = _weighted_volume(self._body, voxel_volumes_cc(self.grid))
        else:
            return {"source": self.body_source, "voxel_count": None, "volume_cc": None}
        return {"source": self.body_source, "voxel_count": count, "volume_cc": round(volume, 3)}

    def _joined_meta(self, index: int, m: RoiMask) -> dict:
        """The meta.json entry of a channel that is the union of several ROIs (``union_of`` lists them)."""
        planes = [p.position_mm for j in m.joined for p in j.roi.planes]
        entry = {
            **_channel_entry(index, m),
            "contour_volume_cc": None,  # overlapping contours would count twice: no contour volume of a union
            "volume_diff_pct": None,
            "contour_planes": len(planes),
            "first_plane_mm": min(planes) if planes else None,
            "last_plane_mm": max(planes) if planes else None,
            "notes": [f"the union of {len(m.joined)} ROIs that map to this channel (union_of)"],
            "union_of": [
                {
                    "number": j.roi.number,
                    "original_name": j.roi.original_name,
                    "source": j.roi.source,
                    "interpreted_type": j.roi.interpreted_type,
                    "voxel_count": j.voxel_count,
                    "volume_cc": round(j.volume_cc, 6),
                    "contour_volume_cc": round(j.roi.contour_volume_cc(self.thickness_mm), 6),
                    "notes": list(j.roi.notes),
                }
                for j in m.joined
            ],
        }
        if m.fraction is not None:
            entry["fractional_volume_cc"] = round(m.fraction_volume_cc or 0.0, 6)
        return entry

    def to_meta(self) -> dict:
        """JSON-ready description for meta.json (per-ROI metadata, skipped ROIs, rule, storage)."""
        rois = []
        for n, m in self._channel_masks():
            if m is None:
                rois.append({"index": n, "name": self.names[n], "absent": ABSENT_NOTE})
                continue
            if m.joined:
                rois.append(self._joined_meta(n, m))
                continue
            contour_cc = m.roi.contour_volume_cc(self.thickness_mm)
            own_slab = m.roi.thickness(self.thickness_mm)
            mask_cc = m.volume_cc
            entry = {
                **_channel_entry(n, m),
                "contour_volume_cc": round(contour_cc, 6),
                "volume_diff_pct": None if contour_cc <= 0 else round(100.0 * (mask_cc - contour_cc) / contour_cc, 3),
                "contour_planes": len(m.roi.planes),
                "first_plane_mm": m.roi.planes[0].position_mm,
                "last_plane_mm": m.roi.planes[-1].position_mm,
                "notes": list(m.roi.notes),
            }
            if own_slab != self.thickness_mm:  # (3006,0044) ContourSlabThickness, thicker than the CT's step
                entry["slab_thickness_mm"] = own_slab
            if m.fraction is not None:
                entry["fractional_volume_cc"] = round(m.fraction_volume_cc or 0.0, 6)
            rois.append(entry)
        out = {
            "names": self.names,
            "roi_present": [m is not None for _n, m in self._channel_masks()],
            "rois": rois,
            "skipped": list(self.skipped),
            "slab_thickness_mm": self.thickness_mm,
            "fractional_supersampling": self.supersampling if self.supersampling >= 2 else None,
            "rule": RULE_NOTE,
            "storage": STORAGE_NOTE,
            "body": self._body_meta(),
            "notes": list(self.notes),
        }
        if self.channels is not None:
            out["channels"] = {"from": "--rois (AlignOptions.rois)", "not_in_rois": list(self.not_in_rois)}
        return out


def unpack_masks(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of the ``masks`` / ``body`` packing: ``(..., K, J, ceil(I/8))`` -> ``(..., K, J, I)`` bool."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=int(shape[-1])).astype(bool)
