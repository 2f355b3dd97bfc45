"""The reference DVH's cost: 10 clinical-size ROIs (50-1500 cm^3) on a 3 mm dose grid.

    python bench/reference_dvh_bench.py                  # 2 mm and 3 mm contour spacing, 5 repeats
    python bench/reference_dvh_bench.py --spacing 2 --repeats 9

The ROIs are lobed ellipsoids contoured on axial planes (a vertex about every mm, as planning
systems write them), the dose a smooth field of a 60 Gy target and its fall-off, sampled on a
3 x 3 x 3 mm grid. Prints the median wall time of :func:`reference_dvhs` over all 10 ROIs (the
budget of issue 16: 0.5 s), its CPU time (less sensitive to other load on the machine) and what
each ROI cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "DoseAlign"))

from DoseAlignLib.dicom.rtstruct import ContourPlane, RoiContours  # noqa: E402
from DoseAlignLib.geometry.grid import Grid, Volume  # noqa: E402
from DoseAlignLib.structures.reference_dvh import BETWEEN_PLANES, reference_dvh, reference_dvhs  # noqa: E402

VOLUMES_CC = (50, 80, 120, 200, 300, 450, 650, 900, 1200, 1500)


def lobed_ellipsoid(name: str, volume_cc: float, centre, spacing_mm: float, seed: int) -> RoiContours:
    """An ellipsoid (axes 1 : 0.8 : 1.2) with three lobes in plane, scaled to about ``volume_cc``."""
    rng = np.random.default_rng(seed)
    axes = np.array([1.0, 0.8, 1.2])
    r = (volume_cc * 1000 / (4 / 3 * np.pi * axes.prod())) ** (1 / 3)
    a, b, c = axes * r
    phase = rng.uniform(0, 2 * np.pi)
    planes = []
    for z in np.arange(-c, c + 1e-9, spacing_mm)[1:]:
        scale = np.sqrt(max(1 - (z / c) ** 2, 0.0))
        if scale <= 0:
            continue
        n = max(int(2 * np.pi * max(a, b) * scale), 12)  # about a vertex per mm
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        lobes = 1 + 0.12 * np.sin(3 * t + phase)
        poly = np.stack(
            [
                centre[0] + a * scale * lobes * np.cos(t),
                centre[1] + b * scale * lobes * np.sin(t),
                np.full(n, centre[2] + z),
            ],
            axis=1,
        )
        planes.append(ContourPlane(float(centre[2] + z), [poly]))
    return RoiContours(0, name, name, "ORGAN", None, "bench", np.array([0.0, 0.0, 1.0]), planes)


def smooth_dose(seed: int = 0) -> Volume:
    """A 3 mm dose grid (210 x 300 x 330 mm): a 60 Gy target, its fall-off and a low-dose bath."""
    grid = Grid.from_spacing((70, 100, 110), (3.0, 3.0, 3.0), (-165.0, -150.0, -105.0))
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    p = grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64))
    rng = np.random.default_rng(seed)
    dose = np.zeros(grid.shape)
    for centre, peak, width in ((np.zeros(3), 60.0, 45.0), (rng.uniform(-60, 60, 3), 20.0, 80.0)):
        dose += peak * np.exp(-np.sum((p - centre) ** 2, axis=-1) / (2 * width**2))
    return Volume(dose.astype(np.float32), grid, units="GY")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, nargs="*", default=[2.0, 3.0], help="contour spacings (mm)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--between", choices=BETWEEN_PLANES, default="interpolated", help="the solid between planes")
    args = parser.parse_args(argv)
    dose = smooth_dose()
    rng = np.random.default_rng(1)
    for spacing in args.spacing:
        rois = [
            lobed_ellipsoid(f"roi_{v}cc", v, rng.uniform(-40, 40, 3), spacing, seed)
            for seed, v in enumerate(VOLUMES_CC)
        ]
        reference_dvhs(rois, dose, spacing, between_planes=args.between)  # warm-up
        times, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            reference_dvhs(rois, dose, spacing, between_planes=args.between)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        print(
            f"contours {spacing:g} mm, dose grid 3 mm: 10 ROIs in {statistics.median(times):.3f} s "
            f"(median of {args.repeats}; min {min(times):.3f} s, max {max(times):.3f} s; "
            f"CPU median {statistics.median(cpu):.3f} s)"
        )
        for roi in rois:
            start = time.perf_counter()
            result = reference_dvh(roi, dose, spacing, between_planes=args.between)
            took = time.perf_counter() - start
            print(
                f"  {roi.name:11s} {result.points['volume_cc']:8.1f} cm3  {result.sampling['samples']:7d} samples"
                f"  step {result.sampling['in_plane_step_mm']:.2f} mm  {1000 * took:6.1f} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
