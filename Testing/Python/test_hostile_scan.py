"""Hostile inputs, class 2: the scan reads what is there, once, and never hangs on what is not a file.

Named pipes, devices and links to nothing are skipped with the reason and never opened; symbolic
links to folders are followed (a cohort made of links exports), each folder and file is read once
whatever the loops; a folder or file that cannot be read is a named failed row (exit 1) and an input
root that cannot be read is exit 2; names that are not UTF-8 (files, folders, the input root) are
handled like any other; a large file that is not DICOM costs nothing; one file's header reading is
bounded in time and in reads (a deflated one too) and a deflated data set in inflated size.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import hostile
import pydicom
import pytest


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two patients outside the input tree (a cohort links to them)."""
    base = tmp_path_factory.mktemp("scanstore")
    hostile.study(base / "p1", "SCAN-1", 1, with_structures=False)
    hostile.study(base / "p2", "SCAN-2", 2, with_structures=False)
    return base


def test_special_files_and_broken_links_are_skipped_never_opened(store, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    os.mkfifo(root / "p1" / "pipe.dcm")
    os.mkfifo(root / "fifo")
    os.symlink("/dev/zero", root / "zero.dcm")  # endless: a reader that opened it would never stop
    os.symlink(root / "fifo", root / "link-to-fifo.dcm")
    os.symlink(tmp_path / "nowhere", root / "broken.dcm")
    scan = hostile.dosealign("scan", str(root), timeout=60)
    assert scan.returncode == 0, scan.stderr
    for name, what in [
        ("p1/pipe.dcm", "a named pipe: not opened"),
        ("fifo", "a named pipe: not opened"),
        ("zero.dcm", "a character device: not opened"),
        ("link-to-fifo.dcm", "a named pipe: not opened"),
        ("broken.dcm", "a symbolic link whose target does not exist"),
    ]:
        assert f"  {name}: {what}" in scan.stdout, scan.stdout
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "2", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["status"] for r in hostile.manifest(out)] == ["ok"]


def test_a_file_removed_while_the_folder_is_read_is_not_called_a_link(store, tmp_path, monkeypatch):
    """Tenth hostile trial (wording): a regular file deleted between the folder's listing and its look was called
    "a symbolic link whose target does not exist"."""
    from DoseAlignLib.dicom import scan

    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    gone = sorted((root / "p1").glob("*.dcm"))[0]
    look, removed = os.stat, []

    def removed_first(path, *args, **kwargs):
        if not removed and str(path) == str(gone):
            removed.append(gone)
            os.unlink(gone)  # as another process does, after the listing
        return look(path, *args, **kwargs)

    monkeypatch.setattr(scan.os, "stat", removed_first)
    result = scan.scan_folder(root)
    monkeypatch.undo()
    assert (f"p1/{gone.name}", "removed while the folder was read") in result.skipped, result.skipped


def test_a_cohort_of_symlinks_with_loops_exports_each_patient_once(store, tmp_path):
    root = tmp_path / "cohort"
    root.mkdir()
    os.symlink(store / "p1", root / "a-p1")
    os.symlink(store / "p2", root / "b-p2")
    os.symlink(store / "p2", root / "c-p2-again")  # the same patient twice
    os.symlink(root, root / "d-loop")  # back to the root
    os.symlink(store, store / "p1" / "up") if not (store / "p1" / "up").exists() else None  # a loop outside
    (root / "e").mkdir()
    os.symlink(root / "e", root / "e" / "self")
    first = next((store / "p1").glob("*.dcm"))
    os.symlink(first, root / "f-one-file.dcm")  # a file that is read in a-p1/ too
    try:
        scan = hostile.dosealign("scan", str(root), timeout=60)
        assert scan.returncode == 0, scan.stderr
        out = tmp_path / "out"
        done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "1", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        rows = hostile.manifest(out)
        assert sorted(r["patient"] for r in rows) == ["SCAN-1", "SCAN-2"]
        # the linked file is read where the walk meets it first (the root); a CT slice there joins a-p1's other
        # slices as one CT (one series, one geometry, positions that do not collide: tenth hostile trial J14)
        linked_ct = pydicom.dcmread(first, stop_before_pixels=True).Modality == "CT"
        expected = [". + a-p1" if linked_ct else "a-p1", "b-p2"]
        assert sorted(r["ct_folder"] for r in rows) == expected, "each folder under its shortest name"
        assert "Duplicate SOPInstanceUIDs" not in scan.stdout, "a file or folder was read twice"
    finally:
        (store / "p1" / "up").unlink()


