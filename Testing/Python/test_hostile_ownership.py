"""Hostile inputs, class 1: DoseAlign deletes only what it made.

A run's temporary entries carry its own token and an owner record; start-up removes only the
leftovers of runs that are provably dead. Here: a user's ``.tmp-*`` files and folders in OUT stay;
a live export's temporary folder survives a second export into the same OUT and is removed once its
owner died; another machine's leftovers and unreadable records stay; a dead run's symlink is removed,
not followed; a folder in OUT that is not a DoseAlign case (it holds DICOM) is never replaced; an
export whose OUT is its own input folder leaves every input file as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import hostile
import pydicom
import pytest
from DoseAlignLib.cli import main

#: Claims OUT, makes a temporary case folder in it and waits (a live run) until stdin closes.
LIVE_RUN = """
import sys
from DoseAlignLib.output.files import claim_folder
claim = claim_folder(sys.argv[1])
temp = claim.temp("case")
temp.mkdir()
(temp / "pair.npz").write_bytes(b"half")
print(temp, flush=True)
sys.stdin.read()
"""
#: A run that dies without cleaning up: its claim and a temporary folder stay.
DEAD_RUN = """
import os, sys
from DoseAlignLib.output.files import claim_folder
temp = claim_folder(sys.argv[1]).temp("case")
temp.mkdir()
(temp / "pair.npz").write_bytes(b"half")
print(temp, flush=True)
os._exit(0)
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own") / "in"
    hostile.study(root / "a", with_structures=False)
    return root


def _export(inputs: Path, out: Path, *extra: str) -> int:
    return main(["export", str(inputs), str(out), "--quiet", "--workers", "1", "--no-qa-png", *extra])


