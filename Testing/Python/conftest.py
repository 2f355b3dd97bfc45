"""Shared pytest fixtures: the real DICOM-RT sets in ../shared/data and helpers to read outputs."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "DoseAlign"))  # the engine, also when not pip-installed

SHARED_DATA = ROOT.parent / "shared" / "data"

# The Ctrl-C tests send SIGINT to the exports they start. A test run started in the background of a script (`./dev
# test &`: no job control) inherits SIGINT ignored, and so did each export, which then rightly kept on: six of those
# tests failed. They test what a Ctrl-C does, so the run's own processes take SIGINT as a terminal's run does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real DICOM-RT sets; skips the test when this clone has none beside it."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real DICOM-RT data not found at {SHARED_DATA} (only present beside the project's own clone)")
    return SHARED_DATA


def load_case(folder: Path) -> tuple:
    """(arrays dict, meta dict) of one exported case folder."""
    with np.load(folder / "pair.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    return arrays, meta


def voxel_points(meta: dict) -> np.ndarray:
    """LPS centre of every output voxel, shape (K, J, I, 3), from meta.json's ijk_to_lps."""
    k, j, i = meta["shape"]
    affine = np.array(meta["ijk_to_lps"])
    kk, jj, ii = np.meshgrid(np.arange(k), np.arange(j), np.arange(i), indexing="ij")
    ijk = np.stack([ii, jj, kk], axis=-1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def interior_mask(truth, points: np.ndarray, margin: float = 1e-6) -> np.ndarray:
    """Points inside the outermost dose voxel centres (where trilinear interpolation is exact).

    Computed from the phantom's own description of its dose grid, not from the engine.
    """
    rel = points - truth.dose_origin
    row_spacing, column_spacing = truth.dose_pixel_spacing
    _frames, rows, columns = truth.dose_shape
    u = rel @ truth.dose_row_dir / column_spacing
    v = rel @ truth.dose_col_dir / row_spacing
    w = rel @ truth.dose_normal
    offsets = np.asarray(truth.dose_frame_offsets)
    return (
        (u >= -margin)
        & (u <= columns - 1 + margin)
        & (v >= -margin)
        & (v <= rows - 1 + margin)
        & (w >= offsets.min() - margin)
        & (w <= offsets.max() + margin)
    )
