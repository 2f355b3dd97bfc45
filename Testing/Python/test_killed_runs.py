"""Killed runs: SIGKILL ``dosealign export`` at random moments, resume, and get what one clean run gives.

A batch of five small phantom cases (four patient positions, one per-beam dose sum) is exported once
without interruption: the reference tree. Then, for several seeds, the same export is killed with
SIGKILL one to three times (at a random time, or a random moment after the k-th case folder
appeared), each time resumed with ``--resume``, and finally resumed to the end. After every kill:
no case is marked ok in the manifest whose files are incomplete, and every case folder present is
whole. At the end: exit code 0, no temporary file left, and every file of the output tree (arrays,
meta.json, qa.png) byte-identical to the reference: nothing is excluded, because the engine writes
nothing that depends on the time (pair.npz has fixed zip timestamps). manifest.csv and report.html
equal the reference's too, but for the cases the last resume kept: their status is ``skipped``
(with the reason) where the uninterrupted run says ``ok``.

Kills at the worst moments are forced too, deterministically: half-way through writing a pair.npz,
half-way through writing the manifest, and between the two renames that replace an existing case.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from DoseAlignLib.phantom import PhantomSpec, write_phantom

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "ct_size": (24, 20, 10),
    "dose_size": (10, 8, 6),
    "ct_slice_spacing": 2.0,
    "dose_pixel_spacing": (2.0, 2.0),
    "dose_frame_spacing": 2.0,
    "dose_center_offset_lps": (0.3, -0.2, 0.1),
}
N_CASES = 5
#: Seeds of the random kills: (seed, kills before the last resume, workers).
SEEDS = [(1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 2, 2)]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "DoseAlign"), "PYTHONDONTWRITEBYTECODE": "1"}

#: Runs the dosealign command with one writer replaced by one that SIGKILLs the process half-way.
DYING_WRITER = r"""
import os, signal, sys
import numpy as np
from pathlib import Path
import DoseAlignLib.output.case_folder as case_folder
import DoseAlignLib.output.manifest as manifest

where, target = os.environ["DOSEALIGN_TEST_KILL"].split(":")
calls = [0]

def due():
    calls[0] += 1
    return calls[0] == int(target)

