"""DoseAlign benchmark: two cases and a batch, every contender as a whole process, side by side in
one run, with peak memory, each stage's share of the default export and a check that the dose
arrays agree.

Cases: "10-ROI" (the engine's phantom: CT 512x512x300 int16, dose 200x160x120, RTPLAN, RTSTRUCT with
10 ROIs) and "clinical" (bench/clinical_case.py, the shape of issue 14: Philips-like implicit VR
uint16 CT 512x512x152, Pinnacle-like 129x91x98 dose over 30 % of it, no RTSTRUCT).

    python bench/bench.py                 # generate (cached in bench/.cache) and run everything
    python bench/bench.py --repeats 5 --batch 6 --skip plastimatch
    python bench/bench.py --cases clinical --batch 0 --markdown tables.md   # also README-ready tables

Per case and contender: median and best wall seconds, CPU seconds (user + system, children included),
the ratios to the np.save floor and to the lean export, peak RSS against the output arrays' bytes, the
bytes the contender wrote, and its dose against the lean export's. The engine run is this checkout's (DoseAlign/ goes first on every child's PYTHONPATH). Numbers are
medians over --repeats runs, contenders and cases interleaved in shuffled order so background load
hits all alike. Targets (issues 4 and 14) are printed as ratios measured in this run.
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
FLOOR = "I/O floor (read inputs, np.save outputs)"
LEAN = "dosealign export --no-structures --no-qa-png"
LEAN_ONE = "  the same with --workers 1"
DEFAULT = "dosealign export (default; with ROIs: full)"
NAIVE = "pydicom + SimpleITK script"
SITK = "SimpleITK only"
PLASTIMATCH = "plastimatch convert --resize-dose (.mha)"
CASE_NAMES = ("clinical", "10-ROI")


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


def clinical_spec():
    sys.path.insert(0, str(HERE))
    from clinical_case import ClinicalSpec

    return ClinicalSpec()


def ensure_clinical(cache: Path) -> Path:
    """The clinical-shaped case (bench/clinical_case.py), made again when its generator changes."""
    import hashlib

    sys.path.insert(0, str(HERE))
    from clinical_case import write_clinical_case

    case = cache / "clinical0"
    source = (HERE / "clinical_case.py").read_bytes()
    stamp = hashlib.sha1(repr(clinical_spec()).encode() + source).hexdigest()[:16]
    marker = cache / "clinical0.complete"  # beside the case: the folder holds DICOM files only
    if not marker.is_file() or json.loads(marker.read_text()).get("stamp") != stamp:
        shutil.rmtree(case, ignore_errors=True)
        print(f"generating the clinical-shaped case in {case} (once; a few seconds)", flush=True)
        summary = write_clinical_case(case, clinical_spec())
        marker.write_text(json.dumps({"stamp": stamp, **summary}))
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


#: Shared machines: before each run, wait (up to PATIENCE[0] s, --patience) until other processes
#: use at most IDLE_LIMIT of the cores; after it, redo the run (up to RETRIES[0] times, --retries)
#: when other processes used more than FOREIGN_LIMIT of one core on average while it ran.
#: Linux (/proc/stat) only.
IDLE_LIMIT, PATIENCE, FOREIGN_LIMIT, RETRIES = 0.1, [60.0], 0.25, [3]
#: (foreign share of a core, redone) of every run, for the summary
SHARED: list = []


def _cpu_seconds() -> Optional[float]:
    """CPU seconds all processes have used (busy time of every core), or None without /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_idle() -> None:
    """Return once other processes leave the cores idle (or after PATIENCE[0] seconds)."""
    deadline = time.monotonic() + PATIENCE[0]
    while time.monotonic() < deadline:
        before = _cpu_seconds()
        if before is None:
            return
        time.sleep(0.5)
        if (_cpu_seconds() - before) / 0.5 / (os.cpu_count() or 1) <= IDLE_LIMIT:
            return


