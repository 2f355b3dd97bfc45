"""Resample a volume onto another grid: linear, nearest, B-spline or windowed sinc.

A source voxel covers its centre plus half a voxel each way (as ITK's ResampleImageFilter, and so
Slicer's Resample CLI, treats it); points outside that extent get ``fill``. Inside the half-voxel
rim the value of the edge voxel is used. Non-uniform slice positions are interpolated at their
true positions.

Grids whose axes are parallel (the usual CT/dose pair, any patient position) are resampled in
three separable 1-D passes over the target's bounding box of the source; others point by point.
B-spline and windowed sinc go through SimpleITK and need a uniform source grid.

Every output array of a case is made by a *resampler* (:class:`Resampler`): the engine's own
(:data:`ENGINE_RESAMPLER`, this module's :func:`resample`) or another one, e.g. the Slicer module's
Resample Scalar/Vector/DWI Volume CLI. Everything else a case does (units, sums, structures, the
audit, meta.json) is the same whichever resampler is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from ..errors import GeometryError
from ..options import Interpolator
from .grid import Grid, Volume

#: Index tolerance for "inside the half-voxel rim", against round-off in the affines.
INSIDE_TOLERANCE = 1e-6
#: Points per chunk on the point-by-point path (bounds memory to ~100 MB).
CHUNK_POINTS = 1 << 21


def resample(
    volume: Volume,
    target: Grid,
    interpolator: Interpolator = Interpolator.LINEAR,
    *,
    fill: float = 0.0,
    dtype: type = np.float32,
) -> np.ndarray:
    """Values of ``volume`` at the voxel centres of ``target``: an array of ``target.shape``.

    Integer ``dtype`` outputs are rounded to the nearest integer.
    """
    interpolator = Interpolator(interpolator)
    # np.zeros maps untouched pages lazily: only the source's box ever costs memory (dose covers ~30%)
    out = np.zeros(target.shape, dtype=dtype) if fill == 0 else np.full(target.shape, fill, dtype=dtype)
    box = source_box(volume.grid, target)
    if box is None:
        return out
    sub = target.crop(*box)
    dest = out[box]  # a view: every path below writes into it
    if interpolator in (Interpolator.LINEAR, Interpolator.NEAREST):
        permutation = axis_permutation(volume.grid, sub)
        if permutation is not None:
            _separable(volume, sub, permutation, interpolator, fill, dest)
        else:
            _store(dest, _pointwise(volume, sub, interpolator, fill))
    else:
        _store(dest, _simpleitk(volume, sub, interpolator, fill))
    return out


class Resampler(Protocol):
    """Puts a volume on a grid: what the backends (engine, Slicer's CLI, VTK) differ in, and only that.

    ``resampler(volume, target, interpolator, fill=..., dtype=...)`` returns an array of
    ``target.shape`` with the values of ``volume`` at ``target``'s voxel centres and ``fill`` outside
    the source's extent. ``name`` goes into meta.json. A resampler with ``uniform_sources_only``
    set gets only evenly spaced, orthogonal source grids: the engine first resamples other sources
    (uneven dose frames, missing CT slices, gantry tilt) onto such a grid itself.
    """

    name: str
    uniform_sources_only: bool

    def __call__(
        self, volume: Volume, target: Grid, interpolator: Interpolator, *, fill: float, dtype: type
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class EngineResampler:
    """The engine's own resampling (:func:`resample`): exact for uneven slices, any orientation."""

    name: str = "engine"
    uniform_sources_only: bool = False

    def __call__(
        self,
        volume: Volume,
        target: Grid,
        interpolator: Interpolator = Interpolator.LINEAR,
        *,
        fill: float = 0.0,
        dtype: type = np.float32,
    ) -> np.ndarray:
        return resample(volume, target, interpolator, fill=fill, dtype=dtype)


#: The default resampler of every case.
ENGINE_RESAMPLER = EngineResampler()


def _store(dest: np.ndarray, values: np.ndarray) -> None:
    if np.issubdtype(dest.dtype, np.integer):
        values = np.rint(values)
    dest[...] = values


def source_box(source: Grid, target: Grid) -> Optional[tuple]:
    """Slices ``(k, j, i)`` of ``target`` whose voxels may lie inside ``source``; None if none do."""
    extent = source.extent_in(target)
    box = []
    for axis, n in zip((2, 1, 0), target.shape):  # extent rows are i, j, k
        lo = int(np.ceil(extent[axis, 0] - 1e-6))
        hi = int(np.floor(extent[axis, 1] + 1e-6))
        lo, hi = max(lo, 0), min(hi, n - 1)
        if hi < lo:
            return None
        box.append(slice(lo, hi + 1))
    return tuple(box)


#: Largest |sine| between a source and a target axis still taken as parallel (float noise in direction
#: cosines): 1e-6 moves a voxel 0.4 um across a 400 mm grid. It bounded 1 - |cosine| before, which let
#: rotations up to 0.08 deg (|sine| 1.4e-3, 0.6 mm across 400 mm) be resampled as unrotated.
PARALLEL_SINE_TOL = 1e-6


def axis_permutation(source: Grid, target: Grid, tol: float = PARALLEL_SINE_TOL) -> Optional[list]:
    """For each target axis (i, j, k) the parallel source axis, or None when the axes are not parallel.

    Parallel: every other source axis has a component of at most ``tol`` along the target axis (the sine
    of the angle between them, not one minus its cosine, which is quadratic in the angle).
    """
    if not (source.is_orthogonal() and target.is_orthogonal() and target.is_uniform):
        return None
    cosines = np.abs(source.direction.T @ target.direction)
    permutation = []
    for t in range(3):
        a = int(np.argmax(cosines[:, t]))
        if abs(cosines[a, t] - 1.0) > tol or np.delete(cosines[:, t], a).max() > tol:
            return None
        permutation.append(a)
    return permutation if sorted(permutation) == [0, 1, 2] else None


def _source_indices_along(source: Grid, target: Grid, t: int, a: int) -> np.ndarray:
    """Continuous source index along source axis ``a`` of every target voxel along target axis ``t``."""
    n = target.shape[2 - t]
    ijk = np.zeros((n, 3))
    ijk[:, t] = np.arange(n)
    return source.lps_to_index(target.index_to_lps(ijk))[:, a]


def _inside(index: np.ndarray, n: int) -> np.ndarray:
    return (index >= -0.5 - INSIDE_TOLERANCE) & (index <= n - 0.5 + INSIDE_TOLERANCE)


def _separable(
    volume: Volume, target: Grid, permutation: list, interpolator: Interpolator, fill: float, dest: np.ndarray
) -> None:
    """Three 1-D passes, streamed: ``dest`` is filled slab by slab along one axis, each slab from the
    two source planes around it, themselves resampled in-plane (two passes) when first needed.

    Every source plane is resampled once (the slabs advance monotonically) and only two are kept,
    so no temporary the size of the output is ever made: the dose's resampling touches little
    memory beyond ``dest`` itself.
    """
    source = volume.grid
    growth = [target.shape[2 - t] / source.shape[2 - permutation[t]] for t in range(3)]
    # the slab axis: the one that grows most, but never i (slabs across i would be strided); the
    # in-plane passes run in order of growth, so the data shrink first
    last = max((1, 2), key=lambda t: growth[t])
    first = sorted((t for t in range(3) if t != last), key=lambda t: growth[t])
    source_axis = 2 - permutation[last]  # array axis of the source planes
    plane_axis = {}  # target axis -> axis of a source plane (2-D) it is resampled along
    for t in first:
        axis = 2 - permutation[t]
        plane_axis[t] = axis - (axis > source_axis)
    passes = [(plane_axis[t], *_axis_map(source, target, t, permutation[t])) for t in first]
    # a plane's axes, in order, are the target's axes ``order``; the slabs of dest want them in (k, j, i) order
    order = sorted(first, key=lambda t: plane_axis[t])
    transpose = order != sorted(first, reverse=True)
    index, inside_last = _axis_map(source, target, last, permutation[last])
    t_outer, t_inner = sorted(first, reverse=True)
    mask = {t: inside for t, (_axis, _index, inside) in zip(first, passes)}
    inside_rest = mask[t_outer][:, None] & mask[t_inner][None, :]
    if inside_rest.all():
        inside_rest = None

    planes: dict = {}

    def plane(r: int) -> np.ndarray:
        if r not in planes:
            data = _slab(volume.array, source_axis, r)
            for axis, axis_index, _inside in passes:
                data = _pass(data, axis, axis_index, interpolator)
            planes[r] = np.ascontiguousarray(data.T if transpose else data, dtype=np.float32)
        return planes[r]

    n_source = volume.array.shape[source_axis]
    integer = np.issubdtype(dest.dtype, np.integer)
    slab = np.empty(np.delete(np.array(dest.shape), 2 - last), dtype=np.float32)
    for n in range(dest.shape[2 - last]):
        out_slab = _slab(dest, 2 - last, n)
        if not inside_last[n]:
            out_slab[...] = fill
            continue
        if interpolator is Interpolator.NEAREST or n_source == 1:
            needed = (int(np.floor(index[n] + 0.5)) if n_source > 1 else 0,)
            np.copyto(slab, plane(needed[0]))
        else:
            base = min(int(np.floor(index[n])), n_source - 2)
            needed = (base, base + 1)
            weight = np.float32(index[n] - base)
            low, high = plane(base), plane(base + 1)
            np.subtract(high, low, out=slab)
            slab *= weight
            slab += low
        for r in [r for r in planes if r not in needed]:
            del planes[r]  # the slabs advance monotonically: a plane left behind is not needed again
        if inside_rest is not None:
            slab[~inside_rest] = fill
        if integer:
            np.rint(slab, out=slab)
        out_slab[...] = slab


def _slab(array: np.ndarray, axis: int, n: int) -> np.ndarray:
    """The view ``array[n]`` along ``axis``."""
    index = [slice(None)] * array.ndim
    index[axis] = n
    return array[tuple(index)]


def _axis_map(source: Grid, target: Grid, t: int, a: int) -> tuple:
    """Clipped continuous source indices along source axis ``a`` for target axis ``t``, and the inside mask."""
    n_source = source.shape[2 - a]
    index = _source_indices_along(source, target, t, a)
    return np.clip(index, 0, n_source - 1), _inside(index, n_source)


def _pass(data: np.ndarray, axis: int, index: np.ndarray, interpolator: Interpolator) -> np.ndarray:
    """Resample ``data`` along one array axis at the given (clipped) continuous indices, in float32."""
    n_source = data.shape[axis]
    if interpolator is Interpolator.NEAREST or n_source == 1:
        nearest = np.floor(index + 0.5).astype(np.intp) if n_source > 1 else np.zeros(index.shape, dtype=np.intp)
        return np.take(data, nearest, axis=axis)
    base = np.minimum(np.floor(index).astype(np.intp), n_source - 2)
    weight_shape = [1] * data.ndim
    weight_shape[axis] = index.size
    weight = (index - base).astype(np.float32).reshape(weight_shape)
    low = np.take(data, base, axis=axis).astype(np.float32, copy=False)
    high = np.take(data, base + 1, axis=axis).astype(np.float32, copy=False)
    high -= low
    high *= weight
    high += low
    return high


def _pointwise(volume: Volume, target: Grid, interpolator: Interpolator, fill: float) -> np.ndarray:
    nk, nj, ni = target.shape
    out = np.empty(target.shape, dtype=np.float32)
    jj, ii = np.meshgrid(np.arange(nj, dtype=np.float64), np.arange(ni, dtype=np.float64), indexing="ij")
    per_slice = nj * ni
    step = max(1, CHUNK_POINTS // per_slice)
    for k0 in range(0, nk, step):
        k1 = min(nk, k0 + step)
        kk = np.arange(k0, k1, dtype=np.float64)[:, None, None] * np.ones((1, nj, ni))
        ijk = np.stack([np.broadcast_to(ii, kk.shape), np.broadcast_to(jj, kk.shape), kk], axis=-1)
        source_ijk = volume.grid.lps_to_index(target.index_to_lps(ijk))
        out[k0:k1] = sample(volume.array, source_ijk, interpolator, fill)
    return out


def sample(
    array: np.ndarray, ijk: np.ndarray, interpolator: Interpolator = Interpolator.LINEAR, fill: float = 0.0
) -> np.ndarray:
    """Interpolate ``array[k, j, i]`` at continuous indices ``ijk`` (..., 3) given as (i, j, k)."""
    shape_kji = array.shape
    sizes = np.array([shape_kji[2], shape_kji[1], shape_kji[0]])
    inside = np.all((ijk >= -0.5 - INSIDE_TOLERANCE) & (ijk <= sizes - 0.5 + INSIDE_TOLERANCE), axis=-1)
    ijk = np.clip(ijk, 0, sizes - 1)
    if Interpolator(interpolator) is Interpolator.NEAREST:
        idx = np.floor(ijk + 0.5).astype(np.intp)
        values = array[idx[..., 2], idx[..., 1], idx[..., 0]].astype(np.float32)
        return np.where(inside, values, np.float32(fill))
    base = np.minimum(np.floor(ijk).astype(np.intp), np.maximum(sizes - 2, 0))
    frac = (ijk - base).astype(np.float32)
    values = np.zeros(ijk.shape[:-1], dtype=np.float32)
    for dk in (0, 1):
        for dj in (0, 1):
            for di in (0, 1):
                offset = np.array([di, dj, dk])
                idx = np.minimum(base + offset, sizes - 1)
                weight = (
                    (frac[..., 0] if di else 1 - frac[..., 0])
                    * (frac[..., 1] if dj else 1 - frac[..., 1])
                    * (frac[..., 2] if dk else 1 - frac[..., 2])
                )
                values += weight * array[idx[..., 2], idx[..., 1], idx[..., 0]]
    return np.where(inside, values, np.float32(fill))


def _simpleitk(volume: Volume, target: Grid, interpolator: Interpolator, fill: float) -> np.ndarray:
    import SimpleITK as sitk  # heavy import, only where used

    from .sitk_bridge import image_from_volume

    if not volume.grid.is_uniform:
        raise GeometryError(
            f"interpolator '{interpolator.value}' needs evenly spaced source slices",
            hint="use --interpolator linear or nn, which handle uneven frames exactly",
        )
    if not target.is_orthogonal():
        raise GeometryError("B-spline / windowed-sinc resampling needs an orthogonal target grid")
    image = image_from_volume(volume.with_array(volume.array.astype(np.float32, copy=False)))
    kind = sitk.sitkBSpline if interpolator is Interpolator.BSPLINE else sitk.sitkCosineWindowedSinc
    result = sitk.Resample(
        image,
        [int(target.shape[2]), int(target.shape[1]), int(target.shape[0])],
        sitk.Transform(),
        kind,
        target.origin.tolist(),
        target.spacing.tolist(),
        target.direction.ravel().tolist(),
        float(fill),
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(result)
