"""Shared pieces of the hostile-input suite (``test_hostile_*.py``): small studies, running the command.

Each ``test_hostile_<class>.py`` attacks one class of promises (ownership, the scan, wrong exports,
resources, faults, false refusals, identity); the studies here are small phantoms so that the whole
suite stays within a few minutes of CI.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from DoseAlignLib.phantom import PhantomSpec, write_phantom

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "DoseAlign"), "PYTHONDONTWRITEBYTECODE": "1"}
SMALL = {
    "ct_size": (16, 14, 8),
    "dose_size": (8, 6, 5),
    "ct_slice_spacing": 2.5,
    "dose_pixel_spacing": (2.0, 2.0),
    "dose_frame_spacing": 2.5,
    "dose_center_offset_lps": (0.3, -0.2, 0.1),
}


def spec(patient: str = "HOSTILE-1", seed: int = 1, **changes) -> PhantomSpec:
    """A small phantom study (a few hundred kB) with structures, plan and a PLAN dose."""
    return PhantomSpec(patient_id=patient, seed=seed, **{**SMALL, **changes})


def study(root: Path, patient: str = "HOSTILE-1", seed: int = 1, **changes):
    """Write a small study into ``root``; returns the phantom's truth (file paths and geometry)."""
    return write_phantom(Path(root), spec(patient, seed, **changes))


def manifest(out: Path, name: str = "manifest.csv") -> list:
    with open(Path(out) / name, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def snapshot(folder: Path) -> dict:
    """Every entry below ``folder`` (symlinks not followed): files by hash and mtime, others by kind."""
    state = {}
    for base, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(base) / name
            rel = path.relative_to(folder).as_posix()
            info = path.lstat()
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_file():
                state[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns)
            else:
                state[rel] = ("other", info.st_mode)
    return state


def dosealign(*args: str, env: dict = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``dosealign ARGS`` in a fresh process (exit code, stdout and stderr as text)."""
    return subprocess.run(
        [sys.executable, "-m", "DoseAlignLib.cli", *args],
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def python(code: str, *args: str, env: dict = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run a Python snippet with the engine importable."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@contextlib.contextmanager
def session(args: list, env: dict = None, preexec_fn=None):
    """A process started in a session of its own (text pipes), to be signalled as a group; whatever is left of the
    group is killed (SIGKILL) when the block ends."""
    process = subprocess.Popen(
        args,
        env={**ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