def run(command: list, env: Optional[dict] = None, discard: Optional[Path] = None) -> tuple:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system, its children included) of a whole process.

    ``discard``: an output folder deleted right after the run, before the kernel writes it to disk;
    kept outputs would pile up as dirty pages and throttle later runs' writes at random.
    A run that other processes' work overlapped (see FOREIGN_LIMIT) is done again; the least
    disturbed attempt counts.
    """
    attempts = []
    for _attempt in range(RETRIES[0] + 1):
        if discard is not None:
            shutil.rmtree(discard, ignore_errors=True)
        os.sync()  # no other run's dirty pages are being written back during this one
        time.sleep(SETTLE[0])
        wait_for_idle()
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        cpu_after = _cpu_seconds()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, command))} failed: {process.stderr.read().decode()[-2000:]}")
        if discard is not None:
            shutil.rmtree(discard, ignore_errors=True)
        cpu = usage.ru_utime + usage.ru_stime
        if cpu_before is None:
            return wall, usage.ru_maxrss / 1024.0, cpu
        # CPU the run's process tree did not use (this process is asleep meanwhile)
        foreign = max(0.0, cpu_after - cpu_before - cpu) / wall
        attempts.append((foreign, wall, usage.ru_maxrss / 1024.0, cpu))
        if foreign <= FOREIGN_LIMIT:
            break
    foreign, wall, rss, cpu = min(attempts)
    SHARED.append((foreign, len(attempts) - 1))
    return wall, rss, cpu


def run_pairs(commands: list, outputs: list) -> float:
    """Wall seconds of running ``commands`` two at a time (whole processes), outputs discarded after."""
    for out in outputs:
        shutil.rmtree(out, ignore_errors=True)
    os.sync()
    time.sleep(SETTLE[0])
    wait_for_idle()
    start = time.perf_counter()
    for first in range(0, len(commands), 2):
        running = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in commands[first : first + 2]]
        if any(p.wait() != 0 for p in running):
            raise RuntimeError(f"{commands[first]} failed")
    wall = time.perf_counter() - start
    for out in outputs:
        shutil.rmtree(out, ignore_errors=True)
    return wall


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


def contenders_for(case: Path, shape: tuple) -> dict:
    """Every contender's command line for one case, as a function of its output folder."""
    k, j, i = (str(n) for n in shape)
    dosealign = str(BIN / "dosealign")
    plastimatch = shutil.which("plastimatch") or str(BIN / "plastimatch")
    export = [dosealign, "export", str(case)]
    return {
        FLOOR: lambda out: [PY, str(HERE / "io_floor.py"), str(case), out, k, j, i],
        # as a user runs it: --workers defaults to the cores (headers are read in that many processes)
        LEAN: lambda out: [*export, out, "--quiet", "--no-structures", "--no-qa-png"],
        LEAN_ONE: lambda out: [*export, out, "--quiet", "--workers", "1", "--no-structures", "--no-qa-png"],
        # no RTSTRUCT: the body mask from the CT, the audit, qa.png; with an RTSTRUCT also every ROI
        DEFAULT: lambda out: [*export, out, "--quiet"],
        NAIVE: lambda out: [PY, str(HERE / "naive_pipeline.py"), str(case), out],
        SITK: lambda out: [PY, str(HERE / "sitk_pipeline.py"), str(case), out],
        PLASTIMATCH: lambda out: [
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


#: Rows of the stage table: what the default export's process spends its wall time on (main
#: thread; they add up to the wall time), then what runs beside it on other threads.
MAIN_ROWS = (
    "Python start and exit (teardown)",
    "import DoseAlignLib.cli",
    "scan",
    "link",
    "CT geometry (headers)",
    "dose read + resample",
    "run_case rest (waiting for the CT thread, meta)",
    "structures",
    "body mask",
    "audit",
    "ROI DVHs",
    "reference DVHs",
    "qa.png",
    "write (pair.npz, meta.json)",
    "manifest + report.html",
    "outside the stages (arguments, lazy imports, folders)",
)
BESIDE_ROWS = ("CT read (pixels)", "write (pair.npz, meta.json)")


def stage_shares(case: Path, scratch: Path, repeats: int, flags: tuple = ()) -> dict:
    """Median seconds per stage of ``dosealign export [flags]`` (bench/stages.py, whole processes, after a warm-up)."""
    runs = []
    for n in range(repeats + 1):
        out, report_file = scratch / f"stages-{n}", scratch / f"stages-{n}.json"
        command = [PY, str(HERE / "stages.py"), str(case), str(out), str(report_file), *flags]
        wall = run(command, discard=out)[0]
        report = json.loads(report_file.read_text())
        if report["status"] != 0:
            raise RuntimeError(f"the export of {case} failed in bench/stages.py")
        main_thread = report["stages"].get("main", {})
        beside = report["stages"].get("other threads", {})
        row = {name: main_thread.get(name, {}).get("seconds", 0.0) for name in MAIN_ROWS}
        row["Python start and exit (teardown)"] = (
            wall - report["in process"] + report["script start (site, this module)"]
        )
        row["import DoseAlignLib.cli"] = report["import DoseAlignLib.cli"]
        row["outside the stages (arguments, lazy imports, folders)"] = report["main thread outside the stages"]
        row.update({f"beside: {name}": beside.get(name, {}).get("seconds", 0.0) for name in BESIDE_ROWS})
        row["wall"], row["unseen"] = wall, report["unseen"]
        if n:  # the first run warms the cache
            runs.append(row)
    medians = {name: statistics.median(r[name] for r in runs) for name in runs[0] if name != "unseen"}
    medians["unseen"] = runs[0]["unseen"]
    return medians


def measure(cases: dict, args, scratch: Path) -> dict:
    """Every contender on every case: an untimed agreement pass, then --repeats timed passes."""
    agreements: dict = {}
    written: dict = {}  # (case, contender) -> bytes of the files it wrote
    for case_name, case in cases.items():
        contenders = case["contenders"]
        # first, untimed: each contender's dose against dosealign's, compared in a child process (this one
        # stays small: a child's peak RSS as the kernel reports it starts from its parent's), and the
        # outputs go before any timing
        reference_folder = scratch / "agree-reference"
        run(contenders[LEAN](str(reference_folder)))
        for n, (name, make) in enumerate(contenders.items()):
            out = scratch / f"agree-{n}"
            out.mkdir(parents=True, exist_ok=True)
            run(make(str(out)))
            written[(case_name, name)] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            if name == FLOOR:
                shutil.rmtree(out)
                continue
            compared = subprocess.run(
                [PY, __file__, "--compare", str(reference_folder), str(out)], capture_output=True, text=True
            )
            agreement_text = compared.stdout.strip() or f"unreadable: {compared.stderr.strip()[-60:]}"
            agreements[(case_name, name)] = agreement_text
            shutil.rmtree(out)
        shutil.rmtree(reference_folder)

    results: dict = {(c, name): [] for c, case in cases.items() for name in case["contenders"]}
    for repeat in range(args.repeats):
        order = list(results)
        random.Random(repeat).shuffle(order)  # no contender always runs after the same other one
        for n, (case_name, name) in enumerate(order):
            out = scratch / f"c{n}-r{repeat}"
            os.makedirs(out, exist_ok=True)
            results[(case_name, name)].append(run(cases[case_name]["contenders"][name](str(out)), discard=out))
    table: dict = {}
    for (case_name, name), values in results.items():
        table[(case_name, name)] = {
            "wall": statistics.median(v[0] for v in values),
            "best": min(v[0] for v in values),
            "rss_mib": max(v[1] for v in values),
            "cpu": statistics.median(v[2] for v in values),
            "agreement": agreements.get((case_name, name), ""),
            "written_bytes": written.get((case_name, name), 0),
        }
    return table


def batch_runs(args, scratch: Path, shape: tuple) -> dict:
    """The 10-ROI case's --batch clones, as dosealign export runs them, 1 and 2 workers, lean and full."""
    k, j, i = shape
    dosealign = str(BIN / "dosealign")
    batch_root = args.cache / f"batch{args.batch}"
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
    print(f"\nBatch of {args.batch} copies of the 10-ROI case (per-case floor {per_case_floor:.2f} s):")
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
    checks = [
        (
            "batch per case <= 1.5x per-case floor (lean, 2 w.)",
            batch[("lean", 2)] / args.batch / per_case_floor,
            1.5,
            "<=",
        ),
        ("  the same with 1 worker", batch[("lean", 1)] / args.batch / per_case_floor, 1.5, "<="),
        ("2 workers >= 1.8x throughput of 1 (lean batch)", batch[("lean", 1)] / batch[("lean", 2)], 1.8, ">="),
        ("  the same, full batch", batch[("full", 1)] / batch[("full", 2)], 1.8, ">="),
    ]
    print("Batch targets (issue 4), as measured in this run:")
    for label, value, limit, sense in checks:
        ok = value <= limit if sense == "<=" else value >= limit
        print(f"  {'met ' if ok else 'MISS'} {label:52} {value:6.2f} (target {sense} {limit})")
    return {f"{v}-w{w}": t for (v, w), t in batch.items()} | {"per_case_floor": per_case_floor}


def case_targets(table: dict, case_name: str, output_bytes: int, key: str = "wall") -> list:
    """(label, value, limit, sense) of issue 14's goals on one case, as measured (``key``: "wall" for
    the medians, "best" for the fastest runs, "cpu" for the median CPU seconds; peak RSS is the same in all)."""
    row = {name: {**values, "wall": values[key]} for (c, name), values in table.items() if c == case_name}
    lean = row[LEAN]["wall"]
    checks = []
    if PLASTIMATCH in row:
        checks.append(("lean >= 3x plastimatch", row[PLASTIMATCH]["wall"] / lean, 3.0, ">="))
    if NAIVE in row:
        checks.append(("lean >= 3x the naive script", row[NAIVE]["wall"] / lean, 3.0, ">="))
    if SITK in row:
        checks.append(("lean >= 2x SimpleITK-only", row[SITK]["wall"] / lean, 2.0, ">="))
    if FLOOR in row:
        checks.append(("lean <= 2.5x the np.save floor", lean / row[FLOOR]["wall"], 2.5, "<="))
    if DEFAULT in row:
        limit = 1.5 if case_name == "10-ROI" else 1.3
        checks.append(("default <= 1.3x lean (10 ROIs: full <= 1.5x)", row[DEFAULT]["wall"] / lean, limit, "<="))
    checks.append(("peak RSS lean <= 1.5x output bytes", row[LEAN]["rss_mib"] * 2**20 / output_bytes, 1.5, "<="))
    if DEFAULT in row:
        checks.append(
            ("peak RSS default <= 1.5x output bytes", row[DEFAULT]["rss_mib"] * 2**20 / output_bytes, 1.5, "<=")
        )
    return checks


COLUMNS = ("median s", "best s", "CPU s", "x floor", "x lean", "peak RSS MiB", "RSS/out", "written MiB")


def case_rows(table: dict, case_name: str, case: dict, contender_names: list) -> list:
    """(contender, [column values as text], dose agreement) of one case, in COLUMNS order."""
    floor, lean = table.get((case_name, FLOOR)), table.get((case_name, LEAN))
    rows = []
    for contender in contender_names:
        row = table.get((case_name, contender))
        if row is None:
            continue
        values = [
            f"{row['wall']:.2f}",
            f"{row['best']:.2f}",
            f"{row['cpu']:.2f}",
            f"{row['wall'] / floor['wall']:.2f}" if floor else "-",
            f"{row['wall'] / lean['wall']:.2f}" if lean else "-",
            f"{row['rss_mib']:.0f}",
            f"{row['rss_mib'] * 2**20 / case['output_bytes']:.2f}",
            f"{row['written_bytes'] / 2**20:.0f}",
        ]
        rows.append((contender, values, row["agreement"]))
    return rows


def print_case_table(table: dict, case_name: str, case: dict, contender_names: list) -> None:
    """One case's contenders: times, ratios, memory, bytes written and the dose against the lean export's."""
    print(f"\n{case_name}:")
    print(f"{'contender':46}" + "".join(f" {c:>{max(7, len(c))}}" for c in COLUMNS) + "  dose vs lean export")
    for contender, values, agreement_text in case_rows(table, case_name, case, contender_names):
        line = f"{contender:46}" + "".join(f" {v:>{max(7, len(c))}}" for v, c in zip(values, COLUMNS))
        print(f"{line}  {agreement_text}")


def markdown_tables(
    table: dict, cases: dict, contender_names: list, stages: dict, targets: dict, best: dict, cpu: dict
) -> str:
    """README-ready tables (--markdown): per case its contenders, its stages, and the targets."""
    parts = []
    for name, case in cases.items():
        parts.append(f"**{name}** (output arrays {case['output_bytes'] / 2**20:.0f} MiB)\n")
        parts.append("| contender | " + " | ".join(COLUMNS) + " | dose vs lean export |")
        parts.append("|---|" + "---|" * (len(COLUMNS) + 1))
        for contender, values, agreement_text in case_rows(table, name, case, contender_names):
            agreement_text = agreement_text.replace("|", "\\|")
            parts.append(f"| {contender.strip()} | " + " | ".join(values) + f" | {agreement_text} |")
        parts.append("")
    if stages:
        parts.append("| stage | " + " | ".join(f"{n} lean s | {n} default s | share" for n in cases) + " |")
        parts.append("|---|" + "---|---|---|" * len(cases))
        for row_name in (*MAIN_ROWS, "wall", *(f"beside: {r}" for r in BESIDE_ROWS)):
            cells = []
            for n in cases:
                lean, default = stages[f"{n} lean"][row_name], stages[f"{n} default"][row_name]
                cells.append(f"{lean:.3f} | {default:.3f} | {default / stages[f'{n} default']['wall']:.1%}")
            parts.append(f"| {row_name} | " + " | ".join(cells) + " |")
        parts.append("")
    parts.append("| target | " + " | ".join(cases) + " |")
    parts.append("|---|" + "---|" * len(cases))
    labels = list(dict.fromkeys(t[0] for checks in targets.values() for t in checks))
    for label in labels:
        cells = []
        for n in cases:
            check = next((t for t in targets[n] if t[0] == label), None)
            if check is None:
                cells.append("-")
                continue
            _, value, limit, sense = check
            fastest = next(t for t in best[n] if t[0] == label)[1]
            by_cpu = next(t for t in cpu[n] if t[0] == label)[1]
            ok = value <= limit if sense == "<=" else value >= limit
            timing = "" if label.startswith("peak RSS") else f" ({fastest:.2f}; CPU {by_cpu:.2f})"
            cells.append(f"{'met' if ok else '**missed**'}: {value:.2f}{timing}")
        parts.append(f"| {label.strip()} | " + " | ".join(cells) + " |")
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="cases in the batch measurement (0: none)")
    parser.add_argument("--skip", nargs="*", default=[], help="contenders to leave out (e.g. plastimatch)")
    parser.add_argument("--cases", nargs="*", choices=CASE_NAMES, default=list(CASE_NAMES), help="cases to run")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of rest before each run (default 1)")
    parser.add_argument(
        "--patience", type=float, default=60.0, help="seconds to wait for idle cores before each run (default 60)"
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="runs redone when other work overlapped them (default 3)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown (for README) to this file")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compare", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    SETTLE[0], PATIENCE[0], RETRIES[0] = args.settle, args.patience, args.retries
    if args.compare:
        print(agreement(*args.compare))
        return 0
    if args.prepare_only:
        ensure_clinical(args.cache)
        case = ensure_case(args.cache)
        for n in range(args.batch):
            clone_case(case, args.cache / f"batch{args.batch}" / f"p{n:03d}", n + 1)
        return 0
    # every child runs this checkout's engine, whatever the interpreter has installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "DoseAlign"), os.environ.get("PYTHONPATH")]))
    engine = subprocess.run(
        [PY, "-c", "import DoseAlignLib; print(DoseAlignLib.__file__)"], capture_output=True, text=True, check=True
    )
    print(f"engine: {engine.stdout.strip()}")
    # the engine compiled as an installed wheel has it (an editable install with PYTHONDONTWRITEBYTECODE
    # set would compile every module in every run)
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "DoseAlign" / "DoseAlignLib")], check=True)
    # data are made in a child process: a forked child's peak RSS would include this process's pages
    subprocess.run([PY, __file__, "--prepare-only", "--cache", str(args.cache), "--batch", str(args.batch)], check=True)
    scratch = args.cache / "runs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

    spec, clinical = realistic_spec(0), clinical_spec()
    folders = {"10-ROI": ensure_case(args.cache), "clinical": ensure_clinical(args.cache)}
    shapes = {"10-ROI": spec.ct_size[::-1], "clinical": clinical.ct_shape()}
    cases: dict = {}
    for name in args.cases:
        folder, shape = folders[name], shapes[name]
        contenders = contenders_for(folder, shape)
        if "plastimatch" in args.skip or not Path(contenders[PLASTIMATCH]("x")[0]).exists():
            contenders.pop(PLASTIMATCH)
        for contender in list(contenders):
            if any(s.lower() in contender.lower() for s in args.skip if s != "plastimatch"):
                contenders.pop(contender)
        cases[name] = {
            "folder": folder,
            "contenders": contenders,
            "input_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
            "output_bytes": int(np.prod(shape)) * (2 + 4),  # int16 CT + float32 dose
            "files": sum(1 for p in folder.rglob("*") if p.is_file()),
        }
    baseline = run([PY, "-c", "pass"])[1]
    load_before = os.getloadavg()
    table = measure(cases, args, scratch)
    load_after = os.getloadavg()

    print(
        f"\nWhole processes, median of {args.repeats} runs, cases and contenders interleaved, warm cache, "
        f"{os.cpu_count()} cores"
    )
    descriptions = {
        "clinical": "Philips-like CT 512x512x152 implicit VR uint16 + intercept, Pinnacle-like dose 129x91x98 "
        "at 3 mm off the CT grid over 30 % of it, no RTSTRUCT",
        "10-ROI": f"phantom CT 512x512x300 int16, dose {'x'.join(map(str, spec.dose_size))} at 2.5 mm on an "
        "offset grid, RTPLAN, RTSTRUCT with 10 ROIs",
    }
    for name, case in cases.items():
        print(
            f"  {name}: {descriptions[name]}; {case['files']} files, inputs {case['input_bytes'] / 2**20:.0f} MiB, "
            f"output arrays {case['output_bytes'] / 2**20:.0f} MiB"
        )
    names = list(cases)
    contender_names = list(dict.fromkeys(c for case in cases.values() for c in case["contenders"]))
    for name in names:
        print_case_table(table, name, cases[name], contender_names)
    print(f"(a bare Python process peaks at {baseline:.0f} MiB here)")
    print(
        "load average (1, 5, 15 min) before the timed runs "
        f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in load_after)} "
        "(the bench keeps about one core busy: more means other work shared the machine)"
    )
    if SHARED:
        redone = sum(1 for _, retries in SHARED if retries)
        print(
            f"runs redone because other processes used > {FOREIGN_LIMIT:.0%} of a core meanwhile: {redone} of "
            f"{len(SHARED)}; left in: {sum(1 for f, _ in SHARED if f > FOREIGN_LIMIT)}; median foreign load "
            f"{statistics.median(f for f, _ in SHARED):.0%} of a core"
        )

    stages: dict = {}
    variants = {"lean": ("--no-structures", "--no-qa-png"), "default": ()}
    for name, case in cases.items():
        for variant, flags in variants.items():
            folder = scratch / f"stages-{name}-{variant}"
            folder.mkdir()
            stages[f"{name} {variant}"] = stage_shares(case["folder"], folder, args.repeats, flags)
            shutil.rmtree(folder, ignore_errors=True)
    print(
        "\nStage by stage (bench/stages.py: whole processes, median of "
        f"{args.repeats} after a warm-up; the main thread's rows add up to the wall time; share: of the default export):"
    )
    print(f"{'stage':52}" + "".join(f" | {n + ' lean':>15} {n + ' default':>17} {'share':>6}" for n in names))
    for row_name in (*MAIN_ROWS, "wall", *(f"beside: {r}" for r in BESIDE_ROWS)):
        line = f"{row_name[:52]:52}"
        for name in names:
            lean, default = stages[f"{name} lean"][row_name], stages[f"{name} default"][row_name]
            line += f" | {lean:15.3f} {default:17.3f} {default / stages[f'{name} default']['wall']:6.1%}"
        print(line)
    for key, value in stages.items():
        if value["unseen"] and "default" in key:
            print(f"  ({key}: never called: {', '.join(value['unseen'])})")

    batch = batch_runs(args, scratch, shapes["10-ROI"]) if args.batch > 0 and "10-ROI" in cases else {}

    print(
        "\nTargets (issue 14), as measured in this run (met or missed by the medians of wall time; in brackets: "
        "from the fastest runs; from the CPU seconds)"
    )
    print(f"{'':4} {'target':50}" + "".join(f" | {n:>33}" for n in names))
    targets = {name: case_targets(table, name, cases[name]["output_bytes"]) for name in names}
    best = {name: case_targets(table, name, cases[name]["output_bytes"], "best") for name in names}
    cpu = {name: case_targets(table, name, cases[name]["output_bytes"], "cpu") for name in names}
    labels = list(dict.fromkeys(t[0] for checks in targets.values() for t in checks))
    for label in labels:
        line, all_met = "", True
        for name in names:
            check = next((t for t in targets[name] if t[0] == label), None)
            if check is None:
                line += f" | {'-':>33}"
                continue
            _, value, limit, sense = check
            fastest = next(t for t in best[name] if t[0] == label)[1]
            by_cpu = next(t for t in cpu[name] if t[0] == label)[1]
            ok = value <= limit if sense == "<=" else value >= limit
            all_met &= ok
            timing = " " * 15 if label.startswith("peak RSS") else f" ({fastest:5.2f}; {by_cpu:5.2f})"
            line += f" | {'met ' if ok else 'MISS'} {value:5.2f}{timing} {sense} {limit:<4g}"
        print(f"{'met ' if all_met else 'MISS'} {label:50}{line}")
    if args.markdown:
        args.markdown.write_text(markdown_tables(table, cases, contender_names, stages, targets, best, cpu))
    (scratch / "bench.json").write_text(
        json.dumps(
            {
                "rows": [{"case": c, "contender": n, **v} for (c, n), v in table.items()],
                "stages": stages,
                "batch": batch,
                "targets": {name: [list(t) for t in checks] for name, checks in targets.items()},
                "targets_fastest_runs": {name: [list(t) for t in checks] for name, checks in best.items()},
            },
            default=str,
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
