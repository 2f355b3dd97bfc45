"""Hostile inputs, classes 1 and 3: a case folder in OUT is this input's case, as it is now, or it is left alone.

``--resume`` keeps a case only when the input files it was made of are unchanged: each file's
SOPInstanceUID, size and modification time are recorded in meta.json (``source.input_files``), and a
file edited in place (a DoseGridScaling doubled, an ROI renamed) makes the case be exported again, with a
note naming the file (fifth hostile trial E5).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dicom_damage as dd
import hostile
import pydicom
import pytest
from DoseAlignLib.cli import main


def _export(inputs: Path, out: Path, *extra: str) -> int:
    return main(["export", str(inputs), str(out), "--quiet", "--workers", "1", "--no-qa-png", *extra])


def _edit(path: Path, change) -> None:
    """Edit a DICOM file in place, as a user's tool would (its mtime changes)."""
    ds = pydicom.dcmread(str(path))
    change(ds)
    ds.save_as(str(path))


def _meta(out: Path, case_id: str) -> dict:
    return json.loads((out / case_id / "meta.json").read_text(encoding="utf-8"))


@pytest.fixture
def study(tmp_path) -> tuple:
    root = tmp_path / "in"
    truth = hostile.study(root)
    return root, truth


def test_meta_json_records_each_input_file_of_the_case(study, tmp_path, capsys):
    root, truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    records = {r["file"]: r for r in _meta(out, row["case_id"])["source"]["input_files"]}
    files = [*truth.dose_files, truth.plan_file, truth.struct_file, *truth.ct_files]
    assert set(records) == {Path(f).relative_to(root).as_posix() for f in files}
    for path in files:
        record = records[Path(path).relative_to(root).as_posix()]
        status = os.stat(path)
        assert (record["size"], record["mtime_ns"]) == (status.st_size, status.st_mtime_ns)
        assert record["sop_instance_uid"] == pydicom.dcmread(str(path), stop_before_pixels=True).SOPInstanceUID


def test_resume_exports_again_a_dose_edited_in_place(study, tmp_path, capsys):
    """E5: DoseGridScaling doubled in the RTDOSE, then --resume: the stale case (half the dose) was kept."""
    root, truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    (row,) = hostile.manifest(out)
    before = _meta(out, row["case_id"])["dose"]["max_gy_output"]
    capsys.readouterr()
    dose = Path(truth.dose_files[0])
    _edit(dose, lambda ds: setattr(ds, "DoseGridScaling", float(ds.DoseGridScaling) * 2))
    assert _export(root, out, "--resume") == 0
    text = capsys.readouterr().out
    (row,) = hostile.manifest(out)
    assert row["status"] == "ok", row
    assert "input files changed since" in text and dose.name in text, text
    assert _meta(out, row["case_id"])["dose"]["max_gy_output"] == pytest.approx(2 * before, rel=1e-3)
    assert _export(root, out, "--resume") == 0  # now as recorded: kept
    capsys.readouterr()
    assert hostile.manifest(out)[0]["status"] == "skipped"


def test_resume_exports_again_an_roi_renamed_in_place(study, tmp_path, capsys):
    """E5: an ROI renamed in the RTSTRUCT (same length, so the same size: only the time tells)."""
    root, truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    capsys.readouterr()
    struct = Path(truth.struct_file)
    size = struct.stat().st_size
    names = [item.ROIName for item in pydicom.dcmread(str(struct)).StructureSetROISequence]
    old = names[0]
    new = "Q" * len(old) if old != "Q" * len(old) else "Z" * len(old)

    def rename(ds):
        ds.StructureSetROISequence[0].ROIName = new

    _edit(struct, rename)
    assert struct.stat().st_size == size
    assert _export(root, out, "--resume") == 0
    text = capsys.readouterr().out
    (row,) = hostile.manifest(out)
    assert row["status"] == "ok", row
    assert f"{struct.name} (modified)" in text, text
    meta_text = (out / row["case_id"] / "meta.json").read_text(encoding="utf-8")
    assert f'"{new}"' in meta_text and f'"{old}"' not in meta_text


def test_resume_of_a_pseudonymized_export_sees_an_edit_without_recording_times(study, tmp_path, capsys):
    root, truth = study
    out = tmp_path / "out"
    args = ("--pseudonymize", "--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv"))
    assert _export(root, out, *args) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    records = _meta(out, row["case_id"])["source"]["input_files"]
    assert records and all(set(r) == {"file", "sop_instance_uid", "stamp"} for r in records)  # no size, no time
    assert _export(root, out, *args, "--resume") == 0
    capsys.readouterr()
    assert hostile.manifest(out)[0]["status"] == "skipped"
    _edit(Path(truth.dose_files[0]), lambda ds: setattr(ds, "DoseGridScaling", float(ds.DoseGridScaling) * 2))
    assert _export(root, out, *args, "--resume") == 0
    text = capsys.readouterr().out
    assert hostile.manifest(out)[0]["status"] == "ok"
    assert "(size or time)" in text, text


@pytest.mark.parametrize("first, then", [(["--keep-uids"], []), ([], ["--keep-uids"])])
def test_a_pseudonymized_case_exported_again_with_keep_uids_toggled_is_the_same_case(
    study, tmp_path, capsys, first, then
):
    """Fifteenth hostile trial O12: a pseudonymized OUT made with --keep-uids and exported again without it (same
    input, same key), or the other way round, failed every case as "holds another input's case with this case id":
    the real UIDs the folder recorded were compared with keyed hashes. It is the same case, made again."""
    root, _truth = study
    out = tmp_path / "out"
    args = ("--pseudonymize", "--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv"))
    assert _export(root, out, *args, *first) == 0
    (before,) = hostile.manifest(out)
    for resume, status in (([], "ok"), (["--resume"], "skipped")):  # then kept: the folder holds this form now
        assert _export(root, out, *args, *then, *resume) == 0, capsys.readouterr()
        (row,) = hostile.manifest(out)
        assert (row["case_id"], row["status"]) == (before["case_id"], status), row
        uids = _meta(out, row["case_id"])["pseudonymized"]["uids"]
        assert uids == ("kept" if then else "keyed hashes"), uids


@pytest.mark.parametrize("added", ["CT slice", "RTPLAN"])
def test_resume_keeps_no_case_the_input_now_fails(study, tmp_path, capsys, added):
    """Sixteenth hostile trial P6: after a conflicting copy was added to the input (a CT slice or the RTPLAN under
    its SOPInstanceUID, with other pixels or another prescription), --resume kept the case ("every case exported",
    exit 0) while an export without --resume failed it. A case the input now fails is not kept."""
    root, truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    original = Path(truth.ct_files[0] if added == "CT slice" else truth.plan_file)
    ds = pydicom.dcmread(str(original))
    if added == "CT slice":
        ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
    else:
        ds.DoseReferenceSequence[0].TargetPrescriptionDose = "10"
    ds.save_as(str(original.with_name("zz_copy.dcm")))
    capsys.readouterr()
    for extra in (["--resume"], []):
        assert _export(root, out, *extra) == 1, extra
        (row,) = hostile.manifest(out)
        assert row["status"] == "failed" and "zz_copy.dcm" in row["reason"], (extra, row)


