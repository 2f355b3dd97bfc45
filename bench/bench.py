"""DoseAlign benchmark: one realistic case and a batch, every contender as a whole process, side by
side in one run, with peak memory, per-stage times and a check that the dose arrays agree.

    python bench/bench.py                 # generate (cached in bench/.cache) and run everything
    python bench/bench.py --repeats 5 --batch 6 --skip plastimatch

Numbers are medians over --repeats runs, contenders interleaved so background load hits all alike.
Targets (issue 4) are printed as ratios measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "DoseAlign"))
PY = sys.executable
BIN = Path(PY).parent
LEAN = "dosealign export --no-structures"
LEAN_ONE = "dosealign export --no-structures --workers 1"
FULL = "dosealign export (structures, audit, qa.png)"


def realistic_spec(seed: int = 0):
    from DoseAlignLib.phantom import PhantomSpec

    return PhantomSpec(
        patient_id=f"BENCH{seed:03d}",
        ct_size=(512, 512, 300),
        ct_pixel_spacing=(0.977, 0.977),
        ct_slice_spacing=2.0,
        dose_size=(200, 160, 120),
        dose_pixel_spacing=(2.5, 2.5),
        dose_frame_spacing=2.5,
        dose_center_offset_lps=(3.1, -7.3, 1.7),
        extra_organs=5,  # 10 ROIs: External, PTV, Cord, Ring, a marker point and 5 organs
        seed=seed,
    )


def _stamp() -> str:
    """What the cached data were made from: a changed spec or generator makes them again."""
    import hashlib

    generator = (ROOT / "DoseAlign" / "DoseAlignLib" / "phantom.py").read_bytes()
    return hashlib.sha1(repr(realistic_spec(0)).encode() + generator).hexdigest()[:16]


def ensure_case(cache: Path) -> Path:
    from DoseAlignLib.phantom import write_phantom

    case = cache / "case0"
    stamp = _stamp()
    if not (case / ".complete").is_file() or (case / ".complete").read_text() != stamp:
        shutil.rmtree(case, ignore_errors=True)
        print(f"generating the realistic case in {case} (once; about a minute)", flush=True)
        write_phantom(case, realistic_spec(0))
        (case / ".complete").write_text(stamp)
    return case


def clone_case(source: Path, target: Path, n: int) -> None:
    """A copy of a case with every instance UID and the patient changed (a distinct patient)."""
    import pydicom
    from pydicom.uid import generate_uid

    stamp = (source / ".complete").read_text()
    if (target / ".complete").is_file() and (target / ".complete").read_text() == stamp:
        return
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    mapping: dict = {}

    def remap(ds) -> None:
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    remap(item)
            elif element.VR == "UI" and element.value and not str(element.value).startswith("1.2.840.10008"):
                old = str(element.value)
                mapping.setdefault(old, generate_uid(entropy_srcs=[old, str(n)]))
                element.value = mapping[old]

    for path in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        remap(ds)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = f"BENCH{n:03d}"
        ds.save_as(target / path.name)
    (target / ".complete").write_text(stamp)


#: Seconds between runs: freed memory goes back to the host within seconds here, and a run right
#: after another would find it (or not) by chance of order. Set by --settle.
SETTLE = [1.0]


def run(command: list, env: Optional[dict] = None, discard: Optional[Path] = None) -> tuple:
    """Wall seconds and peak RSS (MiB) of a whole process.

    ``discard``: an output folder deleted right after the run, before the kernel writes it to disk;
    kept outputs would pile up as dirty pages and throttle later runs' writes at random.
    """
    if discard is not None:
        shutil.rmtree(discard, ignore_errors=True)
    os.sync()  # no other run's dirty pages are being written back during this one
    time.sleep(SETTLE[0])
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed: {process.stderr.read().decode()[-2000:]}")
    if discard is not None:
        shutil.rmtree(discard, ignore_errors=True)
    return wall, usage.ru_maxrss / 1024.0


def run_pairs(commands: list, outputs: list) -> float:
    """Wall seconds of running ``commands`` two at a time (whole processes), outputs discarded after."""
    for out in outputs:
        shutil.rmtree(out, ignore_errors=True)
    os.sync()
    time.sleep(SETTLE[0])
    start = time.perf_counter()
    for first in range(0, len(commands), 2):
        running = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in commands[first : first + 2]]
        if any(p.wait() != 0 for p in running):
            raise RuntimeError(f"{commands[first]} failed")
    wall = time.perf_counter() - start
    for out in outputs:
        shutil.rmtree(out, ignore_errors=True)
    return wall


def stage_times(case: Path, scratch: Path) -> dict:
    """Per-stage seconds of dosealign in this process (after a warm-up run)."""
    from DoseAlignLib.dicom.ct import ct_geometry, read_ct
    from DoseAlignLib.dicom.rtdose import read_rtdose
    from DoseAlignLib.dicom.scan import scan_folder
    from DoseAlignLib.geometry.resample import resample
    from DoseAlignLib.link.cases import form_cases
    from DoseAlignLib.options import AlignOptions
    from DoseAlignLib.output.case_folder import write_case_output
    from DoseAlignLib.output.qa_png import qa_png_writer
    from DoseAlignLib.pipeline import run_case
    from DoseAlignLib.structures.case import read_case_contours
    from DoseAlignLib.structures.reference_dvh import reference_dvhs

    times: dict = {}

    def timed(name, call, *call_args):
        start = time.perf_counter()
        value = call(*call_args)
        times[name] = time.perf_counter() - start
        return value

    for _ in range(2):  # the second pass is reported: warm cache, warm imports
        timed("scan (2 processes)", scan_folder, case, None, 2)
        scan = timed("scan (1 process)", scan_folder, case)
        linked = timed("link", form_cases, scan)
        one = next(c for c in linked.cases if c.summation_type == "PLAN")
        geometry = timed("CT geometry", ct_geometry, one.ct)
        ct = timed("read CT", read_ct, one.ct, geometry)
        dose = timed("read dose", read_rtdose, one.doses[0].path)[0]
        timed("resample dose", resample, dose, ct.grid)
        timed("run_case, no structures (CT read beside the dose)", run_case, one, AlignOptions(structures=False))
        result = timed("run_case with structures", run_case, one, AlignOptions())
        times["  of which structures + audit"] = (
            times["run_case with structures"] - times["run_case, no structures (CT read beside the dose)"]
        )
        contours = read_case_contours(one, AlignOptions(), geometry)
        rois = [r for r in contours.rois if r.skipped is None]
        cpu = time.process_time()
        timed(f"  of which reference DVHs ({len(rois)} ROIs)", reference_dvhs, rois, dose, geometry.typical_step_mm)
        times[f"  of which reference DVHs ({len(rois)} ROIs), CPU"] = time.process_time() - cpu
        qa_folder = scratch / "stages-qa"
        qa_folder.mkdir(parents=True, exist_ok=True)
        timed("qa.png", qa_png_writer(result), qa_folder)
        shutil.rmtree(scratch / "stages", ignore_errors=True)  # a fresh folder, as in an export
        os.sync()
        timed("write pair.npz + meta.json", write_case_output, result, scratch / "stages")
    return times


def load_dose(folder: Path) -> np.ndarray:
    if (folder / "dose.npy").is_file():
        return np.load(folder / "dose.npy")
    if (folder / "dose.mha").is_file():
        import SimpleITK as sitk

        return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "dose.mha")))
    npz = sorted(folder.rglob("pair.npz"))[0]
    with np.load(npz) as data:
        return data["dose"]


def agreement(reference_folder: Path, folder: Path) -> str:
    """How far the dose in ``folder`` is from the one in ``reference_folder``, relative to its maximum."""
    reference, other = load_dose(reference_folder), load_dose(folder)
    if other.shape != reference.shape:
        return f"shape {other.shape}"
    inside = (reference > 0) & (other > 0)
    return f"max |diff| {np.abs(other[inside] - reference[inside]).max() / reference.max():.1e} Dmax"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="cases in the batch measurement")
    parser.add_argument("--skip", nargs="*", default=[], help="contenders to leave out (e.g. plastimatch)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of rest before each run (default 1)")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compare", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    SETTLE[0] = args.settle
    if args.compare:
        print(agreement(*args.compare))
        return 0
    if args.prepare_only:
        case = ensure_case(args.cache)
        for n in range(args.batch):
            clone_case(case, args.cache / f"batch{args.batch}" / f"p{n:03d}", n + 1)
        return 0
    # the engine compiled as an installed wheel has it (an editable install with PYTHONDONTWRITEBYTECODE
    # set would compile every module in every run)
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "DoseAlign" / "DoseAlignLib")], check=True)
    # data are made in a child process: a forked child's peak RSS would include this process's pages
    subprocess.run([PY, __file__, "--prepare-only", "--cache", str(args.cache), "--batch", str(args.batch)], check=True)
    cache = args.cache
    scratch = cache / "runs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    case = ensure_case(cache)
    spec = realistic_spec(0)
    k, j, i = spec.ct_size[2], spec.ct_size[1], spec.ct_size[0]
    output_bytes = k * j * i * (2 + 4)
    input_bytes = sum(p.stat().st_size for p in case.glob("*.dcm"))
    dosealign = str(BIN / "dosealign")
    plastimatch = shutil.which("plastimatch") or str(BIN / "plastimatch")

    contenders = {
        "I/O floor (read inputs, np.save outputs)": lambda out: [
            PY,
            str(HERE / "io_floor.py"),
            str(case),
            out,
            str(k),
            str(j),
            str(i),
        ],
        # as a user runs it: --workers defaults to the cores (headers are read in that many processes)
        LEAN: lambda out: [dosealign, "export", str(case), out, "--quiet", "--no-structures", "--no-qa-png"],
        LEAN_ONE: lambda out: [
            dosealign,
            "export",
            str(case),
            out,
            "--quiet",
            "--workers",
            "1",
            "--no-structures",
            "--no-qa-png",
        ],
        FULL: lambda out: [dosealign, "export", str(case), out, "--quiet"],
        "pydicom + SimpleITK script": lambda out: [PY, str(HERE / "naive_pipeline.py"), str(case), out],
        "SimpleITK only": lambda out: [PY, str(HERE / "sitk_pipeline.py"), str(case), out],
        "plastimatch convert --resize-dose (.mha)": lambda out: [
            plastimatch,
            "convert",
            "--input",
            str(case),
            "--output-img",
            f"{out}/ct.mha",
            "--output-dose-img",
            f"{out}/dose.mha",
            "--resize-dose",
        ],
    }
    if "plastimatch" in args.skip or not Path(plastimatch).exists():
        contenders.pop("plastimatch convert --resize-dose (.mha)")
    for name in list(contenders):
        if any(s.lower() in name.lower() for s in args.skip if s != "plastimatch"):
            contenders.pop(name)

    baseline = run([PY, "-c", "pass"])[1]
    # first, untimed: each contender's dose against dosealign's, compared in a child process (this one
    # stays small: a child's peak RSS as the kernel reports it starts from its parent's), and the
    # outputs go before any timing
    agreements = {}
    reference_folder = scratch / "agree-reference"
    run(contenders[LEAN](str(reference_folder)))
    for n, (name, make) in enumerate(contenders.items()):
        if "floor" in name:
            continue
        out = scratch / f"agree-{n}"
        out.mkdir(parents=True, exist_ok=True)
        run(make(str(out)))
        compared = subprocess.run(
            [PY, __file__, "--compare", str(reference_folder), str(out)], capture_output=True, text=True
        )
        agreements[name] = compared.stdout.strip() or f"unreadable: {compared.stderr.strip()[-60:]}"
        shutil.rmtree(out)
    shutil.rmtree(reference_folder)

    results: dict = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        order = list(enumerate(contenders.items()))
        random.Random(repeat).shuffle(order)  # no contender always runs after the same other one
        for n, (name, make) in order:
            out = scratch / f"c{n}-r{repeat}"
            os.makedirs(out, exist_ok=True)
            results[name].append(run(make(str(out)), discard=out))
    rows = []
    floor = statistics.median(w for w, _ in results["I/O floor (read inputs, np.save outputs)"])
    for name, values in results.items():
        wall = statistics.median(w for w, _ in values)
        rss = max(r for _, r in values)
        rows.append((name, wall, wall / floor, rss))

    print(
        f"\nOne case: CT {i}x{j}x{k} int16, dose {spec.dose_size[0]}x{spec.dose_size[1]}x{spec.dose_size[2]} "
        f"on an offset grid; inputs {input_bytes / 2**20:.0f} MiB, output arrays {output_bytes / 2**20:.0f} MiB; "
        f"median of {args.repeats} runs, warm cache, {os.cpu_count()} cores"
    )
    print(f"{'contender':48} {'wall s':>8} {'x floor':>8} {'peak RSS MiB':>13} {'dose vs dosealign':>20}")
    for name, wall, ratio, rss in rows:
        print(f"{name:48} {wall:8.2f} {ratio:8.2f} {rss:13.0f} {agreements.get(name, ''):>20}")

    print(f"(a bare Python process peaks at {baseline:.0f} MiB here)")
    stages = stage_times(case, scratch)
    shutil.rmtree(scratch / "stages", ignore_errors=True)
    shutil.rmtree(scratch / "stages-qa", ignore_errors=True)
    print("\ndosealign stages (in-process, warm):")
    for name, seconds in stages.items():
        print(f"  {name:50} {seconds:7.3f} s")

    # batch: distinct patients, 1 vs 2 workers, lean and full
    batch_root = cache / f"batch{args.batch}"
    batch_times: dict = {}
    floor_batch = []
    floor_scaling = []
    cpu_scaling = []
    variants = {"lean": ["--no-structures", "--no-qa-png"], "full": []}
    for repeat in range(max(1, args.repeats - 1)):
        for variant, flags in variants.items():
            for workers in (1, 2):
                out = scratch / f"batch-{variant}-w{workers}-r{repeat}"
                command = [dosealign, "export", str(batch_root), str(out), "--quiet", "--workers", str(workers)]
                batch_times.setdefault((variant, workers), []).append(run(command + flags, discard=out)[0])
        floor_commands = [
            [
                PY,
                str(HERE / "io_floor.py"),
                str(batch_root / f"p{n:03d}"),
                str(scratch / f"fb{n}"),
                str(k),
                str(j),
                str(i),
            ]
            for n in range(args.batch)
        ]
        one_at_a_time = 0.0
        for n, command in enumerate(floor_commands):
            seconds = run(command, discard=scratch / f"fb{n}")[0]
            floor_batch.append(seconds)
            one_at_a_time += seconds
        # the machine's own ceiling for two processes: the floors of the batch, two at a time
        two_at_a_time = run_pairs(floor_commands, [scratch / f"fb{n}" for n in range(args.batch)])
        floor_scaling.append(one_at_a_time / two_at_a_time)
        # and for work that only computes (pure Python, no memory to speak of)
        spin = [PY, "-c", "sum(i * i for i in range(6 * 10**6))"]
        alone = sum(run(spin)[0] for _ in range(2))
        cpu_scaling.append(alone / run_pairs([spin, spin], []))
    per_case_floor = statistics.median(floor_batch)
    batch = {key: statistics.median(values) for key, values in batch_times.items()}
    print(f"\nBatch of {args.batch} cases (per-case floor {per_case_floor:.2f} s):")
    for variant in variants:
        one, two = batch[(variant, 1)], batch[(variant, 2)]
        print(
            f"  {variant:5} 1 worker : {one:6.2f} s ({one / args.batch:.2f} s per case)   "
            f"2 workers: {two:6.2f} s ({two / args.batch:.2f} s per case)   throughput x{one / two:.2f}"
        )
    print(
        f"  the I/O floor itself, 2 processes at a time instead of 1: x{statistics.median(floor_scaling):.2f} "
        "(what this machine gives two processes that only read and write)"
    )
    print(f"  pure-Python computing, 2 processes at a time instead of 1: x{statistics.median(cpu_scaling):.2f}")

    by_name = {name: (wall, rss) for name, wall, _r, rss in rows}
    lean = by_name[LEAN]
    print("\nTargets (issue 4), as measured in this run:")
    checks = [
        ("one case <= 2x the I/O floor (--no-structures)", lean[0] / floor, 2.0, "<="),
        ("  the same with --workers 1", by_name[LEAN_ONE][0] / floor, 2.0, "<="),
        (
            "batch per case <= 1.5x per-case floor (lean, 2 w.)",
            batch[("lean", 2)] / args.batch / per_case_floor,
            1.5,
            "<=",
        ),
        ("  the same with 1 worker", batch[("lean", 1)] / args.batch / per_case_floor, 1.5, "<="),
        ("peak RSS <= 1.5x output bytes (--no-structures)", lean[1] * 2**20 / output_bytes, 1.5, "<="),
        ("2 workers >= 1.8x throughput of 1 (lean batch)", batch[("lean", 1)] / batch[("lean", 2)], 1.8, ">="),
        ("  the same, full batch", batch[("full", 1)] / batch[("full", 2)], 1.8, ">="),
    ]
    if "SimpleITK only" in by_name:
        checks.append(("SimpleITK-only / dosealign >= 2", by_name["SimpleITK only"][0] / lean[0], 2.0, ">="))
    if "plastimatch convert --resize-dose (.mha)" in by_name:
        checks.append(
            (
                "plastimatch / dosealign >= 3",
                by_name["plastimatch convert --resize-dose (.mha)"][0] / lean[0],
                3.0,
                ">=",
            )
        )
    for label, value, limit, sense in checks:
        ok = value <= limit if sense == "<=" else value >= limit
        print(f"  {'met ' if ok else 'MISS'} {label:52} {value:6.2f} (target {sense} {limit})")
    (scratch / "bench.json").write_text(
        json.dumps(
            {"rows": [r[:4] for r in rows], "stages": stages, "batch": {f"{v}-w{w}": t for (v, w), t in batch.items()}},
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