if where == "npz":
    import DoseAlignLib.output.npz as npz
    original = npz._write_member
    def dying(archive, name, array):
        if name == "dose" and due():  # the CT is in the archive, the dose half-way
            archive.fp.write(np.ascontiguousarray(array).tobytes()[: array.nbytes // 2])
            archive.fp.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(archive, name, array)
    npz._write_member = dying
elif where == "manifest":
    import DoseAlignLib.output.files as files
    original = manifest.write_text_atomic
    def dying(path, text):
        if due():  # half the manifest in the run's own temporary file, as the real writer would leave it
            files.temp_path(Path(path)).write_text(text[: len(text) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return original(path, text)
    manifest.write_text_atomic = dying
elif where == "replace":
    original = case_folder.os.replace
    def dying(source, target_path):
        result = original(source, target_path)
        if "-old-" in str(target_path) and due():
            os.kill(os.getpid(), signal.SIGKILL)  # the old case moved aside, the new one not yet in place
        return result
    case_folder.os.replace = dying
from DoseAlignLib.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("killed") / "in"
    positions = ["HFS", "FFS", "HFP", "FFP", "HFS"]
    for n in range(N_CASES):
        beams = n == N_CASES - 1
        spec = PhantomSpec(
            patient_id=f"KILL-{n}",
            seed=n,
            patient_position=positions[n],
            write_plan_dose=not beams,
            write_beam_doses=beams,
            **SMALL,
        )
        write_phantom(root / f"patient{n}", spec)
    return root


def _command(study: Path, out: Path, *extra: str, workers: int = 1) -> list:
    return [sys.executable, "-m", "DoseAlignLib.cli", "export", str(study), str(out), "--quiet"] + [
        "--workers",
        str(workers),
        *extra,
    ]


def _tree(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(study, tmp_path_factory) -> tuple:
    """The uninterrupted run: its tree and how long it took."""
    out = tmp_path_factory.mktemp("reference") / "out"
    start = time.monotonic()
    done = subprocess.run(_command(study, out), env=ENV, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    tree = _tree(out)
    assert sum(name.endswith("/pair.npz") for name in tree) == N_CASES
    return tree, took


def _manifest(out: Path) -> list:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _assert_consistent(out: Path, context: str) -> None:
    """What a killed run may leave: no ok row with incomplete files, no half case folder in place."""
    if not out.exists():
        return
    for folder in out.iterdir():
        if folder.is_dir() and not folder.name.startswith(".tmp-"):
            with np.load(folder / "pair.npz") as npz:
                assert {"ct", "dose"} <= set(npz.files), f"{context}: {folder.name} is incomplete"
                assert npz["ct"].shape == npz["dose"].shape
            json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if (out / "manifest.csv").exists():
        for row in _manifest(out):
            if row["status"] == "ok":
                assert (out / row["case_id"] / "pair.npz").is_file(), f"{context}: {row['case_id']} ok but missing"


def _kill_at_random(command: list, out: Path, rng: random.Random, took: float) -> int:
    """Start the export and SIGKILL it at a random moment; returns its exit status (-9 when killed)."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0.05, took))
        else:  # a random moment after the k-th case folder appeared: kills land among the writes
            wanted = rng.randrange(N_CASES)
            deadline = time.monotonic() + took * 3
            while time.monotonic() < deadline and process.poll() is None:
                present = (
                    [p for p in out.glob("*") if p.is_dir() and not p.name.startswith(".tmp-")] if out.exists() else []
                )
                if len(present) >= wanted:
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, took / (2 * N_CASES)))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        return process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _finish_and_compare(study: Path, out: Path, reference: dict, context: str, workers: int = 1) -> None:
    done = subprocess.run(
        _command(study, out, "--resume", workers=workers), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{context}: {done.stderr}"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")], f"{context}: temporary files left"
    tree = _tree(out)
    assert sorted(tree) == sorted(reference), f"{context}: other files than the uninterrupted run's"
    differing = [name for name in reference if _as_if_run_once(name, tree[name]) != reference[name]]
    assert not differing, f"{context}: files differ from the uninterrupted run's: {differing}"


def _as_if_run_once(name: str, data: bytes) -> bytes:
    """A resumed run's manifest.csv or report.html with its kept cases said as an uninterrupted run says them."""
    if name == "manifest.csv":
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
        assert rows and all(r["status"] in ("ok", "skipped") for r in rows), data
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            if row["status"] == "skipped":
                assert "earlier run" in row["reason"], row
                row.update(status="ok", reason="")
            writer.writerow(row)
        return buffer.getvalue().encode("utf-8")
    if name == "report.html":
        text = data.decode("utf-8")
        kept = text.count('<tr class="skipped">')
        text = text.replace('<tr class="skipped">', '<tr class="ok">')
        text = re.sub(r'<td class="status">skipped<br><small>[^<]*</small></td>', '<td class="status">ok</td>', text)
        text = re.sub(
            r"(\d+) ok, 0 failed, (\d+) skipped",
            lambda m: f"{int(m.group(1)) + kept} ok, 0 failed, {int(m.group(2)) - kept} skipped",
            text,
        )
        return text.encode("utf-8")
    return data


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "kills", "workers"), SEEDS, ids=[f"seed{s[0]}-{s[1]}kills-{s[2]}w" for s in SEEDS])
def test_killed_and_resumed_equals_uninterrupted(study, reference, tmp_path, seed, kills, workers):
    tree, took = reference
    rng = random.Random(seed)
    out = tmp_path / "out"
    for n in range(kills):
        command = _command(study, out, *(["--resume"] if n else []), workers=workers)
        status = _kill_at_random(command, out, rng, took)
        _assert_consistent(out, f"seed {seed}, kill {n + 1} (exit {status})")
    _finish_and_compare(study, out, tree, f"seed {seed}", workers=workers)


@pytest.mark.slow
@pytest.mark.parametrize(
    "where", ["npz:1", "npz:3", "manifest:2", "replace:2"], ids=["npz-first", "npz-third", "manifest", "replace"]
)
def test_killed_at_the_worst_moment(study, reference, tmp_path, where):
    tree, _took = reference
    out = tmp_path / "out"
    if where.startswith("replace"):  # replacing a complete output (an export again, without --resume)
        done = subprocess.run(_command(study, out), env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    args = _command(study, out)[3:]  # after "-m DoseAlignLib.cli"
    command = [sys.executable, "-c", DYING_WRITER, *args]
    done = subprocess.run(
        command, env={**ENV, "DOSEALIGN_TEST_KILL": where}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL, f"the writer was not reached: {done.returncode} {done.stderr}"
    if where.startswith("npz"):  # the kill left a half-written pair.npz in a temporary folder
        assert any(out.glob(".tmp-dosealign-*-case-*/pair.npz")), sorted(p.name for p in out.iterdir())
    _assert_consistent(out, where)
    _finish_and_compare(study, out, tree, where)