def _unprivileged() -> list:
    """A command prefix under which file permissions apply (root ignores them), or skip."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to apply")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


def _run(prefix: list, *args: str) -> hostile.subprocess.CompletedProcess:
    import sys

    return hostile.subprocess.run(
        [*prefix, sys.executable, "-m", "DoseAlignLib.cli", *args],
        env=hostile.ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unreadable_folders_and_files_are_named_failures(store, tmp_path):
    prefix = _unprivileged()
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "HALF", 3, with_structures=False)
    hidden = root / "p" / "more-slices"
    hidden.mkdir()
    for path in truth.ct_files[::2]:  # half the CT where it cannot be read
        path.rename(hidden / path.name)
    (root / "notes").write_text("locked")
    hidden.chmod(0)
    (root / "notes").chmod(0)
    try:
        out = tmp_path / "out"
        done = _run(prefix, "export", str(root), str(out), "--quiet", "--workers", "1")
        rows = {r["case_id"].split("_")[0]: r for r in hostile.manifest(out)}
        assert done.returncode == 1, done.stdout + done.stderr
        folder = next(r for r in hostile.manifest(out) if r["files"] == "p/more-slices/")
        assert folder["status"] == "failed" and "cannot be listed" in folder["reason"], folder
        assert "may lack what this folder holds" in folder["reason"]
        note = next(r for r in hostile.manifest(out) if r["files"] == "notes")
        assert note["status"] == "failed" and "cannot be read" in note["reason"], note
        (case,) = [r for r in hostile.manifest(out) if r["patient"] == "HALF"]
        assert "p/more-slices/ could not be read" in case["warnings"], case  # the case says what it may lack
        assert "unreadable" in rows
        # the input root itself unreadable: nothing to export, exit 2 with the reason
        root.chmod(0)
        done = _run(prefix, "export", str(root), str(tmp_path / "out2"), "--quiet")
        assert done.returncode == 2, done.stdout + done.stderr
        assert "cannot be read" in done.stderr or "is not a folder" in done.stderr, done.stderr
    finally:
        root.chmod(0o755)
        hidden.chmod(0o755)
        (root / "notes").chmod(0o644)


def test_names_that_are_not_utf8(store, tmp_path):
    base = os.fsencode(str(tmp_path))
    root = base + b"/in-\xff"
    os.makedirs(root)
    shutil.copytree(store / "p1", os.fsdecode(root + b"/pati\xe9nt"))
    dose = next(p for p in Path(os.fsdecode(root + b"/pati\xe9nt")).glob("*.dcm") if b"RTDOSE" in p.read_bytes()[:3000])
    os.rename(dose, os.fsdecode(root + b"/pati\xe9nt/dose-\xe9.dcm"))
    with open(root + b"/bad-\xe9.dcm", "wb") as handle:
        handle.write(b"\0" * 128 + b"DICM" + b"\x02\x00")  # damaged: a failed row with the escaped name
    with open(root + b"/note-\xe9.txt", "wb") as handle:
        handle.write(b"hello")
    out = tmp_path / "out"
    done = hostile.dosealign("export", os.fsdecode(root), str(out), "--quiet", "--workers", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    rows = hostile.manifest(out)
    (ok,) = [r for r in rows if r["status"] == "ok"]
    assert ok["files"] == "pati\\xe9nt/dose-\\xe9.dcm" and ok["ct_folder"] == "pati\\xe9nt"
    (bad,) = [r for r in rows if r["status"] == "failed"]
    assert bad["files"] == "bad-\\xe9.dcm" and "(0008,0016)" in bad["reason"]
    scan = hostile.dosealign("scan", os.fsdecode(root))
    assert "note-\\xe9.txt: not a DICOM file" in scan.stdout, scan.stdout + scan.stderr


def test_a_large_file_that_is_not_dicom_costs_nothing(store, tmp_path):
    from DoseAlignLib.dicom.scan import scan_folder

    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    with open(root / "video.mp4", "wb") as handle:  # 64 MiB of bytes that look like nothing
        block = os.urandom(1 << 20)
        for _ in range(64):
            handle.write(block)
    with open(root / "volume.raw", "wb") as handle:  # a raw image volume: zeros first, as such files start
        handle.truncate(64 << 20)
    start = time.monotonic()
    scan = scan_folder(root)
    took = time.monotonic() - start
    assert ("video.mp4", "not a DICOM file") in scan.skipped
    assert ("volume.raw", "not a DICOM file") in scan.skipped
    assert took < 5.0, f"{took:.1f} s for two large non-DICOM files"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", group, element) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def _file_meta(syntax: str, sop_class: str = "1.2.840.10008.5.1.4.1.1.481.3") -> bytes:
    body = (
        _element(2, 1, b"OB", b"\0\1")
        + _element(2, 2, b"UI", sop_class.encode())
        + _element(2, 3, b"UI", b"1.2.3.4.5")
        + _element(2, 0x10, b"UI", syntax.encode())
    )
    return b"\0" * 128 + b"DICM" + _element(2, 0, b"UL", struct.pack("<I", len(body))) + body


def test_one_files_header_reading_is_bounded_in_time(store, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    tiny = _element(0x0009, 0x1010, b"LO", b"ab")  # a private element, a million times
    with open(root / "p1" / "slow.dcm", "wb") as handle:
        handle.write(_file_meta("1.2.840.10008.1.2.1") + tiny * 1_500_000)
    start = time.monotonic()
    done = hostile.dosealign("scan", str(root), env={"DOSEALIGN_SCAN_FILE_SECONDS": "1"}, timeout=120)
    took = time.monotonic() - start
    assert "p1/slow.dcm: reading this file's header took longer than the limit of 1 s" in done.stdout, done.stdout
    assert "DOSEALIGN_SCAN_FILE_SECONDS" in done.stdout
    assert took < 30, took


def test_a_deflate_bomb_is_refused_during_the_scan(store, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    data_set = _element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.481.3") + _element(
        0x0009, 0x1010, b"OB", b"\0" * (64 << 20)
    )
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    payload = packer.compress(data_set) + packer.flush()
    bomb = root / "p1" / "bomb.dcm"
    bomb.write_bytes(_file_meta("1.2.840.10008.1.2.1.99") + payload)
    assert bomb.stat().st_size < 200_000
    out = tmp_path / "out"
    done = hostile.dosealign(
        "export", str(root), str(out), "--quiet", "--workers", "1", env={"DOSEALIGN_INFLATE_MB": "16"}
    )
    assert done.returncode == 1, done.stdout + done.stderr
    (row,) = [r for r in hostile.manifest(out) if r["status"] == "failed"]
    assert row["files"] == "p1/bomb.dcm"
    assert "inflates to more than the limit of 16 MiB" in row["reason"] and "DOSEALIGN_INFLATE_MB" in row["reason"]
    assert stat.S_ISREG(bomb.stat().st_mode)


#: The dosealign command, printing its own peak memory (kB) last. VmHWM belongs to the process's
#: memory, made new by exec; ru_maxrss would not do: Linux keeps it across exec, so the child would
#: start from the forking pytest's peak (over 1 GiB late in a full run).
WITH_PEAK = (
    "import re, sys\n"
    "from DoseAlignLib.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print('PEAK', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    "sys.exit(code)\n"
)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory is read from /proc (Linux)")
def test_measuring_a_deflate_bomb_takes_little_memory(store, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = _element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.481.3")
    head += struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", 300 << 20)
    payload = packer.compress(head)
    zeros = b"\0" * (1 << 20)
    for _ in range(300):
        payload += packer.compress(zeros)
    (root / "p1" / "bomb.dcm").write_bytes(_file_meta("1.2.840.10008.1.2.1.99") + payload + packer.flush())
    done = hostile.python(WITH_PEAK, "scan", str(root), env={"DOSEALIGN_INFLATE_MB": "256"})
    assert (
        "p1/bomb.dcm: (0002,0010) TransferSyntaxUID: the deflated data set inflates to more than the limit of 256 MiB"
        in done.stdout
    )
    peak_mib = int(done.stdout.strip().splitlines()[-1].split()[1]) / 1024
    assert peak_mib < 200, f"{peak_mib:.0f} MiB to scan a 300 MiB deflated data set"


#: A sequence of ``n`` empty items of undefined length, as (0040,0275) RequestAttributesSequence: 8 bytes per item in the
#: file, several hundred bytes of pydicom objects each once parsed.
def _empty_items(n: int) -> bytes:
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return struct.pack("<HH", 0x0040, 0x0275) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF) + item * n + end


def _deflated(syntax_free_data_set: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return _file_meta("1.2.840.10008.1.2.1.99") + packer.compress(syntax_free_data_set) + packer.flush()


def _limited_memory() -> None:  # the child may not take gigabytes whatever happens (ulimit -v 2 GiB)
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))


def test_a_header_of_too_many_items_is_refused_naming_the_limit(store, tmp_path):
    """Eleventh hostile trial K4: a 351 KB deflated slice holding 30 M empty sequence items (240 MB inflated, under the
    inflation limit) took over 3.8 GB and 77-138 s in the scan (pydicom builds ~700 bytes of objects per item, and
    parsed the inflated bytes where the per-file time limit was not checked); the same items in a plain file were
    stopped by the time limit but called "cannot be read: No tag to read at file position ...". The reads of one
    header are bounded now (DOSEALIGN_HEADER_READS), for a deflated data set as for a plain one."""
    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    sop = _element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.481.3")
    (root / "p1" / "plain.dcm").write_bytes(_file_meta("1.2.840.10008.1.2.1") + sop + _empty_items(200_000))
    (root / "p1" / "deflated.dcm").write_bytes(_deflated(sop + _empty_items(200_000)))
    assert (root / "p1" / "deflated.dcm").stat().st_size < 20_000
    # the limit is checked every 64 reads and an empty item takes three: three limits 64 apart stop the parsing at
    # each of the item's reads (pydicom made an error inside the first of them "No tag to read at file position")
    for most in (20000, 20064, 20128):
        start = time.monotonic()
        done = hostile.dosealign(
            "scan", str(root), env={"DOSEALIGN_HEADER_READS": str(most)}, timeout=120, preexec_fn=_limited_memory
        )
        took = time.monotonic() - start
        assert done.returncode == 0, done.stdout + done.stderr
        for name in ("plain.dcm", "deflated.dcm"):
            line = next((x for x in done.stdout.splitlines() if f"p1/{name}:" in x), "")
            assert f"needs more than the limit of {most:,} reads" in line, done.stdout
            assert "DOSEALIGN_HEADER_READS" in line
        assert "No tag to read" not in done.stdout
        assert took < 60, took


def test_an_export_does_not_read_again_what_a_limit_refused(store, tmp_path, monkeypatch):
    """Eleventh hostile trial K4: the export's row for a file the scan refused by a limit read the whole file again
    (unbounded) to say where reading stops: 215 s and 3.8 GB after the scan had refused the trial's file. The row
    gives the limit; the file is read once."""
    from DoseAlignLib.dicom import damage, scan

    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    sop = _element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.481.3")
    (root / "p1" / "plain.dcm").write_bytes(_file_meta("1.2.840.10008.1.2.1") + sop + _empty_items(50_000))
    (root / "p1" / "deflated.dcm").write_bytes(_deflated(sop + _empty_items(50_000)))
    monkeypatch.setenv("DOSEALIGN_HEADER_READS", "2000")
    result = scan.scan_folder(root)
    located = []
    monkeypatch.setattr(damage, "locate_damage", lambda path: located.append(path) or "located")
    rows = {row["files"]: row["reason"] for row in damage.damaged_file_rows(result)}
    assert sorted(rows) == ["p1/deflated.dcm", "p1/plain.dcm"], rows
    for reason in rows.values():
        assert "needs more than the limit of 2,000 reads" in reason and "DOSEALIGN_HEADER_READS" in reason, reason
    assert located == []


def _defined_items(n: int, group: int = 0x3006, element: int = 0x0020, little: bool = True) -> bytes:
    """``n`` empty items in a sequence of defined length (explicit VR): pydicom parses it only when it is used."""
    order = "<" if little else ">"
    items = struct.pack(f"{order}HHI", 0xFFFE, 0xE000, 0) * n
    return struct.pack(f"{order}HH", group, element) + b"SQ\0\0" + struct.pack(f"{order}I", len(items)) + items


def _undefined_holding(inner: bytes) -> bytes:
    """A sequence of undefined length (ROIContourSequence) whose one item of undefined length holds ``inner``."""
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return struct.pack("<HH", 0x3006, 0x0039) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF) + item + end


def _explicit_big_endian_meta() -> bytes:
    return _file_meta("1.2.840.10008.1.2.2")


@pytest.mark.parametrize(
    "items",
    [3_000, 50_000],
    ids=["kept in memory (under 64 KiB)", "deferred by the scan (over 64 KiB)"],
)
@pytest.mark.parametrize("where", ["top level", "nested", "nested as UN", "big endian"])
def test_items_of_sequences_parsed_when_first_used_count_against_the_reads_limit(
    store, tmp_path, monkeypatch, where, items
):
    """Eleventh hostile trial K4, its gap: pydicom parses a sequence of defined length only when it is first used,
    from its bytes in memory (or a deferred value read again from the file), outside the header's limits: an RTSTRUCT
    of 8.7 MB with 1 M empty items in its StructureSetROISequence took 18 s and 1.4 GB in the scan and was accepted.
    Such a sequence's items count against DOSEALIGN_HEADER_READS now, at the top level, nested in a sequence of
    undefined length and in big endian files; a file under the limit is read as before."""
    from DoseAlignLib.dicom import scan

    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    sop_class = b"1.2.840.10008.5.1.4.1.1.481.3"
    if where == "big endian":
        sop = struct.pack(">HH", 0x0008, 0x0016) + b"UI" + struct.pack(">H", len(sop_class)) + sop_class
        body = _explicit_big_endian_meta() + sop + _defined_items(items, little=False)
    else:
        inner = _defined_items(items, 0x3006, 0x0040)  # ContourSequence
        if where == "nested as UN":  # (thirteenth hostile trial M11: 3 M items took 3.75 GB in the case)
            inner = inner[:4] + b"UN" + inner[6:]
        body = _file_meta("1.2.840.10008.1.2.1") + _element(0x0008, 0x0016, b"UI", sop_class)
        body += _defined_items(items) if where == "top level" else _undefined_holding(inner)
    (root / "p1" / "items.dcm").write_bytes(body)
    monkeypatch.setenv("DOSEALIGN_HEADER_READS", str(3 * items + 1000))  # room for the file's own reads too
    result = scan.scan_folder(root)
    assert not any(entry[0] == "p1/items.dcm" for entry in result.skipped), result.skipped
    monkeypatch.setenv("DOSEALIGN_HEADER_READS", str(3 * items - 1000))
    result = scan.scan_folder(root)
    reasons = [entry[1] for entry in result.skipped if entry[0] == "p1/items.dcm"]
    assert reasons and "reads" in reasons[0] and "DOSEALIGN_HEADER_READS" in reasons[0], result.skipped


def test_running_out_of_memory_in_a_un_sequence_is_not_called_damage(monkeypatch):
    """Thirteenth hostile trial M11: a MemoryError while a nested UN ContourSequence was decoded was reported as "its
    value is not an implicit VR little endian sequence (PS3.5 6.2.2): MemoryError", and the case went on without
    masks as if the RTSTRUCT were damaged. It is let through as what it is (the case fails "out of memory")."""
    from DoseAlignLib.dicom import headers
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item._dict[0x30060040] = RawDataElement(0x30060040, "UN", 8, struct.pack("<HHI", 0xFFFE, 0xE000, 0), 0, False, True)
    ds = Dataset()
    ds.ROIContourSequence = Sequence([item])

    def exhausted(*_args, **_kwargs):
        raise MemoryError

    monkeypatch.setattr(headers, "read_sequence", exhausted)
    with pytest.raises(MemoryError):
        headers.decode_nested_un_sequences(ds, Path("rs.dcm"))


def test_reading_a_deflated_header_is_bounded_in_time(store, tmp_path):
    """Eleventh hostile trial K4: pydicom parses a deflated data set from memory, where DOSEALIGN_SCAN_FILE_SECONDS
    was not checked. It is parsed through the same deadline now."""
    root = tmp_path / "in"
    shutil.copytree(store / "p1", root / "p1")
    tiny = _element(0x0009, 0x1010, b"LO", b"ab")
    sop = _element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.481.3")
    (root / "p1" / "slow.dcm").write_bytes(_deflated(sop + tiny * 1_500_000))
    env = {"DOSEALIGN_SCAN_FILE_SECONDS": "1", "DOSEALIGN_HEADER_READS": "inf"}
    done = hostile.dosealign("scan", str(root), env=env, timeout=120, preexec_fn=_limited_memory)
    assert "p1/slow.dcm: reading this file's header took longer than the limit of 1 s" in done.stdout, done.stdout
    assert "DOSEALIGN_SCAN_FILE_SECONDS" in done.stdout


def test_a_deep_folder_chain_costs_work_linear_in_its_depth(store, tmp_path, monkeypatch):
    """Sixth hostile trial F9: each folder's realpath walked every ancestor (1500 levels: 32 s)."""
    from DoseAlignLib.dicom.scan import scan_folder

    root = tmp_path / "deep"
    shutil.copytree(store / "p1", root / "p1")
    depth = 400
    bottom = root / os.path.join(*["a"] * depth)
    bottom.mkdir(parents=True)
    (bottom / "x.txt").write_bytes(b"x")
    calls = {"stat": 0}
    real_lstat, real_stat = os.lstat, os.stat

    def counting_lstat(*args, **kwargs):
        calls["stat"] += 1
        return real_lstat(*args, **kwargs)

    def counting_stat(*args, **kwargs):
        calls["stat"] += 1
        return real_stat(*args, **kwargs)

    monkeypatch.setattr(os, "lstat", counting_lstat)
    monkeypatch.setattr(os, "stat", counting_stat)
    result = scan_folder(root)
    monkeypatch.undo()
    assert {o.patient_id for o in result.objects} == {"SCAN-1"}
    assert [rel for rel, _reason in result.skipped] == ["/".join(["a"] * depth + ["x.txt"])]
    # a few stat calls per folder and file; the quadratic walk made about depth**2 / 2 = 80 000
    assert calls["stat"] < 10 * depth, calls