def test_resume_exports_again_a_case_whose_meta_json_does_not_record_its_files(study, tmp_path, capsys):
    """A meta.json of an earlier version (no input_files): exported again, the safe side."""
    root, _truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    (row,) = hostile.manifest(out)
    path = out / row["case_id"] / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    del meta["source"]["input_files"]
    path.write_text(json.dumps(meta), encoding="utf-8")
    capsys.readouterr()
    assert _export(root, out, "--resume") == 0
    text = capsys.readouterr().out
    assert hostile.manifest(out)[0]["status"] == "ok"
    assert "does not record its input files" in text, text


def test_resume_keeps_a_copy_made_with_times_kept(study, tmp_path, capsys):
    """Moved or copied with its times (cp -p, rsync -a, shutil.copytree): the same files, the case is kept."""
    root, _truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    copy = tmp_path / "moved"
    shutil.copytree(root, copy)  # copy2: times kept
    capsys.readouterr()
    assert _export(copy, out, "--resume") == 0
    capsys.readouterr()
    assert hostile.manifest(out)[0]["status"] == "skipped"


# ---- E6: one case id, two inputs ------------------------------------------------------------------


def _two_sites(tmp_path: Path, patient_a: str, patient_b: str) -> tuple:
    """Site A's patient and site B's other patient (other UIDs, dose x2), with the same relative paths and
    PatientIDs that give one case id (the trial's ``col/siteA`` and ``col/siteB``)."""
    a, b = tmp_path / "col" / "siteA", tmp_path / "col" / "siteB"
    truth_a = hostile.study(a, patient=patient_a, seed=1, shuffle_files=False)
    truth_b = hostile.study(b, patient=patient_b, seed=2, shuffle_files=False)
    assert truth_a.dose_sop_uids != truth_b.dose_sop_uids
    assert [Path(f).relative_to(a) for f in truth_a.dose_files] == [Path(f).relative_to(b) for f in truth_b.dose_files]
    _edit(Path(truth_b.dose_files[0]), lambda ds: setattr(ds, "DoseGridScaling", float(ds.DoseGridScaling) * 2))
    return a, b


