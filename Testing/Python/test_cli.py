"""The dosealign command as a user meets it: scan, export, resume, exit codes, untouched inputs."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from DoseAlignLib.cli import main
from DoseAlignLib.phantom import PhantomSpec, write_phantom

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def study(tmp_path) -> Path:
    folder = tmp_path / "in"
    write_phantom(folder / "patient1", PhantomSpec(with_structures=False, write_beam_doses=True))
    write_phantom(
        folder / "patient2", PhantomSpec(patient_id="DA-2", patient_position="FFS", seed=2, with_structures=False)
    )
    (folder / "notes.txt").write_text("not DICOM")
    return folder


def _snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _manifest(out: Path) -> list:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_scan_lists_cases_and_leftovers(study, capsys):
    assert main(["scan", str(study)]) == 0
    text = capsys.readouterr().out
    # patient1 has a PLAN dose (its BEAM doses are then not summed into another case); patient2 a PLAN dose
    assert "Cases (2):" in text
    assert "notes.txt: not a DICOM file" in text


def test_export_writes_contract_and_leaves_inputs_alone(study, tmp_path, capsys):
    before = _snapshot(study)
    out = tmp_path / "out"
    assert main(["export", str(study), str(out), "--quiet"]) == 0
    assert _snapshot(study) == before, "inputs must not change (bytes and mtime)"
    rows = _manifest(out)
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        folder = out / row["case_id"]
        names = sorted(p.name for p in folder.iterdir())
        assert names in (["meta.json", "pair.npz"], ["meta.json", "pair.npz", "qa.png"])  # qa.png needs matplotlib
        with np.load(folder / "pair.npz") as npz:
            assert npz["ct"].shape == npz["dose"].shape == tuple(int(n) for n in row["shape"].split("x"))
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")], "no temporary files left"


def test_resume_skips_complete_cases_and_keeps_the_manifest(study, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(study), str(out), "--quiet"]) == 0
    first = _manifest(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("pair.npz")}
    victim = out / first[0]["case_id"]
    for p in victim.iterdir():
        p.unlink()
    victim.rmdir()
    leftover = _dead_run_leftover(out)
    (out / ".tmp-leftover-of-the-user").mkdir()  # not DoseAlign's: it stays
    assert main(["export", str(study), str(out), "--resume", "--quiet"]) == 0
    again = _manifest(out)
    assert [r["case_id"] for r in again] == [r["case_id"] for r in first]
    for before, after in zip(first, again):
        kept = after["case_id"] != victim.name
        assert after["status"] == ("skipped" if kept else "ok"), "resumed cases are marked skipped"
        assert ("earlier run" in after["reason"]) == kept
        assert {k: v for k, v in after.items() if k not in ("status", "reason")} == {
            k: v for k, v in before.items() if k not in ("status", "reason")
        }
    for path, stamp in stamps.items():
        if victim not in path.parents:
            assert path.stat().st_mtime_ns == stamp, "complete cases are not written again"
    assert (victim / "pair.npz").is_file()
    assert not leftover.exists() and not list(out.glob(".tmp-dosealign-*")), "a dead run's leftovers are removed"
    assert (out / ".tmp-leftover-of-the-user").is_dir()


def _dead_run_leftover(out: Path) -> Path:
    """A temporary folder of a DoseAlign process that died without cleaning up (its owner record stays)."""
    code = (
        "import os, sys; from DoseAlignLib.output.files import claim_folder; "
        "temp = claim_folder(sys.argv[1]).temp('case'); temp.mkdir(); (temp / 'pair.npz').write_bytes(b'PK'); "
        "print(temp); os._exit(0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "DoseAlign")},
    )
    return Path(done.stdout.strip())


def test_bad_case_fails_alone_with_file_and_reason(study, tmp_path):
    # damage patient2's dose: its case fails, patient1's still export
    dose = next(p for p in (study / "patient2").rglob("*") if b"RTDOSE" in p.read_bytes()[:2000])
    data = dose.read_bytes()
    dose.write_bytes(data[: len(data) - 5000])  # truncated pixel data
    out = tmp_path / "out"
    assert main(["export", str(study), str(out), "--quiet"]) == 1
    rows = {r["patient"]: r for r in _manifest(out)}
    assert rows["DA-2"]["status"] == "failed"
    assert dose.name in rows["DA-2"]["reason"] and "PixelData" in rows["DA-2"]["reason"]
    assert rows["DA-PHANTOM-001"]["status"] == "ok"
    assert not (out / rows["DA-2"]["case_id"]).exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "the input folder does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path), str(tmp_path / "o"), "--reference", "custom"])
    assert exit_info.value.code == 2


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo"), "--quiet"]) == 0
    rows = _manifest(tmp_path / "demo" / "export")
    assert rows and all(r["status"] == "ok" for r in rows)
    assert os.path.isdir(tmp_path / "demo" / "dicom")


def test_scan_reports_what_it_does_not_read(study, tmp_path):
    from DoseAlignLib.api import scan_folder

    (study / ".hidden-notes").write_text("x")
    (study / ".git").mkdir()
    (study / ".git" / "config").write_text("x")
    (study / "DICOMDIR").write_bytes(b"\0" * 200)
    (study / "out-inside").mkdir()
    (study / "out-inside" / "manifest.csv").write_text("case_id\n")
    scan = scan_folder(study, exclude=[study / "out-inside"])
    ignored = dict(scan.ignored)
    assert set(ignored) == {".hidden-notes", ".git/", "DICOMDIR", "out-inside/"}
    assert "hidden" in ignored[".git/"] and "output" in ignored["out-inside/"]
    assert not any("out-inside" in rel or ".git" in rel for rel, _ in scan.skipped)