# ---- the input changes between the scan and the case (sixth hostile trial, D) ----------------------------

#: ``dosealign ARGS...`` with the case of patient ``sys.argv[1]`` changed just before it runs (after the scan):
#: its ``sys.argv[2]`` file (ct: a CT slice, dose, struct) replaced by a named pipe, removed, or made unreadable.
CHANGED_AFTER_SCAN = """
import os, sys
import shutil
from DoseAlignLib import batch
from DoseAlignLib.cli import main
patient, what, how = sys.argv[1:4]
real = batch.run_case
def changed(case, *args, **kwargs):
    if case.case_id.startswith(patient + "_"):
        obj = {"ct": lambda: case.ct.slices[len(case.ct.slices) // 2], "dose": lambda: case.doses[0],
               "struct": lambda: case.structs[0]}[what]()
        print("CHANGED", obj.rel_path, flush=True)
        if how == "fifo":
            os.remove(obj.path)
            os.mkfifo(obj.path)
        elif how == "removed":
            os.remove(obj.path)
        elif how == "bomb":  # (a header of many empty items, written in place: fifty-fourth trial BB3)
            shutil.copyfile(os.environ["BOMB_FILE"], obj.path)
        else:
            os.chmod(obj.path, 0)
    return real(case, *args, **kwargs)
batch.run_case = changed
sys.exit(main(sys.argv[4:]))
"""


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> Path:
    """Three patients with structure sets."""
    root = tmp_path_factory.mktemp("toctou") / "in"
    for n in range(3):
        hostile.study(root / f"p{n}", f"TOC-{n}", 60 + n)
    return root