@pytest.mark.parametrize(
    "patients, flags",
    [
        (("PAT1", "PAT1"), ()),
        (("PAT1", "PAT1"), ("--append",)),
        (("PAT1", "PAT1"), ("--resume",)),
        (("A-B", "A/B"), ("--append",)),  # IDs that read alike in a folder name
    ],
    ids=["plain", "append", "resume", "ids-sanitized-alike"],
)
def test_another_inputs_case_of_the_same_id_is_left_alone(tmp_path, capsys, patients, flags):
    """E6: site B's case replaced site A's (another patient) with --append, was "skipped" with --resume. Fifth
    hostile trial leftover: with --append manifest.csv listed the id twice (the kept case and the failed one)."""
    a, b = _two_sites(tmp_path, *patients)
    out = tmp_path / "out"
    assert _export(a, out) == 0
    (row_a,) = hostile.manifest(out)
    before = hostile.snapshot(out / row_a["case_id"])
    capsys.readouterr()
    assert _export(b, out, *flags) == 1
    text = capsys.readouterr().out
    assert hostile.snapshot(out / row_a["case_id"]) == before, "another input's case folder was changed"
    rows = hostile.manifest(out)
    assert "another input" in text and "left alone" in text, text
    ids = [r["case_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"manifest.csv lists a case id twice: {rows}"
    if "--append" in flags:
        # the other input's case stays in the manifest, and is the id's only row: a reader maps each row to its
        # folder by the id (this input's case fails in the summary, exit 1, and a note says why it is not listed)
        assert [(r["case_id"], r["status"] in ("ok", "skipped")) for r in rows] == [(row_a["case_id"], True)], rows
        assert rows[0]["patient"] == row_a["patient"] and rows[0]["dmax_gy"] == row_a["dmax_gy"], rows
        assert "not exported, their id taken by another input's case" in text, text
    else:
        (failed,) = rows
        assert (failed["case_id"], failed["status"]) == (row_a["case_id"], "failed"), rows
        assert "another input" in failed["reason"] and "left alone" in failed["reason"], failed


@pytest.mark.parametrize("first, then", [(["--keep-uids"], []), ([], ["--keep-uids"])])
def test_another_inputs_case_is_left_alone_with_keep_uids_toggled(tmp_path, capsys, first, then):
    """Sixteenth hostile trial P8: after the O12 fix (a pseudonymized case made again with --keep-uids toggled is the
    same case), another input's case under the same case id was replaced when the two runs differed in --keep-uids:
    the UIDs were not compared at all. They are compared in the folder's form, and the other input's case stays."""
    a, b = _two_sites(tmp_path, "PAT1", "PAT1")
    out = tmp_path / "out"
    args = ["--pseudonymize", "--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    assert _export(a, out, *args, *first) == 0
    (row_a,) = hostile.manifest(out)
    before = hostile.snapshot(out / row_a["case_id"])
    capsys.readouterr()
    assert _export(b, out, *args, *then) == 1
    text = capsys.readouterr().out
    assert hostile.snapshot(out / row_a["case_id"]) == before, "another input's case folder was changed"
    (failed,) = hostile.manifest(out)
    assert failed["status"] == "failed" and "another input" in failed["reason"], (failed, text)


def test_the_same_input_with_a_new_dose_uid_replaces_its_own_case(study, tmp_path, capsys):
    """The same input folder, its dose exported again in place with a new SOPInstanceUID: its own case, replaced."""
    root, truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    capsys.readouterr()
    uid = pydicom.uid.generate_uid()
    _edit(Path(truth.dose_files[0]), lambda ds: setattr(ds, "SOPInstanceUID", uid))
    assert _export(root, out) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert _meta(out, row["case_id"])["source"]["rtdose_sop_uids"] == [uid]


def test_a_copy_of_the_same_input_elsewhere_replaces_its_case(study, tmp_path, capsys):
    """Another folder holding the same files (the same UIDs): the same case, exported again as usual."""
    root, _truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copy)  # new times
    capsys.readouterr()
    assert _export(copy, out) == 0
    capsys.readouterr()
    assert hostile.manifest(out)[0]["status"] == "ok"


@pytest.mark.parametrize("pseudonymized", [False, True], ids=["plain", "pseudonymized"])
def test_append_of_an_input_overlapping_one_in_out_lists_each_dose_once(tmp_path, capsys, pseudonymized):
    """H3 (eighth hostile trial): a cohort exported, then one patient's folder exported again on its own with
    --append gave that patient's dose a second case id (ids hash the dose paths relative to the input): manifest.csv
    and dataset.json listed one RTDOSE on one CT twice. Now the case already in OUT is kept, once, and a note names
    the one not exported; the rest of the input (here a new patient) is exported as usual."""
    root = tmp_path / "cohort"
    hostile.study(root / "P1", "COH-1", seed=1)
    hostile.study(root / "P2", "COH-2", seed=2)
    out = tmp_path / "out"
    args = ["--format", "nifti"]
    if pseudonymized:
        args += ["--pseudonymize", "--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    assert _export(root, out, *args) == 0
    capsys.readouterr()
    first = {r["case_id"]: r for r in hostile.manifest(out)}
    assert len(first) == 2 and all(r["status"] == "ok" for r in first.values()), first
    before = {case_id: hostile.snapshot(out / case_id) for case_id in first}
    hostile.study(root / "P1" / "late", "COH-3", seed=3)  # something new in the patient's folder
    assert _export(root / "P1", out, *args, "--append") == 0
    text = capsys.readouterr().out
    rows = hostile.manifest(out)
    doses = [tuple(_meta(out, r["case_id"])["source"]["rtdose_sop_uids"]) for r in rows]
    assert len(rows) == 3 and len(set(doses)) == 3, f"one dose listed twice: {rows}"
    assert set(first) < {r["case_id"] for r in rows}, rows
    assert {case_id: hostile.snapshot(out / case_id) for case_id in first} == before
    assert sorted(p.name for p in out.iterdir() if (p / "meta.json").is_file()) == sorted(r["case_id"] for r in rows)
    assert "the same RTDOSE (SOPInstanceUIDs) on the same CT series as another input's case" in text, text
    (kept,) = [case_id for case_id in first if f"(= {case_id})" in text]
    assert first[kept]["patient"] != "COH-2", first[kept]
    listed = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    images = [item["image"] for part in listed.values() if isinstance(part, list) for item in part]
    assert len(images) == 3 and len(set(images)) == 3, listed


@pytest.mark.parametrize("pseudonymized", [False, True], ids=["plain", "pseudonymized"])
def test_append_exports_another_dose_under_the_same_sop_instance_uid(tmp_path, capsys, pseudonymized):
    """Fifteenth hostile trial O14: --append left out a dose of another input whose SOPInstanceUIDs and CT were those
    of a case in OUT, as "the same RTDOSE", though its file held another dose (the Nelms phantom's AntPost and SupInf
    fields share one SOPInstanceUID): it was never exported, exit 0. The files' contents are compared too (meta.json
    records their digest): another dose is exported as a case of its own, with a note."""
    root = tmp_path / "a"
    truth = hostile.study(root / "P1", "UID-1", seed=4)
    other = tmp_path / "b"
    shutil.copytree(root, other)
    dose = other / Path(truth.dose_files[0]).relative_to(root)
    _edit(dose, lambda ds: setattr(ds, "DoseGridScaling", float(ds.DoseGridScaling) * 0.5))  # another dose, one UID
    dose.rename(dose.with_name("other_field.dcm"))  # another file name: another case id, as AntPost and SupInf
    out = tmp_path / "out"
    args = []
    if pseudonymized:
        args = ["--pseudonymize", "--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    assert _export(root, out, *args) == 0
    (first,) = hostile.manifest(out)
    assert _meta(out, first["case_id"])["source"]["rtdose_digest"].isdigit()
    capsys.readouterr()
    assert _export(other, out, *args, "--append") == 0
    text = capsys.readouterr().out
    rows = hostile.manifest(out)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
    assert "share RTDOSE SOPInstanceUIDs with another input's case in the output folder but not its file" in text, text
    maxima = sorted(float(r["dmax_gy"]) for r in rows)
    assert maxima[0] == pytest.approx(maxima[1] / 2, rel=1e-3), maxima
    # sixteenth trial P7: the second of two kept doses under one UID, exported again on its own, is that dose (it
    # was compared with the first kept case only, and became a third case)
    third = tmp_path / "c"
    shutil.copytree(other, third)
    (third / dose.relative_to(other).with_name("other_field.dcm")).rename(
        third / dose.relative_to(other).with_name("third_name.dcm")
    )
    fourth = tmp_path / "d"  # and the first, so that whichever the kept cases are read in, one is the second
    shutil.copytree(root, fourth)
    (fourth / dose.relative_to(other)).rename(fourth / dose.relative_to(other).with_name("fourth_name.dcm"))
    for again in (third, fourth):
        assert _export(again, out, *args, "--append") == 0
        text = capsys.readouterr().out
        assert len(hostile.manifest(out)) == 2, (again.name, hostile.manifest(out))
        assert "the same RTDOSE (SOPInstanceUIDs) on the same CT series as another input's case" in text, text


@pytest.mark.parametrize(
    "variant", ["re-encoded", "keep-uids toggled", "numbers written otherwise", "signed zeros", "absolute offsets"]
)
def test_append_keeps_one_dose_once_however_it_is_stored_or_recorded(tmp_path, capsys, variant):
    """Sixteenth hostile trial P2, P4: the same dose of a patient's folder exported again on its own became a second
    case when its file was re-encoded (Implicit VR: the digest hashed the bytes), or when the case in OUT was made
    with --keep-uids and this run hashes UIDs (real UIDs compared with keyed ones). It is the same dose: kept once."""
    root = tmp_path / "a"
    truth = hostile.study(root / "P1", "ONCE-1", seed=5)
    again = tmp_path / "b"
    shutil.copytree(root, again)
    dose = again / Path(truth.dose_files[0]).relative_to(root)
    moved = dose.with_name("same_dose.dcm")  # another name: another case id, as a folder exported on its own
    if variant == "re-encoded":
        ds = pydicom.dcmread(str(dose))
        ds.file_meta.ImplementationVersionName = "OTHER_TOOL_1"
        dd.save_encoded(ds, moved, pydicom.uid.ImplicitVRLittleEndian)
        dose.unlink()
    elif variant == "numbers written otherwise":  # seventeenth trial Q8: 3.00000 and 3 are one spacing
        ds = pydicom.dcmread(str(dose))
        ds.PixelSpacing = [f"{float(v):.5f}" for v in ds.PixelSpacing]
        ds.save_as(str(moved))
        dose.unlink()
    elif variant in ("signed zeros", "absolute offsets"):  # eighteenth trial R1: one grid, written otherwise
        ds = pydicom.dcmread(str(dose))
        if variant == "signed zeros":
            ds.ImageOrientationPatient = ["-0" if float(v) == 0 else str(v) for v in ds.ImageOrientationPatient]
        else:  # z positions (PS3.3 C.8.8.3.2 allows both forms for an axial grid)
            z = float(ds.ImagePositionPatient[2])
            ds.GridFrameOffsetVector = [f"{z + float(v):g}" for v in ds.GridFrameOffsetVector]
        ds.save_as(str(moved))
        dose.unlink()
    else:
        dose.rename(moved)
    out = tmp_path / "out"
    args = ["--pseudonymize", "--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    first = [*args, "--keep-uids"] if variant == "keep-uids toggled" else args
    assert _export(root, out, *first) == 0
    capsys.readouterr()
    assert _export(again, out, *args, "--append") == 0
    text = capsys.readouterr().out
    rows = hostile.manifest(out)
    assert len(rows) == 1, (rows, text)
    assert "the same RTDOSE (SOPInstanceUIDs) on the same CT series as another input's case" in text, text


# ---- E9: a user's files inside a case folder -------------------------------------------------------


def _add_user_files(folder: Path) -> None:
    (folder / "notes.txt").write_text("notes")
    (folder / "annotations").mkdir()
    (folder / "annotations" / "seg.nii").write_text("x")


def test_a_re_export_never_deletes_a_users_files_in_a_case_folder(study, tmp_path, capsys):
    """E9: a plain re-export replaced the case folder whole: notes.txt and annotations/ were gone without a word."""
    root, _truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    (row,) = hostile.manifest(out)
    folder = out / row["case_id"]
    _add_user_files(folder)
    before = hostile.snapshot(folder)
    capsys.readouterr()
    assert _export(root, out) == 1
    capsys.readouterr()
    assert hostile.snapshot(folder) == before
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed"
    assert "annotations/" in row["reason"] and "notes.txt" in row["reason"], row
    assert _export(root, out, "--resume") == 0  # unchanged input: kept, with the user's files
    capsys.readouterr()
    assert hostile.snapshot(folder) == before and hostile.manifest(out)[0]["status"] == "skipped"


def test_a_users_file_among_dosealigns_masks_is_not_deleted(study, tmp_path, capsys):
    pytest.importorskip("nibabel")
    root, _truth = study
    out = tmp_path / "out"
    assert _export(root, out, "--format", "nifti") == 0
    (row,) = hostile.manifest(out)
    folder = out / row["case_id"]
    (folder / "masks" / "my_edit.nii.gz").write_bytes(b"mine")
    capsys.readouterr()
    assert _export(root, out, "--format", "nifti") == 1
    capsys.readouterr()
    assert (folder / "masks" / "my_edit.nii.gz").read_bytes() == b"mine"
    assert "masks/my_edit.nii.gz" in hostile.manifest(out)[0]["reason"]


def test_files_by_output_names_that_the_case_did_not_write_are_the_users(study, tmp_path, capsys):
    """From the sixth hostile trial (F3): after an export without qa.png and NIfTI, the user's own `ct.nii.gz` and
    `qa.png` in the case folder were deleted by a plain re-export, being named like DoseAlign's outputs. meta.json
    records the files its export wrote (`case_files`); any other file is the user's. A meta.json without that
    record (an earlier version) keeps the rule by name."""
    root, _truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    (row,) = hostile.manifest(out)
    folder = out / row["case_id"]
    written = _meta(out, row["case_id"])["case_files"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == written
    assert "meta.json" in written and "pair.npz" in written and "qa.png" not in written
    (folder / "ct.nii.gz").write_bytes(b"the user's own CT")
    (folder / "qa.png").write_bytes(b"the user's own picture")
    before = hostile.snapshot(folder)
    capsys.readouterr()
    assert _export(root, out) == 1
    capsys.readouterr()
    assert hostile.snapshot(folder) == before
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed", row
    assert "holds entries DoseAlign did not write (ct.nii.gz, qa.png)" in row["reason"], row
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    del meta["case_files"]  # as an earlier version wrote it
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    assert _export(root, out) == 0
    capsys.readouterr()
    assert not (folder / "qa.png").exists() and "case_files" in _meta(out, row["case_id"])


def test_formats_added_by_resume_are_recorded_as_the_cases_own(study, tmp_path, capsys):
    """No false refusal from the record (F3): files --resume adds to a kept case (a format asked for later) are
    in its case_files, so that a later plain export replaces the folder."""
    pytest.importorskip("nibabel")
    root, _truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    assert _export(root, out, "--resume", "--format", "nifti") == 0
    (row,) = hostile.manifest(out)
    folder = out / row["case_id"]
    assert (folder / "ct.nii.gz").is_file() and row["status"] == "skipped"
    written = _meta(out, row["case_id"])["case_files"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == written
    capsys.readouterr()
    assert _export(root, out) == 0
    capsys.readouterr()
    assert hostile.manifest(out)[0]["status"] == "ok" and not (folder / "ct.nii.gz").exists()


def test_folders_and_files_named_like_desktop_litter_are_the_users(study, tmp_path, capsys):
    """From the sixth hostile trial (F2): a user's folders named like desktop litter (`._thesis/`, `.DS_Store/`),
    with their files, were deleted by a plain re-export, as were any `._*` files. Only regular files by those
    names are litter, and a `._*` file only when it is AppleDouble (it starts with 00 05 16 07)."""
    root, _truth = study
    out = tmp_path / "out"
    assert _export(root, out) == 0
    (row,) = hostile.manifest(out)
    folder = out / row["case_id"]
    (folder / "._thesis").mkdir()
    (folder / "._thesis" / "ch3.tex").write_text("draft")
    (folder / ".DS_Store").mkdir()
    (folder / ".DS_Store" / "precious.txt").write_text("data")
    (folder / "._notes.txt").write_text("mine")  # named like AppleDouble, but text
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")  # litter
    (folder / "._pair.npz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00")  # AppleDouble: litter
    before = hostile.snapshot(folder)
    capsys.readouterr()
    assert _export(root, out) == 1
    capsys.readouterr()
    assert hostile.snapshot(folder) == before
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed", row
    assert "holds entries DoseAlign did not write (.DS_Store/, ._notes.txt, ._thesis/)" in row["reason"], row
    for user in ("._thesis", ".DS_Store", "._notes.txt"):
        shutil.move(str(folder / user), str(tmp_path / user))
    assert _export(root, out) == 0  # what is left is litter: it goes with the old folder
    capsys.readouterr()
    assert hostile.manifest(out)[0]["status"] == "ok"
    assert not (folder / "Thumbs.db").exists() and not (folder / "._pair.npz").exists()
    assert (tmp_path / "._thesis" / "ch3.tex").read_text() == "draft"


@pytest.mark.parametrize(
    "extra", [("--format", "npz,nifti,nrrd,hdf5,openkbp"), ("--layout", "npy")], ids=["formats", "npy"]
)
def test_every_file_dosealign_writes_is_its_own_on_a_re_export(study, tmp_path, capsys, extra):
    """No false refusal: every entry DoseAlign writes into a case folder (any format, qa.png, dvh.csv, the npy
    layout) is known as its own, and litter a desktop adds (.DS_Store) is not the user's work."""
    for module in ("nibabel", "nrrd", "h5py", "matplotlib"):
        pytest.importorskip(module)
    root, _truth = study
    out = tmp_path / "out"
    command = ["export", str(root), str(out), "--quiet", "--workers", "1", *extra]
    assert main(command) == 0
    (row,) = hostile.manifest(out)
    (out / row["case_id"] / ".DS_Store").write_bytes(b"\0")
    capsys.readouterr()
    assert main(command) == 0, hostile.manifest(out)
    capsys.readouterr()
    assert hostile.manifest(out)[0]["status"] == "ok"


def test_append_exports_the_same_dose_values_under_another_plan_as_a_case(tmp_path, capsys):
    """Eighteenth hostile trial R5: the same dose values under another plan (a re-plan that kept the dose's UID) are
    two cases in one input (seventeenth trial Q3), but under --append the re-planned case was dropped as "the same
    RTDOSE", its prescription and flag lost. The digest records what the dose belongs to: two cases either way."""
    root = tmp_path / "a"
    truth = hostile.study(root / "P1", "REPLAN-1", seed=6)
    again = tmp_path / "b"
    shutil.copytree(root, again)
    plan_file = again / Path(truth.plan_file).relative_to(root)
    plan = pydicom.dcmread(str(plan_file))
    plan.SOPInstanceUID = plan.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    plan.RTPlanLabel = "REPLAN"
    plan_file.unlink()
    plan.save_as(str(plan_file.with_name("replan.dcm")))
    dose_file = again / Path(truth.dose_files[0]).relative_to(root)
    dose = pydicom.dcmread(str(dose_file))
    dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = plan.SOPInstanceUID
    dose.save_as(str(dose_file))  # the same SOPInstanceUID and values, under the other plan
    out = tmp_path / "out"
    assert _export(root, out) == 0
    assert _export(again, out, "--append") == 0
    text = capsys.readouterr().out
    rows = hostile.manifest(out)
    assert sorted(r["status"] for r in rows) == ["ok", "ok"], (rows, text)
    assert any("REPLAN" in r["case_id"] for r in rows), rows


def test_one_dose_held_twice_in_the_output_folder_is_named(tmp_path, capsys):
    """Seventeenth hostile trial Q7: --append keeps a dose once among the cases it adds, but a dose OUT already held
    twice (a patient's folder exported again without --append, or a merge of shards beside it) was listed twice in
    manifest.csv and the dataset files without a word. The cases stay (they are not this run's to remove) and a note
    names them."""
    first = tmp_path / "a"
    hostile.study(first / "P1", "TWICE-1", seed=7)
    again = tmp_path / "b"
    shutil.copytree(first / "P1", again / "P1_again")
    other = tmp_path / "c"
    hostile.study(other / "P2", "TWICE-2", seed=8)
    out = tmp_path / "out"
    assert _export(first, out) == 0
    assert _export(again, out) == 0  # without --append: the first case is left alone, beside this one
    capsys.readouterr()
    assert _export(other, out, "--append") == 0
    text = capsys.readouterr().out
    rows = hostile.manifest(out)
    ids = sorted(r["case_id"] for r in rows if r["patient"] == "TWICE-1")
    assert len(ids) == 2, rows
    assert "already holds 1 RTDOSE(s) on one CT in more than one case" in text and " = ".join(ids) in text, text
    merged = tmp_path / "merged"  # the same in a merge: shards beside a case of another input
    assert _export(first, merged) == 0
    assert _export(again, merged, "--shard", "1/1") == 0
    capsys.readouterr()
    from DoseAlignLib.cli import main

    assert main(["merge", str(merged)]) == 0
    text = capsys.readouterr().out
    assert "holds 1 RTDOSE(s) on one CT in more than one case" in text, text


def test_append_does_not_compare_a_digest_of_another_scheme(tmp_path, capsys):
    """Nineteenth hostile trial S9: the dose digest changed its meaning three times under one version, and a digest
    of an OUT made before was compared as today's: the same dose appended again was "other contents", a second
    case. meta.json records the digest's scheme; a digest of another scheme (or none) is not compared: the UIDs
    decide, as for a case that records no digest."""
    root = tmp_path / "a"
    hostile.study(root / "P1", "SCHEME-1", seed=9)
    again = tmp_path / "b"
    shutil.copytree(root / "P1", again / "P1_again")
    out = tmp_path / "out"
    assert _export(root, out) == 0
    (row,) = hostile.manifest(out)
    meta_path = out / row["case_id"] / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    assert meta["source"]["rtdose_digest_scheme"] == 5
    meta["source"]["rtdose_digest_scheme"] = 3  # as an earlier scheme wrote it: another number for the same dose
    meta["source"]["rtdose_digest"] = "12345678901234567890"
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    capsys.readouterr()
    assert _export(again, out, "--append") == 0
    text = capsys.readouterr().out
    assert len(hostile.manifest(out)) == 1, (hostile.manifest(out), text)
    assert "the same RTDOSE (SOPInstanceUIDs) on the same CT series as another input's case" in text, text


def test_append_keeps_another_inputs_row_only_while_its_folder_is_complete(tmp_path, capsys):
    """Twentieth hostile trial T5, T6: --append kept another input's row "ok" (and listed it in dataset.h5) when its
    case folder had lost its pair.npz; a case whose dvh.csv was missing, or a named pipe, was complete for --resume
    and merge. A row of another input is kept only while its folder is complete as --resume decides (every file its
    export wrote a regular file), else left out with a note."""
    first = tmp_path / "a"
    for n in range(3):
        hostile.study(first / f"P{n}", f"KEPT-{n}", seed=30 + n)
    other = tmp_path / "b"
    hostile.study(other / "PB", "KEPT-B", seed=40)
    out = tmp_path / "out"
    assert _export(first, out) == 0
    rows = {r["patient"]: r["case_id"] for r in hostile.manifest(out)}
    (out / rows["KEPT-0"] / "pair.npz").unlink()
    (out / rows["KEPT-1"] / "dvh.csv").unlink()
    os.mkfifo(out / rows["KEPT-1"] / "dvh.csv")
    capsys.readouterr()
    assert _export(other, out, "--append") == 0
    text = capsys.readouterr().out
    kept = {r["patient"]: r["status"] for r in hostile.manifest(out)}
    assert kept == {"KEPT-2": "ok", "KEPT-B": "ok"}, (kept, text)
    assert "2 row(s) of other inputs left out of manifest.csv, their case folders not complete" in text, text
    assert "dvh.csv is a named pipe" in text, text
    capsys.readouterr()
    assert _export(first, out, "--resume", "--append") == 1  # its own input again: dvh.csv's pipe is not replaced
    status = {r["patient"]: r["status"] for r in hostile.manifest(out)}
    assert status["KEPT-0"] == "ok" and status["KEPT-1"] == "failed" and status["KEPT-2"] == "skipped", status


@pytest.mark.parametrize("name", ["dvh\u0000.csv", "dvh\ud800.csv"])
def test_a_file_name_no_file_system_can_hold_in_meta_json_makes_the_case_damaged(tmp_path, capsys, name):
    """Twenty-first hostile trial U6: one name in a kept case's meta.json `case_files` holding a NUL or a lone
    surrogate stopped export --resume, --append and merge with exit 2 and a usage message naming no case. Such a
    case's outputs are damaged: --resume exports it again, with the reason."""
    root = tmp_path / "a"
    hostile.study(root / "P1", "NAMES-1", seed=11)
    out = tmp_path / "out"
    assert _export(root, out) == 0
    (row,) = hostile.manifest(out)
    meta_path = out / row["case_id"] / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["case_files"].append(name)
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    capsys.readouterr()
    assert _export(root, out, "--resume") == 0
    text = capsys.readouterr().out
    assert "which is no name of a file in the case folder" in text, text
    (row,) = hostile.manifest(out)
    assert row["status"] == "ok"
    assert name not in json.loads(meta_path.read_text(encoding="utf-8"))["case_files"]


def _site_a_exported_beside_site_b(tmp_path: Path) -> tuple:
    """Two inputs, ``siteA`` and ``siteB``, whose one patient each has one case id (the same PatientID and layout,
    other patients and doses); siteA exported into ``tmp_path/out``. ``(out, export args, siteA's case folder)``."""
    spec = {"ct_size": (48, 48, 24), "dose_size": (24, 24, 12), "shuffle_files": False}
    hostile.study(tmp_path / "siteA" / "PAT1", "PAT1", 1, patient_name="Aaa^Bbb", **spec)
    hostile.study(tmp_path / "siteB" / "PAT1", "PAT1", 2, patient_name="Ccc^Ddd", **spec)
    out = tmp_path / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png"]
    assert main(["export", str(tmp_path / "siteA"), str(out), *args]) == 0
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    return out, args, case


def test_append_keeps_no_damaged_case_of_another_input_as_skipped(tmp_path, capsys):
    """Thirty-seventh hostile trial AK5: --append of an input whose case has the id of another input's case in OUT,
    that case's pair.npz damaged: the note said its row was left out (not complete), yet manifest.csv listed it as
    "skipped ... kept", a damaged case counted as exported. Its row is left out; this input's case fails by name."""
    out, args, case = _site_a_exported_beside_site_b(tmp_path)
    data = bytearray((case / "pair.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (case / "pair.npz").write_bytes(bytes(data))
    assert main(["export", str(tmp_path / "siteB"), str(out), *args, "--append"]) == 1
    assert "left out of manifest.csv, their case folders not complete" in capsys.readouterr().out
    rows = hostile.manifest(out)
    assert [(row["case_id"], row["status"]) for row in rows] == [(case.name, "failed")], rows
    assert "holds another input's case with this case id" in rows[0]["reason"]


def test_append_leaves_alone_a_case_folder_of_its_id_whose_meta_json_is_cut_short(tmp_path, capsys):
    """Thirty-seventh hostile trial AK6: --append of an input whose case has the id of a case folder in OUT whose
    meta.json is cut short replaced that folder: another input's outputs were gone. Under --append whose case such a
    folder holds cannot be told: it is left alone, this case fails by name; without --append (one input exported
    again) it is made again, as before."""
    out, args, case = _site_a_exported_beside_site_b(tmp_path)
    (case / "meta.json").write_bytes((case / "meta.json").read_bytes()[:300])
    before = hostile.snapshot(case)
    assert main(["export", str(tmp_path / "siteB"), str(out), *args, "--append"]) == 1
    capsys.readouterr()
    assert hostile.snapshot(case) == before
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed" and "its meta.json cannot be read" in row["reason"], row
    assert main(["export", str(tmp_path / "siteA"), str(out), *args]) == 0  # its own input: made again
    assert json.loads((case / "meta.json").read_text(encoding="utf-8"))["case_id"] == case.name


@pytest.mark.parametrize("mode", ["--append", "--shard"])
def test_an_id_inside_another_inputs_stamps_refuses_no_append(tmp_path, capsys, mode):
    """Fortieth hostile trial AN1: another input's kept case records each input file's size and time as a keyed hash
    (``stamp``, 16 hex digits); a PatientID of this input that is a run of its digits (``5004613``) refused --append
    and --shard ("holds what this input tells to be identity"). The stamps are DoseAlign's: not read for identity."""
    import re

    from DoseAlignLib.output.out_folder import keyed_stamps

    key_file = tmp_path / "site.key"
    key_file.write_text("5a" * 32, encoding="utf-8")
    spec = {"ct_size": (24, 24, 12), "dose_size": (12, 12, 6), "with_structures": False}
    site_a = hostile.study(tmp_path / "siteA" / "P1", "SITEA-1", 7, patient_name="Aaa^Bbb", **spec)
    dose = Path(site_a.dose_files[0])
    size = dose.stat().st_size
    for moment in range(1_700_000_000_000_000_000, 1_700_000_100_000_000_000, 1_000_000_000):
        stamp = keyed_stamps([{"size": size, "mtime_ns": moment}], bytes.fromhex("5a" * 32))[1][0]
        digits = re.search(r"(?<![0-9])[1-9][0-9]{6}(?![0-9])", stamp)
        if digits:  # this dose's stamp will hold a 7-digit run: the PatientID of site B
            break
    assert digits, "no time found whose stamp holds seven digits"
    os.utime(dose, ns=(moment, moment))
    out = tmp_path / "out"
    keys = ["--pseudonymize", "--key-file", str(key_file), "--map-file", str(tmp_path / "map.csv")]
    args = ["--quiet", "--workers", "1", "--no-qa-png", *keys]
    assert main(["export", str(tmp_path / "siteA"), str(out), *args]) == 0
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    stamps = [r["stamp"] for r in json.loads((case / "meta.json").read_text(encoding="utf-8"))["source"]["input_files"]]
    assert stamp in stamps  # (else this test proves nothing)
    hostile.study(tmp_path / "siteB" / "P2", digits.group(0), 8, patient_name="Ccc^Ddd", **spec)
    extra = ["--append"] if mode == "--append" else ["--shard", "1/1"]
    code = main(["export", str(tmp_path / "siteB"), str(out), *args, *extra])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    names = "manifest.csv" if mode == "--append" else "manifest.shard-1-of-1.csv"
    assert [row["status"] for row in hostile.manifest(out, names)].count("ok") >= 1


def test_shards_of_one_input_keep_no_case_of_the_others_from_running(tmp_path, capsys):
    """Forty-fourth hostile trial AR1: with ``--pseudonymize --roi-map``, a later shard of the same input was refused
    (exit 2, "cases of other inputs ... hold what this input tells to be identity") when a PatientID of its cases was
    a run of digits of the keyed hash ``options.roi_map.keyed_sha256`` the earlier shard's cases record: the other
    shards' cases were read as another input's, and that keyed hash as text. Both are DoseAlign's."""
    import hashlib
    import hmac
    import re

    key = "5a" * 32
    (tmp_path / "site.key").write_text(key, encoding="utf-8")
    for n in range(500):  # a map whose keyed hash holds a run of three to five digits: a PatientID of this input
        roi_map = {"Target": ["PTV"], f"Extra{n}": ["Marker"]}
        canonical = json.dumps(roi_map, sort_keys=True, ensure_ascii=False)
        digest = hmac.new(bytes.fromhex(key), f"dosealign|roi_map|{canonical}".encode(), hashlib.sha256).hexdigest()
        run = re.search(r"(?<![0-9])[1-9][0-9]{2,4}(?![0-9])", digest)
        if run:
            break
    (tmp_path / "map.json").write_text(json.dumps(roi_map), encoding="utf-8")
    spec = {"ct_size": (24, 24, 12), "dose_size": (12, 12, 6)}
    for n, patient in enumerate(["SHARD-A1", run.group(0), "SHARD-A3", "SHARD-A4"]):
        hostile.study(tmp_path / "in" / f"p{n}", patient, 150 + n, patient_name=f"Pat{'abcd'[n]}^Anna", **spec)
    out = tmp_path / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]
    args += ["--map-file", str(tmp_path / "map.csv"), "--roi-map", str(tmp_path / "map.json")]
    # each shard runs once while the other's cases are in OUT, whichever holds that patient
    for shard in (["--shard", "1/2"], ["--shard", "2/2"], ["--shard", "1/2", "--resume"]):
        code = main(["export", str(tmp_path / "in"), str(out), *args, *shard])
        printed = capsys.readouterr()
        assert code == 0, (shard, printed.out + printed.err)
    metas = [json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*/meta.json")]
    assert len(metas) == 4 and all(m["options"]["roi_map"]["keyed_sha256"] == digest for m in metas)
    assert main(["merge", str(out)]) == 0
    statuses = [row["status"] for row in hostile.manifest(out)]  # (shard 1's cases kept by --resume: skipped)
    assert len(statuses) == 4 and set(statuses) <= {"ok", "skipped"} and "ok" in statuses, statuses


def test_another_shards_case_has_the_id_its_own_shard_gives_it(tmp_path):
    """AR1: :meth:`Pseudonymizer.case_pseudonym` of a case, unrecorded, is the id :meth:`Pseudonymizer.prepare` gives
    it (with a PatientID, without one, of another summation type)."""
    from DoseAlignLib.dicom.scan import scan_folder
    from DoseAlignLib.link.cases import form_cases
    from DoseAlignLib.output.pseudonym import Pseudonymizer

    spec = {"ct_size": (24, 24, 12), "dose_size": (12, 12, 6), "with_structures": False}
    hostile.study(tmp_path / "in" / "a", "ONE-1", 160, **spec)
    truth = hostile.study(tmp_path / "in" / "b", "TWO-2", 161, **spec)
    for path in [*truth.ct_files, *truth.dose_files]:
        ds = dd.read(path)
        del ds.PatientID
        if ds.Modality == "RTDOSE":
            ds.DoseSummationType = "FRACTION"
        dd.save(ds, path)
    scan = scan_folder(tmp_path / "in")
    cases = form_cases(scan).cases
    assert len(cases) == 2
    pseudonymizer = Pseudonymizer(key=b"k" * 32)
    expected = [pseudonymizer.case_pseudonym(case) for case in cases]
    assert pseudonymizer.entries == {}  # (nothing recorded)
    pseudonymizer.prepare(scan, cases)
    assert [case.case_id for case in cases] == expected


@pytest.mark.parametrize("where", ["DoseAlign's prose", "an ROI name"])
def test_a_number_of_dosealigns_prose_in_another_inputs_case_is_no_id_of_this_input(tmp_path, capsys, where):
    """Forty-fourth hostile trial AR3: --append of an input whose PatientID is ``110`` was refused (exit 2, "holds
    what this input tells to be identity") because another input's kept case says "110 slices" in DoseAlign's own
    prose; in this input's own cases such numbers are rewritten, in a kept case they cannot be. An ID of digits
    alone is looked for in the names a kept case's input gave (an ROI ``PTV 110``: still refused), not in DoseAlign's
    prose."""
    spec = {"ct_size": (24, 24, 110), "dose_size": (12, 12, 20)}
    site_a = hostile.study(tmp_path / "siteA" / "P1", "SITEA-1", 170, patient_name="Aaa^Bbb", **spec)
    if where == "an ROI name":
        ds = dd.read(site_a.struct_file)
        ds.StructureSetROISequence[2].ROIName = "PTV 110"
        dd.save(ds, site_a.struct_file)
    out = tmp_path / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]
    (tmp_path / "site.key").write_text("5a" * 32, encoding="utf-8")
    assert main(["export", str(tmp_path / "siteA"), str(out), *args]) == 0
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    assert "(110 slices" in (case / "meta.json").read_text(encoding="utf-8")  # (else this test proves nothing)
    hostile.study(tmp_path / "siteB" / "P2", "110", 171, patient_name="Ccc^Ddd", ct_size=(24, 24, 12))
    code = main(["export", str(tmp_path / "siteB"), str(out), *args, "--append"])
    printed = capsys.readouterr()
    if where == "an ROI name":
        assert code == 2 and "hold what this input tells to be identity" in printed.err, printed.err
        return
    assert code == 0, printed.out + printed.err
    assert [row["status"] for row in hostile.manifest(out)] == ["ok", "ok"]  # (the kept case keeps its row)


def test_shards_of_one_input_name_its_rewritten_rois_as_one_export_does(tmp_path, capsys):
    """Forty-fourth hostile trial AR5: with a patient ``Lung^Wei`` every ``Lung_L`` is written ``[removed]_L``; a later
    shard read the earlier shard's cases as another input's, took their ``[removed]_L`` for another input's channel
    and tagged its own (``[removed]_L_307eeb34``): one ROI had two channel names in the merged dataset. Shards name
    each ROI as one export of the input does."""
    spec = {"ct_size": (24, 24, 12), "dose_size": (12, 12, 6)}
    names = ["Lung^Wei", "Kowalski^Jan", "Novak^Eva", "Berger^Ute"]
    for n, name in enumerate(names):
        truth = hostile.study(tmp_path / "in" / f"p{n}", f"MRN-10{n}234", 180 + n, patient_name=name, **spec)
        ds = dd.read(truth.struct_file)
        ds.StructureSetROISequence[2].ROIName = "Lung_L"
        dd.save(ds, truth.struct_file)
    (tmp_path / "site.key").write_text("5a" * 32, encoding="utf-8")
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]

    def structure_names(out: Path) -> dict:
        return {
            p.parent.name: json.loads(p.read_text(encoding="utf-8"))["structures"]["names"]
            for p in sorted(out.glob("*/meta.json"))
        }

    assert main(["export", str(tmp_path / "in"), str(tmp_path / "whole"), *args]) == 0
    whole = structure_names(tmp_path / "whole")
    assert len(whole) == 4 and all("[removed]_L" in n for n in whole.values()), whole  # (else it proves nothing)
    out = tmp_path / "out"
    for shard in ("1/2", "2/2"):
        assert main(["export", str(tmp_path / "in"), str(out), *args, "--shard", shard]) == 0
    assert main(["merge", str(out)]) == 0
    capsys.readouterr()
    assert structure_names(out) == whole


def _patient_with_roi(folder: Path, patient_id: str, seed: int, name: str, roi: str) -> None:
    """A small study of one patient in ``folder`` whose third ROI (Cord) is named ``roi``."""
    truth = hostile.study(folder, patient_id, seed, patient_name=name, ct_size=(24, 24, 12), dose_size=(12, 12, 6))
    ds = dd.read(truth.struct_file)
    ds.StructureSetROISequence[2].ROIName = roi
    dd.save(ds, truth.struct_file)


def test_resume_after_the_input_gained_an_roi_that_rewrites_alike_names_each_roi_once(tmp_path, capsys):
    """Forty-fourth hostile trial AR8: with a patient ``Lung^Wei`` every ``Lung_L`` is written ``[removed]_L``; the input
    then gained a patient ``Lens`` with a ``Lens_L`` (``[removed]_L`` too, so both are told apart by keyed tags), and
    ``--resume`` kept the earlier cases' untagged ``[removed]_L``: one ROI had two channel names in one OUT. Such a kept
    case is exported again."""
    root = tmp_path / "in"

    def patient(n: int, name: str, roi: str) -> None:
        _patient_with_roi(root / f"p{n}", f"MRN-20{n}555", 190 + n, name, roi)

    patient(0, "Lung^Wei", "Lung_L")
    patient(1, "Kowalski^Jan", "Lung_L")
    (tmp_path / "site.key").write_text("5a" * 32, encoding="utf-8")
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]
    out = tmp_path / "out"
    assert main(["export", str(root), str(out), *args]) == 0
    patient(2, "Lens^Maria", "Lens_L")
    patient(3, "Novak^Eva", "Lung_L")
    assert main(["export", str(root), str(out), *args, "--resume"]) == 0
    capsys.readouterr()
    written = [
        [n for n in json.loads(p.read_text(encoding="utf-8"))["structures"]["names"] if n.startswith("[removed]_L")]
        for p in sorted(out.glob("*/meta.json"))
    ]
    assert len(written) == 4 and all(len(names) == 1 for names in written), written
    channels = sorted(names[0] for names in written)
    assert len(set(channels)) == 2 and all(len(c) == len("[removed]_L") + 9 for c in channels), channels
    assert sorted(channels.count(c) for c in set(channels)) == [1, 3], channels


def test_resume_after_the_roi_that_rewrote_alike_left_the_input_names_each_roi_once(tmp_path, capsys):
    """Forty-sixth hostile trial AT7, the reverse of AR8: the patient ``Lens`` whose ``Lens_L`` made every lung a
    keyed-tag channel (``[removed]_L_307eeb34``) left the input; ``--resume`` kept the tagged lungs and wrote the new
    case's lung untagged (``[removed]_L``). Such a kept case is exported again."""
    import shutil

    root = tmp_path / "in"

    def patient(n: int, name: str, roi: str) -> None:
        _patient_with_roi(root / f"p{n}", f"MRN-30{n}555", 200 + n, name, roi)

    patient(0, "Lung^Wei", "Lung_L")
    patient(1, "Kowalski^Jan", "Lung_L")
    patient(2, "Lens^Maria", "Lens_L")
    (tmp_path / "site.key").write_text("5a" * 32, encoding="utf-8")
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]
    out = tmp_path / "out"
    assert main(["export", str(root), str(out), *args]) == 0
    shutil.rmtree(root / "p2")
    patient(3, "Novak^Eva", "Lung_L")
    assert main(["export", str(root), str(out), *args, "--resume"]) == 0
    capsys.readouterr()
    listed = {row["case_id"] for row in hostile.manifest(out)}
    written = [
        [n for n in json.loads((out / case / "meta.json").read_text(encoding="utf-8"))["structures"]["names"]
         if n.startswith("[removed]_L")]
        for case in sorted(listed)
    ]  # fmt: skip
    assert len(written) == 3 and {tuple(names) for names in written} == {("[removed]_L",)}, written


def test_a_number_of_dosealigns_prose_in_another_inputs_failed_row_is_no_id_of_this_input(tmp_path, capsys):
    """Forty-eighth hostile trial AV1, AR3's sibling in manifest.csv: another input's failed row says "(3004,000C)
    GridFrameOffsetVector has 11 values for NumberOfFrames 12"; --append of an input whose PatientID is 3004 was
    refused (exit 2). Its cells are read as the kept case's meta.json is: an ID of digits alone in its ROI name only."""
    spec = {"ct_size": (24, 24, 12), "dose_size": (12, 12, 12), "with_structures": False}
    site_a = hostile.study(tmp_path / "siteA" / "P1", "SITEA-1", 172, patient_name="Aaa^Bbb", **spec)
    ds = dd.read(site_a.dose_files[0])
    ds.GridFrameOffsetVector = list(ds.GridFrameOffsetVector)[:-1]
    dd.save(ds, site_a.dose_files[0])
    (tmp_path / "site.key").write_text("5a" * 32, encoding="utf-8")
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "siteA"), str(out), *args]) == 1
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed" and "(3004,000C)" in row["reason"], row  # (else this test proves nothing)
    hostile.study(tmp_path / "siteB" / "P2", "3004", 173, patient_name="Ccc^Ddd", **spec)
    code = main(["export", str(tmp_path / "siteB"), str(out), *args, "--append"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert sorted(row["status"] for row in hostile.manifest(out)) == ["failed", "ok"]


def test_an_roi_the_input_names_with_dosealigns_mark_is_kept_by_resume(tmp_path, capsys):
    """Forty-eighth hostile trial AV2: a case whose ROI the input itself names ``[removed]_L`` (an earlier
    de-identification) was exported again on every --resume, "its ROI names are written otherwise now", once another
    patient's ``Lung_L`` rewrote to the same name and was tagged: the input's own name is written as it is."""
    spec = {"ct_size": (24, 24, 12), "dose_size": (12, 12, 6)}
    for n, (patient, name, roi) in enumerate(
        [("ANON-4711", "Anon^Ymous", "[removed]_L"), ("MRN-1", "Lung^Wei", "Lung_L")]
    ):
        truth = hostile.study(tmp_path / "in" / f"p{n}", patient, 210 + n, patient_name=name, **spec)
        ds = dd.read(truth.struct_file)
        ds.StructureSetROISequence[2].ROIName = roi
        dd.save(ds, truth.struct_file)
    (tmp_path / "site.key").write_text("5a" * 32, encoding="utf-8")
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "in"), str(out), *args]) == 0
    assert main(["export", str(tmp_path / "in"), str(out), *args, "--resume"]) == 0
    capsys.readouterr()
    assert [row["status"] for row in hostile.manifest(out)] == ["skipped", "skipped"]


def test_resume_after_a_roi_named_with_dosealigns_mark_joined_the_input_tags_the_others(tmp_path, capsys):
    """Fiftieth hostile trial AX1, a regression of the AV2 fix: a patient ``Lung^Wei`` exported alone has his lungs as
    ``[removed]_L``; a pre-anonymized patient whose ROI is named ``[removed]_L`` itself joined the input, and
    --resume kept Wei's untagged name, as that ROI's literal name: one channel name for two ROIs. Only the case's own
    structure set's names count as its literal names: Wei's case is exported again, tagged."""
    root = tmp_path / "in"

    def patient(n: int, patient_id: str, name: str, roi: str) -> None:
        _patient_with_roi(root / f"p{n}", patient_id, 220 + n, name, roi)

    patient(0, "MRN-1", "Lung^Wei", "Lung_L")
    (tmp_path / "site.key").write_text("5a" * 32, encoding="utf-8")
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]
    out = tmp_path / "out"
    assert main(["export", str(root), str(out), *args]) == 0
    patient(1, "ANON-4711", "Anon^Ymous", "[removed]_L")
    assert main(["export", str(root), str(out), *args, "--resume"]) == 0
    capsys.readouterr()
    written = sorted(
        n
        for p in out.glob("*/meta.json")
        for n in json.loads(p.read_text(encoding="utf-8"))["structures"]["names"]
        if n.startswith("[removed]_L")
    )
    assert len(written) == 2 and written[0] == "[removed]_L" and written[1].startswith("[removed]_L_"), written