def test_user_tmp_entries_in_out_stay(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    (out / ".tmp-keep").mkdir(parents=True)
    shutil.copy(next((inputs / "a").glob("*.dcm")), out / ".tmp-keep" / "slice.dcm")
    (out / ".tmp-notes.txt").write_text("mine")
    (out / ".tmp-dosealign-notes").write_text("also mine: no token, no owner")
    before = hostile.snapshot(out)
    assert _export(inputs, out) == 0
    assert _export(inputs, out, "--resume") == 0
    capsys.readouterr()
    after = hostile.snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [n for n in after if n.startswith(".tmp-dosealign-") and n != ".tmp-dosealign-notes"]


def test_a_live_runs_work_survives_a_second_export(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen(
        [sys.executable, "-c", LIVE_RUN, str(out)],
        env=hostile.ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        temp = Path(live.stdout.readline().strip())
        assert temp.is_dir()
        assert _export(inputs, out) == 2, "a second run beside a live one is refused (issue 13)"
        assert (temp / "pair.npz").read_bytes() == b"half", "a live run's temporary folder was touched"
        assert _export(inputs, out, "--shard", "1/1") == 0  # shards share OUT: their start-up cleans it
        assert (temp / "pair.npz").read_bytes() == b"half", "a live run's temporary folder was touched"
        assert temp.is_dir()
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    # its owner has ended without removing it: now it is a dead run's leftover
    assert _export(inputs, out, "--resume") == 0
    capsys.readouterr()
    assert not temp.exists()
    assert not list(out.glob(".tmp-dosealign-*")), sorted(p.name for p in out.iterdir())


def test_a_killed_owner_is_recognised_even_while_its_pid_is_a_zombie(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.Popen(
        [sys.executable, "-c", LIVE_RUN, str(out)],
        env=hostile.ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    temp = Path(run.stdout.readline().strip())
    run.send_signal(signal.SIGKILL)
    time.sleep(0.3)  # not yet collected: the pid exists as a zombie
    try:
        assert _export(inputs, out) == 0
        capsys.readouterr()
        assert not temp.exists(), "a killed run's leftovers stay while its pid is a zombie"
    finally:
        run.wait(timeout=60)


def test_dead_runs_leftovers_go_other_hosts_and_forged_records_stay(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    done = hostile.python(DEAD_RUN, str(out))
    dead = Path(done.stdout.strip())
    # a run of another machine on shared storage: it may be alive; only it may remove its files
    other = out / ".tmp-dosealign-0123456789abcdef.owner"
    other.write_text(json.dumps({"dosealign_run": "0123456789abcdef", "pid": 1, "host": socket.gethostname() + "-x"}))
    (out / ".tmp-dosealign-0123456789abcdef-case-1").mkdir()
    # a record that is not DoseAlign's (wrong token inside) and one that is not JSON
    forged = out / ".tmp-dosealign-fedcba9876543210.owner"
    forged.write_text(json.dumps({"dosealign_run": "0000000000000000", "pid": 999999, "host": socket.gethostname()}))
    (out / ".tmp-dosealign-fedcba9876543210-keep").write_text("x")
    (out / ".tmp-dosealign-aaaaaaaaaaaaaaaa.owner").write_bytes(b"\xff\xfe not json")
    (out / ".tmp-dosealign-aaaaaaaaaaaaaaaa-keep").write_text("x")
    # that other machine's run may still be writing: a plain export is refused (sixth hostile trial F11) ...
    assert _export(inputs, out) == 2
    assert ".tmp-dosealign-0123456789abcdef.owner" in capsys.readouterr().err
    # ... a shard (which shares OUT on purpose) goes on, and its start-up cleans only the dead run's leftovers
    assert _export(inputs, out, "--shard", "1/1") == 0
    capsys.readouterr()
    assert not dead.exists()
    names = sorted(p.name for p in out.iterdir() if p.name.startswith(".tmp-"))
    assert names == [
        ".tmp-dosealign-0123456789abcdef-case-1",
        ".tmp-dosealign-0123456789abcdef.owner",
        ".tmp-dosealign-aaaaaaaaaaaaaaaa-keep",
        ".tmp-dosealign-aaaaaaaaaaaaaaaa.owner",
        ".tmp-dosealign-fedcba9876543210-keep",
        ".tmp-dosealign-fedcba9876543210.owner",
    ]


def test_a_dead_runs_symlink_is_removed_not_followed(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.dcm").write_bytes(b"x" * 200)
    code = DEAD_RUN.replace('temp.mkdir()\n(temp / "pair.npz").write_bytes(b"half")', "temp.symlink_to(sys.argv[2])")
    link = Path(hostile.python(code, str(out), str(victim)).stdout.strip())
    assert link.is_symlink()
    assert _export(inputs, out) == 0
    capsys.readouterr()
    assert not link.is_symlink() and (victim / "precious.dcm").read_bytes() == b"x" * 200


def test_a_folder_that_is_not_a_dosealign_case_is_never_replaced(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _export(inputs, out) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    folder = out / row["case_id"]
    shutil.rmtree(folder)
    folder.mkdir()  # someone's folder that happens to carry the case's name
    (folder / "pair.npz").write_bytes(b"theirs")
    shutil.copy(next((inputs / "a").glob("*.dcm")), folder / "scan.dcm")
    before = hostile.snapshot(folder)
    assert _export(inputs, out) == 1
    text = capsys.readouterr().out
    assert "is not a DoseAlign case folder" in text and "not replaced" in text
    assert hostile.snapshot(folder) == before


def test_out_equal_to_the_input_never_deletes_an_input(tmp_path, capsys):
    root = tmp_path / "in"
    hostile.study(root / "a", with_structures=False)
    (root / ".tmp-notes.txt").write_text("mine")
    (root / ".tmp-keep").mkdir()
    (root / ".tmp-keep" / "x.dcm").write_bytes(b"\0" * 132)
    before = hostile.snapshot(root)
    for _ in range(2):  # the second run meets the first one's outputs among the inputs
        main(["export", str(root), str(root), "--quiet", "--workers", "1", "--no-qa-png"])
        capsys.readouterr()
        after = hostile.snapshot(root)
        assert {k: v for k, v in after.items() if k in before} == before, "an input was changed or deleted"


@pytest.mark.parametrize(
    "record",
    [
        "[" * 200_000,
        '{"dosealign_run": "bbbbbbbbbbbbbbbb", "pid": 1e23, "host": "HOST"}',
        '{"dosealign_run": "bbbbbbbbbbbbbbbb", "pid": -5, "host": "HOST"}',
        '[{"pid": 7}]',
    ],
)
def test_an_owner_record_that_no_run_wrote_is_left_alone_without_a_traceback(inputs, tmp_path, capsys, record):
    # from the fifth hostile trial (E31): a planted owner record nested 200 000 deep (RecursionError) or with a
    # pid of 1e23 (OverflowError in os.kill) ended the export in a traceback before anything was exported
    out = tmp_path / "out"
    out.mkdir()
    planted = out / ".tmp-dosealign-bbbbbbbbbbbbbbbb.owner"
    planted.write_text(record.replace("HOST", socket.gethostname()))
    (out / ".tmp-dosealign-bbbbbbbbbbbbbbbb-keep").write_text("x")
    assert _export(inputs, out) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert planted.exists() and (out / ".tmp-dosealign-bbbbbbbbbbbbbbbb-keep").exists()
    assert {r["status"] for r in hostile.manifest(out)} == {"ok"}


def test_an_empty_owner_record_of_a_run_killed_as_it_claimed_is_removed(inputs, tmp_path, capsys):
    """A run killed between creating its owner record and writing it left an empty record that no later run
    removed (test_killed_and_resumed_equals_uninterrupted failed on 3.9: "temporary files left"). An empty record
    with its lock free is a dead run's, removed with its entries, once it is older than EMPTY_RECORD_SECONDS or
    stayed empty and unlocked for EMPTY_RECORD_WAIT; one a run locks meanwhile (a run making its claim now) is
    left alone."""
    from DoseAlignLib.output import files

    out = tmp_path / "out"
    out.mkdir()
    old = out / ".tmp-dosealign-cccccccccccccccc.owner"
    old.write_text("")
    (out / ".tmp-dosealign-cccccccccccccccc-case-x").mkdir()
    aged = time.time() - 2 * files.EMPTY_RECORD_SECONDS
    os.utime(old, (aged, aged))
    young = out / ".tmp-dosealign-dddddddddddddddd.owner"
    young.write_text("")
    (out / ".tmp-dosealign-dddddddddddddddd-case-y").mkdir()
    claiming = out / ".tmp-dosealign-eeeeeeeeeeeeeeee.owner"
    claimer = subprocess.Popen(  # creates its record, and locks it only a moment later
        [sys.executable, "-c", SLOW_CLAIMER, str(claiming)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert claimer.stdout.readline().strip() == b"created"
        assert _export(inputs, out) == 0, capsys.readouterr().err
        assert not old.exists() and not (out / ".tmp-dosealign-cccccccccccccccc-case-x").exists()
        assert not young.exists() and not (out / ".tmp-dosealign-dddddddddddddddd-case-y").exists()
        assert claiming.exists()
    finally:
        claimer.stdin.close()
        claimer.wait(timeout=30)


def test_a_run_that_locks_its_record_after_it_was_judged_dead_keeps_its_work(tmp_path, monkeypatch):
    """Sixty-fourth hostile trial BL5: run B judged run A's empty, unlocked record dead (A was stopped between creating
    and locking it); A went on, locked and wrote it and made its case folder; B then removed A's record and live case
    folder. The remover holds the record's lock while it removes, and removes nothing of a record locked since."""
    from DoseAlignLib.output import case_folder, files

    out = tmp_path / "out"
    out.mkdir()
    record = out / ".tmp-dosealign-ffffffffffffffff.owner"
    work = out / ".tmp-dosealign-ffffffffffffffff-case-live"
    claimer = subprocess.Popen(  # (A: creates its record, locks it at once, then makes its case folder)
        [sys.executable, "-c", SLOW_CLAIMER.replace("time.sleep(0.5)", "time.sleep(0)"), str(record)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert claimer.stdout.readline().strip() == b"created"
        time.sleep(0.5)
        work.mkdir()
        monkeypatch.setattr(case_folder, "dead_claims", lambda _folder: ["ffffffffffffffff"])  # (judged before)
        assert case_folder.clean_temp(out) == []
        assert record.exists() and work.exists()
    finally:
        claimer.stdin.close()
        claimer.wait(timeout=30)
    assert sorted(files.remove_dead(out, "ffffffffffffffff")) == sorted([record.name, work.name])  # (once it is gone)


def test_a_dead_run_being_cleaned_up_is_no_live_run_to_others(tmp_path, monkeypatch):
    """Sixty-sixth hostile trial BN5: while one run removed a dead run's leftovers (holding its record's lock), another
    run that judged OUT's records waited 5 s for that lock and took the dead run for a live one: a requeued shard was
    refused. The record is marked ended before its leftovers are removed."""
    from DoseAlignLib.output import files

    out = tmp_path / "out"
    out.mkdir()
    token = "abababababababab"
    record = out / f".tmp-dosealign-{token}.owner"
    record.write_text(
        json.dumps({"dosealign_run": token, "pid": 4194303, "host": socket.gethostname(), "shard": "1/2"}) + "\n"
    )
    (out / f".tmp-dosealign-{token}-case-x").mkdir()
    seen = []
    real_remove = files.remove_owned

    def slow_removal(folder, removed_token, *more, **kwargs):  # (another run looks while the removal runs)
        seen.append((files._owner_state(record), files.live_runs(out)))
        return real_remove(folder, removed_token, *more, **kwargs)

    monkeypatch.setattr(files, "remove_owned", slow_removal)
    assert files.dead_claims(out) == [token]
    assert files.remove_dead(out, token)
    assert seen == [("dead", [])], seen
    assert not record.exists()


def test_a_merge_of_another_machine_that_may_be_gone_is_named_as_such(inputs, tmp_path, capsys):
    """Sixty-sixth hostile trial BN8: a merge's owner record of another machine, whose life cannot be told here (a dead
    node's), stopped every shard run with "dosealign merge (process 4242) is writing ...", no host, no way out. It is
    named as another machine's that may be running, with the record to remove once it is known to be gone."""
    out = tmp_path / "out"
    out.mkdir()
    token = "cdcdcdcdcdcdcdcd"
    owner = {"dosealign_run": token, "pid": 4242, "host": "node-17", "boot_id": "another-boot", "merge": True}
    (out / f".tmp-dosealign-{token}.owner").write_text(json.dumps(owner) + "\n")
    assert _export(inputs, out, "--shard", "1/2") == 2
    printed = capsys.readouterr().err
    assert "on host node-17" in printed and "may be" in printed and f".tmp-dosealign-{token}.owner" in printed, printed


#: Creates an empty owner record, says so, locks it 0.5 s later and holds it until stdin closes.
SLOW_CLAIMER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
print("created", flush=True)
time.sleep(0.5)
fcntl.flock(fd, fcntl.LOCK_EX)
sys.stdin.read()
"""

#: Runs the dosealign command, SIGKILLed as it makes its first owner record (created, not yet written).
KILLED_AS_IT_CLAIMS = """
import os, signal, sys
import DoseAlignLib.output.files as files
def dying(pid):
    os.kill(os.getpid(), signal.SIGKILL)
files._process_start = dying
from DoseAlignLib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_as_it_claims_leaves_nothing_after_the_next_run(inputs, tmp_path):
    """The killed-runs test's failure on 3.9 made on purpose: an export SIGKILLed between creating its owner
    record and writing it, and a --resume started at once. The resume removes the empty record."""
    out = tmp_path / "out"
    args = ["export", str(inputs), str(out), "--quiet", "--workers", "1", "--no-qa-png"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AS_IT_CLAIMS, *args], env=hostile.ENV, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in out.iterdir() if p.name.endswith(".owner")], "the kill did not leave a record"
    done = subprocess.run(
        [sys.executable, "-m", "DoseAlignLib.cli", *args, "--resume"],
        env=hostile.ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert {r["status"] for r in hostile.manifest(out)} == {"ok"}


#: Claims OUT as a run of another host name would (``socket.gethostname`` of that process says so), reports its
#: record and waits until stdin closes (its lock held), or, with a second argument, dies at once (lock freed,
#: record left).
OTHER_HOST_RUN = """
import os, socket, sys
socket.gethostname = lambda: "otherhost"
from DoseAlignLib.output.files import claim_folder
claim = claim_folder(sys.argv[1])
print(claim.record, flush=True)
if len(sys.argv) > 2:
    os._exit(0)
sys.stdin.read()
"""


def test_a_run_of_another_host_or_container_is_seen(inputs, tmp_path, capsys):
    """Sixth hostile trial F11: a run under another host name (unshare -u, a second node on shared storage) or in
    another PID namespace was not refused; both wrote OUT and one run's cases dropped out of manifest.csv.
    Its lock, held, is seen across namespaces: refused, naming the record. Once it died (lock free, this
    machine's boot id), its record is no hindrance, and its files are left alone."""
    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen(
        [sys.executable, "-c", OTHER_HOST_RUN, str(out)],
        env=hostile.ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        record = Path(live.stdout.readline().strip())
        assert record.is_file()
        assert _export(inputs, out) == 2
        err = capsys.readouterr().err
        assert f"another DoseAlign run (process {live.pid} on host otherhost" in err, err
        assert record.name in err and "nothing was written" in err, err
        assert sorted(p.name for p in out.iterdir()) == [record.name]
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    dead = Path(hostile.python(OTHER_HOST_RUN, str(out), "die").stdout.strip())
    assert dead.is_file()
    assert _export(inputs, out) == 0
    capsys.readouterr()
    assert dead.is_file()  # another host's record: never removed by this machine


def test_another_machines_record_is_refused_with_advice(inputs, tmp_path, capsys):
    """A record of another machine (another boot id) whose lock is free here: whether its run lives cannot be
    told (its file system may not share locks). Refused, naming the record, with the advice to remove it once
    that run is known to be gone; then the export runs."""
    out = tmp_path / "out"
    out.mkdir()
    token = "0123456789abcdef"
    record = out / f".tmp-dosealign-{token}.owner"
    owner = {"dosealign_run": token, "pid": 4242, "host": "node17", "boot_id": "another-boot", "started": "then"}
    record.write_text(json.dumps(owner))
    assert _export(inputs, out) == 2
    err = capsys.readouterr().err
    assert "process 4242 on host node17, started then) may be writing into this output folder" in err, err
    assert "if that run is known to be gone" in err and f"remove {record}" in err, err
    record.unlink()
    assert _export(inputs, out) == 0


def test_a_run_that_claims_out_while_this_one_starts_is_seen(inputs, tmp_path, capsys, monkeypatch):
    """The check came before this run's own claim: a run that claimed OUT in between was not seen (two
    exports started together both went on). It is checked again once this run has claimed OUT."""
    from DoseAlignLib import batch

    out = tmp_path / "out"
    out.mkdir()
    started = []
    real_claim_for = batch.claim_for

    def other_run_claims_first(folder, details=None):
        started.append(
            subprocess.Popen(
                [sys.executable, "-c", LIVE_RUN, str(out)],
                env=hostile.ENV,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        started[0].stdout.readline()
        return real_claim_for(folder, details)

    monkeypatch.setattr(batch, "claim_for", other_run_claims_first)
    try:
        assert _export(inputs, out) == 2
        err = capsys.readouterr().err
        assert f"another DoseAlign run (process {started[0].pid}" in err and "this run exported no case" in err
        names = sorted(p.name for p in out.iterdir())
        assert len(names) == 2 and all(n.startswith(".tmp-dosealign-") for n in names), names  # the other's only
    finally:
        for process in started:
            process.stdin.close()
            process.wait(timeout=60)


#: An export whose map writes take a second (the read-merge-write of the map made slow, as on a busy shared disk),
#: so that runs started together are inside it at once.
SLOW_MAP_EXPORT = """
import sys, time
from DoseAlignLib.output import pseudonym
real = pseudonym._write_private

def slow(path, data, replace):
    if replace:
        time.sleep(1.0)
    return real(path, data, replace)

pseudonym._write_private = slow
from DoseAlignLib.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def three_patients(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("three") / "in"
    for n in range(3):
        hostile.study(root / f"p{n}", f"MAP-{n}", 70 + n, with_structures=False)
    return root


@pytest.mark.parametrize("shared", ["map-file", "shards"])
def test_runs_sharing_one_pseudonym_map_lose_no_row(three_patients, tmp_path, shared):
    """From the seventh hostile trial (G7): three exports started together that share one pseudonym map (one
    --map-file given to three exports, or --shard K/3 jobs into one OUT and its default map) each read, merged and
    replaced the map, so the last writer dropped the others' rows (2 of 3 patients in 4 of 5 tries), all rc 0.
    Now each run updates it under the map's lock: every patient and case row is there, mode 0600, no lock left."""
    from DoseAlignLib.output.pseudonym import read_map

    common = ["--pseudonymize", "--key-file", str(tmp_path / "site.key"), "--quiet", "--no-qa-png", "--workers", "1"]
    assert hostile.dosealign("export", str(three_patients / "p0"), str(tmp_path / "first"), *common).returncode == 0
    for attempt in range(2):
        base = tmp_path / f"try{attempt}"
        base.mkdir()
        if shared == "map-file":
            map_file = base / "shared.map.csv"
            runs = [
                ["export", str(three_patients / f"p{n}"), str(base / f"o{n}"), *common, "--map-file", str(map_file)]
                for n in range(3)
            ]
        else:
            map_file = base / "o.pseudonym-map.csv"
            runs = [["export", str(three_patients), str(base / "o"), *common, "--shard", f"{k}/3"] for k in (1, 2, 3)]
        started = [
            subprocess.Popen(
                [sys.executable, "-c", SLOW_MAP_EXPORT, *run],
                env=hostile.ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for run in runs
        ]
        done = [(p.wait(timeout=300), p.stdout.read() + p.stderr.read()) for p in started]
        for process in started:
            process.stdout.close()
            process.stderr.close()
        assert all(code == 0 for code, _ in done), done
        if shared == "map-file":
            rows = [r for n in range(3) for r in hostile.manifest(base / f"o{n}")]
        else:
            rows = [r for k in (1, 2, 3) for r in hostile.manifest(base / "o", f"manifest.shard-{k}-of-3.csv")]
        assert len({r["patient"] for r in rows}) == 3, rows
        entries = read_map(map_file)
        patients = {p: original for (kind, p), original in entries.items() if kind == "patient"}
        cases = {c for kind, c in entries if kind == "case"}
        assert sorted(patients.values()) == ["MAP-0", "MAP-1", "MAP-2"], (attempt, sorted(patients.values()))
        assert {r["patient"] for r in rows} <= set(patients) and {r["case_id"] for r in rows} <= cases, attempt
        assert stat.S_IMODE(map_file.stat().st_mode) == 0o600
        assert sorted(p.name for p in base.iterdir() if p.name.endswith(".lock")) == [], "a lock file left"


def test_a_run_that_cannot_get_the_map_lock_says_so_and_writes_nothing(three_patients, tmp_path):
    """G7's other side: a run that cannot get the shared map's lock in time (DOSEALIGN_MAP_LOCK_SECONDS) never
    writes the map without it: exit 2 naming the map and the variable, no map and no case written."""
    map_file = tmp_path / "shared.map.csv"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom DoseAlignLib.output.pseudonym import map_lock\n"
            "with map_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n",
            str(map_file),
        ],
        env=hostile.ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        out = tmp_path / "out"
        args = [str(three_patients / "p1"), str(out), "--pseudonymize", "--map-file", str(map_file), "--quiet"]
        done = hostile.dosealign("export", *args, "--no-qa-png", env={"DOSEALIGN_MAP_LOCK_SECONDS": "1"})
        assert done.returncode == 2, done.stdout + done.stderr
        assert "another run has held the pseudonym map" in done.stderr and "DOSEALIGN_MAP_LOCK_SECONDS" in done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert not map_file.exists()
        assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".tmp-")], list(out.iterdir())
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
        holder.stdout.close()
    assert not (tmp_path / ".shared.map.csv.lock").exists()  # the holder removed it when it let go
    assert hostile.dosealign("export", *args, "--no-qa-png").returncode == 0  # and the next run gets it
    assert map_file.exists()


_HOLD_A_CLAIM = """
import sys, time
from DoseAlignLib.output.files import claim_folder

try:
    claim = claim_folder(sys.argv[1], {"pseudonyms": sys.argv[2], "shard": sys.argv[3] if len(sys.argv) > 3 else None})
except TypeError:  # a version whose owner records say nothing of pseudonyms: the run still holds OUT
    claim = claim_folder(sys.argv[1])
print("claimed", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize(
    "theirs, ours, refused",
    [
        ("none", ["--pseudonymize"], "without pseudonyms"),
        ("0123456789abcdef", [], "with pseudonyms"),
        ("0123456789abcdef", ["--pseudonymize"], "with pseudonyms of another key"),
        ("none", [], None),
    ],
)
def test_shards_writing_side_by_side_share_one_kind_of_pseudonyms(three_patients, tmp_path, theirs, ours, refused):
    """Seventh hostile trial G8: a plain shard run started together with a pseudonymized shard into one OUT wrote
    `MAP-0_...` case folders beside the pseudonymized ones (refused only when it started after the other had
    exported). A shard run's owner record says whose pseudonyms it writes; a shard that meets a live run of another
    kind is refused before it exports any case. Shards of one kind still run side by side."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_CLAIM, str(out), theirs], env=hostile.ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        args = ["export", str(three_patients), str(out), "--quiet", "--no-qa-png", "--shard", "1/2", *ours]
        if ours:
            args += ["--key-file", str(tmp_path / "key"), "--map-file", str(tmp_path / "map.csv")]
        done = hostile.dosealign(*args, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    cases = [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if refused is None:
        assert done.returncode == 0, done.stderr
        assert cases
        return
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert f"is writing into this output folder {refused}:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not cases, cases


@pytest.mark.parametrize("ours, refused", [("1/2", True), ("2/2", False)])
def test_a_second_live_run_of_one_shard_is_refused(three_patients, tmp_path, ours, refused):
    """Seventh hostile trial G12: a shard job requeued while the first still ran (both --shard 1/2 into one OUT):
    both said ok, and the second's case folders and shard manifest replaced the first's (its NIfTI files gone). The
    owner record names the shard; a run of a shard another live run is exporting stops with exit 2 before any case.
    Another shard still runs beside it."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_CLAIM, str(out), "none", "1/2"],
        env=hostile.ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        done = hostile.dosealign("export", str(three_patients), str(out), "--quiet", "--no-qa-png", "--shard", ours)
    finally:
        holder.kill()
        holder.wait()
    cases = [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not refused:
        assert done.returncode == 0 and cases, done.stderr
        return
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "is exporting shard 1/2 into this output folder" in done.stderr and "Traceback" not in done.stderr
    assert not cases and not (out / "manifest.shard-1-of-2.csv").exists()


# ---- H7: the demo's own folder, edited by its user ----------------------------------------------


def test_the_demo_never_overwrites_a_file_edited_in_its_dicom_folder(tmp_path, capsys):
    """H7 (eighth hostile trial): `dosealign demo dd`, an ROI renamed in dd/dicom's RTSTRUCT, `dosealign demo dd`
    again: the file was replaced by the demo's, no word. Now a file whose bytes differ from what the demo writes
    (or a link in its place: the demo would write through it) is named and kept (exit 2, nothing written); an
    untouched earlier demo runs again as before."""
    out = tmp_path / "dd"
    args = ["demo", str(out), "--quiet", "--no-qa-png", "--no-structures"]
    assert main(args) == 0
    assert main(args) == 0  # an earlier demo, untouched: fine
    capsys.readouterr()
    (struct,) = [p for p in (out / "dicom").iterdir() if pydicom.dcmread(str(p)).Modality == "RTSTRUCT"]
    ds = pydicom.dcmread(str(struct))
    ds.StructureSetROISequence[1].ROIName = "PTV_my_edit"
    ds.save_as(str(struct))
    export_before, edited = hostile.snapshot(out / "export"), hostile.snapshot(out / "dicom")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert struct.name in err and "differ from what it writes" in err and "they are kept" in err, err
    assert hostile.snapshot(out / "dicom") == edited and hostile.snapshot(out / "export") == export_before
    assert pydicom.dcmread(str(struct)).StructureSetROISequence[1].ROIName == "PTV_my_edit"

    mine = tmp_path / "mine.dcm"  # a link in the demo's place, to a user's file: never written through
    shutil.move(str(struct), str(mine))
    struct.symlink_to(mine)
    theirs = mine.read_bytes()
    assert main(args) == 2
    assert struct.name in capsys.readouterr().err and mine.read_bytes() == theirs and struct.is_symlink()

    struct.unlink()  # the user's file moved away: the demo writes its own again
    assert main(args) == 0
    assert pydicom.dcmread(str(struct)).StructureSetROISequence[1].ROIName != "PTV_my_edit"


def test_a_dask_worker_running_cases_of_two_exports_releases_each_out(tmp_path, monkeypatch):
    """Twenty-fourth hostile trial X1: W7's count of a Dask worker's cases was one for the whole process. A worker
    with two threads ran a case into o2 and one into o1; o2's ended first, o1's last, and only o1's claim was
    released: the worker's owner record stayed in o2 and refused every later run into it. Each OUT is counted
    apart; here the worker's two threads are two threads of this process (the client is another process)."""
    import threading

    from DoseAlignLib import batch
    from DoseAlignLib.output.files import claim_for

    started = {"o1": threading.Event(), "o2": threading.Event()}
    finish = {"o1": threading.Event(), "o2": threading.Event()}

    def case_that_claims(case, out_dir, **kwargs):
        claim_for(out_dir)  # as export_case's first write into OUT does
        started[case].set()
        assert finish[case].wait(20)
        return {"case_id": case, "status": "ok"}

    monkeypatch.setattr(batch, "export_case", case_that_claims)
    outs = {name: tmp_path / name for name in ("o1", "o2")}
    for out in outs.values():
        out.mkdir()
    threads = [
        threading.Thread(target=batch._export_case_on_a_dask_worker, args=(-1, name, outs[name]))
        for name in ("o2", "o1")
    ]
    for thread, name in zip(threads, ("o2", "o1")):
        thread.start()
        assert started[name].wait(20)
    assert all([p.name for p in out.iterdir() if p.name.endswith(".owner")] for out in outs.values())
    for name in ("o2", "o1"):  # o2's case ends first, while o1's still runs
        finish[name].set()
        threads[("o2", "o1").index(name)].join(20)
    left = {name: sorted(p.name for p in out.iterdir()) for name, out in outs.items()}
    assert left == {"o1": [], "o2": []}, left


def test_two_threads_claiming_one_out_at_once_make_one_claim(tmp_path):
    """Twenty-fifth hostile trial Y3: claim_for had no lock; two threads of a Dask worker starting two cases of one
    export at once made two owner records, and the one the worker did not release refused every later run into OUT
    (exit 2). One claim is made, and releasing it leaves nothing."""
    import threading

    from DoseAlignLib.output import files

    out = tmp_path / "out"
    out.mkdir()
    for _round in range(20):
        barrier = threading.Barrier(4)
        claims = []

        def claim(barrier=barrier, claims=claims) -> None:
            barrier.wait()
            claims.append(files.claim_for(out))

        threads = [threading.Thread(target=claim) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        made = sorted(p.name for p in out.iterdir())
        files.release_claims(out)
        assert len(made) == 1 and len({id(c) for c in claims}) == 1, made
        assert not list(out.iterdir()), sorted(p.name for p in out.iterdir())


def _planted_record_of_another_boot(out: Path, token: str) -> Path:
    """A record of this host name and another boot id, with a temporary case folder, no lock held: a run of
    another machine of this host name on storage whose locks are not shared, or of this machine before it
    restarted."""
    record = out / f".tmp-dosealign-{token}.owner"
    owner = {
        "dosealign_run": token,
        "pid": 1,
        "host": socket.gethostname(),
        "boot_id": "boot-id-of-another-node",
        "process_start": "123",
        "started": "then",
    }
    record.write_text(json.dumps(owner) + "\n")
    case = out / f".tmp-dosealign-{token}-case-aaaaaaaa"
    case.mkdir()
    (case / "pair.npz").write_text("a case another node is writing")
    return record


def test_a_record_of_this_host_name_and_another_boot_is_another_machines_while_younger_than_this_boot(
    inputs, tmp_path, capsys, monkeypatch
):
    """Twenty-fourth hostile trial X8: a record of this host name and another boot id counted as "this machine
    restarted", so a run of another machine or container of the same name (storage whose locks are not shared)
    was taken for dead and merge/export removed its case in progress. Written after this boot, it is another
    machine's: refused as undecided, its files left. Written before this boot, it is this machine's from before the
    restart: its leftovers are removed."""
    from DoseAlignLib import batch
    from DoseAlignLib.output import files

    out = tmp_path / "out"
    for k in (1, 2):
        assert _export(inputs, out, "--shard", f"{k}/2") == 0
    token = "0123456789abcdef"
    record = _planted_record_of_another_boot(out, token)
    case = out / f".tmp-dosealign-{token}-case-aaaaaaaa" / "pair.npz"
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert "may be writing into this output folder" in err and "removed" not in err, err
    assert record.is_file() and case.is_file()
    assert _export(inputs, out, "--resume") == 2
    err = capsys.readouterr().err
    assert "process 1 on host" in err and "may be writing into this output folder" in err, err
    assert record.is_file() and case.is_file()

    monkeypatch.setattr(files, "_boot_time", lambda: time.time() + 60.0)  # this machine booted after the record
    assert _export(inputs, out, "--resume") == 0
    capsys.readouterr()
    assert not record.exists() and not (out / f".tmp-dosealign-{token}-case-aaaaaaaa").exists()
    assert [(r["status"], r["reason"]) for r in hostile.manifest(out)] == [("skipped", batch.KEPT)]


def test_a_users_file_named_as_the_maps_lock_is_left_as_it_is(tmp_path):
    """Eighty-eighth hostile trial CJ8: a file of the user's named ``.<map>.lock`` beside ``--map-file`` was locked,
    used and deleted at the end of the run (the holder removes its lock file as it lets go). A file of that name
    holding other bytes is not DoseAlign's lock: refused, named, left as it is; an empty or DoseAlign's own (a run
    killed while holding it) is used and removed as before."""
    from DoseAlignLib.output.pseudonym import PseudonymError, map_lock, map_lock_path

    map_file = tmp_path / "shared.map.csv"
    lock = map_lock_path(map_file)
    lock.write_text("my notes\n", encoding="utf-8")
    with pytest.raises(PseudonymError, match="not DoseAlign's lock file"), map_lock(map_file):
        pass
    assert lock.read_text(encoding="utf-8") == "my notes\n"
    lock.write_bytes(b"")  # (a lock a killed run left, before it wrote anything)
    with map_lock(map_file):
        assert lock.read_bytes().startswith(b"dosealign")
    assert not lock.exists()
