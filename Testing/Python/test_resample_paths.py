"""The streamed separable resampling equals point-by-point trilinear sampling for any axis-parallel pair."""

from __future__ import annotations

import numpy as np
import pytest
from DoseAlignLib.geometry import resample as rs
from DoseAlignLib.geometry.grid import Grid, Volume
from DoseAlignLib.options import Interpolator


def _grid(rng, shape, direction, spacing) -> Grid:
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = rng.uniform(-6, 6, 3)
    return Grid(shape=shape, affine=affine)


@pytest.mark.parametrize("seed", range(12))
def test_separable_equals_pointwise(seed):
    rng = np.random.default_rng(seed)
    # the source's axes: any permutation and flips of the target's (a feet-first or prone dose)
    direction = np.eye(3)[:, rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
    source = _grid(rng, tuple(int(n) for n in rng.integers(2, 14, 3)), direction, rng.uniform(1.0, 3.0, 3))
    target = _grid(rng, tuple(int(n) for n in rng.integers(8, 30, 3)), np.eye(3), rng.uniform(0.4, 1.5, 3))
    volume = Volume(rng.uniform(0, 50, source.shape).astype(np.float32), source, "GY", "dose")
    assert rs.axis_permutation(source, target) is not None  # the streamed path is the one under test
    for interpolator in (Interpolator.LINEAR, Interpolator.NEAREST):
        streamed = rs.resample(volume, target, interpolator)
        pointwise = rs._pointwise(volume, target, interpolator, 0.0)
        if interpolator is Interpolator.LINEAR:
            np.testing.assert_allclose(streamed, pointwise, rtol=0, atol=5e-5)
        else:  # a point half way between two voxels may round either way; nearly all agree exactly
            assert np.mean(streamed == pointwise) > 0.99
    # an integer output is the rounded float one
    as_int = rs.resample(volume, target, Interpolator.LINEAR, dtype=np.int16)
    np.testing.assert_array_equal(as_int, np.rint(rs.resample(volume, target)).astype(np.int16))
