"""The dosealign command under real use (issue 13): re-runs that cannot mix, what OUT already holds,
nothing to export, Ctrl-C, progress inside a case, each subcommand's usage and help, scan --json."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from DoseAlignLib import api
from DoseAlignLib.cli import _get_parser, _ProgressLine, main
from DoseAlignLib.output.manifest import AUDIT_COLUMNS, MANIFEST_COLUMNS
from DoseAlignLib.phantom import PhantomSpec, write_phantom

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "DoseAlign"), "PYTHONDONTWRITEBYTECODE": "1"}
SMALL = {"ct_size": (32, 32, 16), "dose_size": (16, 16, 8), "with_structures": False}


@pytest.fixture()
def study(tmp_path) -> Path:
    folder = tmp_path / "in"
    write_phantom(folder / "p1", PhantomSpec(patient_id="CMD-1", seed=1, **SMALL))
    write_phantom(folder / "p2", PhantomSpec(patient_id="CMD-2", seed=2, patient_position="FFS", **SMALL))
    return folder


def _manifest(out: Path) -> list:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _header(out: Path) -> list:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def _tree(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run(capsys, *args) -> tuple:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- re-runs ----------------------------------------------------------------------------------


def test_resume_with_other_options_exports_again_and_says_why(study, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, "export", study, out, "--quiet", "--reference", "dose")[0] == 0
    dose_shapes = {r["case_id"]: r["shape"] for r in _manifest(out)}
    code, text, _err = _run(capsys, "export", study, out, "--quiet", "--resume")  # --reference ct (default)
    assert code == 0
    rows = _manifest(out)
    assert {r["status"] for r in rows} == {"ok"}, "cases made with other options are not kept"
    for row in rows:
        meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
        assert meta["options"]["reference"] == "ct" and row["shape"] != dose_shapes[row["case_id"]]
    assert 'note: --resume: 2 case(s) exported earlier are exported again: reference "dose" -> "ct"' in text
    assert "2 ok, 0 failed, 0 skipped" in text

    code, text, _err = _run(capsys, "export", study, out, "--quiet", "--resume")
    assert code == 0 and "0 ok, 0 failed, 2 skipped" in text
    assert [r["status"] for r in _manifest(out)] == ["skipped", "skipped"]

    # the input changed under a kept case: a CT slice less -> exported again
    victim = sorted((study / "p1").glob("*.dcm"), key=lambda p: p.name)
    ct_slice = next(p for p in victim if b"CT" in p.read_bytes()[128:1500] and b"RTDOSE" not in p.read_bytes()[:3000])
    ct_slice.unlink()
    code, text, _err = _run(capsys, "export", study, out, "--quiet", "--resume")
    assert "input ct_files changed" in text
    statuses = sorted(r["status"] for r in _manifest(out))
    assert statuses in (["ok", "skipped"], ["failed", "skipped"]), statuses


def test_resume_keeps_nothing_made_by_another_version(study, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, "export", study, out, "--quiet")[0] == 0
    first = _manifest(out)[0]["case_id"]
    meta_path = out / first / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["dosealign_version"] = "0.0.1"
    meta_path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    code, text, _err = _run(capsys, "export", study, out, "--quiet", "--resume")
    assert code == 0 and "made by DoseAlign 0.0.1" in text
    statuses = {r["case_id"]: r["status"] for r in _manifest(out)}
    assert statuses[first] == "ok" and list(statuses.values()).count("skipped") == 1


def test_a_pseudonymized_out_takes_no_case_made_with_another_key(study, tmp_path, capsys):
    # from the fifth hostile trial (E33): a second key into a pseudonymized OUT gave exit 0 and one patient in OUT
    # under two pseudonyms. Each case's meta.json records the key's fingerprint (never the key); another key is
    # refused before anything is written, also with --resume and --append, and shards of two keys do not merge
    keys = tmp_path / "keys"
    out = tmp_path / "share" / "out"
    assert _run(capsys, "export", study / "p1", out, "--quiet", "--pseudonymize", "--key-file", keys / "a.key")[0] == 0
    (case_id,) = [p.name for p in out.iterdir() if p.is_dir()]
    meta_text = (out / case_id / "meta.json").read_text(encoding="utf-8")
    recorded = json.loads(meta_text)["pseudonymized"]["key"]
    key_a = (keys / "a.key").read_text(encoding="ascii").strip()
    assert len(recorded) == 16 and recorded not in key_a and key_a not in meta_text and key_a[:16] not in meta_text
    other = tmp_path / "elsewhere" / "out"
    assert (
        _run(capsys, "export", study / "p2", other, "--quiet", "--pseudonymize", "--key-file", keys / "c.key")[0] == 0
    )
    before = _tree(tmp_path)
    for key, extra in (("b.key", []), ("c.key", []), ("c.key", ["--resume"]), ("c.key", ["--append"])):
        code, _text, err = _run(
            capsys, "export", study, out, "--quiet", "--pseudonymize", "--key-file", keys / key, *extra
        )
        assert code == 2, (key, extra, err)
        assert "made with another key" in err and recorded in err and "nothing was written" in err, err
        assert _tree(tmp_path) == before, (key, extra, "refused before anything is written (no key, no map, no case)")
    assert _run(capsys, "export", study, out, "--quiet", "--pseudonymize", "--key-file", keys / "a.key")[0] == 0
    # shards exported with two keys (at once, into an empty OUT) are not merged
    shards = tmp_path / "shards"
    for n, key in ((1, "a.key"), (2, "c.key")):
        code = _run(
            capsys,
            "export",
            study,
            shards / f"s{n}",
            "--quiet",
            "--pseudonymize",
            "--key-file",
            keys / key,
            "--shard",
            f"{n}/2",
        )[0]
        assert code == 0
    for entry in (shards / "s2").iterdir():
        if entry.is_dir() or entry.name.startswith("manifest.shard-"):
            os.replace(entry, shards / "s1" / entry.name)
    assert len(list((shards / "s1").glob("manifest.shard-*.csv"))) == 2
    before = _tree(shards / "s1")
    code, _text, err = _run(capsys, "merge", shards / "s1")
    assert code == 2 and "another key" in err, err
    assert _tree(shards / "s1") == before


def test_pseudonymized_and_plain_exports_never_share_a_folder(study, tmp_path, capsys):
    plain = tmp_path / "share" / "plain"
    assert _run(capsys, "export", study, plain, "--quiet")[0] == 0
    before = _tree(tmp_path)
    code, _text, err = _run(capsys, "export", study, plain, "--quiet", "--pseudonymize")
    assert code == 2 and "plain (not pseudonymized) export" in err and "nothing was written" in err
    assert _tree(tmp_path) == before, "refused before anything is written (no key, no map, no case)"

    pseudo = tmp_path / "share" / "pseudo"
    assert _run(capsys, "export", study, pseudo, "--quiet", "--pseudonymize")[0] == 0
    before = _tree(tmp_path)
    code, _text, err = _run(capsys, "export", study, pseudo, "--quiet")
    assert code == 2 and "holds a pseudonymized export" in err
    assert _tree(tmp_path) == before
    # a pseudonymized OUT whose case folders are gone still has its manifest: plain is still refused
    for folder in [p for p in pseudo.iterdir() if p.is_dir()]:
        for path in folder.rglob("*"):
            path.unlink()
        folder.rmdir()
    assert _run(capsys, "export", study, pseudo, "--quiet")[0] == 2
    # and a plain manifest without case folders refuses a pseudonymized export
    for folder in [p for p in plain.iterdir() if p.is_dir()]:
        for path in folder.rglob("*"):
            path.unlink()
        folder.rmdir()
    assert _run(capsys, "export", study, plain, "--quiet", "--pseudonymize")[0] == 2
    # pseudonymized again into the pseudonymized folder: fine
    assert _run(capsys, "export", study, pseudo, "--quiet", "--pseudonymize", "--resume")[0] == 0


def test_folders_of_other_inputs_are_reported_or_appended(tmp_path, capsys):
    first, second = tmp_path / "site-a", tmp_path / "site-b"
    write_phantom(first / "p", PhantomSpec(patient_id="SITE-A", seed=3, **SMALL))
    write_phantom(second / "p", PhantomSpec(patient_id="SITE-B", seed=4, **SMALL))
    out = tmp_path / "out"
    assert _run(capsys, "export", first, out, "--quiet")[0] == 0
    (a_case,) = [r["case_id"] for r in _manifest(out)]
    (out / "my-notes").mkdir()
    code, text, _err = _run(capsys, "export", second, out, "--quiet")
    assert code == 0
    assert "2 folder(s) or file(s) that are not cases of this input" in text and a_case in text and "--append" in text
    assert [r["patient"] for r in _manifest(out)] == ["SITE-B"]
    assert (out / a_case / "pair.npz").is_file(), "other folders are left alone"

    code, text, _err = _run(capsys, "export", second, out, "--quiet", "--append")
    assert code == 0
    rows = _manifest(out)
    assert sorted(r["patient"] for r in rows) == ["SITE-A", "SITE-B"], "one manifest for both inputs"
    assert {r["case_id"]: r["status"] for r in rows}[a_case] in ("ok", "skipped")
    assert "my-notes" in text
    report = (out / "report.html").read_text(encoding="utf-8")
    assert a_case in report

    before = _tree(out)
    code, _text, err = _run(capsys, "export", second, out, "--quiet", "--append", "--reference", "dose")
    assert code == 2 and "--append would mix cases made with other options" in err and a_case in err
    assert _tree(out) == before


# ---- nothing to export, folders that cannot be used --------------------------------------------


def test_nothing_to_export_says_what_was_found(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _text, err = _run(capsys, "export", empty, tmp_path / "out1")
    assert code == 3 and "holds no files" in err
    assert not (tmp_path / "out1").exists(), "nothing to export: no output folder"

    truth = write_phantom(tmp_path / "study", PhantomSpec(patient_id="CT-ONLY", **SMALL))
    ct_only = tmp_path / "ct-only"
    ct_only.mkdir()
    for path in truth.ct_files:
        (ct_only / Path(path).name).write_bytes(Path(path).read_bytes())
    (ct_only / ".DS_Store").write_bytes(b"x")
    code, _text, err = _run(capsys, "export", ct_only, tmp_path / "out2")
    assert code == 3
    assert f"no RTDOSE under the input: {len(truth.ct_files)} CT slices, 0 RTDOSE" in err
    assert "1 not read" in err
    assert not (tmp_path / "out2").exists()
    code, text, _err = _run(capsys, "scan", ct_only)
    assert code == 3 and "no RTDOSE under the input" in text


def test_manifest_columns_are_the_same_whatever_happens(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_phantom(good, PhantomSpec(**SMALL))
    write_phantom(bad, PhantomSpec(dose_units="RELATIVE", **SMALL))  # its only case fails
    assert _run(capsys, "export", good, tmp_path / "o-good", "--quiet")[0] == 0
    assert _run(capsys, "export", bad, tmp_path / "o-bad", "--quiet")[0] == 1
    header = _header(tmp_path / "o-good")
    assert _header(tmp_path / "o-bad") == header == MANIFEST_COLUMNS + AUDIT_COLUMNS


def test_manifest_columns_cover_the_audits():
    from DoseAlignLib.audit.flags import manifest_columns

    audit = {"dose": {"output": {"dmax_gy": 1.0}}, "flags": [], "rois": []}
    assert list(manifest_columns(audit)) == AUDIT_COLUMNS


def test_input_and_output_folders_that_cannot_be_used(study, tmp_path, capsys):
    before = _tree(study)
    code, _text, err = _run(capsys, "export", study, study)
    assert code == 2 and "the output folder is the input folder" in err
    code, _text, err = _run(capsys, "export", tmp_path / "missing", tmp_path / "out")
    assert code == 2 and "does not exist" in err and not (tmp_path / "out").exists()
    (tmp_path / "a-file").write_text("x")
    code, _text, err = _run(capsys, "export", tmp_path / "a-file", tmp_path / "out")
    assert code == 2 and "not a folder" in err and not (tmp_path / "out").exists()
    assert _tree(study) == before

    inside = study / "exports" / "run1"
    code, text, _err = _run(capsys, "export", study, inside, "--quiet")
    assert code == 0 and "inside the input folder" in text
    rows = _manifest(inside)
    code, text, _err = _run(capsys, "export", study, inside, "--quiet")  # now OUT holds files: not scanned
    assert code == 0 and "left out of the scan" in text and "not read: the output folder" in text
    assert [r["case_id"] for r in _manifest(inside)] == [r["case_id"] for r in rows]
    assert not [r for r in _manifest(inside) if r["status"] == "failed"]


# ---- Ctrl-C ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort") / "in"
    for n in range(4):
        write_phantom(root / f"p{n}", PhantomSpec(patient_id=f"INT-{n}", seed=n, ct_size=(160, 160, 60)))
    return root


def _ctrl_c_as_on_a_terminal() -> None:
    """SIGINT as a terminal's foreground job has it: a test run started in the background by a
    non-interactive shell ignores SIGINT, the export would inherit that and never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_cleanly_and_resume_finishes(slow_cohort, tmp_path, workers):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "DoseAlignLib", "export", str(slow_cohort), str(out), "--workers", str(workers)]
    process = subprocess.Popen(
        command,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_ctrl_c_as_on_a_terminal,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "manifest.csv").is_file():  # written as each case is finished
            break
        time.sleep(0.01)
    assert process.poll() is None, "the export ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)  # as a terminal does: the whole process group
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    line = [s for s in stderr.splitlines() if "interrupted after" in s]
    assert line and line[0].endswith("of 4 cases; run again with --resume"), stderr
    done = int(line[0].split("interrupted after ")[1].split(" ")[0])
    assert 1 <= done < 4
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no worker left running
        os.killpg(process.pid, 0)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")], "no temporary folder left"
    listed = [r for r in _manifest(out)]
    assert len(listed) == done and all((out / r["case_id"] / "pair.npz").is_file() for r in listed)

    finished = subprocess.run(command + ["--resume", "--quiet"], env=ENV, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    statuses = [r["status"] for r in _manifest(out)]
    # a worker may have put a case in place the moment the batch process stopped listening: kept too
    assert len(statuses) == 4 and statuses.count("skipped") >= done and set(statuses) <= {"ok", "skipped"}


def test_ctrl_c_between_counting_a_case_and_listing_it(slow_cohort, tmp_path, monkeypatch):
    """A Ctrl-C that lands while the manifest naming a finished case is written: the interrupted run
    still leaves a manifest listing every case it counted."""
    from DoseAlignLib import batch

    real_write = batch.write_manifest
    calls = []

    def interrupted_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(batch, "write_manifest", interrupted_once)
    out = tmp_path / "out"
    with pytest.raises(batch.Interrupted) as stop:
        api.export_folder(slow_cohort, out, api.AlignOptions(), workers=1)
    assert stop.value.done == 1
    listed = _manifest(out)
    assert [r["status"] for r in listed] == ["ok"] and (out / listed[0]["case_id"] / "pair.npz").is_file()


# ---- progress ------------------------------------------------------------------------------------


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.text = ""
        self.tty = tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def test_stages_of_a_case_reach_the_caller_serial_and_from_workers(study, tmp_path):
    for workers in (1, 2):
        heard = []
        report = api.export_folder(
            study,
            tmp_path / f"out{workers}",
            api.AlignOptions(),
            workers=workers,
            stage=lambda case_id, message, heard=heard: heard.append((case_id, message)),
        )
        ids = {r["case_id"] for r in report.rows}
        assert {case_id for case_id, _m in heard} == ids, workers
        for case_id in ids:
            said = [m for c, m in heard if c == case_id]
            assert said[0] == "reading CT" and said[-1] == "finishing pair.npz and meta.json", said
            assert "writing qa.png" in said and "done" not in said
            assert "pseudonymizing" not in said


def test_the_pseudonymizing_steps_are_named_in_the_progress(study, tmp_path):
    """From the twentieth hostile trial (T10): the time spent rewriting and checking for identity was shown as
    "writing qa.png", the step announced before it."""
    heard = []
    out = tmp_path / "out"
    pseudonymizer = api.make_pseudonymizer(out, tmp_path / "key", False, tmp_path / "map.csv", input_root=study)[0]
    report = api.export_folder(
        study,
        out,
        api.AlignOptions(),
        workers=1,
        pseudonymizer=pseudonymizer,
        stage=lambda case_id, message: heard.append(message),
    )
    assert report.rows and all(row["status"] == "ok" for row in report.rows)
    assert heard.index("pseudonymizing") < heard.index("writing qa.png")
    assert heard.index("writing qa.png") < heard.index("checking the files for identity")
    assert heard[-1] == "finishing pair.npz and meta.json"


def test_progress_shows_stages_only_for_a_long_case(monkeypatch):
    log = _Stream(tty=False)
    progress = _ProgressLine(stream=log)
    progress.stage("quick", "reading CT")
    progress.stage("quick", "audit")
    progress(0.5, "1/2 cases: quick ok")
    assert "reading CT" not in log.text and "audit" not in log.text, "a quick case stays quiet"
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    progress = _ProgressLine(stream=log)
    progress.stage("slow", "reading CT")
    clock[0] += 3.0
    progress.stage("slow", "writing nrrd")
    clock[0] += 1.0
    progress.stage("slow", "writing qa.png")  # within LOG_EVERY_S of the last line: not in the log
    assert "  slow: writing nrrd (3 s)\n" in log.text and "writing qa.png" not in log.text
    assert "\r" not in log.text, "no carriage returns in a log"
    terminal = _Stream(tty=True)
    progress = _ProgressLine(stream=terminal)
    progress.stage("slow", "reading CT")
    clock[0] += 2.5
    progress.stage("slow", "resampling")
    assert "\r" in terminal.text and "slow: resampling (2 s)" in terminal.text
    quiet = _Stream(tty=True)
    progress = _ProgressLine(stream=quiet, quiet=True)
    progress.stage("slow", "reading CT")
    clock[0] += 5
    progress.stage("slow", "resampling")
    assert quiet.text == ""


# ---- usage, help, scan --json --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["export", "IN", "OUT", "--bogus"], "usage: dosealign export"),
        (["export", "IN", "OUT", "--reference", "custom"], "usage: dosealign export"),  # a ValueError
        (["scan"], "usage: dosealign scan"),
        (["scan", "IN", "--bogus"], "usage: dosealign scan"),
        (["merge", "OUT", "extra"], "usage: dosealign merge"),
        (["demo", "OUT", "--workers", "2"], "usage: dosealign demo"),
        (["export", "IN", "OUT", "--append", "--shard", "1/2"], "usage: dosealign export"),
    ],
)
def test_usage_errors_show_the_subcommands_usage(args, usage, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err


def test_every_option_has_help():
    import argparse

    parser = _get_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"scan", "export", "merge", "demo"}
    missing = []
    for name, sub in commands.choices.items():
        assert sub.epilog and "Exit codes" in sub.epilog, name
        for action in sub._actions:
            if not action.help and not isinstance(action, argparse._HelpAction):
                missing.append(f"{name} {action.dest}")
    assert not missing, missing


