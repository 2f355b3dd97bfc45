"""A mixed batch as clinics export them: good cases beside everything that can go wrong.

One input tree holds two good cases and, each in its own folder: a corrupt file, a dose whose pixel
data are truncated, a dose with no CT, a dose on another frame of reference, a RELATIVE dose, a JPEG
JPEG-LS dose (a fake encapsulated payload) where no decoder is installed, and a note that is no DICOM
at all. The export must exit 1, give every problem a failed manifest row that says which file, which
tag and what to do, print the same on the terminal, and leave the good cases exactly as they come
out of a batch without the bad ones. An output folder that cannot be written stops the command at
once with exit code 2 and the reason; nothing is written and the inputs stay as they were.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import dicom_damage as dd
import pytest
from DoseAlignLib.cli import main
from DoseAlignLib.phantom import PhantomSpec, write_phantom

SMALL = {
    "ct_size": (16, 14, 8),
    "dose_size": (8, 6, 5),
    "ct_slice_spacing": 2.5,
    "dose_pixel_spacing": (2.0, 2.0),
    "dose_frame_spacing": 2.5,
    "dose_center_offset_lps": (0.3, -0.2, 0.1),
}
#: JPEG-LS: no decoder ships with pydicom, numpy or Pillow (Pillow does decode JPEG 2000)
JPEG_LS = dd.JPEG_LS_LOSSLESS


def _spec(patient: str, seed: int, **changes) -> PhantomSpec:
    return PhantomSpec(patient_id=patient, seed=seed, **{**SMALL, **changes})


def _write_good(root: Path) -> None:
    write_phantom(root / "good-hfs", _spec("GOOD-1", 1))
    write_phantom(
        root / "good-beams", _spec("GOOD-2", 2, patient_position="FFS", write_plan_dose=False, write_beam_doses=True)
    )


def _jpeg_ls_decoder_available() -> bool:
    """Whether pydicom could decode JPEG-LS here (then the fake payload is 'damaged', not 'no decoder')."""
    try:
        from pydicom.pixels.decoders import get_decoder  # pydicom 3

        return bool(get_decoder(JPEG_LS).is_available)
    except ImportError:  # pydicom 2.4
        from pydicom import config

        return any(h.is_available() and h.supports_transfer_syntax(JPEG_LS) for h in config.pixel_data_handlers)


@pytest.fixture()
def mixed(tmp_path) -> dict:
    """The mixed input tree; returns paths of the bad files relative to the input root."""
    root = tmp_path / "in"
    _write_good(root)
    bad = {}
    # a corrupt file: random bytes under a DICOM name
    (root / "corrupt").mkdir(parents=True)
    (root / "corrupt" / "IMG0001.dcm").write_bytes(hashlib.sha512(b"not dicom").digest() * 40)
    bad["corrupt"] = "corrupt/IMG0001.dcm"
    # a dose whose pixel data were cut short (its CT is fine)
    truth = write_phantom(root / "truncated", _spec("TRUNC", 3))
    dd.apply(truth.dose_files[0], dd.Mutation("PixelData", "truncate", 100))
    bad["truncated"] = truth.dose_files[0].relative_to(root).as_posix()
    # a dose whose CT was not exported
    truth = write_phantom(root / "no-ct", _spec("NOCT", 4, with_structures=False, with_plan=False))
    for path in truth.ct_files:
        path.unlink()
    bad["no-ct"] = truth.dose_files[0].relative_to(root).as_posix()
    # a dose computed on another frame of reference (the plan still points at this CT)
    truth = write_phantom(root / "other-frame", _spec("FRAME", 5))
    dd.rewrite_tags(truth.dose_files[0], FrameOfReferenceUID="1.2.826.0.1.3680043.10.1234.1")
    bad["other-frame"] = truth.dose_files[0].relative_to(root).as_posix()
    # a RELATIVE dose
    truth = write_phantom(root / "relative", _spec("REL", 6, dose_units="RELATIVE"))
    bad["relative"] = truth.dose_files[0].relative_to(root).as_posix()
    # a JPEG-LS dose where no decoder is installed
    truth = write_phantom(root / "compressed", _spec("JLS", 7))
    dd.compress_fake(truth.dose_files[0], JPEG_LS)
    bad["compressed"] = truth.dose_files[0].relative_to(root).as_posix()
    # not DICOM at all: listed by `dosealign scan`, not a failure
    (root / "README.txt").write_text("exported 2024 by the TPS\n")
    return {"root": root, "bad": bad}


def _manifest(out: Path) -> list:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _row_naming(rows: list, rel: str) -> dict:
    found = [r for r in rows if rel in r["reason"] and r["status"] == "failed"]
    assert len(found) == 1, f"expected one failed row naming {rel}: {rows}"
    return found[0]


def test_mixed_batch_says_what_to_fix_and_leaves_good_cases_alone(mixed, tmp_path, capsys):
    root, bad = mixed["root"], mixed["bad"]
    before = _snapshot(root)
    out = tmp_path / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1"]) == 1
    printed = capsys.readouterr().out
    assert _snapshot(root) == before, "inputs must not change"
    rows = _manifest(out)
    assert len([r for r in rows if r["status"] == "ok"]) == 2
    assert len([r for r in rows if r["status"] == "failed"]) == len(bad)

    expectations = {
        # file: (tag, phrases that tell the user what is wrong and what to do)
        "corrupt": (
            "(0002,0010) TransferSyntaxUID",
            ["not a DICOM file", "no 'DICM' preamble", "or remove it from the input folder"],
        ),
        "truncated": ("(7FE0,0010) PixelData", ["bytes", "the file is truncated", "export the file again"]),
        "no-ct": ("(0020,0052) FrameOfReferenceUID", ["no CT with frame of reference", "add the planning CT"]),
        "other-frame": (
            "(0020,0052) FrameOfReferenceUID",
            ["1.2.826.0.1.3680043.10.1234.1", "differs from the CT's", "DoseAlign does not register"],
        ),
        "relative": ("(3004,0002) DoseUnits", ["RELATIVE", "--allow-relative"]),
        "compressed": (
            "(0002,0010) TransferSyntaxUID" if not _jpeg_ls_decoder_available() else "(7FE0,0010) PixelData",
            ["1.2.840.10008.1.2.4.80", "needs a decoder", "pip install pylibjpeg pylibjpeg-libjpeg"]
            if not _jpeg_ls_decoder_available()
            else ["damaged"],
        ),
    }
    for name, (tag, phrases) in expectations.items():
        row = _row_naming(rows, bad[name])
        assert tag in row["reason"], f"{name}: {row['reason']}"
        for phrase in phrases:
            assert phrase in row["reason"], f"{name}: {phrase!r} not in {row['reason']!r}"
        assert row["reason"] in printed, f"{name}: the terminal does not show the reason"
        assert not (out / row["case_id"]).exists(), f"{name}: a failed case writes nothing"
    assert "README.txt" not in "".join(r["reason"] + r["files"] for r in rows), "a note is not a failure"
    assert not [r for r in rows if str(root) in r["reason"]], "files are named relative to the input, as in meta.json"

    # the good cases: exactly what a batch without the bad ones gives
    clean_root = tmp_path / "clean"
    _write_good(clean_root)
    for path in clean_root.rglob("*.dcm"):  # meta.json records the input files' times: the same files, the same times
        times = (root / path.relative_to(clean_root)).stat()
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    clean_out = tmp_path / "clean-out"
    assert main(["export", str(clean_root), str(clean_out), "--quiet", "--workers", "1"]) == 0
    capsys.readouterr()
    for row in _manifest(clean_out):
        mixed_row = next(r for r in rows if r["case_id"] == row["case_id"])
        assert mixed_row == row
        for path in sorted((clean_out / row["case_id"]).iterdir()):
            assert (out / row["case_id"] / path.name).read_bytes() == path.read_bytes(), path.name


def test_scan_of_the_mixed_tree_names_every_problem(mixed, capsys):
    root, bad = mixed["root"], mixed["bad"]
    assert main(["scan", str(root)]) == 1
    text = capsys.readouterr().out
    assert "README.txt: not a DICOM file" in text
    assert f"{bad['corrupt']}: not a DICOM file" in text
    assert f"RTDOSE {bad['no-ct']}: no CT with frame of reference" in text


# ---- output folders that cannot be written ----------------------------------------------------


def _make_unwritable(folder: Path) -> str:
    """Make ``folder`` unwritable for this process; returns how (skips when no way works here)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return "chmod"
    # root ignores permission bits; the immutable attribute stops root too, where the filesystem has it
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            (folder / "probe").write_bytes(b"")
        except OSError:
            return "chattr"
        (folder / "probe").unlink()
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    pytest.skip(
        "running as root, where chmod does not stop writing, and chattr +i is not available here; "
        "test_output_path_under_a_file checks the same refusal"
    )


def _make_writable(folder: Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    else:
        folder.chmod(0o755)


def test_read_only_output_folder_stops_with_the_reason(tmp_path, capsys):
    root = tmp_path / "in"
    _write_good(root)
    before = _snapshot(root)
    out = tmp_path / "out"
    how = _make_unwritable(out)
    try:
        assert main(["export", str(root), str(out), "--quiet", "--workers", "1"]) == 2
        err = capsys.readouterr().err
        assert f"dosealign: {out}: cannot write to the output folder" in err
        assert "nothing was exported" in err
        assert list(out.iterdir()) == []
    finally:
        _make_writable(out, how)
    assert _snapshot(root) == before


def test_output_path_under_a_file(tmp_path, capsys):
    """Works as root too: the output's parent is a regular file, so the folder cannot be created."""
    root = tmp_path / "in"
    _write_good(root)
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "out"
    assert main(["export", str(root), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"dosealign: {out}: cannot create the output folder" in err and "choose a folder you can write to" in err
    (tmp_path / "b-file").write_text("x")
    assert main(["export", str(root), str(tmp_path / "b-file"), "--quiet"]) == 2
    assert "the output path exists and is not a folder" in capsys.readouterr().err