@pytest.mark.parametrize("what", ["ct", "dose", "struct"])
@pytest.mark.parametrize(
    "how, reason",
    [
        ("fifo", "cannot be read: not a regular file (a named pipe): not opened"),
        ("removed", "cannot be read: it was removed after the scan"),
        ("unreadable", "cannot be read: Permission denied"),
    ],
)
def test_an_input_file_changed_after_the_scan_fails_its_case_by_name(trio, tmp_path, what, how, reason):
    """From the sixth hostile trial (F4, F5): a CT slice replaced by a named pipe after the scan blocked the
    export for ever (the case's reader opened it without the scan's regular-file check, and the case waited for
    that reader without a limit: neither DOSEALIGN_CASE_SECONDS nor SIGTERM ended it); removed, it was an
    'internal error (FileNotFoundError ...); please report it' with a traceback; a structure set gone was
    exported 'ok' without masks. Now each fails its case, naming the file and why, and the next case runs."""
    prefix = _unprivileged() if how == "unreadable" else []
    root = tmp_path / "in"
    shutil.copytree(trio, root)
    out = tmp_path / "out"
    done = subprocess.run(
        [*prefix, sys.executable, "-c", CHANGED_AFTER_SCAN, "TOC-1", what, how]
        + ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"],
        env=hostile.ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    changed = done.stdout.split("CHANGED ", 1)[1].split("\n", 1)[0]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "please report" not in done.stdout + done.stderr, done.stderr
    rows = {r["patient"]: r for r in hostile.manifest(out)}
    assert rows["TOC-1"]["status"] == "failed" and rows["TOC-1"]["reason"] == f"{changed}: {reason}", rows["TOC-1"]
    assert rows["TOC-0"]["status"] == rows["TOC-2"]["status"] == "ok", rows
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("what", ["ct", "dose", "struct"])
def test_an_input_file_replaced_by_a_header_bomb_after_the_scan_is_refused_by_the_reads_limit(trio, tmp_path, what):
    """Fifty-fourth hostile trial BB3: a CT slice replaced after the scan by a header of 40 M empty items was parsed by
    its case without the limit on a header's reads (only the scan's reads were bounded): 5.3 GB, then "MemoryError".
    Every read of a file is bounded now: the case fails naming the limit, and the next case runs."""
    bomb = tmp_path / "bomb.dcm"
    sop = _element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2")
    bomb.write_bytes(_file_meta("1.2.840.10008.1.2.1") + sop + _empty_items(100_000))
    root = tmp_path / "in"
    shutil.copytree(trio, root)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", CHANGED_AFTER_SCAN, "TOC-1", what, "bomb"]
        + ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"],
        env={**hostile.ENV, "BOMB_FILE": str(bomb), "DOSEALIGN_HEADER_READS": "50000"},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited_memory,
    )
    changed = done.stdout.split("CHANGED ", 1)[1].split("\n", 1)[0]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "please report" not in done.stdout + done.stderr, done.stderr
    rows = {r["patient"]: r for r in hostile.manifest(out)}
    reason = rows["TOC-1"]["reason"]
    assert rows["TOC-1"]["status"] == "failed" and changed in reason, rows["TOC-1"]
    assert "needs more than the limit of 50,000 reads" in reason and "MemoryError" not in reason, reason
    assert rows["TOC-0"]["status"] == rows["TOC-2"]["status"] == "ok", rows