def test_scan_json_is_what_the_text_says(tmp_path, capsys):
    root = tmp_path / "in"
    write_phantom(root / "p", PhantomSpec(**SMALL))
    (root / "notes.txt").write_text("not DICOM")
    (root / ".hidden").write_text("x")
    (root / "DICOMDIR").write_bytes(b"\0" * 10)
    code, text, _err = _run(capsys, "scan", root, "--json")
    assert code == 0
    doc = json.loads(text)
    assert {"cases", "orphans", "skipped", "not_read", "duplicates", "counts"} <= set(doc)
    (case,) = doc["cases"]
    linked = api.form_cases(api.scan_folder(root))
    assert case["case_id"] == linked.cases[0].case_id and case["exportable"] is True
    assert case["ct_slices"] == len(linked.cases[0].ct.slices)
    assert [s["file"] for s in doc["skipped"]] == ["notes.txt"]
    assert sorted(n["file"] for n in doc["not_read"]) == [".hidden", "DICOMDIR"]
    code, text, _err = _run(capsys, "scan", root)
    assert "Not read (2):" in text and "DICOMDIR" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text, _err = _run(capsys, "scan", empty, "--json")
    assert code == 3 and json.loads(text)["cases"] == []


def test_notes_before_a_run(study, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(api, "matplotlib_available", lambda: False)
    code, text, _err = _run(capsys, "export", study, tmp_path / "out", "--quiet", "--interpolator", "ws")
    assert code == 0
    assert "note: no qa.png pictures: matplotlib is not installed" in text
    assert "note: --interpolator ws (windowed sinc) is much slower than linear: a 512 x 512 x 300 case took" in text
    with np.load(next((tmp_path / "out").glob("*/pair.npz"))) as npz:
        assert npz["dose"].max() > 0


# ---- NRRD compression ------------------------------------------------------------------------------


def _nrrd_data(path: Path) -> tuple:
    """(header text, data bytes) of an attached-header NRRD file."""
    raw = path.read_bytes()
    header, _, data = raw.partition(b"\n\n")
    return header.decode("ascii"), data


@pytest.mark.parametrize(
    ("option", "xfl"), [([], 4), (["--nrrd-compression", "9"], 2), (["--nrrd-compression", "0"], None)]
)
def test_nrrd_compression_level(tmp_path, capsys, option, xfl):
    """Level 1 by default (measured: a third of level 9's time, no larger; README), 9 or raw on request.
    The gzip header's XFL byte says which: 4 = fastest (level 1), 2 = best (level 9)."""
    nrrd = pytest.importorskip("nrrd")
    write_phantom(tmp_path / "in", PhantomSpec(**SMALL))
    out = tmp_path / "out"
    assert _run(capsys, "export", tmp_path / "in", out, "--quiet", "--format", "nrrd", *option)[0] == 0
    folder = next(p for p in out.iterdir() if p.is_dir())
    header, data = _nrrd_data(folder / "dose.nrrd")
    with np.load(folder / "pair.npz") as npz:
        dose = npz["dose"]
    if xfl is None:
        assert "encoding: raw" in header and len(data) == dose.nbytes
    else:
        assert "encoding: gzip" in header and data[:2] == b"\x1f\x8b" and data[8] == xfl
    back, _ = nrrd.read(str(folder / "dose.nrrd"), index_order="C")
    np.testing.assert_array_equal(back, dose)


# ---- ./dev demo ------------------------------------------------------------------------------------

FAKE_PYTHON = """#!/bin/sh
echo "python $*" >> "$(dirname "$0")/../calls.log"
"""
FAKE_DOSEALIGN = """#!/bin/sh
echo "dosealign $*" >> "$(dirname "$0")/../calls.log"
"""


def test_dev_demo_installs_only_what_the_demo_needs(tmp_path):
    """./dev demo installs the project with the qa extra only (matplotlib), once; after ./dev test's
    larger install it installs nothing. A fake .venv records what ./dev asks of pip."""
    for name in ("dev", "pyproject.toml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "dev").chmod(0o755)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON), ("dosealign", FAKE_DOSEALIGN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / ".venv" / "calls.log"

    def demo() -> list:
        log.unlink(missing_ok=True)
        done = subprocess.run(["./dev", "demo", "out"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return log.read_text().splitlines()

    calls = demo()
    installs = [c for c in calls if "pip install" in c and "--upgrade pip" not in c]
    assert installs == ["python -m pip install -q -e .[qa]"], calls
    assert calls[-1] == "dosealign demo out"
    assert not [c for c in demo() if "pip install" in c], "installed again though nothing changed"
    stamp = tmp_path / ".venv" / ".installed"
    stamp.write_text(stamp.read_text().split()[0] + " test,qa,slicer\n")  # as ./dev test leaves it
    assert not [c for c in demo() if "pip install" in c], "./dev test's environment already has the demo's extras"


def test_input_and_output_swapped_is_refused(study, tmp_path, capsys):
    """`dosealign export OUT INPUT` by mistake: OUT (second) holds DICOM files; nothing is written into it."""
    before = _tree(study / "p1")
    code, _text, err = _run(capsys, "export", tmp_path / "results", study / "p1")
    assert code == 2 and "the input folder does not exist" in err
    (tmp_path / "results").mkdir()
    code, _text, err = _run(capsys, "export", tmp_path / "results", study / "p1")
    assert code == 2 and "the output folder holds DICOM files" in err and "The input comes first" in err
    assert _tree(study / "p1") == before


# ---- from the fresh trial (trial13): the demo's folder, a second run, a closed pipe, a factor of 1 ----


def test_demo_never_writes_into_a_folder_of_other_dicom_files(study, tmp_path, capsys):
    """`dosealign demo OUT` where OUT/dicom holds someone's study (or OUT is a study folder): refused
    before anything is written; an earlier demo's own study in OUT/dicom is fine (the demo runs again)."""
    out = tmp_path / "demo"
    shutil.copytree(study / "p1", out / "dicom")
    before = _tree(out)
    code, _text, err = _run(capsys, "demo", out, "--quiet")
    assert code == 2 and "holds files that are not the demo's study" in err and "nothing was written" in err
    assert _tree(out) == before and not (out / "export").exists()

    code, _text, err = _run(capsys, "demo", study / "p1", "--quiet")  # a patient folder given as OUT
    assert code == 2 and "the output folder holds DICOM files" in err
    assert not (study / "p1" / "dicom").exists() and not (study / "p1" / "export").exists()

    again = tmp_path / "again"
    assert _run(capsys, "demo", again, "--quiet", "--no-structures", "--no-qa-png")[0] == 0
    assert _run(capsys, "demo", again, "--quiet", "--no-structures", "--no-qa-png")[0] == 0
    (again / "dicom" / "notes.txt").write_text("mine")
    code, _text, err = _run(capsys, "demo", again, "--quiet", "--no-structures", "--no-qa-png")
    assert code == 2 and "notes.txt" in err


#: Claims OUT as a live export does, then waits until stdin closes.
LIVE_EXPORT = """
import sys
from DoseAlignLib.output.files import claim_folder
claim = claim_folder(sys.argv[1])
print(claim.record, flush=True)
sys.stdin.read()
"""


def test_a_second_export_into_an_output_folder_a_live_run_writes_is_refused(study, tmp_path, capsys):
    """Two exports into one OUT at once: the last manifest.csv written would drop the other run's cases.
    The second is refused (naming the other process) while the first lives; shards share OUT on purpose."""
    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen(
        [sys.executable, "-c", LIVE_EXPORT, str(out)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert Path(live.stdout.readline().strip()).is_file()
        before = _tree(out)
        code, _text, err = _run(capsys, "export", study, out, "--quiet", "--no-qa-png")
        assert code == 2 and f"another DoseAlign run (process {live.pid}" in err and "nothing was written" in err
        assert _tree(out) == before
        assert _run(capsys, "export", study, out, "--quiet", "--no-qa-png", "--shard", "1/1")[0] == 0
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    assert _run(capsys, "export", study, out, "--quiet", "--no-qa-png")[0] == 0, "its owner has ended"
    assert len(_manifest(out)) == 2


@pytest.mark.parametrize("json_output", [False, True])
def test_a_closed_output_pipe_is_no_traceback(study, json_output):
    """`dosealign scan DIR | head -1`: the reader goes away; no BrokenPipeError traceback, exit 141."""
    command = [sys.executable, "-m", "DoseAlignLib", "scan", str(study)] + (["--json"] if json_output else [])
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the command writes anything
    stderr = process.stderr.read().decode()
    process.wait(timeout=60)
    assert process.returncode == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_fractional_masks_of_one_are_a_usage_error(study, tmp_path, capsys):
    """--fractional-masks 1 (help: N >= 2) stored nothing and said nothing; now a usage error."""
    with pytest.raises(SystemExit) as stop:
        main(["export", str(study), str(tmp_path / "out"), "--fractional-masks", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "from 2 to 16" in err and not (tmp_path / "out").exists()
    assert api.AlignOptions(fractional_masks=0).fractional_masks == 0
    assert api.AlignOptions(fractional_masks=2).fractional_masks == 2


def test_input_inside_the_output_folder_and_a_plain_rerun_say_so(study, tmp_path, capsys):
    """INPUT inside OUT was accepted without a word; a plain re-run over complete cases did not mention --resume."""
    out = tmp_path  # holds the input folder `in`
    code, text, _err = _run(capsys, "export", study, out, "--quiet", "--no-qa-png")
    assert code == 0 and f"the input folder {study} is inside the output folder" in text
    assert "already complete" not in text
    code, text, _err = _run(capsys, "export", study, out, "--quiet", "--no-qa-png")
    assert code == 0 and "2 case(s) already complete in the output folder are exported again" in text
    assert "--resume keeps" in text
    code, text, _err = _run(capsys, "export", study, out, "--quiet", "--no-qa-png", "--resume")
    assert code == 0 and "already complete" not in text and "2 skipped" in text


def test_the_progress_line_fits_the_terminal(monkeypatch):
    """On an 80-column terminal the line was padded to 120 characters: it wrapped, and each update
    started a new screen line instead of replacing the last."""
    from DoseAlignLib import cli

    monkeypatch.setattr(cli.os, "get_terminal_size", lambda _fd: os.terminal_size((80, 24)))
    terminal = _Stream(tty=True)
    terminal.fileno = lambda: 2
    progress = _ProgressLine(stream=terminal)
    progress(0.5, "1/2 cases: " + "A_VERY_LONG_CASE_ID_" * 6 + " ok")
    progress.note("something to know")
    drawn = [part for part in terminal.text.split("\r") if part]
    assert drawn and max(len(part.rstrip("\n")) for part in drawn) <= 79, drawn
    monkeypatch.setattr(cli.os, "get_terminal_size", lambda _fd: (_ for _ in ()).throw(OSError("no size")))
    assert _ProgressLine(stream=terminal).width == 120


# ---- the end of the process -------------------------------------------------------------------

_RUN = (
    "import atexit, sys, threading, time\n"
    "from pathlib import Path\n"
    "from DoseAlignLib.cli import run\n"
    "flag = Path(sys.argv[1])\n"
    "atexit.register(lambda: flag.with_suffix('.atexit').write_text('ran'))\n"
    "atexit.register(lambda: print('said at exit'))\n"
    "if sys.argv[2] == 'thread':\n"
    "    def late():\n"
    "        time.sleep(1.0)\n"
    "        flag.with_suffix('.thread').write_text('done')\n"
    "    threading.Thread(target=late).start()\n"
    "run(sys.argv[3:])\n"
    "flag.with_suffix('.after').write_text('run returned')\n"
)


@pytest.mark.parametrize("other", ["none", "thread"])
def test_the_command_ends_with_its_exit_code_outputs_and_exit_handlers(study, tmp_path, other):
    # run() skips the interpreter's teardown; what a normal exit promises must still hold: the exit code,
    # complete outputs, flushed output, atexit handlers, and a running (non-daemon) thread waited for
    flag = tmp_path / "flag"
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(flag), other, "export", str(study), str(out)],
        env={k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"},  # stdout block-buffered, as in a pipe
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "2 cases, 0 failed" in done.stdout + done.stderr  # the summary line reached the pipe
    assert {r["status"] for r in _manifest(out)} == {"ok"} and len(_manifest(out)) == 2
    for row in _manifest(out):
        with np.load(out / row["case_id"] / "pair.npz") as npz:
            assert npz["dose"].shape == npz["ct"].shape
    assert flag.with_suffix(".atexit").read_text() == "ran"
    assert "said at exit" in done.stdout  # printed by an exit handler, after the command's own flush
    assert not flag.with_suffix(".after").exists(), "run() returned instead of ending the process"
    assert flag.with_suffix(".thread").exists() == (other == "thread")
    failed = subprocess.run(
        [sys.executable, "-c", _RUN, str(flag), "none", "export", str(tmp_path / "missing"), str(tmp_path / "o2")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 2 and "missing" in failed.stderr


@pytest.mark.parametrize(
    "options, phrase",
    [
        (["--spacing", "4", "--size", "64", "--ct-fill=-40000"], "the CT fill must be a number of HU from -32768"),
        (["--ct-fill", "70000"], "the CT fill must be a number of HU"),
        (["--ct-fill", "nan"], "the CT fill must be a number of HU"),
        (["--ct-fill", "1e30", "--ct-dtype", "float32"], "the CT fill must be a number of HU"),
        (["--spacing", "nan"], "custom spacing needs one or three spacings from 0.001 to 1000 mm"),
        (["--spacing", "inf"], "custom spacing needs"),
        (["--spacing", "1e308"], "custom spacing needs"),
        (["--spacing", "2,2,0.0000001"], "custom spacing needs"),
        (["--format", "openkbp", "--openkbp-spacing", "nan"], "OpenKBP spacing needs"),
    ],
)
def test_option_values_no_grid_or_ct_type_can_hold_are_usage_errors(study, tmp_path, capsys, options, phrase):
    # from the fifth hostile trial (E1-E3): an int16 CT wrapped --ct-fill -40000 to bone-like 25536 HU, NaN became
    # water, and NaN / infinite spacings failed every case (exit 1) or made a 1-voxel grid (exit 0)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:  # argparse's usage error
        main(["export", str(study), str(out), "--quiet", *options])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and phrase in err, err
    assert not out.exists()


def test_the_ct_fill_within_the_ct_type_is_written_as_given(study, tmp_path, capsys):
    out = tmp_path / "out"
    code, _text, _err = _run(
        capsys, "export", study, out, "--quiet", "--no-qa-png", "--spacing", "4", "--size", "64", "--ct-fill=-32768"
    )
    assert code == 0
    for row in _manifest(out):
        with np.load(out / row["case_id"] / "pair.npz") as npz:
            assert npz["ct"].min() == -32768  # the cube reaches beyond the small CT: its fill, not a wrapped value


@pytest.mark.parametrize(
    "address, phrase",
    [
        ("tcp://127.0.0.1:1", "no Dask scheduler can be reached there"),
        ("127.0.0.1:1", "no Dask scheduler can be reached there"),
        ("tcp://127.0.0.1:port", "not an address like tcp://host:8786"),
        # other schemes: each case failed with Python's own message, exit 1 (twenty-fourth hostile trial X4)
        ("tls://127.0.0.1:1", "only tcp://host:port (or host:port) and 'local' are supported, not tls://"),
        ("inproc://127.0.0.1/1/1", "not inproc://"),
        ("ws://127.0.0.1:1", "not ws://"),
        (" tcp://127.0.0.1:1 ", "no Dask scheduler can be reached there"),
        ("  ", "--scheduler needs an address"),
    ],
)
def test_a_scheduler_nobody_listens_at_is_a_usage_error_before_anything_is_written(
    study, tmp_path, capsys, address, phrase
):
    # from the fifth hostile trial (E4): Dask retried for 30 s, then a 57-line traceback, exit 1, an empty OUT left
    out = tmp_path / "out"
    started = time.monotonic()
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(study), str(out), "--quiet", "--scheduler", address])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and phrase in err and "Traceback" not in err, err
    assert not out.exists()
    assert time.monotonic() - started < 15


def _tcp_service(greeting: bytes) -> tuple:
    """``(listener, accepted connections)`` of a local TCP service that sends ``greeting`` to each connection (or
    nothing) and never answers otherwise; it listens before this returns (listening in its thread raced the
    connection: "Connection refused")."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)
            if greeting:
                connection.sendall(greeting)

    threading.Thread(target=serve, daemon=True).start()
    return listener, accepted


def _close_service(listener, accepted: list) -> None:
    listener.close()
    for connection in accepted:
        connection.close()


@pytest.mark.parametrize("service", ["web server", "silent listener", "HTTP 400"])
def test_a_scheduler_address_where_no_dask_scheduler_answers_is_a_usage_error(
    study, tmp_path, capsys, monkeypatch, service
):
    """Fourteenth hostile trial N7: ``--scheduler tcp://host:port`` where another service listens (the dashboard's
    port, a web server, a listener that never answers) made the export wait for ever; one answering "HTTP/1.1 400"
    ended in a numpy traceback ("Unable to allocate 3.07 EiB"), exit 1. A Dask handshake is tried first, bounded in
    time: exit 2 saying so, nothing written."""
    pytest.importorskip("distributed")
    import http.server
    import threading

    from DoseAlignLib import parallel

    monkeypatch.setattr(parallel, "SCHEDULER_CONNECT_SECONDS", 1.0)
    if service == "web server":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        server.daemon_threads = True  # its handler of the Dask connection waits for a request line for ever
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    else:
        greeting = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4 if service == "HTTP 400" else b""
        listener, accepted = _tcp_service(greeting)
        port = listener.getsockname()[1]
    out = tmp_path / "out"
    started = time.monotonic()
    try:
        with pytest.raises(SystemExit) as stopped:
            main(["export", str(study), str(out), "--quiet", "--scheduler", f"tcp://127.0.0.1:{port}"])
    finally:
        if service == "web server":
            server.shutdown()
        else:
            _close_service(listener, accepted)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err, err
    assert "no Dask scheduler answered" in err or "is no Dask scheduler" in err, err
    assert not out.exists()
    assert time.monotonic() - started < 30


def test_a_scheduler_address_where_a_service_speaks_first_is_refused_at_once(study, tmp_path):
    """Sixteenth hostile trial P14: at a service that speaks first (an SSH banner, as sshd, SMTP and FTP servers
    send), Dask read the banner as a frame length; the half-made Client's finalizer then waited 40 s and printed
    "Exception ignored ... TimeoutError". One RPC on a loop of its own is tried instead: exit 2 at once, no
    traceback. (In a process of its own, with the default time limits.)"""
    pytest.importorskip("distributed")
    listener, accepted = _tcp_service(b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.10\r\n")
    out = tmp_path / "out"
    address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "DoseAlignLib", "export", str(study), str(out), "--quiet", "--scheduler", address],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        _close_service(listener, accepted)
    took = time.monotonic() - started
    assert done.returncode == 2 and "is no Dask scheduler" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert took < 15, took
    assert not out.exists()


@pytest.mark.parametrize("address", ["local", "tcp://127.0.0.1:1"])
def test_a_scheduler_without_dask_is_a_usage_error_before_anything_is_written(
    study, tmp_path, capsys, monkeypatch, address
):
    """Seventh hostile trial G9: `--scheduler local` in a fresh clone (no Dask) gave a 20-line traceback ending in
    "--scheduler needs Dask", exit 1 ("some case failed"), and an empty OUT left behind."""
    for name in ("distributed", "dask", "dask.distributed"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(study), str(out), "--quiet", "--scheduler", address])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "needs Dask: pip install 'dosealign[distributed]'" in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failing_progress_stream_never_stops_the_export(study, tmp_path):
    # from the fifth hostile trial (E25, E27): stderr on a full device stopped the export after one case (exit 1,
    # no report.html); a command started with its standard output closed ended in a traceback
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "DoseAlignLib", "export", str(study), str(out), "--workers", "1"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=full,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stdout
    rows = _manifest(out)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"} and (out / "report.html").is_file()
    for closed in (1, 2):
        scanned = subprocess.run(
            [sys.executable, "-m", "DoseAlignLib", "scan", str(study)],
            env=ENV,
            stdout=subprocess.PIPE if closed == 2 else None,
            stderr=subprocess.PIPE if closed == 1 else None,
            text=True,
            timeout=120,
            preexec_fn=lambda fd=closed: os.close(fd),
        )
        assert "Traceback" not in (scanned.stderr or "") + (scanned.stdout or "")
        if closed == 2:
            assert scanned.returncode == 0, (closed, scanned.stdout, scanned.stderr)
        else:  # thirteenth hostile trial M5: the listing, scan's only output, was lost with exit 0 and no word
            assert scanned.returncode == 4, scanned.stderr
            assert "the listing could not be written to the standard output" in scanned.stderr, scanned.stderr
            assert "closed" in scanned.stderr, scanned.stderr


def test_export_merge_and_demo_with_stdout_closed_say_the_summary_is_lost(study, tmp_path):
    """Fifteenth hostile trial O3: export, merge and demo started with their standard output closed (``>&-``) wrote
    their files and lost the summary without a word (merge: nothing at all). As on a full device, their files are
    written, their exit code is the usual one, and one line on stderr says the summary is lost."""
    out = tmp_path / "out"
    commands = [
        ["export", str(study), str(out), "--workers", "1", "--shard", "1/1", "--no-qa-png"],
        ["merge", str(out)],
        ["demo", str(tmp_path / "demo"), "--no-qa-png"],
    ]
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "DoseAlignLib", *command],
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            preexec_fn=lambda: os.close(1),
        )
        assert done.returncode == 0, (command[0], done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert "the summary could not be written to the standard output: it is closed" in done.stderr, done.stderr
    assert {r["status"] for r in _manifest(out)} == {"ok"}
    assert (tmp_path / "demo" / "export" / "manifest.csv").is_file()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_device_is_no_traceback(study, tmp_path):
    # from the fifth hostile trial (E26): stdout on a full device ended scan, scan --json and the export's summary
    # in an OSError traceback, exit 1. scan's listing is its only output: exit 4 naming stdout and the cause; the
    # export's files are its outputs: written as usual, its exit code, one line on stderr saying the summary is lost
    for extra in ([], ["--json"]):
        with open("/dev/full", "w") as full:
            scanned = subprocess.run(
                [sys.executable, "-m", "DoseAlignLib", "scan", *extra, str(study)],
                env=ENV,
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
            )
        assert scanned.returncode == 4, (extra, scanned.stderr)
        assert "Traceback" not in scanned.stderr and "standard output" in scanned.stderr, scanned.stderr
        assert "No space left on device" in scanned.stderr, scanned.stderr
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "DoseAlignLib", "export", str(study), str(out), "--workers", "1", "--quiet"],
            env=ENV,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and "summary" in said[0] and "No space left on device" in said[0], said
    rows = _manifest(out)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"} and (out / "report.html").is_file()


def test_hdf5_closing_failures_after_a_named_fault_print_nothing(capsys):
    """Thirteenth hostile trial M2: a disk that filled while case.h5 was written ended the case with its named
    failure (exit 4), and then h5py's objects of the failed write, let go, wrote again, failed again and printed
    2-4 tracebacks ("Exception ignored in: 'h5py._objects.ObjectID.__dealloc__'") on stderr. While a command runs,
    its hooks drop exactly those; any other report is printed as before. (Seen on a 12 MB tmpfs: 1-2 tracebacks per
    export before, none after, at four sizes.)"""
    import types

    from DoseAlignLib import cli

    printed = []
    unraisable_hook, excepthook = cli._quiet_hdf5_closing(printed.append, lambda *report: printed.append(report))

    def raised_in(filename: str, error: Exception):
        code = compile("raise error", filename, "exec")
        try:
            exec(code, {"error": error})
        except type(error) as caught:
            return caught.__traceback__

    disk_full = OSError(28, "Driver write request failed (errno = 28)")
    trace = raised_in("/site-packages/h5py/_objects.pyx", disk_full)
    excepthook(OSError, disk_full, trace)
    unraisable_hook(types.SimpleNamespace(exc_value=disk_full, object="h5py._objects.ObjectID.__dealloc__"))
    assert printed == []
    other = ValueError("a fault of DoseAlign's own")
    excepthook(ValueError, other, raised_in("batch.py", other))
    unraisable_hook(types.SimpleNamespace(exc_value=disk_full, object="<function DescriptorReserve.__del__>"))
    assert len(printed) == 2, printed
