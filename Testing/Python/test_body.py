"""The CT body mask: the run-based mask equals SimpleITK's voxel filters (ConnectedComponent,
RelabelComponent, per-slice BinaryFillhole) on shapes built to stress it, and on noise; a CT with
too many runs takes the voxel path and gives the same mask."""

from __future__ import annotations

import numpy as np
import pytest
from DoseAlignLib.structures import body
from DoseAlignLib.structures.body import body_from_ct, body_from_ct_voxels


def _blobs(shape, seed: int, count: int = 14) -> np.ndarray:
    """Random ellipsoids of body, air pockets inside some, thin bridges and rings: components, holes,
    holes open to a slice border, parts touching only by an edge or a corner."""
    rng = np.random.default_rng(seed)
    ct = np.full(shape, -1000.0, np.float32)
    kk, jj, ii = np.indices(shape)
    for _ in range(count):
        centre = rng.uniform(0, shape)
        radii = rng.uniform(1.0, np.maximum(np.array(shape) / 2.5, 1.5))
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip((kk, jj, ii), centre, radii)) < 1
        ct[inside] = rng.choice([40.0, 900.0, -800.0, -1000.0])  # tissue, bone, lung, air pocket
        if rng.random() < 0.7:  # a pocket inside: enclosed, or (shifted) open to the outside
            centre = centre + rng.uniform(-0.6, 0.6, 3) * radii
            radii = radii * rng.uniform(0.3, 0.6, 3)
            ct[sum(((g - c) / r) ** 2 for g, c, r in zip((kk, jj, ii), centre, radii)) < 1] = -900.0
    ct[:, ::7, ::5] = 100.0  # isolated points: many tiny components
    k = rng.integers(0, shape[0])
    ct[k, 1:-1, 1:-1][np.add.outer(np.arange(shape[1] - 2), np.arange(shape[2] - 2)) % 9 == 0] = 200.0  # diagonals
    return ct


@pytest.mark.parametrize(
    "shape,seed",
    [((9, 40, 50), 1), ((12, 33, 37), 2), ((1, 30, 30), 3), ((6, 1, 40), 4), ((6, 40, 1), 5), ((20, 24, 24), 6)],
)
def test_runs_match_the_voxel_filters(shape, seed):
    ct = _blobs(shape, seed)
    mask = body_from_ct(ct)
    expected = body_from_ct_voxels(ct)
    assert mask.shape == shape and mask.dtype == bool and mask.flags.c_contiguous
    np.testing.assert_array_equal(mask, expected)
    if shape[1] > 1 and shape[2] > 1:
        assert expected.any()


def test_runs_match_on_noise_and_fill_lungs_of_a_thorax():
    rng = np.random.default_rng(7)
    shape = (10, 64, 72)
    kk, jj, ii = np.indices(shape)
    ct = np.where(((jj - 30) / 26.0) ** 2 + ((ii - 36) / 32.0) ** 2 < 1, 30.0, -1000.0)
    lung = ((jj - 30) / 12.0) ** 2 + ((np.abs(ii - 36) - 14) / 8.0) ** 2 < 1
    ct[lung] = -850.0
    ct += rng.normal(0, 250, shape)  # noise across the threshold in the lungs and the air
    mask = body_from_ct(ct.astype(np.int16))
    np.testing.assert_array_equal(mask, body_from_ct_voxels(ct.astype(np.int16)))
    assert mask[:, 30, 22].all()  # the lungs are enclosed in every slice: filled
    assert not mask[:, 62, 2].any()


def test_all_above_or_none():
    assert not body_from_ct(np.full((3, 5, 6), -1000, np.int16)).any()
    assert body_from_ct(np.full((3, 5, 6), 0, np.int16)).all()
    np.testing.assert_array_equal(body_from_ct(np.zeros((0, 5, 6))), np.zeros((0, 5, 6), bool))
    with pytest.raises(ValueError, match="shape"):
        body_from_ct(np.zeros((5, 6)))


def test_many_runs_take_the_voxel_path(monkeypatch):
    ct = _blobs((8, 30, 34), 11)
    fast = body_from_ct(ct)
    calls = []

    def voxels(values, threshold):
        calls.append(values.shape)
        return body_from_ct_voxels(values, threshold)

    monkeypatch.setattr(body, "body_from_ct_voxels", voxels)
    monkeypatch.setattr(body, "VOXELS_PER_RUN_MIN", ct.size)  # any run is too many
    np.testing.assert_array_equal(body.body_from_ct(ct), fast)
    assert calls == [ct.shape]