#: ``dosealign ARGS...`` whose CT reading never ends for patient ``sys.argv[1]`` (a file system that stopped
#: answering); it says ``BLOCKED`` when it starts waiting.
CT_READING_BLOCKS = """
import sys, threading
from DoseAlignLib import pipeline
from DoseAlignLib.cli import main
patient = sys.argv[1]
real = pipeline.read_ct
def blocked(series, *args, **kwargs):
    if series.slices[0].rel_path.startswith(patient + "/"):
        print("BLOCKED", flush=True)
        threading.Event().wait()
    return real(series, *args, **kwargs)
pipeline.read_ct = blocked
sys.exit(main(sys.argv[2:]))
"""


def test_a_case_waiting_for_a_reader_that_never_returns_stops_at_its_time_limit(trio, tmp_path):
    """The case waited for its CT reading thread without a limit (F4): now it looks at DOSEALIGN_CASE_SECONDS
    while it waits, fails at the limit naming where it was, and the next case runs."""
    out = tmp_path / "out"
    start = time.monotonic()
    done = hostile.python(
        CT_READING_BLOCKS,
        "p1",
        "export",
        str(trio),
        str(out),
        "--quiet",
        "--workers",
        "1",
        "--no-qa-png",
        env={"DOSEALIGN_CASE_SECONDS": "3"},
        timeout=120,
    )
    assert "BLOCKED" in done.stdout
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - start < 60
    rows = {r["patient"]: r for r in hostile.manifest(out)}
    assert rows["TOC-1"]["status"] == "failed", rows["TOC-1"]
    assert rows["TOC-1"]["reason"].startswith("p1/: the case took longer than the limit of 3 s: its CT was still")
    assert rows["TOC-0"]["status"] == rows["TOC-2"]["status"] == "ok", rows
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_sigterm_ends_a_case_waiting_for_a_reader_that_never_returns(trio, tmp_path):
    """SIGTERM was ignored while the case waited for its CT reading thread (F4: only SIGKILL ended the export,
    leaving its temporary entries). Now it ends the export as always: exit 143, nothing temporary left."""
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", CT_READING_BLOCKS, "p0", "export", str(trio), str(out), "--workers", "1"],
        env=hostile.ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),
    )
    try:
        assert process.stdout.readline().strip() == "BLOCKED"
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, (process.returncode, stderr)
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr, stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")], "temporary entries left"


def test_a_link_to_a_folder_that_holds_the_input_or_to_a_system_folder_is_not_followed(tmp_path):
    """Thirty-sixth hostile trial AJ25: a symbolic link in the input to ``/`` or ``/proc`` was followed: the scan walked
    the whole machine, other processes' folders too. A link to a folder that holds the input, or into /proc, /sys or
    /dev, is left out with the reason; the study beside it is read."""
    from DoseAlignLib.dicom.scan import scan_folder

    root = tmp_path / "outer" / "in"
    hostile.study(root / "p", "LINKS-1", 141, with_structures=False)
    (tmp_path / "outer" / "elsewhere").mkdir()
    (tmp_path / "outer" / "elsewhere" / "note.txt").write_text("x")
    (root / "up").symlink_to(tmp_path / "outer", target_is_directory=True)
    (root / "kernel").symlink_to("/proc", target_is_directory=True)
    scanned = scan_folder(root)
    reasons = dict(scanned.ignored)
    assert "a folder that holds the input: not followed" in reasons["up/"], reasons
    assert "/proc, a system folder: not followed" in reasons["kernel/"], reasons
    assert len(scanned.ct_series) == 1 and not any("elsewhere" in str(p) for p in scanned.skipped)
