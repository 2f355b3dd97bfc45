"""Hostile inputs, class 4: no case is exported wrong with status ok.

Each input below once exported as ``ok`` with wrong data; each must now fail its case with a row that
names the file and the tag (or, for harmless variants, export exactly as the clean input does):
an impostor CT slice or BEAM dose sharing a SOPInstanceUID with different pixels (identical copies,
and the same pixels stored otherwise, are kept once); DoseTypes other than PHYSICAL/EFFECTIVE
(EFFECTIVE exports, labelled); a CT, plan or structure set of another patient, a structure set in
another frame of reference; scalings out of plausible bounds on both sides (DoseGridScaling, and the
CT's RescaleSlope/Intercept).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
from pathlib import Path

import dicom_damage as dd
import hostile
import numpy as np
import pydicom
import pytest
from DoseAlignLib.cli import main
from pydicom.uid import generate_uid


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict:
    """One PLAN-dose study and one BEAM-sum study, and their clean exports."""
    base = tmp_path_factory.mktemp("wrong")
    plan = hostile.study(base / "plan" / "p", "WRONG-1", 5)
    beams = hostile.study(base / "beams" / "p", "WRONG-2", 6, write_plan_dose=False, write_beam_doses=True)
    outs = {}
    for name in ("plan", "beams"):
        out = base / f"{name}-out"
        assert main(["export", str(base / name), str(out), "--quiet", "--workers", "1", "--no-qa-png"]) == 0
        outs[name] = out
    return {"base": base, "plan": plan, "beams": beams, "outs": outs}


def _copy(clean: dict, name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(clean["base"] / name, root)
    return root


def _rel(clean: dict, name: str, path: Path) -> Path:
    return Path(path).relative_to(clean["base"] / name)


def _export(root: Path, tmp_path: Path, capsys) -> tuple:
    out = tmp_path / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"])
    capsys.readouterr()
    return code, hostile.manifest(out), out


def _one_ok_case(root: Path, tmp_path: Path, capsys) -> tuple:
    """Export ``root`` (one case): its row, which must be ok with exit 0, its audit flags and OUT."""
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert (code, row["status"]) == (0, "ok"), row
    return row, row["audit_flags"].split(";") if row["audit_flags"] else [], out


def _failed_with(rows: list, *phrases: str) -> dict:
    (row,) = [r for r in rows if r["status"] == "failed"]
    for phrase in phrases:
        assert phrase in row["reason"], f"{phrase!r} not in {row['reason']!r}"
    return row


def _same_as_clean(clean: dict, name: str, out: Path, rows: list) -> None:
    (row,) = rows
    (expected,) = hostile.manifest(clean["outs"][name])
    assert row["status"] == "ok" and row["case_id"] == expected["case_id"]
    for file in ("pair.npz", "meta.json"):
        assert (out / row["case_id"] / file).read_bytes() == (clean["outs"][name] / row["case_id"] / file).read_bytes()


# ---- one SOPInstanceUID, two files ---------------------------------------------------------------


def test_an_impostor_ct_slice_fails_the_case(clean, tmp_path, capsys):
    root = _copy(clean, "plan", tmp_path)
    victim = root / _rel(clean, "plan", clean["plan"].ct_files[3])
    impostor = victim.with_name("zz-" + victim.name)
    shutil.copy(victim, impostor)
    ds = dd.read(impostor)
    pixels = ds.pixel_array.copy()
    pixels[:4] += 500  # another image, same SOPInstanceUID, position and series
    ds.PixelData = pixels.tobytes()
    dd.save(ds, impostor)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, victim.name, impostor.name, "share SOPInstanceUID", "different images", "(0008,0018)")


@pytest.mark.parametrize("variant", ["byte copy", "re-exported header"])
def test_copies_of_one_slice_are_kept_once(clean, tmp_path, capsys, variant):
    root = _copy(clean, "plan", tmp_path)
    victim = root / _rel(clean, "plan", clean["plan"].ct_files[3])
    copy = victim.with_name("zz-" + victim.name)
    shutil.copy(victim, copy)
    if variant == "re-exported header":  # the same image, another exporter's private tags and times
        dd.rewrite_tags(copy, InstanceCreationTime="235959", StationName="ELSEWHERE")
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0
    (row,) = rows
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert copy.name not in json.dumps(meta["source"]["ct_files"])
    with (
        np.load(out / row["case_id"] / "pair.npz") as a,
        np.load(clean["outs"]["plan"] / row["case_id"] / "pair.npz") as b,
    ):
        np.testing.assert_array_equal(a["ct"], b["ct"])
        np.testing.assert_array_equal(a["dose"], b["dose"])


def test_beam_doses_sharing_a_uid_with_different_doses_fail(clean, tmp_path, capsys):
    root = _copy(clean, "beams", tmp_path)
    first = root / _rel(clean, "beams", clean["beams"].dose_files[0])
    impostor = first.with_name("zz-" + first.name)
    shutil.copy(first, impostor)
    ds = dd.read(impostor)
    ds.DoseGridScaling = str(float(ds.DoseGridScaling) * 2)
    dd.save(ds, impostor)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, "share SOPInstanceUID", "different doses", "(0008,0018)")
    # a byte copy of a beam dose is left out of the sum (the sum is the clean one)
    impostor.unlink()
    shutil.copy(first, impostor)
    code, rows, out = _export(root, tmp_path / "again", capsys)
    assert code == 0
    _same_as_clean_arrays(clean, "beams", out, rows)


def _recalculated_beam(first: Path, scale: float) -> Path:
    """A second dose of ``first``'s beam beside it: a new SOPInstanceUID, the dose scaled by ``scale``."""
    second = first.with_name("zz-recalc-" + first.name)
    shutil.copy(first, second)
    ds = dd.read(second)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[first.name, str(scale)])
    ds.DoseGridScaling = str(float(ds.DoseGridScaling) * scale)
    dd.save(ds, second)
    return second


def test_two_different_doses_of_one_beam_fail_the_beam_sum(clean, tmp_path, capsys):
    """Sixth hostile trial F14: a recalculated beam dose beside the old one (a new SOPInstanceUID, the dose
    x1.1) was left out of the sum by file name (the first won), the case ok with empty warnings: renaming
    the files decided the dose. Two different doses of one beam now fail the case naming both; the same
    dose under another UID is a copy, used once."""
    root = _copy(clean, "beams", tmp_path)
    first = root / _rel(clean, "beams", clean["beams"].dose_files[0])
    second = _recalculated_beam(first, 1.1)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, first.name, second.name, "two different doses of beam", "(300C,0006)")
    second.unlink()
    _recalculated_beam(first, 1.0)  # the same dose, another UID
    code, rows, out = _export(root, tmp_path / "again", capsys)
    assert code == 0
    _same_as_clean_arrays(clean, "beams", out, rows)


def test_two_different_doses_of_one_beam_beside_a_plan_dose_are_said(tmp_path, capsys):
    """F14 with a PLAN dose: the case exports the PLAN dose (the BEAM doses only feed the audit's beam-sum
    check), so it stays ok, with a warning naming both beam doses and the one the check uses."""
    truth = hostile.study(tmp_path / "in" / "p", "WRONG-3", 7, write_beam_doses=True)
    first = Path(truth.dose_files[1])
    second = _recalculated_beam(first, 1.1)
    code, rows, out = _export(tmp_path / "in", tmp_path, capsys)
    assert code == 0, rows
    (row,) = rows
    assert row["summation_type"] == "PLAN"
    for phrase in (first.name, second.name, "two different doses of beam", "check of the PLAN dose"):
        assert phrase in row["warnings"], row["warnings"]
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert any(second.name in w for w in meta["warnings"]), meta["warnings"]


@pytest.mark.parametrize("plan", ["without a fraction scheme", "absent"])
def test_a_beam_sum_missing_a_beam_is_never_silent(tmp_path, capsys, plan):
    """Tenth hostile trial J4: BEAM doses summed with one treated beam's dose missing were refused only when the plan
    has a fraction scheme. Without (300A,0070) FractionGroupSequence (Type U) the sum of the rest was exported ok
    (58.6 Gy of the plan's 63.1), no word: the plan's beams that are not SETUP are its treated beams then. With the
    plan absent, which beams it has cannot be known: the sum is exported with a case warning."""
    truth = hostile.study(tmp_path / "in" / "p", "WRONG-J4", 9, write_plan_dose=False, write_beam_doses=True)
    beams = [Path(f) for f, beam in zip(truth.dose_files, truth.dose_beam_numbers) if beam is not None]
    assert len(beams) >= 3
    beams[1].unlink()
    if plan == "absent":
        truth.plan_file.unlink()
    else:
        ds = dd.read(truth.plan_file)
        del ds.FractionGroupSequence
        dd.save(ds, truth.plan_file)
    code, rows, _out = _export(tmp_path / "in", tmp_path, capsys)
    (row,) = rows
    if plan == "absent":
        assert code == 0 and row["status"] == "ok", row
        assert "summed without their plan" in row["warnings"], row["warnings"]
    else:
        assert code == 1 and row["status"] == "failed", row
        assert "cover beams" in row["reason"] and "ReferencedBeamNumber" in row["reason"], row["reason"]


def _with_a_second_fraction_group(truth, fractions: int, planned: int = 30) -> list:
    """Give the plan of ``truth`` a second fraction group treating the same beams again (a boost phase of
    ``fractions`` with the same fields), and each BEAM dose a copy for it (new UID, its group number, the dose
    scaled by fractions / planned); returns the copies' files, in beam order."""
    plan = dd.read(truth.plan_file)
    second = copy.deepcopy(plan.FractionGroupSequence[0])
    second.FractionGroupNumber = 2
    second.NumberOfFractionsPlanned = fractions
    plan.FractionGroupSequence.append(second)
    dd.save(plan, truth.plan_file)
    copies = []
    for file, beam in zip(truth.dose_files, truth.dose_beam_numbers):
        if beam is None:
            continue
        ds = dd.read(file)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence[0].ReferencedFractionGroupNumber = 2
        ds.DoseGridScaling = float(ds.DoseGridScaling) * fractions / planned
        copies.append(Path(file).with_name(f"boost_{Path(file).name}"))
        dd.save(ds, copies[-1])
    return copies


@pytest.mark.parametrize("boost", ["complete", "missing a beam"])
def test_beam_doses_of_two_fraction_groups_sharing_beams_are_summed(tmp_path, capsys, boost):
    """Tenth hostile trial J3: a plan of two fraction groups treating the same beams (30 fractions, then a boost
    of 5 with the same fields), a BEAM dose per beam and group, each naming its group in (300C,0022)
    ReferencedFractionGroupNumber: the second group's doses were refused as rival copies of the first's ("two
    different doses of beam 6"), and the valid sum could not be exported. Beams are told apart by group now: the
    sum holds both groups (35/30 of the first's dose), and a beam missing from one group is named with it."""
    truth = hostile.study(tmp_path / "in" / "p", "FG-J3", 11, write_plan_dose=False, write_beam_doses=True)
    code, (alone,), first = _export(tmp_path / "in", tmp_path / "first", capsys)
    assert code == 0 and alone["status"] == "ok", alone
    copies = _with_a_second_fraction_group(truth, fractions=5)
    if boost == "missing a beam":
        copies[1].unlink()
    code, rows, out = _export(tmp_path / "in", tmp_path, capsys)
    (row,) = rows
    if boost == "missing a beam":
        assert code == 1 and row["status"] == "failed", row
        assert "not [2 (fraction group 2)]" in row["reason"], row["reason"]
        return
    assert code == 0 and row["status"] == "ok", row
    assert row["summation_type"] == "BEAM_SUM" and len(row["files"].split(";")) == 6, row
    with np.load(out / row["case_id"] / "pair.npz") as both, np.load(first / alone["case_id"] / "pair.npz") as one:
        np.testing.assert_allclose(both["dose"], one["dose"] * 35 / 30, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("extra_dose", ["naming no beam", "naming a group the plan lacks", "naming beam 99"])
def test_a_beam_dose_the_sum_cannot_place_is_not_added_in(tmp_path, capsys, extra_dose):
    """Twelfth hostile trial L6 and L1: beside a complete set of BEAM doses, a copy of beam 1's dose (x 1.01, new UID)
    without (300C,0020) ReferencedFractionGroupSequence, so naming no beam, was summed: dmax +17 %, ok, no word.
    Copies naming fraction group 2 of a plan that has only group 1 were summed as that group's: dose x 2, ok. The
    sum is refused now, naming the dose."""
    truth = hostile.study(tmp_path / "in" / "p", "BEAM-L6", 12, write_plan_dose=False, write_beam_doses=True)
    beams = [Path(f) for f, beam in zip(truth.dose_files, truth.dose_beam_numbers) if beam is not None]
    ds = dd.read(beams[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.DoseGridScaling = float(ds.DoseGridScaling) * 1.01
    if extra_dose == "naming no beam":
        del ds.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence
    elif extra_dose == "naming beam 99":
        group = ds.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence[0]
        group.ReferencedBeamSequence[0].ReferencedBeamNumber = 99
    else:
        ds.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence[0].ReferencedFractionGroupNumber = 2
    extra = beams[0].with_name(f"extra_{beams[0].name}")
    dd.save(ds, extra)
    code, rows, _out = _export(tmp_path / "in", tmp_path, capsys)
    (row,) = rows
    assert code == 1 and row["status"] == "failed", row
    assert extra.name in row["reason"], row["reason"]
    said = {
        "naming no beam": "names no beam",
        "naming a group the plan lacks": "names fraction group 2, which plan",
        "naming beam 99": "names beam(s) [99], which plan",
    }[extra_dose]
    assert said in row["reason"], row["reason"]


@pytest.mark.parametrize("doses", ["two of three", "all three", "one of three"])
def test_beam_doses_that_name_no_beam_are_counted_against_the_plans_beams(tmp_path, capsys, doses):
    """Fifty-fourth hostile trial BB4: BEAM doses that reference their plan but name no beam ((300C,0020)
    ReferencedFractionGroupSequence absent in every one) were summed unchecked: two of a plan's three beams exported as
    its dose (dmax 15.3 Gy of 30.6), status ok, no word; one alone was no "one beam's dose" either. Their number is
    compared with the plan's treated beams now: fewer (or more) fail the case, as many is a warned sum, one alone a
    warned case."""
    truth = hostile.study(tmp_path / "in" / "p", "BEAM-BB4", 15, write_plan_dose=False, write_beam_doses=True)
    beams = [Path(f) for f, beam in zip(truth.dose_files, truth.dose_beam_numbers) if beam is not None]
    assert len(beams) == 3
    kept = {"two of three": 2, "all three": 3, "one of three": 1}[doses]
    for path in beams[kept:]:
        path.unlink()
    for path in beams[:kept]:
        ds = dd.read(path)
        del ds.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence
        dd.save(ds, path)
    code, rows, _out = _export(tmp_path / "in", tmp_path, capsys)
    (row,) = rows
    if doses == "two of three":
        assert code == 1 and row["status"] == "failed", row
        assert "the 2 BEAM doses of plan" in row["reason"] and "treats 3 beams" in row["reason"], row["reason"]
        return
    assert code == 0 and row["status"] == "ok", row
    said = "taken from their number" if doses == "all three" else "one beam's dose"
    assert said in row["warnings"], row["warnings"]


def test_a_sum_of_one_fraction_group_of_two_is_said(tmp_path, capsys):
    """Twelfth hostile trial L2: a plan of two fraction groups (30 + 5 fractions, the same beams) with the BEAM doses
    of the first only was exported as the plan's BEAM_SUM, no word (63 Gy of a 73.6 Gy treatment). A case warning
    names the group without a dose."""
    truth = hostile.study(tmp_path / "in" / "p", "BEAM-L2", 13, write_plan_dose=False, write_beam_doses=True)
    for boost in _with_a_second_fraction_group(truth, fractions=5):
        boost.unlink()
    code, rows, _out = _export(tmp_path / "in", tmp_path, capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    assert "fraction groups [2] too" in row["warnings"], row["warnings"]


def test_a_plan_structure_set_that_names_no_image_gets_no_false_warning(tmp_path, capsys):
    """Twelfth hostile trial L4: the plan's RTSTRUCT without (3006,0012) RTReferencedStudySequence and without any
    ContourImageSequence (both Type 3; some systems write neither) was exported right but with the warning that it
    "names CT images that are not in the input (other UIDs?)". It names none: no warning, as without the plan."""
    truth = hostile.study(tmp_path / "in" / "p", "STRUCT-L4", 14)
    ds = dd.read(truth.struct_file)
    for frame in ds.ReferencedFrameOfReferenceSequence:
        if "RTReferencedStudySequence" in frame:
            del frame.RTReferencedStudySequence
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            if "ContourImageSequence" in contour:
                del contour.ContourImageSequence
    dd.save(ds, truth.struct_file)
    code, rows, out = _export(tmp_path / "in", tmp_path, capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    assert "names CT images" not in row["warnings"], row["warnings"]
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["structures"]["rois"], "the masks were not made"


def _without_plan_references(truth, how: str = "dropped") -> list:
    """Delete (300C,0002) ReferencedRTPlanSequence from every RTDOSE of ``truth`` (some exports drop it), or empty
    its item's ReferencedSOPInstanceUID; the BEAM doses' files, in beam order."""
    for path in truth.dose_files:
        ds = dd.read(path)
        if how == "dropped":
            del ds.ReferencedRTPlanSequence
        else:
            ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = ""
        dd.save(ds, path)
    return [Path(f) for f, beam in zip(truth.dose_files, truth.dose_beam_numbers) if beam is not None]


@pytest.mark.parametrize("how", ["dropped", "naming no plan"])
def test_beam_doses_without_a_plan_reference_are_no_cases_of_their_own(tmp_path, capsys, how):
    """Seventh hostile trial G3: RTDOSEs whose ReferencedRTPlanSequence was dropped exported the PLAN dose and each
    single-beam dose as a case of its own, all ok without a word (a consumer keeping ok rows trained on one beam's
    dose of the plan). Beside the PLAN dose of their patient and frame of reference the beam doses are left out,
    each listed with the reason (scan, and meta.json's dose.left_out); they do not feed the beam-sum check, since
    no reference ties them to the plan. Without a PLAN dose each stays a case, with a warning that it is one beam's
    dose, not the treatment's. So for a reference whose ReferencedSOPInstanceUID is empty (fifty-sixth trial BD4:
    each beam was an ok case of its own beside the PLAN dose, no word)."""
    truth = hostile.study(tmp_path / "in" / "p", "WRONG-G3", 8, write_beam_doses=True)
    beams = _without_plan_references(truth, how)
    assert len(beams) >= 2
    (plan_dose,) = [Path(f) for f, beam in zip(truth.dose_files, truth.dose_beam_numbers) if beam is None]
    code, rows, out = _export(tmp_path / "in", tmp_path, capsys)
    assert code == 0
    (row,) = rows
    assert (row["status"], row["summation_type"], row["files"]) == ("ok", "PLAN", f"p/{plan_dose.name}"), row
    assert row["beam_sum_max_diff_gy"] == "", row["beam_sum_max_diff_gy"]
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    left_out = {Path(item["file"]).name: item["reason"] for item in meta["dose"]["left_out"]}
    assert sorted(left_out) == sorted(b.name for b in beams), left_out
    for reason in left_out.values():
        for phrase in ("one beam's dose", "(300C,0002)", plan_dose.name, "not a case of its own"):
            assert phrase in reason, reason
    assert main(["scan", str(tmp_path / "in"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    (case,) = document["cases"]
    assert sorted(Path(item["file"]).name for item in case["left_out"]) == sorted(b.name for b in beams)

    plan_dose.unlink()  # the beam doses alone: each is a case, saying what it is
    code, rows, _out = _export(tmp_path / "in", tmp_path / "beams", capsys)
    assert code == 0
    assert sorted(Path(r["files"]).name for r in rows) == sorted(b.name for b in beams)
    for row in rows:
        assert (row["status"], row["summation_type"]) == ("ok", "BEAM"), row
        for phrase in ("one beam's dose", "not the treatment's", "(300C,0002)", Path(row["files"]).name):
            assert phrase in row["warnings"], row["warnings"]


def test_a_beam_dose_without_a_plan_reference_beside_a_beam_sum_is_left_out(tmp_path, capsys):
    """G3 beside a BEAM sum: the beam dose whose plan reference was dropped is left out of the sum's case, named with
    the reason, not exported as an ok case of its own (the sum misses its beam and fails, saying so)."""
    truth = hostile.study(tmp_path / "in" / "p", "WRONG-G3C", 8, write_plan_dose=False, write_beam_doses=True)
    stray = Path(truth.dose_files[0])
    ds = dd.read(stray)
    del ds.ReferencedRTPlanSequence
    dd.save(ds, stray)
    assert main(["scan", str(tmp_path / "in"), "--json"]) == 1
    (case,) = json.loads(capsys.readouterr().out)["cases"]
    assert case["summation_type"] == "BEAM_SUM" and stray.name not in " ".join(case["dose_files"]), case
    assert "(300C,0006)" in case["error"], case["error"]
    (item,) = case["left_out"]
    assert Path(item["file"]).name == stray.name
    for phrase in ("one beam's dose", "(300C,0002)", "sum of the BEAM doses", "not a case of its own"):
        assert phrase in item["reason"], item["reason"]


def test_beam_doses_of_a_plan_with_a_plan_dose_still_feed_its_audit(tmp_path, capsys):
    """G3's neighbour, kept: BEAM doses that reference the plan of a PLAN dose are no cases and nothing is left out;
    they feed the PLAN dose's beam-sum check."""
    hostile.study(tmp_path / "in" / "p", "WRONG-G3B", 8, write_beam_doses=True)
    code, rows, out = _export(tmp_path / "in", tmp_path, capsys)
    assert code == 0
    (row,) = rows
    assert (row["status"], row["summation_type"], row["warnings"]) == ("ok", "PLAN", ""), row
    assert row["beam_sum_max_diff_gy"] != ""
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["dose"]["left_out"] == []


def _beam_doses_by_number(root: Path) -> dict:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and dd.read(path, header_only=True).get("Modality") == "RTDOSE":
            ds = dd.read(path, header_only=True)
            (beam,) = ds.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence[0].ReferencedBeamSequence
            found[int(beam.ReferencedBeamNumber)] = path
    return found


def _refer_to_beams(path: Path, beams: list) -> None:
    """Make ``path`` a dose of several beams (its pixels unchanged: the export must refuse before adding)."""
    ds = dd.read(path)
    group = ds.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence[0]
    template = group.ReferencedBeamSequence[0]
    items = []
    for number in beams:
        item = copy.deepcopy(template)
        item.ReferencedBeamNumber = number
        items.append(item)
    group.ReferencedBeamSequence = items
    dd.save(ds, path)


def test_two_multi_beam_doses_sharing_a_beam_fail_the_beam_sum(clean, tmp_path, capsys):
    """Doses of beams [1, 2] and [2, 3] (no single-beam doses) were both added: beam 2 twice, status ok. They
    fail the case now, naming both files and the beam. Two doses of the same beams [1, 2] are one beam's two
    doses: a copy (the same dose, another UID) is used once, a different one fails as F14's do."""
    root = _copy(clean, "beams", tmp_path)
    doses = _beam_doses_by_number(root)
    assert sorted(doses) == [1, 2, 3]
    _refer_to_beams(doses[1], [1, 2])
    _refer_to_beams(doses[3], [2, 3])
    doses[2].unlink()
    code, rows, _out = _export(root, tmp_path / "overlap", capsys)
    assert code == 1
    _failed_with(rows, doses[1].name, doses[3].name, "both hold beam 2", "(300C,0006)")

    root = _copy(clean, "beams", tmp_path / "same")
    doses = _beam_doses_by_number(root)
    _refer_to_beams(doses[1], [1, 2])
    doses[2].unlink()
    copied = _recalculated_beam(doses[1], 1.0)  # beams [1, 2] again under another UID: a copy
    code, rows, out = _export(root, tmp_path / "copy", capsys)
    (row,) = rows
    assert (code, row["status"]) == (0, "ok"), row["reason"]
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert len(meta["source"]["rtdose_files"]) == 2, meta["source"]["rtdose_files"]  # the [1, 2] dose and beam 3
    copied.unlink()
    other = _recalculated_beam(doses[1], 1.1)
    code, rows, _out = _export(root, tmp_path / "different", capsys)
    assert code == 1
    _failed_with(rows, doses[1].name, other.name, "two different doses of beams [1, 2]")


@pytest.mark.parametrize("whole", ["another dose", "all zero"])
def test_a_dose_of_all_the_summed_beams_is_compared_with_the_sum(clean, tmp_path, capsys, whole):
    """Eighty-fourth hostile trial CF2: a dose of beams [1, 2, 3] beside the single-beam doses of those beams was left
    out of the sum ("each already in the sum") and never read: holding twice the sum, it gave no word. It is now
    compared with the sum, as a PLAN dose is with its beams' sum (beam_sum_mismatch); an all-zero one, as the rtkit
    phantom's, is said not compared."""
    root = _copy(clean, "beams", tmp_path)
    doses = _beam_doses_by_number(root)
    extra = _recalculated_beam(doses[1], 2.0 if whole == "another dose" else 1.0)
    _refer_to_beams(extra, [1, 2, 3])
    if whole == "all zero":
        ds = dd.read(extra)
        ds.PixelData = bytes(len(ds.PixelData))
        dd.save(ds, extra)
    code, rows, out = _export(root, tmp_path / "out", capsys)
    (row,) = rows
    assert (code, row["status"]) == (0, "ok"), row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    beam_sum = meta["audit"]["beam_sum"]
    assert len(beam_sum["files"]) == 3 and extra.name not in " ".join(meta["source"]["rtdose_files"])
    if whole == "all zero":
        assert "0 everywhere" in beam_sum["not_compared"] and "beam_sum_mismatch" not in row["audit_flags"], beam_sum
        return
    assert extra.name in beam_sum["compared_with"] and beam_sum["max_abs_diff_pct"] > 10, beam_sum
    assert "beam_sum_mismatch" in row["audit_flags"], row["audit_flags"]


def test_one_beam_dose_of_a_plan_of_several_beams_is_said(clean, tmp_path, capsys):
    """Seventh trial's G3 fix, noticed beside it: one BEAM dose of a three-beam plan, the other two doses absent and
    no PLAN dose, was an ok case with no word (a sum of two of the three fails, naming the missing beam). It stays a
    case (summation BEAM: one beam's dose, as the file says) with a warning naming the plan's other beams."""
    root = _copy(clean, "beams", tmp_path)
    doses = _beam_doses_by_number(root)
    doses[2].unlink()
    doses[3].unlink()
    code, rows, _out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert (code, row["status"], row["summation_type"]) == (0, "ok", "BEAM"), row
    assert doses[1].name in row["warnings"] and "treats beams [1, 2, 3]" in row["warnings"], row["warnings"]


def _same_as_clean_arrays(clean: dict, name: str, out: Path, rows: list) -> None:
    (row,) = rows
    (expected,) = hostile.manifest(clean["outs"][name])
    with (
        np.load(out / row["case_id"] / "pair.npz") as a,
        np.load(clean["outs"][name] / expected["case_id"] / "pair.npz") as b,
    ):
        np.testing.assert_array_equal(a["dose"], b["dose"])


# ---- what the dose means ---------------------------------------------------------------------------


@pytest.mark.parametrize("dose_type", ["ERROR", "BOGUS", None])
def test_dose_types_that_are_not_dose_are_refused(clean, tmp_path, capsys, dose_type):
    root = _copy(clean, "plan", tmp_path)
    dose = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    dd.rewrite_tags(dose, DoseType=dose_type)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    row = _failed_with(rows, "(3004,0004) DoseType", "not PHYSICAL or EFFECTIVE", dose.name)
    assert ("uncertainty" in row["reason"]) == (dose_type == "ERROR")


def test_an_effective_dose_exports_labelled(clean, tmp_path, capsys):
    root = _copy(clean, "plan", tmp_path)
    dose = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    dd.rewrite_tags(dose, DoseType="EFFECTIVE")
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0
    (row,) = rows
    assert "EFFECTIVE" in row["warnings"]
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["dose"]["type"] == "EFFECTIVE" and meta["arrays"]["dose"]["dose_type"] == "EFFECTIVE"
    assert any("biologically weighted" in w for w in meta["warnings"])


def test_a_physical_and_an_effective_dose_are_not_summed(clean, tmp_path, capsys):
    root = _copy(clean, "beams", tmp_path)
    dd.rewrite_tags(root / _rel(clean, "beams", clean["beams"].dose_files[1]), DoseType="EFFECTIVE")
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, "different DoseTypes", "(3004,0004)")


# ---- objects of another patient or frame ------------------------------------------------------------


@pytest.mark.parametrize("which", ["ct", "plan", "struct"])
def test_objects_of_another_patient_are_not_paired(clean, tmp_path, capsys, which):
    root = _copy(clean, "plan", tmp_path)
    truth = clean["plan"]
    files = {"ct": truth.ct_files, "plan": [truth.plan_file], "struct": [truth.struct_file]}[which]
    for path in files:
        dd.rewrite_tags(root / _rel(clean, "plan", path), PatientID="SOMEONE-ELSE")
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, "(0010,0020) PatientID", "'WRONG-1'", "'SOMEONE-ELSE'")


def test_a_structure_set_in_another_frame_of_reference_is_refused(clean, tmp_path, capsys):
    root = _copy(clean, "plan", tmp_path)
    struct = root / _rel(clean, "plan", clean["plan"].struct_file)
    ds = dd.read(struct)
    for item in ds.ReferencedFrameOfReferenceSequence:
        item.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.999.1"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.999.1"
    dd.save(ds, struct)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, struct.name, "1.2.826.0.1.3680043.10.999.1", "frame of reference")


def _struct_with_a_second_frame(clean: dict, tmp_path: Path, other_first: bool, moved: str = "one") -> tuple:
    """The plan study with a second frame listed in its RTSTRUCT (a registered MR) and ROIs drawn on it
    ((3006,0024) ReferencedFrameOfReferenceUID): ``moved`` "one" (the second ROI) or "all"."""
    root = _copy(clean, "plan", tmp_path)
    struct = root / _rel(clean, "plan", clean["plan"].struct_file)
    ds = dd.read(struct)
    other = "1.2.826.0.1.3680043.10.999.7"
    item = pydicom.Dataset()
    item.FrameOfReferenceUID = other
    items = list(ds.ReferencedFrameOfReferenceSequence)
    ds.ReferencedFrameOfReferenceSequence = [item, *items] if other_first else [*items, item]
    rois = list(ds.StructureSetROISequence)
    for roi in rois if moved == "all" else rois[1:2]:
        roi.ReferencedFrameOfReferenceUID = other
    dd.save(ds, struct)
    return root, struct, other, str(rois[1].ROIName)


@pytest.mark.parametrize("other_first", [False, True])
def test_an_roi_in_another_frame_of_reference_is_left_out_alone(clean, tmp_path, capsys, other_first):
    """F17 (sixth trial): the ROI drawn on another frame was rasterized on the CT as if in its frame (status ok,
    silent); with that frame listed first, the whole case failed for six ROIs drawn on the CT."""
    root, struct, other, moved = _struct_with_a_second_frame(clean, tmp_path, other_first)
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0, rows
    (row,) = rows
    assert row["status"] == "ok", row
    assert moved in row["warnings"] and "(3006,0024) ReferencedFrameOfReferenceUID" in row["warnings"], row
    assert other in row["warnings"], row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    skipped = {s["name"]: s["reason"] for s in meta["structures"]["skipped"]}
    assert moved in skipped and "(3006,0024)" in skipped[moved], skipped
    (clean_row,) = hostile.manifest(clean["outs"]["plan"])
    reference_path = clean["outs"]["plan"] / clean_row["case_id"] / "pair.npz"
    with np.load(out / row["case_id"] / "pair.npz") as pair, np.load(reference_path) as reference:
        names = list(meta["structures"]["names"])
        clean_meta = json.loads((clean["outs"]["plan"] / clean_row["case_id"] / "meta.json").read_text("utf-8"))
        clean_names = list(clean_meta["structures"]["names"])
        assert moved in clean_names and moved not in names
        assert names == [n for n in clean_names if n != moved]
        for name in names:  # the ROIs drawn on the CT: exactly as in the clean export
            np.testing.assert_array_equal(
                pair["masks"][names.index(name)], reference["masks"][clean_names.index(name)], err_msg=name
            )
        np.testing.assert_array_equal(pair["dose"], reference["dose"])


def test_a_structure_set_none_of_whose_rois_is_in_the_cts_frame_is_refused(clean, tmp_path, capsys):
    root, struct, other, _moved = _struct_with_a_second_frame(clean, tmp_path, other_first=False, moved="all")
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, struct.name, other, "frame of reference", "(3006,0024)")


def test_a_ct_that_names_no_frame_is_in_its_doses_frame(clean, tmp_path, capsys):
    """Sixty-seventh hostile trial BO3: a CT series without (0020,0052) FrameOfReferenceUID (an anonymizer dropped it)
    switched off the check of the structure set's frame: drawn in another frame than the dose's, it was exported onto
    the CT, ok, no warning. The CT is taken to be in its dose's frame."""
    root, struct, other, _moved = _struct_with_a_second_frame(clean, tmp_path, other_first=False, moved="all")
    for ct in clean["plan"].ct_files:
        path = root / _rel(clean, "plan", ct)
        ds = dd.read(path)
        del ds.FrameOfReferenceUID
        dd.save(ds, path)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, struct.name, other, "frame of reference", "names no frame", "(3006,0024)")


def _without_ct_frame(clean: dict, root: Path, which: str) -> None:
    for ct in clean[which].ct_files:
        path = root / _rel(clean, which, ct)
        ds = dd.read(path)
        del ds.FrameOfReferenceUID
        dd.save(ds, path)


def test_an_roi_in_another_frame_is_left_out_where_the_ct_names_none(clean, tmp_path, capsys):
    """Sixty-ninth hostile trial BQ1: on a CT without FrameOfReferenceUID, an ROI drawn in another frame than the
    dose's (3006,0024) was rasterized as if on the CT, ok, no warning (where the CT names its frame it is left out). It
    is left out with a warning."""
    root, _struct, other, moved = _struct_with_a_second_frame(clean, tmp_path, other_first=False)
    _without_ct_frame(clean, root, "plan")
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 0, rows
    (row,) = rows
    assert row["status"] == "ok" and moved in row["warnings"] and other in row["warnings"], row


def test_beam_doses_of_two_frames_fail_where_the_ct_names_none(clean, tmp_path, capsys):
    """Sixty-ninth hostile trial BQ3: on a CT without FrameOfReferenceUID, BEAM doses of two frames were summed, ok
    (where the CT names its frame, the case fails). The doses are compared with the first one's frame."""
    root = _copy(clean, "beams", tmp_path)
    _without_ct_frame(clean, root, "beams")
    dd.rewrite_tags(
        root / _rel(clean, "beams", clean["beams"].dose_files[1]), FrameOfReferenceUID="1.2.826.0.1.3680043.10.999.8"
    )
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, "1.2.826.0.1.3680043.10.999.8", "the CT names none", "(0020,0052)")


def test_a_patient_paired_as_one_is_one_patient_in_the_split(tmp_path, capsys):
    """F18 (sixth trial): a second plan on COH-001's CT whose RTPLAN/RTDOSE carry PatientID 'coh-001' was paired
    as one patient (a warning), yet split as two: the same CT in training and validation for some seeds, and
    two pseudonyms under --pseudonymize."""
    from DoseAlignLib.output.datalist import split_by_patient

    root = tmp_path / "in"
    truth = hostile.study(root / "P1", "SPL-001", 1, boost_fraction=0.3)
    for k in range(2, 6):
        hostile.study(root / f"P{k}", f"SPL-00{k}", k)
    for path in (truth.boost_plan_file, truth.boost_dose_file):
        dd.rewrite_tags(path, PatientID="spl-001")  # as some TPS or PACS exports change the case
    out = tmp_path / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"]) == 0
    capsys.readouterr()
    rows = hostile.manifest(out)
    ours = [r for r in rows if r["patient"].casefold() == "spl-001"]
    assert len(ours) == 2 and all(r["status"] == "ok" for r in ours), rows
    assert any("taken as one patient" in r["warnings"] for r in ours), ours
    assert {r["patient"] for r in ours} == {"SPL-001"}, ours  # the CT's PatientID
    for row in ours:
        meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
        assert meta["patient_id"] == "SPL-001", meta["patient_id"]
    patients = {r["case_id"]: r["patient"] for r in rows}
    raw = dict(patients, **{c: "spl-001" for c, p in patients.items() if "BOOST" in c})  # as the old rows said
    for seed in range(1, 9):
        for case_patients in (patients, raw):  # also the split of rows written before (merge, training)
            split = split_by_patient(case_patients, seed, 0.5)
            sides = {
                side for side in ("training", "validation") for c in split[side] if c in {r["case_id"] for r in ours}
            }
            assert len(sides) == 1, (seed, split)

    pseudo = tmp_path / "pseudo"
    key = tmp_path / "site.key"
    code = main(["export", str(root), str(pseudo), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize",
                 "--key-file", str(key)])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    rows = hostile.manifest(pseudo)
    counts: dict = {}
    for row in rows:
        counts[row["patient"]] = counts.get(row["patient"], 0) + 1
    assert sorted(counts.values()) == [1, 1, 1, 1, 2], counts  # five patients; both plans of P1 under one


def _integral_gy_cc(array: np.ndarray, spacing) -> float:
    return float(np.asarray(array, dtype=np.float64).sum() * np.prod(spacing) / 1000.0)


@pytest.mark.parametrize("reference", ["dose", "ct"])
def test_a_beam_sum_on_different_grids_is_not_cut_and_is_audited(clean, tmp_path, capsys, reference):
    """F22 (sixth trial): --reference dose put a BEAM sum whose beams lie on different grids on the first beam's
    grid (a third of its dose integral cut off, status ok), and the audit columns were empty for every sum."""
    from DoseAlignLib.api import read_rtdose

    root = _copy(clean, "beams", tmp_path)
    beams = [root / _rel(clean, "beams", path) for path in clean["beams"].dose_files]
    assert len(beams) >= 2
    for n, path in enumerate(beams[1:], 1):  # each further beam's grid moved by whole voxels: sticks out
        ds = dd.read(path)
        row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        step_col, step_row = float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])
        shift = (3 * n) * step_col * row - (2 * n) * step_row * col
        ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient, float) + shift]
        dd.save(ds, path)
    total = 0.0
    for path in beams:
        volume = read_rtdose(path)[0]
        total += _integral_gy_cc(volume.array, volume.grid.spacing)
    out = tmp_path / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--reference", reference])
    capsys.readouterr()
    assert code == 0
    (row,) = hostile.manifest(out)
    assert row["status"] == "ok", row
    for column in ("dmax_native_gy", "dmax_diff_pct", "outside_integral_pct"):  # the audit runs for sums too
        assert row[column] != "", (column, row)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert "covering" in meta["dose"]["native_sum"], meta["dose"]
    native_max = float(row["dmax_native_gy"])
    with np.load(out / row["case_id"] / "pair.npz") as pair:
        dose = pair["dose"]
    if reference == "dose":  # every beam's dose inside the output grid: nothing cut off
        assert _integral_gy_cc(dose, meta["spacing"]) == pytest.approx(total, rel=1e-4)
        assert float(row["outside_integral_pct"]) == pytest.approx(0.0, abs=1e-3)
        assert float(dose.max()) == pytest.approx(native_max, rel=1e-4)
    else:  # the audit's native sum holds the whole dose, whatever the CT grid keeps of it
        audit = meta["audit"]["dose"]
        assert audit["native"]["integral_gy_l"] * 1000.0 == pytest.approx(total, rel=1e-4)


def test_a_beam_sum_cut_by_the_output_grid_is_flagged(clean, tmp_path, capsys):
    """F22: with the audit running for sums, a sum cut by the output grid is flagged (here a small custom cube)."""
    root = _copy(clean, "beams", tmp_path)
    beams = [root / _rel(clean, "beams", path) for path in clean["beams"].dose_files]
    ds = dd.read(beams[-1])
    ds.ImagePositionPatient = [float(v) + 2.0 for v in ds.ImagePositionPatient]  # off the others' lattice
    dd.save(ds, beams[-1])
    out = tmp_path / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--reference", "custom",
                 "--size", "4,4,4", "--spacing", "1,1,1"])  # fmt: skip
    capsys.readouterr()
    assert code == 0
    (row,) = hostile.manifest(out)
    assert float(row["outside_integral_pct"]) > 1.0, row
    assert "dose_outside_grid" in row["audit_flags"].split(";"), row


@pytest.mark.parametrize("degrees", [0.02, 0.05, 0.08, 0.3])
def test_a_dose_grid_rotated_by_a_hair_is_resampled_as_rotated(degrees):
    """F20 (sixth trial): a grid rotated by less than ~0.08 deg about z was resampled as if unrotated (the axes
    taken as parallel within 1e-6 of the cosine, i.e. 1.4e-3 of the sine): a displacement of 1e-3 x the
    distance from the origin. A linear dose must come out exactly (to float32) at any rotation."""
    from DoseAlignLib.api import Grid, Interpolator, Volume, resample

    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    axes = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # columns: i, j, k directions
    spacing = np.array([4.0, 4.0, 3.0])
    source = Grid.from_spacing((12, 100, 100), spacing, (-200.0, -200.0, -15.0), axes)
    ijk = np.stack(np.meshgrid(np.arange(100), np.arange(100), np.arange(12), indexing="ij"), axis=-1)
    lps = source.index_to_lps(ijk.reshape(-1, 3).astype(float)).reshape(100, 100, 12, 3)
    gradient = np.array([0.05, 0.02, 0.01])  # Gy/mm

    def field(points):
        return 30.0 + points @ gradient

    values = np.transpose(field(lps), (2, 1, 0)).astype(np.float32)  # [k, j, i]
    target = Grid.from_spacing((10, 80, 80), (3.0, 3.0, 3.0), (-120.0, -120.0, -12.0))
    out = resample(Volume(values, source, "GY"), target, Interpolator.LINEAR, fill=-1.0)
    tijk = np.stack(np.meshgrid(np.arange(80), np.arange(80), np.arange(10), indexing="ij"), axis=-1)
    tlps = target.index_to_lps(tijk.reshape(-1, 3).astype(float)).reshape(80, 80, 10, 3)
    expected = np.transpose(field(tlps), (2, 1, 0))
    inside = out != -1.0
    assert inside.mean() > 0.9
    error = np.abs(out[inside] - expected[inside]).max()
    assert error < 2e-4, f"{degrees} deg: max error {error:.5f} Gy (a displacement of {error / 0.055:.3f} mm)"


@pytest.mark.parametrize("degrees, equal", [(0.0, True), (1e-5, True), (0.01, False), (0.05, False)])
def test_grids_whose_far_voxels_differ_are_not_equal(degrees, equal):
    """Grid.equal compared the affines' entries within 1e-3: a 512 x 512 grid of 1 mm voxels rotated by 0.05 deg
    (entries change by 8.7e-4) was "equal", though its far corner lies 0.45 mm away; per-beam doses on such grids
    were added voxel by voxel, and a target "equal" to the CT took the CT unresampled. Equal now means every voxel
    centre within 1e-3 mm (1e-5 deg moves the far corner by 1.3e-4 mm)."""
    from DoseAlignLib.api import Grid

    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    axes = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    first = Grid.from_spacing((100, 512, 512), (1.0, 1.0, 2.0), (-255.5, -255.5, -100.0), frame_of_reference_uid="1.2")
    other = Grid.from_spacing((100, 512, 512), (1.0, 1.0, 2.0), (-255.5, -255.5, -100.0), axes, "1.2")
    far = np.array([511.0, 511.0, 99.0])
    moved = np.linalg.norm(first.index_to_lps(far) - other.index_to_lps(far))
    assert (moved <= 1e-3) == equal, moved
    assert first.equal(other) is equal and other.equal(first) is equal
    uneven = Grid.from_spacing((100, 512, 512), (1.0, 1.0, 2.0), (-255.5, -255.5, -100.0), frame_of_reference_uid="1.2")
    offsets = np.arange(100) * 2.0
    offsets[50:] += 0.01  # one gap 10 um wider: slices 50-99 lie elsewhere
    uneven = Grid(uneven.shape, uneven.affine, "1.2", offsets)
    assert not first.equal(uneven) and not uneven.equal(first)


@pytest.mark.parametrize("plain, other", [("CTV_1", "CTV 1"), ("Lung_L", "Lung:L"), ("ptv", "PTV?")])
def test_a_mask_file_named_after_an_roi_holds_that_roi(tmp_path, capsys, plain, other):
    """Seventh hostile trial G10: with ROIs `CTV 1` (listed first) and `CTV_1`, masks/CTV_1.nii.gz held `CTV 1`
    and `CTV_1` went to CTV_1-2.nii.gz; loaders pick masks by file name. A name that is file-safe as it is keeps
    it; only the names made file-safe take a suffix. Checked against pair.npz's channels, NIfTI and NRRD."""
    pytest.importorskip("nibabel")
    pytest.importorskip("nrrd")
    import nibabel
    import nrrd

    truth = hostile.study(tmp_path / "in" / "p", "WRONG-10", 11)
    ds = dd.read(truth.struct_file)
    rois = ds.StructureSetROISequence
    rois[1].ROIName, rois[2].ROIName = other, plain  # the sanitized one first
    dd.save(ds, truth.struct_file)
    out = tmp_path / "out"
    code = main(
        ["export", str(tmp_path / "in"), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--format", "nifti,nrrd"]
    )
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), row["reason"]
    case = out / row["case_id"]
    meta = json.loads((case / "meta.json").read_text(encoding="utf-8"))
    names = meta["structures"]["names"]
    with np.load(case / "pair.npz") as npz:
        masks = np.unpackbits(npz["masks"], axis=-1, count=npz["ct"].shape[2]).astype(bool)
    assert not np.array_equal(masks[names.index(plain)], masks[names.index(other)])  # else the test tells nothing
    for fmt, read in (
        ("nifti", lambda f: np.asanyarray(nibabel.load(f).dataobj).transpose(2, 1, 0)),
        ("nrrd", lambda f: nrrd.read(str(f), index_order="C")[0]),
    ):
        files = meta["exports"][fmt]["files"]["masks"]
        assert Path(files[plain]).stem.split(".")[0] == plain, files
        for name in (plain, other):
            assert np.array_equal(read(case / files[name]).astype(bool), masks[names.index(name)]), (fmt, name)


# ---- scalings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scaling", "phrase"),
    [(1e-30, "outside the plausible"), (1e-10, "below 0.0001 Gy"), (5e3, "beyond 100000 Gy"), (1e6, "outside")],
)
def test_dose_grid_scaling_is_bounded_on_both_sides(clean, tmp_path, capsys, scaling, phrase):
    root = _copy(clean, "plan", tmp_path)
    dose = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    dd.rewrite_tags(dose, DoseGridScaling=f"{scaling:g}")
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, "(3004,000E) DoseGridScaling", phrase)


@pytest.mark.parametrize(
    ("tags", "phrase"),
    [
        ({"RescaleSlope": "1e-06"}, "outside the plausible"),
        ({"RescaleSlope": "-1"}, "outside the plausible"),
        ({"RescaleSlope": "1000000"}, "outside the plausible"),
        ({"RescaleIntercept": "1e+09"}, "beyond the plausible"),
        ({"RescaleSlope": "30", "RescaleIntercept": "-1024"}, "beyond the int16 CT array"),
    ],
)
def test_ct_rescale_is_bounded_on_both_sides(clean, tmp_path, capsys, tags, phrase):
    root = _copy(clean, "plan", tmp_path)
    victim = root / _rel(clean, "plan", clean["plan"].ct_files[2])
    dd.rewrite_tags(victim, **tags)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, victim.name, "Rescale", phrase)


def test_one_ct_slice_of_another_patient_fails_the_case(clean, tmp_path, capsys):
    root = _copy(clean, "plan", tmp_path)
    victim = root / _rel(clean, "plan", clean["plan"].ct_files[4])
    dd.rewrite_tags(victim, PatientID="SOMEONE-ELSE")
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    _failed_with(rows, "(0010,0020) PatientID", "'SOMEONE-ELSE'", victim.name)
    # written otherwise (case) it is taken for the same patient, and the manifest says so
    dd.rewrite_tags(victim, PatientID="wrong-1")
    code, rows, _out = _export(root, tmp_path / "again", capsys)
    assert code == 0 and "'wrong-1' (taken as one patient)" in rows[0]["warnings"], rows


def test_a_copy_of_a_slice_in_another_folder_is_reported(clean, tmp_path):
    root = _copy(clean, "plan", tmp_path)
    victim = root / _rel(clean, "plan", clean["plan"].ct_files[2])
    (victim.parent / "copy").mkdir()
    shutil.copy(victim, victim.parent / "copy" / victim.name)
    done = hostile.dosealign("scan", str(root))
    assert "one CT slice in 2 series (folders): copies, each series keeps its own" in done.stdout, done.stdout


@pytest.mark.parametrize("variant", ["byte copy", "other contours"])
def test_copies_of_one_structure_set(clean, tmp_path, capsys, variant):
    """From a fresh hostile trial: two RTSTRUCT files with one SOPInstanceUID were both used, so every ROI
    came twice (PTV, PTV_2), the second from the other file. A byte copy is used once; a file with other
    contours under the same UID fails the case naming both."""
    root = _copy(clean, "plan", tmp_path)
    original = root / _rel(clean, "plan", clean["plan"].struct_file)
    (root / "copy").mkdir()
    copy = root / "copy" / original.name
    shutil.copy(original, copy)
    if variant == "other contours":
        ds = dd.read(copy)
        for item in ds.ROIContourSequence:
            for contour in item.ContourSequence:
                contour.ContourData = [
                    float(v) + (7.0 if n % 3 == 0 else 0.0) for n, v in enumerate(contour.ContourData)
                ]
        dd.save(ds, copy)
    code, rows, out = _export(root, tmp_path, capsys)
    if variant == "byte copy":
        assert code == 0
        (row,) = rows
        (expected,) = hostile.manifest(clean["outs"]["plan"])
        assert row["status"] == "ok" and row["n_rois"] == expected["n_rois"], (row, expected)
        meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
        assert len(meta["source"]["rtstruct_files"]) == 1, meta["source"]
        assert not [n for n in meta["structures"]["names"] if n.endswith("_2")], meta["structures"]["names"]
        with (
            np.load(out / row["case_id"] / "pair.npz") as a,
            np.load(clean["outs"]["plan"] / row["case_id"] / "pair.npz") as b,
        ):
            assert np.array_equal(a["masks"], b["masks"])  # one set of channels, as without the copy
    else:
        assert code == 1
        _failed_with(rows, original.name, f"copy/{original.name}", "share SOPInstanceUID", "(0008,0018)")


@pytest.mark.parametrize("variant", ["byte copy", "another description", "another prescription"])
def test_copies_of_one_plan(clean, tmp_path, capsys, variant):
    """Fifteenth hostile trial O4: two RTPLAN files with one SOPInstanceUID and another prescription (60 and 10 Gy):
    the case used the last by file name without a word, so the prescription, its audit flag and the plan's other
    values followed the names. A copy (the same bytes, or the same values the export reads) is used once, the first
    by path, with a note; a file that differs in what the export reads fails the case naming both."""
    root = _copy(clean, "plan", tmp_path)
    original = root / _rel(clean, "plan", clean["plan"].plan_file)
    copy = original.parent / "zz_plan_copy.dcm"  # after the original by name: the one the export used
    shutil.copy(original, copy)
    if variant != "byte copy":
        ds = dd.read(copy)
        if variant == "another description":
            ds.RTPlanDescription = "printed again"
        else:
            ds.DoseReferenceSequence[0].TargetPrescriptionDose = "10"
        dd.save(ds, copy)
    code, rows, out = _export(root, tmp_path, capsys)
    if variant == "another prescription":
        assert code == 1
        _failed_with(rows, original.name, copy.name, "share SOPInstanceUID", "prescription_gy", "(0008,0018)")
        return
    assert code == 0
    (row,) = rows
    (expected,) = hostile.manifest(clean["outs"]["plan"])
    assert (row["status"], row["case_id"], row["audit_flags"]) == ("ok", expected["case_id"], expected["audit_flags"])
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"]["rtplan_file"] == original.relative_to(root).as_posix(), meta["source"]
    assert any(f"RTPLAN p/{copy.name} is a copy of p/{original.name}" in link for link in meta["links"]), meta["links"]


@pytest.mark.parametrize("variant", ["byte copy", "re-encoded"])
def test_a_copy_of_a_plan_dose_is_used_once(clean, tmp_path, capsys, variant):
    """Sixteenth hostile trial P12: a byte copy of a PLAN dose (a patient exported twice into one tree) was a second
    case of the same dose, and stopped --sum-plans. A copy (the same bytes, or the same dose stored otherwise) is
    used once, the first by path; the scan lists the other as a copy."""
    import pydicom

    root = _copy(clean, "plan", tmp_path)
    original = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    (root / "zz_copy").mkdir()  # after the original by path: the original is the one used
    copy = root / "zz_copy" / "RD_again.dcm"
    if variant == "byte copy":
        shutil.copy(original, copy)
    else:
        ds = pydicom.dcmread(str(original))
        dd.save_encoded(ds, copy, pydicom.uid.ImplicitVRLittleEndian)
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0
    _same_as_clean(clean, "plan", out, rows)
    done = hostile.dosealign("scan", "--json", str(root))
    orphans = json.loads(done.stdout)["orphans"]
    assert any("zz_copy/RD_again.dcm" in json.dumps(o) and "a copy of" in json.dumps(o) for o in orphans), orphans
    duplicates = json.dumps(json.loads(done.stdout)["duplicates"])  # the scan's line says the rule, not "each kept"
    assert "RTDOSE files sharing one SOPInstanceUID: a copy" in duplicates, duplicates


def test_a_dose_of_the_same_values_under_another_plan_is_no_copy(clean, tmp_path, capsys):
    """Seventeenth hostile trial Q3: an RTDOSE file with the same SOPInstanceUID and values as the case's dose but
    referencing another plan was taken for a copy, and whichever sorted first by name decided the case's plan,
    prescription, id and flags. Files that say otherwise what they belong to are no copies: the case of the
    original dose is as it was, whatever the other file is called."""
    root = _copy(clean, "plan", tmp_path)
    original = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    ds = dd.read(original)
    ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = "2.25.1234567"  # a plan not in the input
    dd.save(ds, original.with_name("0000_other_plan.dcm"))  # sorts before the original
    code, rows, out = _export(root, tmp_path, capsys)
    (expected,) = hostile.manifest(clean["outs"]["plan"])
    (row,) = [r for r in rows if r["case_id"] == expected["case_id"]]
    assert (row["status"], row["audit_flags"]) == ("ok", expected["audit_flags"]), row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"]["rtdose_files"] == [original.relative_to(root).as_posix()], meta["source"]


def test_plans_that_sum_plans_cannot_add_up_are_case_warnings(clean, tmp_path, capsys):
    """With --sum-plans, plans on one CT that cannot be added up (here two PLAN doses of one plan, a recalculation)
    are exported one case each: each case's dose is one plan's, not the sum asked for. That was a note in
    meta.json only; it is a case warning (sixth hostile trial, review of what reaches only meta.json)."""
    from DoseAlignLib.cli import main

    root = _copy(clean, "plan", tmp_path)
    first = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    second = first.with_name("zz-recalc-" + first.name)
    shutil.copy(first, second)
    ds = dd.read(second)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[first.name, "plan"])
    ds.DoseGridScaling = str(float(ds.DoseGridScaling) * 0.5)
    dd.save(ds, second)
    out = tmp_path / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--sum-plans"]) == 0
    capsys.readouterr()
    rows = hostile.manifest(out)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
    for row in rows:
        assert "not summed with the other plans on its CT (--sum-plans)" in row["warnings"], row["warnings"]
        assert "doses of the same plan" in row["warnings"], row["warnings"]


# ---- a structure set that is there but cannot be read ---------------------------------------------


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_a_damaged_structure_set_is_said_by_its_case(clean, tmp_path, capsys, cut):
    """Sixth hostile trial F6: the plan's RTSTRUCT cut short (30/60/95 % of its length) left a failed row for the
    file, but its case exported ok with no masks and nothing in its own row or meta.json, and `dosealign scan`
    said the plan's RTSTRUCT "is not in the input". The case now says, in its warnings, that its structure set
    is present but damaged (a case without any RTSTRUCT still exports without masks, silently)."""
    root = _copy(clean, "plan", tmp_path)
    struct = root / _rel(clean, "plan", clean["plan"].struct_file)
    data = struct.read_bytes()
    struct.write_bytes(data[: int(len(data) * cut)])
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 1  # the damaged file's own row
    (case,) = [r for r in rows if r["status"] == "ok"]
    for phrase in (struct.name, "the plan's structure set", "present but damaged", "none of its ROIs"):
        assert phrase in case["warnings"], case["warnings"]
    meta = json.loads((out / case["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert any(struct.name in w and "damaged" in w for w in meta["warnings"]), meta.get("warnings")
    done = hostile.dosealign("scan", str(root))
    assert "is present but damaged" in done.stdout and "is not in the input" not in done.stdout, done.stdout


def test_a_damaged_copy_beside_the_whole_structure_set_is_a_note_not_a_warning(clean, tmp_path, capsys):
    """Eighty-second hostile trial CD3: a half-written copy of the plan's RTSTRUCT (its first 60 %, the same
    SOPInstanceUID) beside the whole file: the case used the whole file, every ROI in its masks, and warned that its
    structure set "is present but damaged ... none of its ROIs is in this case's masks". Now a note says the damaged
    file is a copy of the one used."""
    root = _copy(clean, "plan", tmp_path)
    struct = root / _rel(clean, "plan", clean["plan"].struct_file)
    data = struct.read_bytes()
    (struct.parent / "partial-copy.dcm").write_bytes(data[: int(len(data) * 0.6)])
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 1  # the damaged file's own row
    (case,) = [r for r in rows if r["status"] == "ok"]
    assert "present but damaged" not in case["warnings"], case["warnings"]
    meta = json.loads((out / case["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert any("partial-copy.dcm is a damaged copy of" in n for n in meta["links"]), meta["links"]
    assert len(meta["structures"]["names"]) >= 3


@pytest.mark.parametrize("damage", ["cut short", "overwritten, its size and time kept"])
def test_a_structure_set_that_cannot_be_read_when_its_case_runs_is_said(clean, tmp_path, capsys, monkeypatch, damage):
    """F6, the second way: the RTSTRUCT was readable when the input was scanned and is not when the case reads
    it (replaced, cut short): the case's warnings said so (it was only in meta.json's structures.skipped). Now the
    case fails, named: cut short, by its size (forty-fifth trial AS1); damaged with its size and time kept, by its
    inode's change time and the SOPInstanceUID it no longer shows (forty-ninth AW4)."""
    from DoseAlignLib import batch

    root = _copy(clean, "plan", tmp_path)
    struct = root / _rel(clean, "plan", clean["plan"].struct_file)
    real = batch.form_cases

    def damaged_after_the_scan(*args, **kwargs):
        linked = real(*args, **kwargs)
        data, status = struct.read_bytes(), struct.stat()
        if damage == "cut short":
            struct.write_bytes(data[: len(data) // 2])
        else:
            struct.write_bytes(data[: len(data) // 2] + b"\xff" * (len(data) - len(data) // 2))
            os.utime(struct, ns=(status.st_atime_ns, status.st_mtime_ns))
        return linked

    monkeypatch.setattr(batch, "form_cases", damaged_after_the_scan)
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = rows
    rel = struct.relative_to(root).as_posix()
    if damage == "cut short":
        assert code == 1 and row["status"] == "failed", row
        assert row["reason"].startswith(f"{rel}: changed since the input was scanned (its size"), row["reason"]
        return
    # damaged in place, its size and time kept: the case fails where the file no longer shows its SOPInstanceUID
    # (pydicom 3 cannot read its header), else it runs and says the structure set cannot be read (pydicom 2.4 reads
    # the header; parsing its ROIs met "No tag to read", an internal error before); named either way
    if row["status"] == "failed":
        assert code == 1, row
        said = "changed since the input was scanned (its contents changed, its size and time kept"
        assert row["reason"].startswith(f"{rel}: {said}"), row["reason"]
    else:
        assert code == 0 and row["status"] == "ok" and row["n_rois"] == "0", row
        assert f"RTSTRUCT {rel} cannot be read: " in row["warnings"], row["warnings"]


# ---- a fixed channel that several ROIs map to --------------------------------------------------------


def _unpacked(case: Path) -> tuple:
    meta = json.loads((case / "meta.json").read_text(encoding="utf-8"))
    with np.load(case / "pair.npz") as npz:
        masks = np.unpackbits(npz["masks"], axis=-1, count=npz["ct"].shape[-1]).astype(bool)
    return meta, dict(zip(meta["structures"]["names"], masks))


@pytest.mark.parametrize(
    "mapping, channel, parts, other",
    [
        ({"Organs": ["Cord", "Ring"]}, "Organs", ("Cord", "Ring"), "PTV"),  # two organs, one channel (Lung_L, Lung_R)
        ({"PTV": ["PTV", "Ring"]}, "PTV", ("PTV", "Ring"), "Cord"),  # synonyms, and the patient has both
    ],
)
def test_a_channel_that_two_rois_map_to_is_their_union(tmp_path, capsys, mapping, channel, parts, other):
    """Sixth hostile trial F7: with --rois, a channel name two ROIs of a case map to held the first ROI only; the
    other was renamed <name>_2 and dropped as "not in --rois", a note in meta.json only, warnings empty. The
    channel is now their union, said as a case warning naming both, and meta.json lists the ROIs it holds; the
    audit's DVH uses that union, and no one ROI's contours stand for it as a reference DVH."""
    from DoseAlignLib.cli import main

    root = tmp_path / "in"
    hostile.study(root / "p", "UNION-1", 5, ct_size=(40, 36, 12), dose_size=(20, 18, 8))  # every ROI has voxels
    plain_out = tmp_path / "plain"
    args = ["export", str(root), str(plain_out), "--quiet", "--workers", "1", "--no-qa-png"]
    assert main(args) == 0
    roi_map = tmp_path / "map.json"
    roi_map.write_text(json.dumps(mapping), encoding="utf-8")
    out = tmp_path / "out"
    args = ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"]
    assert main([*args, "--roi-map", str(roi_map), "--rois", f"{channel},{other}"]) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    (plain_row,) = hostile.manifest(plain_out)
    meta, masks = _unpacked(out / row["case_id"])
    _plain_meta, plain = _unpacked(plain_out / plain_row["case_id"])
    union = plain[parts[0]] | plain[parts[1]]
    assert union.sum() > max(plain[parts[0]].sum(), plain[parts[1]].sum())  # neither alone is the union
    np.testing.assert_array_equal(masks[channel], union)
    np.testing.assert_array_equal(masks[other], plain[other])
    for phrase in (f"mask channel {channel!r}", "union of 2 ROIs", repr(parts[0]), repr(parts[1])):
        assert phrase in row["warnings"], row["warnings"]
    (entry,) = [r for r in meta["structures"]["rois"] if r["name"] == channel]
    assert sorted(u["original_name"] for u in entry["union_of"]) == sorted(parts)
    assert entry["voxel_count"] == int(union.sum())
    (audited,) = [r for r in meta["audit"]["rois"] if r["name"] == channel]
    assert "reference" not in audited and "union of 2 ROIs" in audited["reference_note"]
    assert audited["output"]["volume_cc"] == pytest.approx(entry["volume_cc"], rel=1e-6)
    assert meta["structures"]["channels"]["not_in_rois"] == [
        n for n in _plain_meta["structures"]["names"] if n not in (*parts, other)
    ]


# ---- ROI names: one name per ROI, the same in every output ---------------------------------------


def _name_formats() -> list:
    import importlib.util

    wanted = {"nifti": "nibabel", "nrrd": "nrrd", "hdf5": "h5py"}
    return ["npz"] + [f for f, module in wanted.items() if importlib.util.find_spec(module)]


def _names_in_every_output(case: Path) -> list:
    """The ROI names of a case folder, checked to be distinct and the same in every output that names ROIs:
    meta.json (names, rois, audit, reference DVH, the formats' mask files), dvh.csv, NRRD/NIfTI headers, HDF5."""
    meta = json.loads((case / "meta.json").read_text(encoding="utf-8"))
    names = meta["structures"]["names"]
    assert len({n.casefold() for n in names}) == len(names), f"two ROIs share a name: {names}"
    assert [r["name"] for r in meta["structures"]["rois"]] == names
    audit = meta["audit"]
    assert [e["name"] for e in audit["rois"]] == names
    with_reference = [e["name"] for e in audit["rois"] if e.get("reference")]
    assert sorted(audit["reference_dvh"]["rois"]) == sorted(with_reference)
    # dvh.csv: one block of rows per ROI, under its own name, each starting at 0 Gy
    blocks: list = []
    with open(case / "dvh.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not blocks or blocks[-1][0] != row["roi"]:
                blocks.append((row["roi"], float(row["dose_gy"])))
    assert [b[0] for b in blocks] == with_reference, blocks
    assert all(start == 0.0 for _name, start in blocks), blocks
    for fmt, written in meta["exports"].items():
        masks = written["files"].get("masks") if isinstance(written.get("files"), dict) else None
        if masks is None:
            continue
        assert list(masks) == names, (fmt, masks)
        assert len(set(masks.values())) == len(names), (fmt, masks)
        for name, file in masks.items():
            data = (case / file).read_bytes()
            if fmt == "nrrd":
                header = data.split(b"\n\n", 1)[0].decode("ascii")
                expected = f"ROI {name}".encode("unicode_escape").decode("ascii")
                assert f"content: {expected}\n" in header + "\n", (file, header)
            elif fmt == "nifti":
                import gzip

                description = gzip.decompress(data)[148:228].rstrip(b"\0").decode("utf-8", "replace")
                assert description == f"DoseAlign ROI {name}"[:80], (file, description)
    if "hdf5" in meta["exports"]:
        import h5py

        with h5py.File(case / "case.h5", "r") as h5:
            group = h5.get(meta["case_id"], h5)
            stored = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["mask_names"]]
        assert stored == names, stored
    return names


def test_rois_sharing_a_name_get_one_unique_name_in_every_output(tmp_path, capsys):
    """Two ROIs of one structure set with the same name (in any case) are told apart by the same name
    (``name_2``) in meta.json, dvh.csv, the reference DVH and every format's mask files."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "SAME-1", 9, extra_organs=3, ct_size=(32, 28, 16))
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-3:], ["Parotid", "parotid", "Parotid"]):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "out"
    code = main(
        ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"]
        + ["--format", ",".join(_name_formats())]
    )
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    names = _names_in_every_output(out / row["case_id"])
    assert [n for n in names if n.casefold().startswith("parotid")] == ["Parotid", "parotid_2", "Parotid_3"], names


def test_roi_names_alike_once_pseudonymized_stay_apart_in_every_output(tmp_path, capsys):
    """From the fourth hostile trial (D7): two ROI names that both become ``[removed]`` under --pseudonymize
    kept one name in dvh.csv (both curves under one roi) and meta.json, while the reference DVH said
    ``[removed] (2)`` and the mask files ``removed-2``. Names are made unique once, after the rewriting."""
    root = tmp_path / "in"
    truth = hostile.study(
        root / "p", "QX-77415", 10, patient_name="Quorbeth^Ysolde", extra_organs=3, ct_size=(32, 28, 16)
    )
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-3:], ["ysolde.quorbeth", "QUORBETH YSOLDE", "Y_Quorbeth"]):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    formats = ["--format", ",".join(_name_formats())]
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", *formats])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    names = _names_in_every_output(out / row["case_id"])
    first, second, third = [n for n in names if "[removed]" in n]
    # (a name that was identity as a whole carries a keyed tag of itself: twenty-first hostile trial U12)
    assert re.fullmatch(r"\[removed\]_[0-9a-f]{8}", first) and re.fullmatch(r"\[removed\]_[0-9a-f]{8}", second), names
    assert first != second and third == "Y_[removed]", names


def test_roi_names_holding_a_backslash_are_named_as_written(tmp_path, capsys):
    """From the fourth hostile trial (D5): an ROIName holding a backslash (DICOM's value delimiter, so two
    values to pydicom) was named by its Python list ``['', 'u00e9 lit']`` in meta.json, dvh.csv and the NRRD
    content field; it is named as written, in every output."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "SLASH-1", 11, extra_organs=2, ct_size=(32, 28, 16))
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-2:], ["\\u00e9 lit", "PTV\\boost"]):
        roi.ROIName = name
    ds.StructureSetLabel = "contours\\v2"
    dd.save(ds, truth.struct_file)
    assert len(dd.read(truth.struct_file).StructureSetROISequence[-1].ROIName) == 2  # two values to pydicom
    out = tmp_path / "out"
    formats = ["--format", ",".join(_name_formats())]
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", *formats])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    names = _names_in_every_output(out / row["case_id"])
    assert names[-2:] == ["\\u00e9 lit", "PTV\\boost"], names
    text = (out / row["case_id"] / "meta.json").read_text(encoding="utf-8")
    assert "u00e9 lit'" not in text and "'boost'" not in text


@pytest.mark.parametrize("clash", ["roi_number", "contour_reference"])
def test_rois_whose_contours_cannot_be_told_apart_are_left_out_and_said(tmp_path, capsys, clash):
    """From the fifth hostile trial (E14): two ROIs given one ROINumber exported the mask called PTV with another
    ROI's contours, status ok and no word. Neither is rasterized now; the reason names the tag, in meta.json and
    as a case warning; the other ROIs are unchanged."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "ROINUM-1", 10, extra_organs=2, ct_size=(32, 28, 16))
    clean_out = tmp_path / "clean"
    assert main(["export", str(root), str(clean_out), "--quiet", "--workers", "1", "--no-qa-png"]) == 0
    ds = dd.read(truth.struct_file)
    rois = list(ds.StructureSetROISequence)
    first, second = rois[-2], rois[-1]
    taken = int(first.ROINumber)
    old = int(second.ROINumber)
    if clash == "roi_number":  # the second ROI, its contours and its observation all take the first's number
        second.ROINumber = taken
        for item in list(ds.ROIContourSequence) + list(ds.RTROIObservationsSequence):
            if int(item.ReferencedROINumber) == old:
                item.ReferencedROINumber = taken
        left_out, phrase = {str(first.ROIName), str(second.ROIName)}, "(3006,0022) ROINumber"
    else:  # the second ROI's contours say they are the first's
        for item in ds.ROIContourSequence:
            if int(item.ReferencedROINumber) == old:
                item.ReferencedROINumber = taken
        left_out, phrase = {str(first.ROIName)}, "ROIContourSequence items reference"
    dd.save(ds, truth.struct_file)
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    structures = meta["structures"]
    skipped = {s["name"]: s["reason"] for s in structures["skipped"]}
    for name in left_out:
        assert phrase in skipped[name], skipped
        assert name not in structures["names"]
        assert any(name in w and phrase in w for w in meta.get("warnings", [])), meta.get("warnings")
    assert phrase in row["warnings"]
    clean_meta = json.loads((clean_out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    kept = [n for n in clean_meta["structures"]["names"] if n not in left_out and n != str(second.ROIName)]
    assert kept and all(n in structures["names"] for n in kept)
    with (
        np.load(out / row["case_id"] / "pair.npz") as new,
        np.load(clean_out / row["case_id"] / "pair.npz") as old_pair,
    ):
        new_masks = np.unpackbits(new["masks"], axis=-1)
        old_masks = np.unpackbits(old_pair["masks"], axis=-1)
        for name in kept:  # the untouched ROIs' masks are the clean export's
            a = clean_meta["structures"]["names"].index(name)
            b = structures["names"].index(name)
            assert np.array_equal(new_masks[b], old_masks[a]), name


@pytest.mark.parametrize(
    "tags, step, phrase",
    [
        ({"SliceThickness": "3.7"}, 3.7, "taken from (0018,0050) SliceThickness"),
        ({"SliceThickness": None, "SpacingBetweenSlices": "4.2"}, 4.2, "taken from (0018,0088) SpacingBetweenSlices"),
        ({"SliceThickness": None}, None, "unknown (neither (0018,0050) SliceThickness nor"),
        ({"SliceThickness": "-3"}, None, "unknown ((0018,0050) SliceThickness"),
    ],
)
def test_a_one_slice_ct_takes_its_step_from_its_header_and_says_so(clean, tmp_path, capsys, tags, step, phrase):
    """From the fifth hostile trial (E28): a one-slice CT (SliceThickness 3) exported at a slice step of 2 mm, its
    in-plane spacing, structures rasterized with a 2 mm slab, status ok and no word. The step is now its
    SliceThickness (else SpacingBetweenSlices), and a case warning says where it came from; with neither (or no
    usable one) the in-plane spacing is used and the warning says the step is unknown and assumed."""
    root = _copy(clean, "plan", tmp_path)
    slices = clean["plan"].ct_files
    middle = slices[len(slices) // 2]
    for path in slices:
        if path != middle:
            (root / _rel(clean, "plan", path)).unlink()
    dd.rewrite_tags(root / _rel(clean, "plan", middle), **tags)
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert row["status"] == "ok", row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    in_plane = min(meta["spacing_kji"][1:])
    expected = step if step is not None else in_plane
    assert meta["shape"][0] == 1
    assert meta["spacing_kji"][0] == pytest.approx(expected)
    assert meta["geometry"]["ct"]["slice_step_mm"] == pytest.approx(expected)
    assert phrase in row["warnings"], row["warnings"]
    assert any(phrase in w for w in meta["warnings"])
    if step is None:
        assert f"{in_plane:g} mm, the in-plane spacing, is assumed" in row["warnings"]


def _largest_roi_contours(ds) -> tuple:
    """(ROIName, its ROIContourSequence item) of the ROI with the most contours."""
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    item = max(ds.ROIContourSequence, key=lambda i: len(i.ContourSequence))
    return names[int(item.ReferencedROINumber)], item


@pytest.mark.parametrize(
    "keyword, value", [("RescaleSlope", "1_0"), ("PixelSpacing", "2_0\\2"), ("DoseGridScaling", "0.0_1")]
)
def test_a_header_number_with_a_digit_separator_fails_its_case(tmp_path, capsys, keyword, value):
    """Forty-third hostile trial AQ2: Python reads ``1_0`` as 10; a CT RescaleSlope ``1_0`` made every voxel ten
    times its HU, a PixelSpacing ``2_0`` a 20 mm step, a DoseGridScaling ``0.0_1`` a dose ten times its own, each
    with status ok. Such a value is no decimal string: the case fails, naming it."""
    import warnings

    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "SEPARATOR-1", 16, with_structures=False)
    files = truth.ct_files if keyword != "DoseGridScaling" else truth.dose_files
    tag = tag_for_keyword(keyword)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (pydicom warns of the invalid value)
        for path in files:
            ds = dd.read(path)
            ds[tag] = DataElement(tag, "DS", value)
            dd.save(ds, path)
    code, rows, _out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert code == 1 and row["status"] == "failed", row
    assert keyword in row["reason"] and "not" in row["reason"], row["reason"]  # (not a number, not numeric)


def test_a_blank_value_inside_contour_data_is_damage_not_minus_one(tmp_path, capsys):
    """Forty-first hostile trial AO1: numpy's in-place parsing read a ContourData value of blanks as -1.0 without a
    word, so the points moved to x = -1 mm and the case was ok with a smaller mask. Such a contour is damage, as a
    value that is no number is: left out and named in a case warning."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "BLANK-1", 15, ct_size=(32, 28, 16))
    ds = dd.read(truth.struct_file)
    name, item = _largest_roi_contours(ds)
    raw = item.ContourSequence[0].get_item(0x30060050).value
    data = Path(truth.struct_file).read_bytes()
    assert isinstance(raw, bytes) and data.count(raw) == 1
    parts = raw.split(b"\\")
    parts[3] = b" " * len(parts[3])  # the x of the second point: blanks of the same length
    Path(truth.struct_file).write_bytes(data.replace(raw, b"\\".join(parts)))
    code, rows, out = _export(root, tmp_path / "blank", capsys)
    (row,) = rows
    assert row["status"] == "ok", row
    assert f"ROI {name!r}" in row["warnings"] and "ContourData is damaged" in row["warnings"], row["warnings"]


@pytest.mark.parametrize("damage", ["zigzag", "tilted"])
def test_one_contour_out_of_plane_costs_that_contour_only(tmp_path, capsys, damage):
    """From the fifth hostile trial (E15): one contour whose points alternate 9 mm along z dropped the whole ROI
    ("contours are not planar or not parallel"), while a contour with a damaged point cost only itself. Such a
    contour is now left out alone, named in a case warning, and the ROI is rasterized from the rest, exactly as
    when the contour is not there. A contour that is planar but tilted against the others (contours truly not
    parallel to each other) still leaves the ROI out."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "PLANAR-1", 14, ct_size=(32, 28, 16))
    ds = dd.read(truth.struct_file)
    name, item = _largest_roi_contours(ds)
    contours = list(item.ContourSequence)
    assert len(contours) >= 4
    target = len(contours) // 2
    points = np.array([float(v) for v in contours[target].ContourData]).reshape(-1, 3)
    if damage == "zigzag":
        points[1::2, 2] += 9.0
    else:  # rotated 30 degrees about the contour's own x axis: planar, not parallel to the others
        centre = points.mean(axis=0)
        c, s_ = np.cos(np.radians(30)), np.sin(np.radians(30))
        rotation = np.array([[1, 0, 0], [0, c, -s_], [0, s_, c]])
        points = (points - centre) @ rotation.T + centre
    contours[target].ContourData = [f"{v:.4f}" for v in points.ravel()]
    dd.save(ds, truth.struct_file)
    code, rows, out = _export(root, tmp_path / "damaged", capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    skipped = {s["name"]: s["reason"] for s in meta["structures"]["skipped"]}
    if damage == "tilted":
        assert "contours are not planar or not parallel" in skipped[name]
        assert name not in meta["structures"]["names"]
        return
    assert name not in skipped and name in meta["structures"]["names"]
    phrase = f"ROI {name!r}: contour {target + 1} of {len(contours)}"
    assert phrase in row["warnings"] and "do not lie in one plane" in row["warnings"], row["warnings"]
    # the same structure set without that contour: the same mask
    del item.ContourSequence[target]
    item.ContourSequence = item.ContourSequence  # pydicom 2.4 keeps the sequence as it is
    dd.save(ds, truth.struct_file)
    code, rows, without = _export(root, tmp_path / "without", capsys)
    (reference,) = rows
    assert code == 0 and reference["status"] == "ok" and not reference["warnings"], reference
    other = json.loads((without / reference["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert other["structures"]["names"] == meta["structures"]["names"]
    with np.load(out / row["case_id"] / "pair.npz") as a, np.load(without / reference["case_id"] / "pair.npz") as b:
        np.testing.assert_array_equal(a["masks"], b["masks"])


@pytest.mark.parametrize(
    "damage",
    [
        "one point",
        "on one line",
        "two points",
        "OPEN_PLANAR",
        "POINT",
        "out and back",
        "twice",
        "beside a small island",
        "beside a contour of its plane",
    ],
)
def test_a_contour_that_encloses_nothing_and_empties_its_plane_is_a_case_warning(tmp_path, capsys, damage):
    """Eightieth hostile trial CB1: the target's middle contour collapsed to one point, to points on one line or to
    two points emptied that slice of the mask (0 voxels of 280), ok, with no case warning (at most a note): a hole
    through the target that the audit's volume check cannot see (the contour volume misses the plane too). Such a
    contour that was all its plane had is now a case warning; beside a contour of its plane it is only noise. So is
    the contour typed OPEN_PLANAR or POINT (eighty-second trial CD1), and one traced out and back or twice, which
    the even-odd rule fills with nothing (eighty-sixth CH2); and one beside a far smaller closed contour of its plane,
    an island at its centre, which alone is kept there (CH6)."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "FLAT-1", 15, ct_size=(32, 28, 16))
    ds = dd.read(truth.struct_file)
    name, item = _largest_roi_contours(ds)
    contours = list(item.ContourSequence)
    target = len(contours) // 2
    points = np.array([float(v) for v in contours[target].ContourData]).reshape(-1, 3)
    if damage == "one point":
        points[:] = points[0]
    elif damage == "on one line":
        points[:, 1] = points[0, 1]
    elif damage == "two points":
        points = points[:2]
    elif damage in ("OPEN_PLANAR", "POINT"):
        contours[target].ContourGeometricType = damage
    elif damage == "out and back":  # p1..pn, then pn-1..p2: a polyline there and back (eighty-sixth trial CH2)
        points = np.concatenate([points, points[-2:0:-1]])
    elif damage == "twice":  # the loop written twice, one after the other
        points = np.concatenate([points, points])
    elif damage == "beside a small island":  # typed OPEN_PLANAR beside a 3 mm closed triangle at its centre (CH6)
        contours[target].ContourGeometricType = "OPEN_PLANAR"
        island = copy.deepcopy(contours[target])
        island.ContourGeometricType = "CLOSED_PLANAR"
        centre = points.mean(axis=0)
        triangle = centre + np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
        triangle[:, 2] = points[0, 2]
        island.ContourData = [f"{v:.4f}" for v in triangle.ravel()]
        island.NumberOfContourPoints = 3
        item.ContourSequence.append(island)
    else:  # a copy of the contour collapsed to a point, added to its plane
        extra = copy.deepcopy(contours[target])
        extra.ContourData = [f"{v:.4f}" for v in np.repeat(points[:1], 4, axis=0).ravel()]
        extra.NumberOfContourPoints = 4
        item.ContourSequence.append(extra)
    if damage not in ("beside a contour of its plane", "beside a small island"):
        contours[target].ContourData = [f"{v:.4f}" for v in points.ravel()]
        contours[target].NumberOfContourPoints = len(points)
    dd.save(ds, truth.struct_file)
    code, rows, out = _export(root, tmp_path / "out", capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    (roi,) = [r for r in meta["structures"]["rois"] if r["name"] == name]
    ignored = {"OPEN_PLANAR": "OPEN_PLANAR", "POINT": "POINT", "beside a small island": "OPEN_PLANAR"}
    assert f"1 {ignored.get(damage, 'degenerate')} contour(s) ignored" in roi["notes"], roi
    if damage == "beside a contour of its plane":
        assert not row["warnings"], row["warnings"]
        return
    if damage == "beside a small island":
        assert "more than twice as wide as the closed contours kept there" in row["warnings"], row["warnings"]
        return
    assert f"ROI {name!r}: 1 plane(s) of its contours" in row["warnings"], row["warnings"]
    assert "the mask is empty there" in row["warnings"]


def test_contours_of_a_missing_roi_number_are_named(tmp_path, capsys):
    """From the fifth hostile trial (E15's wording): contours pointing at ReferencedROINumber 99, which no ROI has,
    left their ROI out as "no contours". The reason now says where its contours point, as a case warning."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "ORPHAN-1", 15, ct_size=(32, 28, 16))
    ds = dd.read(truth.struct_file)
    name, item = _largest_roi_contours(ds)
    item.ReferencedROINumber = 99
    dd.save(ds, truth.struct_file)
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    reason = {s["name"]: s["reason"] for s in meta["structures"]["skipped"]}[name]
    assert "ReferencedROINumber" in reason and "99" in reason and "no ROI" in reason, reason
    assert "ROINumber 99" in row["warnings"], row["warnings"]


def test_a_very_long_roi_name_is_a_shortened_file_name_not_a_stopped_batch(tmp_path, capsys):
    """From the fifth hostile trial (E34): a 270-character ROIName made a mask file name beyond the file system's
    255 bytes; ENAMETOOLONG stopped the whole export (exit 4) and --resume met it again."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "LONG-1", 11, extra_organs=2, ct_size=(32, 28, 16))
    hostile.study(root / "q", "LONG-2", 12, ct_size=(32, 28, 16))
    ds = dd.read(truth.struct_file)
    long_names = ["PTV_" + "x" * 266, "PTV_" + "x" * 265 + "y"]  # alike for 100 characters, then different
    for roi, name in zip(list(ds.StructureSetROISequence)[-2:], long_names):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--format", "nrrd,nifti"])
    capsys.readouterr()
    rows = hostile.manifest(out)
    assert code == 0 and len(rows) == 2 and {r["status"] for r in rows} == {"ok"}, rows
    files = [p.name for p in out.rglob("masks/*")]
    long_files = [f for f in files if f.startswith("PTV_xxx")]
    assert len(long_files) == 4 and all(len(f) < 120 for f in long_files), long_files  # 2 ROIs x (nrrd, nii.gz)
    assert len({f.split(".")[0] for f in long_files}) == 2  # the two names stay apart


@pytest.mark.parametrize("scale, flag", [(0.0, "dose_zero"), (1 / 30, "dose_below_prescription"), (1.0, None)])
def test_a_dose_far_below_the_prescription_is_flagged(clean, tmp_path, capsys, scale, flag):
    """Eighth hostile trial H10: a PLAN dose of zeros (exported before it was computed) and one scaled to a single
    fraction (a per-fraction dose labelled PLAN; the plan prescribes 30 fractions) were ok with empty flags and
    warnings, the plan's prescription beside them in meta.json. The audit compares Dmax with the prescription."""
    root = _copy(clean, "plan", tmp_path)
    dose = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    ds = dd.read(dose)
    ds.DoseGridScaling = str(float(ds.DoseGridScaling) * scale) if scale else ds.DoseGridScaling
    if not scale:
        ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()
    dd.save(ds, dose)
    row, flags, out = _one_ok_case(root, tmp_path, capsys)
    assert (flag in flags) if flag else not {"dose_zero", "dose_below_prescription"} & set(flags), flags
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["audit"]["prescription_gy"], meta["audit"]["prescription_gy"]  # else the test tells nothing


@pytest.mark.parametrize("scale, flagged", [(100.0, True), (10.0, True), (2.5, False), (1.0, False)])
def test_a_dose_far_above_the_prescription_is_flagged(clean, tmp_path, capsys, scale, flagged):
    """Thirteenth hostile trial M6: a PLAN dose stored in cGy but read as Gy (DoseGridScaling x100: Dmax 6 306 Gy for
    a 60 Gy prescription) or x10 was ok with empty flags and warnings. The audit compares Dmax with the prescription
    from above as well (300 %); a radiosurgery-like 250 % passes."""
    root = _copy(clean, "plan", tmp_path)
    dose = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    ds = dd.read(dose)
    ds.DoseGridScaling = str(float(ds.DoseGridScaling) * scale)
    dd.save(ds, dose)
    row, flags, out = _one_ok_case(root, tmp_path, capsys)
    assert ("dose_above_prescription" in flags) == flagged, flags
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    rx, dmax = meta["audit"]["prescription_gy"], meta["audit"]["dose"]["native"]["dmax_gy"]
    assert rx and (dmax / rx > 3) == flagged, (dmax, rx)  # else the test tells nothing


@pytest.mark.parametrize("boost_first", [True, False])
def test_a_dose_of_two_plans_is_judged_against_no_single_prescription(clean, tmp_path, capsys, boost_first):
    """Fourteenth hostile trial N6: a MULTI_PLAN dose naming a boost plan (10 Gy prescribed) before the initial one
    took the first plan's prescription: a false dose_above_prescription "631.5 % ... a dose in cGy read as Gy" and
    V_Rx against 10 Gy. A dose of several plans has no single prescription (as a PLAN_SUM of --sum-plans)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    root = _copy(clean, "plan", tmp_path)
    plan_path = root / _rel(clean, "plan", clean["plan"].plan_file)
    boost = dd.read(plan_path)
    boost.SOPInstanceUID = generate_uid()
    boost.file_meta.MediaStorageSOPInstanceUID = boost.SOPInstanceUID
    boost.RTPlanLabel = "BOOST"
    for reference in boost.DoseReferenceSequence:
        reference.TargetPrescriptionDose = "10"
    dd.save(boost, plan_path.with_name("boost_plan.dcm"))
    initial = dd.read(plan_path)
    dose_path = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    ds = dd.read(dose_path)
    ds.DoseSummationType = "MULTI_PLAN"
    uids = [boost.SOPInstanceUID, initial.SOPInstanceUID]
    items = []
    for uid in uids if boost_first else uids[::-1]:
        item = Dataset()
        item.ReferencedSOPClassUID = initial.SOPClassUID
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    ds.ReferencedRTPlanSequence = items
    dd.save(ds, dose_path)
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = [r for r in rows if r["status"] == "ok"]
    assert "dose_above_prescription" not in row["audit_flags"], row["audit_flags"]
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["audit"]["prescription_gy"] is None, meta["audit"]["prescription_gy"]


@pytest.mark.parametrize("value", ["-60", "0", "nan", "inf", "1e400"])
def test_a_prescription_that_is_no_dose_is_left_out_with_a_warning(clean, tmp_path, capsys, value):
    """Fourteenth hostile trial N9: TargetPrescriptionDose -60 failed the case "internal error (ZeroDivisionError)";
    nan reached meta.json as NaN (no JSON for strict readers); inf flagged "0 % of inf". Such a value is left out
    with a case warning; the dose is exported, meta.json is strict JSON."""
    root = _copy(clean, "plan", tmp_path)
    plan_path = root / _rel(clean, "plan", clean["plan"].plan_file)
    plan = dd.read(plan_path)
    plan.DoseReferenceSequence[0]["TargetPrescriptionDose"].value = value
    dd.save(plan, plan_path)
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert (code, row["status"]) == (0, "ok"), row
    assert "TargetPrescriptionDose" in row["warnings"] and "not one dose in Gy" in row["warnings"], row["warnings"]

    def no_constant(name):
        raise ValueError(f"meta.json holds {name}")

    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"), parse_constant=no_constant)
    assert meta["audit"]["prescription_gy"] is None
    assert meta["source"]["rtplan_file"], meta["source"]  # the plan itself is used (O11: it was dropped)


@pytest.mark.parametrize("element", ["TargetPrescriptionDose", "NumberOfFractionsPlanned"])
def test_an_audit_number_with_two_values_leaves_the_plan_in_use(clean, tmp_path, capsys, element):
    """Fifteenth hostile trial O11: an RTPLAN whose Type 3 TargetPrescriptionDose held two values (``60\\70``), or
    whose NumberOfFractionsPlanned did (``25\\5``), was a damaged file ("TypeError: float() argument ... not
    'MultiValue'"), and its case exported ok without the plan: another case id, the CT chosen another way, no
    prescription, and links saying the plan "is not in the input". Such a value is left out; the plan is used."""
    root = _copy(clean, "plan", tmp_path)
    plan_path = root / _rel(clean, "plan", clean["plan"].plan_file)
    plan = dd.read(plan_path)
    if element == "TargetPrescriptionDose":
        plan.DoseReferenceSequence[0].TargetPrescriptionDose = ["60", "70"]
    else:
        plan.FractionGroupSequence[0].NumberOfFractionsPlanned = ["25", "5"]
    dd.save(plan, plan_path)
    code, rows, out = _export(root, tmp_path, capsys)
    assert [r["status"] for r in rows] == ["ok"] and code == 0, rows
    (row,) = rows
    assert "_plan-" in row["case_id"], row["case_id"]  # named after the plan's label, as before the change
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"]["rtplan_file"] == plan_path.relative_to(root).as_posix(), meta["source"]
    assert not any("is not in the input" in link for link in meta["source"].get("links", [])), meta["source"]
    if element == "TargetPrescriptionDose":
        assert meta["audit"]["prescription_gy"] is None
        assert "TargetPrescriptionDose 60\\70 is not one dose in Gy" in row["warnings"], row["warnings"]
    else:
        assert meta["audit"]["prescription_gy"] > 0, meta["audit"]  # the plan's prescription still audits the dose


def test_a_brachytherapy_plan_is_not_flagged_above_its_prescription(clean, tmp_path, capsys):
    """M6's bound is not one for brachytherapy: the dose near a source is many times the prescription."""
    root = _copy(clean, "plan", tmp_path)
    dose = root / _rel(clean, "plan", clean["plan"].dose_files[0])
    ds = dd.read(dose)
    ds.DoseGridScaling = str(float(ds.DoseGridScaling) * 10)
    dd.save(ds, dose)
    plan = dd.read(root / _rel(clean, "plan", clean["plan"].plan_file))
    plan.BrachyTreatmentType = "HDR"
    dd.save(plan, root / _rel(clean, "plan", clean["plan"].plan_file))
    code, rows, _out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert (code, row["status"]) == (0, "ok"), row
    assert "dose_above_prescription" not in row["audit_flags"], row["audit_flags"]


@pytest.mark.parametrize(
    "intercept, flagged", [(0, True), (None, False), ("water", False), ("0 padded", True), ("None padded", False)]
)
def test_a_ct_without_air_is_flagged(clean, tmp_path, capsys, intercept, flagged):
    """Thirteenth hostile trial M7: a CT whose RescaleIntercept was lost (0 instead of -1024: air at +24 HU, water
    at about +1024) was ok with no flag or warning. The audit flags a CT whose lowest value is not below 0 HU.
    Fifteenth trial O5: with padding beyond BitsStored outside a reconstruction circle, its --ct-fill value (-1000)
    counted as the CT's lowest and hid the lost intercept; the fill is no value of the CT as read."""
    padded = isinstance(intercept, str) and intercept.endswith(" padded")
    if padded:
        intercept = 0 if intercept.startswith("0") else None
    root = _copy(clean, "plan", tmp_path)
    slices = [root / _rel(clean, "plan", path) for path in clean["plan"].ct_files]
    noise = np.random.default_rng(7)
    for path in slices:
        ds = dd.read(path)
        if intercept == "water":  # fourteenth trial N1: a water tank filling the field, no air, scanner noise: no flag
            hu = noise.normal(0.0, 15.0, ds.pixel_array.shape)
            stored = np.rint((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)).astype(ds.pixel_array.dtype)
            ds.PixelData = stored.tobytes()
        elif intercept is not None:  # stored as a scanner stores them (HU + 1024, unsigned), the intercept -1024 lost
            hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            stored = np.rint(hu + 1024)
            assert stored.min() >= 0 and hu.min() < -200, "the study must hold air for this test"
            ds.PixelRepresentation = 0
            ds.PixelData = stored.astype(np.uint16).tobytes()
            ds.RescaleSlope, ds.RescaleIntercept = "1", str(intercept)
        if padded:  # the corners outside the circle: a PixelPaddingValue beyond 12 BitsStored, as scanners write it
            stored = ds.pixel_array.astype(np.uint16 if ds.PixelRepresentation == 0 else np.int16)
            assert int(stored.max()) < 2048 and int(stored.min()) >= -2048, "the values must fit 12 bits stored"
            rows, columns = np.mgrid[: stored.shape[0], : stored.shape[1]]
            outside = (rows - stored.shape[0] / 2) ** 2 + (columns - stored.shape[1] / 2) ** 2 > (
                stored.shape[0] / 2
            ) ** 2
            padding = 0xF000 if ds.PixelRepresentation == 0 else -0x1000 - 1
            stored[outside] = padding
            ds.BitsStored, ds.HighBit = 12, 11
            ds.add_new(0x00280120, "US" if ds.PixelRepresentation == 0 else "SS", padding)
            ds.PixelData = stored.tobytes()
        dd.save(ds, path)
    row, flags, out = _one_ok_case(root, tmp_path, capsys)
    assert ("ct_without_air" in flags) == flagged, flags
    if padded:
        meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
        with np.load(out / row["case_id"] / "pair.npz") as pair:
            assert (pair["ct"] == -1000).any(), "the padding must be filled for this test"
        assert meta["audit"]["ct_lowest_hu"] != -1000, meta["audit"]


def _small_study_exported(tmp_path, capsys, patient: str, seed: int) -> tuple:
    """A small study in tmp_path/in and its plain export: (input root, truth, OUT, its one manifest row)."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", patient, seed, ct_size=(32, 28, 16))
    code, rows, plain = _export(root, tmp_path / "plain", capsys)
    (reference,) = rows
    assert code == 0 and reference["status"] == "ok", reference
    return root, truth, plain, reference


@pytest.mark.parametrize("copied", ["exactly", "rounded otherwise"])
def test_contours_written_twice_are_kept_once_and_said(tmp_path, capsys, copied):
    """From the eighth hostile trial (H1): an ROI whose contours were each written twice in their plane (merged or
    copied structure sets do this) came out with 0 voxels and status ok: the even-odd rule made each copy a hole of
    its original. A copy (the same polygon, from another start vertex or in the other direction) is now dropped with
    a note, and the case exports as without the copies: the same masks, the same contour volume and reference DVH
    (no audit flag of its own). A near copy, its vertices rounded otherwise (within 0.1 mm), cut a sliver-thin hole
    (stop 22, noticed): it is a copy too."""
    root, truth, plain, reference = _small_study_exported(tmp_path, capsys, "TWICE-1", 16)
    ds = dd.read(truth.struct_file)
    name, item = _largest_roi_contours(ds)
    copies = []
    for n, contour in enumerate(item.ContourSequence):
        copy_ = copy.deepcopy(contour)
        points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
        if n % 3 == 1:  # another start vertex
            points = np.roll(points, 2, axis=0)
        elif n % 3 == 2:  # the other direction, from another start vertex
            points = np.roll(points[::-1], 1, axis=0)
        if copied == "rounded otherwise":  # in-plane coordinates off by up to 0.07 mm, the plane's position kept
            points[:, :2] = np.round(points[:, :2] + 0.03, 1) + 0.02
        copy_.ContourData = [float(v) for v in points.ravel()]
        copies.append(copy_)
    count = len(copies)
    item.ContourSequence = list(item.ContourSequence) + copies
    dd.save(ds, truth.struct_file)
    code, rows, out = _export(root, tmp_path / "twice", capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    assert row["audit_flags"] == reference["audit_flags"] and name not in row["warnings"], row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    before = json.loads((plain / reference["case_id"] / "meta.json").read_text(encoding="utf-8"))
    entry = next(r for r in meta["structures"]["rois"] if r["name"] == name)
    old = next(r for r in before["structures"]["rois"] if r["name"] == name)
    assert entry["voxel_count"] == old["voxel_count"] > 0
    assert entry["contour_volume_cc"] == old["contour_volume_cc"] > 0
    assert any(f"{count} contour(s) dropped" in note for note in entry["notes"]), entry["notes"]
    for part in ("rois", "reference_dvh", "flags"):  # the DVHs (the reference DVH from the contours) and the audit
        assert meta["audit"][part] == before["audit"][part], part
    with np.load(out / row["case_id"] / "pair.npz") as a, np.load(plain / reference["case_id"] / "pair.npz") as b:
        np.testing.assert_array_equal(a["masks"], b["masks"])


def test_contours_crossing_each_other_are_a_case_warning_not_a_memory_sink(tmp_path, capsys):
    """Tenth hostile trial J6: each contour of an ROI given a copy moved 3 mm (crossing it) sent the reference DVH's
    sampling past 8 GB (the case failed "out of memory", or took the machine's memory). The case exports, the ROI
    has no reference DVH (the reason in its audit entry) and a case warning says its mask is the even-odd one."""
    root, truth, plain, reference = _small_study_exported(tmp_path, capsys, "CROSS-1", 19)
    ds = dd.read(truth.struct_file)
    name, item = _largest_roi_contours(ds)
    copies = []
    for contour in item.ContourSequence:
        moved = copy.deepcopy(contour)
        points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
        points[:, 0] += 3.0
        moved.ContourData = [float(v) for v in points.ravel()]
        copies.append(moved)
    item.ContourSequence = list(item.ContourSequence) + copies
    dd.save(ds, truth.struct_file)
    code, rows, out = _export(root, tmp_path / "crossing", capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    assert f"ROI {name!r}: contours of one plane cross each other" in row["warnings"], row["warnings"]
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    entry = next(r for r in meta["audit"]["rois"] if r["name"] == name)
    assert "cross each other" in entry["reference_note"] and "reference" not in entry


def test_the_plans_structure_set_is_used_when_its_ct_came_with_new_uids(tmp_path, capsys):
    """Tenth hostile trial J7: a CT given a new SeriesInstanceUID and SOPInstanceUIDs (a PACS or an anonymizer that
    re-UIDs images; the RTSTRUCT, plan and dose keep their references) lost the plan's structure set: ok with no
    mask at all (or all-zero --rois channels), no warning. The plan's RTSTRUCT, in the CT's frame of reference and
    naming no CT of the input, is used on that CT, with a case warning: the masks equal the plain export's."""
    from pydicom.uid import generate_uid

    root, truth, plain, reference = _small_study_exported(tmp_path, capsys, "REUID-1", 21)
    for path in truth.ct_files:  # the study's own files, under root
        ds = dd.read(path)
        ds.SeriesInstanceUID = "2.25.999888777666"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dd.save(ds, path)
    code, rows, out = _export(root, tmp_path / "reuid", capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    assert "the plan's RTSTRUCT" in row["warnings"] and "names CT images that are not in the input" in row["warnings"]
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    before = json.loads((plain / reference["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["structures"]["names"] == before["structures"]["names"] and meta["structures"]["names"]
    with np.load(out / row["case_id"] / "pair.npz") as a, np.load(plain / reference["case_id"] / "pair.npz") as b:
        np.testing.assert_array_equal(a["masks"], b["masks"])


def test_an_roi_with_contours_and_an_empty_mask_is_a_case_warning(tmp_path, capsys):
    """From the eighth hostile trial (H1): an ROI with contour planes whose mask came out empty was reported present
    (``roi_present`` true, 0 voxels) without a word. Its contours moved 2 m aside (off the grid): a case warning."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "EMPTY-1", 17, ct_size=(32, 28, 16))
    ds = dd.read(truth.struct_file)
    name, item = _largest_roi_contours(ds)
    for contour in item.ContourSequence:
        points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
        points[:, 0] += 2000.0
        contour.ContourData = [float(v) for v in points.ravel()]
    dd.save(ds, truth.struct_file)
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    entry = next(r for r in meta["structures"]["rois"] if r["name"] == name)
    assert entry["voxel_count"] == 0 and entry["contour_planes"] > 0
    assert f"ROI {name!r} has contours in {entry['contour_planes']} plane(s) (" in row["warnings"]
    assert "but its mask is empty" in row["warnings"]


@pytest.mark.parametrize(
    "variant", ["slab thickness", "no slab thickness", "offset vector", "a 100 m slab", "a slab that is no number"]
)
def test_contours_on_every_other_slice(tmp_path, capsys, variant):
    """From the eighth hostile trial (H4): an ROI contoured on every other CT slice, each contour stating
    (3006,0044) ContourSlabThickness of two slice steps, came out on alternate slices only (half its volume), status
    ok, no word. Where every contour states it, its slab is now that thickness (the mask fills the slices between
    its planes; the contour volume and the reference DVH take the same slab); without it the stripes are the
    documented slab rule, now with a case warning; a (3006,0045) ContourOffsetVector that moves the slabs leaves the
    ROI out, named. A slab of 100 m (ninth hostile trial I6: 1e6 mm took 4 GB for one ROI) is damage: not used,
    with a note; so is one that is no number (forty-third hostile trial AQ1: ignored without a word)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    root, truth, plain, reference = _small_study_exported(tmp_path, capsys, "SLAB-1", 18)
    ds = dd.read(truth.struct_file)
    name, item = _largest_roi_contours(ds)
    contours = sorted(item.ContourSequence, key=lambda c: float(c.ContourData[2]))
    levels = sorted({float(c.ContourData[2]) for c in contours})
    step = levels[1] - levels[0]
    kept = [c for c in contours if round((float(c.ContourData[2]) - levels[0]) / step) % 2 == 0]
    assert len(kept) >= 4
    for contour in kept:
        if variant == "a slab that is no number":
            contour[0x30060044] = RawDataElement(Tag(0x30060044), "DS", 4, b"abc ", 0, True, True)
        elif variant != "no slab thickness":
            contour.ContourSlabThickness = 1e5 if variant == "a 100 m slab" else 2 * step
        if variant == "offset vector":
            contour.ContourOffsetVector = [0.0, 0.0, step]
    item.ContourSequence = kept
    dd.save(ds, truth.struct_file)
    code, rows, out = _export(root, tmp_path / "sparse", capsys)
    (row,) = rows
    assert code == 0 and row["status"] == "ok", row
    meta, masks = _unpacked(out / row["case_id"])
    if variant == "offset vector":
        reason = {s["name"]: s["reason"] for s in meta["structures"]["skipped"]}[name]
        assert "(3006,0045) ContourOffsetVector" in reason and name not in meta["structures"]["names"]
        assert f"ROI {name!r} left out: (3006,0045) ContourOffsetVector" in row["warnings"], row["warnings"]
        return
    _plain_meta, plain_masks = _unpacked(plain / reference["case_id"])
    entry = next(r for r in meta["structures"]["rois"] if r["name"] == name)
    filled = np.flatnonzero(masks[name].any(axis=(1, 2)))
    if variant == "a 100 m slab":
        assert any("beyond 1000 mm (damaged, not anatomy): not used" in note for note in entry["notes"]), entry
    if variant == "a slab that is no number":
        assert any("is not one positive number (damaged): not used" in note for note in entry["notes"]), entry
    if variant in ("no slab thickness", "a 100 m slab", "a slab that is no number"):
        assert set(np.diff(filled).tolist()) == {2}  # the slab rule as documented: stripes
        assert f"ROI {name!r}: its contour planes lie {2 * step:.3g} mm apart" in row["warnings"], row["warnings"]
        assert "slab_thickness_mm" not in entry
        return
    assert set(np.diff(filled).tolist()) == {1} and filled.size >= 2 * len(kept) - 1  # no slice left empty
    assert entry["slab_thickness_mm"] == pytest.approx(2 * step)
    assert any("(3006,0044) ContourSlabThickness" in note for note in entry["notes"]), entry["notes"]
    assert "apart" not in row["warnings"], row["warnings"]
    # the mask stands for the whole ROI again: close to the mask from every slice's contour, and to the contour volume
    assert abs(int(masks[name].sum()) - int(plain_masks[name].sum())) < 0.1 * int(plain_masks[name].sum())
    assert abs(entry["volume_diff_pct"]) < 10, entry
    assert "dvh_mismatch" not in row["audit_flags"], row["audit_flags"]


#: The box ROI of the H8 tests: in-plane edges on pixel faces (x -12..12, y -10..10 mm on a 1 mm CT centred at 0).
BOX_XY = ((-12.0, -10.0), (12.0, -10.0), (12.0, 10.0), (-12.0, 10.0))


def _box_on_native_slices(truth, first: int, last: int, drop: tuple = ()) -> tuple:
    """Replace the phantom's Cord by an ROI "Box": a rectangle on every native CT slice ``first..last`` (but those
    in ``drop``), as a planning system draws a box reaching half way to the native slices beyond both ends.
    Returns (native slice positions z, the box's z extent (start, end))."""
    z = truth.ct_origin[2] + np.asarray(truth.ct_slice_offsets, dtype=np.float64)
    ds = dd.read(truth.struct_file)
    numbers = {str(r.ROIName): int(r.ROINumber) for r in ds.StructureSetROISequence}
    for item in ds.StructureSetROISequence:
        if str(item.ROIName) == "Cord":
            item.ROIName = "Box"
    (item,) = [i for i in ds.ROIContourSequence if int(i.ReferencedROINumber) == numbers["Cord"]]
    template = item.ContourSequence[0]
    contours = []
    for n in range(first, last + 1):
        if n in drop:
            continue
        contour = copy.deepcopy(template)
        contour.ContourImageSequence[0].ReferencedSOPInstanceUID = truth.ct_sop_uids[n]
        contour.ContourNumber = len(contours) + 1
        contour.NumberOfContourPoints = len(BOX_XY)
        contour.ContourData = [v for x, y in BOX_XY for v in (x, y, float(z[n]))]
        contours.append(contour)
    item.ContourSequence = contours
    dd.save(ds, truth.struct_file)
    return z, ((z[first - 1] + z[first]) / 2, (z[last] + z[last + 1]) / 2)


@pytest.mark.parametrize("variant", ["missing slice", "variable thickness", "contour missing on a native slice"])
def test_masks_on_the_slices_a_regularized_ct_inserts(tmp_path, capsys, variant):
    """From the eighth hostile trial (H8): a CT with a missing slice or of variable slice thickness, its contours on
    the slices it has (as a planning system draws them), is regularized onto an even grid; every mask and the body
    were empty on the inserted slices, status ok, only ct_regularized (stop 22 added a case warning). Each contour
    now stands for its native slice's slab (half way to the neighbouring native slices): an inserted slice takes the
    mask of the native slice whose slab holds it, a box's mask has its analytic volume, the contour volume and the
    reference DVH agree with it, and the warning is gone. A native slice inside an ROI that has no contour of it
    stays empty (as a planning system shows it) and is still said."""
    changes = {"ct_size": (40, 36, 16), "dose_size": (28, 26, 30)}
    if variant == "variable thickness":  # 5 mm slices at both ends, 2.5 mm in the middle (every other one missing)
        changes["ct_slice_spacings"] = [5.0] * 3 + [2.5] * 9 + [5.0] * 3
        first, last, drop = 2, 13, ()
    else:
        changes["ct_missing_slices"] = (7,)
        first, last, drop = 4, 11, (() if variant == "missing slice" else (9,))
    truth = hostile.study(tmp_path / "in" / "p", "WRONG-H8", 14, **changes)
    z, (start, end) = _box_on_native_slices(truth, first, last, drop)
    code, rows, out = _export(tmp_path / "in", tmp_path, capsys)
    (row,) = rows
    assert (code, row["status"]) == (0, "ok"), row
    assert "ct_regularized" in row["audit_flags"], row["audit_flags"]
    meta, masks = _unpacked(out / row["case_id"])
    with np.load(out / row["case_id"] / "pair.npz") as npz:
        masks["body"] = np.unpackbits(npz["body"], axis=-1, count=npz["ct"].shape[-1]).astype(bool)
    affine = np.array(meta["ijk_to_lps"])
    grid_z = affine[2, 3] + affine[2, 2] * np.arange(meta["shape"][0])
    step = float(affine[2, 2])
    assert step == pytest.approx(2.5) and len(grid_z) > len(z)  # slices were inserted
    assert any("stands for that slice's slab" in note for note in meta["structures"]["notes"]), meta["structures"]
    # the native slice whose slab holds each grid slice's centre (half way: the one further along), its grid slice
    bounds = np.concatenate([[z[0] - step / 2], (z[1:] + z[:-1]) / 2, [z[-1] + step / 2]])
    native = np.searchsorted(bounds, grid_z + 1e-4, side="right") - 1
    at = np.array([int(np.argmin(np.abs(grid_z - position))) for position in z[native]])
    inserted = np.flatnonzero(np.abs(grid_z - z[native]) > 0.01)
    assert inserted.size >= 1
    for name, mask in masks.items():
        assert mask.any(), name
        for k in inserted:
            np.testing.assert_array_equal(mask[k], mask[at[k]], err_msg=f"{name}: grid slice {k} (z {grid_z[k]:g})")
    assert masks["body"].any(axis=(1, 2)).all()  # no hole in the body
    # the box: its analytic volume (less the slab of a native slice without its contour), as mask, contour volume
    # and reference DVH
    area = (BOX_XY[1][0] - BOX_XY[0][0]) * (BOX_XY[2][1] - BOX_XY[1][1])
    depth = end - start - sum(bounds[n + 1] - bounds[n] for n in drop)
    entry = next(r for r in meta["structures"]["rois"] if r["name"] == "Box")
    assert entry["volume_cc"] == pytest.approx(area * depth / 1000.0, rel=1e-6)
    assert entry["contour_volume_cc"] == pytest.approx(area * depth / 1000.0, rel=1e-6)
    audited = next(r for r in meta["audit"]["rois"] if r["name"] == "Box")
    assert audited["reference"]["points"]["volume_cc"] == pytest.approx(area * depth / 1000.0, rel=1e-3)
    for flag in ("roi_volume_mismatch", "dvh_mismatch", "roi_outside_output_grid"):
        assert flag not in row["audit_flags"], row["audit_flags"]
    if not drop:
        assert "masks are empty on slices inside their extent" not in row["warnings"], row["warnings"]
        filled = np.flatnonzero(masks["Box"].any(axis=(1, 2)))
        assert np.array_equal(filled, np.arange(filled[0], filled[-1] + 1))
    else:  # the native slice without a contour: its slab stays empty, said
        for n in drop:
            assert not masks["Box"][int(np.argmin(np.abs(grid_z - z[n])))].any()
        assert "masks are empty on slices inside their extent (count): 'Box' (1)" in row["warnings"], row["warnings"]


# ---- one CT series read as two (tenth hostile trial J13, J14) ------------------------------------


def _ct_by_z(clean: dict, root: Path) -> list:
    """The plan study's CT files in ``root``, in order of position along z."""
    files = [root / _rel(clean, "plan", f) for f in clean["plan"].ct_files]
    return sorted(files, key=lambda f: float(dd.read(f, header_only=True).ImagePositionPatient[2]))


def _same_arrays_as_clean(clean: dict, out: Path, rows: list) -> dict:
    (row,) = rows
    assert row["status"] == "ok", row
    with (
        np.load(out / row["case_id"] / "pair.npz") as a,
        np.load(clean["outs"]["plan"] / row["case_id"] / "pair.npz") as b,
    ):
        assert a["ct"].shape == b["ct"].shape
        np.testing.assert_array_equal(a["ct"], b["ct"])
        np.testing.assert_array_equal(a["dose"], b["dose"])
    return json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))


def _set_geometry(path: Path, change: str) -> None:
    ds = dd.read(path)
    spacing = [float(v) for v in ds.PixelSpacing]
    if change.startswith("spacing"):  # the spacing times a factor, as a decimal string
        factor = float(change.split()[1])
        ds.PixelSpacing = [f"{v * factor:.6g}" for v in spacing]
    elif change.startswith("tilt"):  # the column direction turned about x by e radians
        e = float(change.split()[1])
        ds.ImageOrientationPatient = ["1", "0", "0", "0", f"{np.cos(e):.10f}", f"{np.sin(e):.10f}"]
    elif change == "rows":  # the slice cropped by two rows
        rows, columns = int(ds.Rows), int(ds.Columns)
        pixels = ds.pixel_array[: rows - 2].copy()
        ds.Rows = rows - 2
        ds.PixelData = pixels.tobytes()
        assert pixels.shape == (rows - 2, columns)
    dd.save(ds, path)


@pytest.mark.parametrize("change", ["spacing 1.00005", "spacing 0.9995", "tilt 5e-5"])
def test_slices_of_one_series_written_with_another_rounding_are_one_ct(clean, tmp_path, capsys, change):
    """From the tenth hostile trial (J13): slices of one series whose PixelSpacing (2.0 and 2.0001) or orientation
    (5e-5) differ by a rounding were split into two "series"; one was chosen and its holes interpolated, ok, no word.
    They are one CT now, on the geometry of most slices (the check says which value is used)."""
    root = _copy(clean, "plan", tmp_path)
    files = _ct_by_z(clean, root)
    for k in (2, 5):
        _set_geometry(files[k], change)
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0
    meta = _same_arrays_as_clean(clean, out, rows)
    (check,) = [c for c in meta["geometry"]["ct"]["checks"] if c["check"] == "slice geometry"]
    assert check["result"] == "rounded" and "(2 slices)" in check["detail"], check
    used = "[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]" if "tilt" in change else "[1.0, 1.0]"
    assert f"the value of most slices, {used} (6 slices), is used" in check["detail"], check


@pytest.mark.parametrize(
    "change, phrase",
    [
        ("spacing 1.25", "PixelSpacing"),
        ("spacing 1.002", "PixelSpacing"),
        ("tilt 5e-4", "ImageOrientationPatient"),
        ("rows", "Rows"),
    ],
)
def test_slices_of_one_series_of_another_geometry_fail_the_case_named(clean, tmp_path, capsys, change, phrase):
    """From the tenth hostile trial (J13): a minority of a series' slices of another PixelSpacing, orientation or
    Rows (beyond a rounding) were a CT of their own; the rest was chosen, the holes interpolated, ok, no warning.
    The case fails now, naming every such slice (as it did for one)."""
    root = _copy(clean, "plan", tmp_path)
    files = _ct_by_z(clean, root)
    for k in (2, 5):
        _set_geometry(files[k], change)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    names = sorted(f.name for f in (files[2], files[5]))
    _failed_with(rows, phrase, "differs from the 6 other slices of the series", "1 more slices differ so", *names)


@pytest.mark.parametrize("layout", ["halves", "odd and even"])
def test_one_series_in_two_folders_is_one_ct(clean, tmp_path, capsys, layout):
    """From the tenth hostile trial (J14): one series of one geometry in two folders (a CD layout DICOM/0001,
    DICOM/0002) was read as two CTs: half the CT exported, ok. It is one CT now (its folders both named); where the
    folders' slices interleave the case warns (thirty-sixth hostile trial AJ14)."""
    root = _copy(clean, "plan", tmp_path)
    files = _ct_by_z(clean, root)
    for k, path in enumerate(files):
        first = k < len(files) // 2 if layout == "halves" else k % 2 == 0
        folder = path.parent / "DICOM" / ("0001" if first else "0002")
        folder.mkdir(parents=True, exist_ok=True)
        path.rename(folder / path.name)
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0
    _same_arrays_as_clean(clean, out, rows)
    assert rows[0]["ct_folder"] == "p/DICOM/0001 + p/DICOM/0002", rows[0]
    # thirty-sixth hostile trial AJ14: folders that interleave may be two reconstructions of one extent under one
    # SeriesInstanceUID (shifted by half a step): joined, the case says so
    said = "'p/DICOM/0001' and 'p/DICOM/0002', which interleave (slices of one folder between those of another)"
    assert (said in rows[0]["warnings"]) == (layout == "odd and even"), rows[0]["warnings"]
    out = tmp_path / "chosen"  # --ct takes either folder
    assert (
        main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--ct", "p/DICOM/0002"]) == 0
    )
    capsys.readouterr()
    _same_arrays_as_clean(clean, out, hostile.manifest(out))
    # a copy of the series in another folder stays a series of its own (positions collide)
    shutil.copytree(root / "p" / "DICOM" / "0001", root / "p" / "copy")
    done = hostile.dosealign("scan", str(root))
    assert "one CT slice in 2 series (folders): copies" in done.stdout, done.stdout


def test_dataset_files_that_no_longer_describe_the_cases_are_removed(tmp_path, capsys):
    """Fifteenth hostile trial O9: after cases exported with ``--format nifti,hdf5`` were exported again without
    those formats (another grid), dataset.h5 still held the first run's arrays under the same case ids and
    dataset.json named NIfTI files that were gone, without a note (a merge even listed them as its output). Such
    files are removed with a note; files still true (a --resume that keeps every case) stay as they are; a file of
    that name that is not DoseAlign's is left alone."""
    pytest.importorskip("h5py")
    pytest.importorskip("nibabel")
    root = tmp_path / "in"
    for n in range(2):
        hostile.study(root / f"p{n}", f"DS-{n}", 90 + n, with_structures=False, ct_size=(32, 32, 12))
    out = tmp_path / "out"
    base = ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"]
    assert main([*base, "--format", "nifti,hdf5"]) == 0
    first = {name: (out / name).read_bytes() for name in ("dataset.h5", "dataset.json")}
    capsys.readouterr()
    assert main([*base, "--resume"]) == 0  # every case kept: the dataset files still describe them
    assert "removed" not in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in first} == first
    assert main([*base, "--reference", "dose"]) == 0  # every case made again, without the formats
    printed = capsys.readouterr().out
    for name, fmt in (("dataset.h5", "hdf5"), ("dataset.json", "nifti")):
        assert not (out / name).exists(), name
        assert f"{name} of an earlier run removed" in printed and f"now without --format {fmt}" in printed, printed
    (out / "dataset.json").write_text('{"mine": true}', encoding="utf-8")  # a user's file of that name
    assert main([*base, "--reference", "ct"]) == 0
    assert "dataset.json" not in capsys.readouterr().out
    assert (out / "dataset.json").read_text(encoding="utf-8") == '{"mine": true}'
    (out / "dataset.json").unlink()
    # sixteenth trial P1: a run that only adds a format, or an OUT copied (times changed), changes no case: the
    # dataset files stay (a comparison of modification times removed dataset.h5 as "exported again since")
    assert main([*base, "--format", "hdf5"]) == 0
    kept = (out / "dataset.h5").read_bytes()
    assert main([*base, "--resume", "--format", "nifti"]) == 0
    copied = tmp_path / "copied"
    shutil.copytree(out, copied)  # (file times are those of the copy)
    assert main(["export", str(root), str(copied), "--quiet", "--workers", "1", "--no-qa-png", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "removed" not in printed, printed
    assert (out / "dataset.h5").read_bytes() == kept and (out / "dataset.json").is_file()
    assert (copied / "dataset.h5").read_bytes() == kept and (copied / "dataset.json").is_file()
    merged = tmp_path / "merged"  # the same through shards and merge, which listed the stale files as its own
    shards = ["export", str(root), str(merged), "--quiet", "--workers", "1", "--no-qa-png", "--shard"]
    for extra in (["--format", "nifti,hdf5"], ["--reference", "dose"]):
        for k in (1, 2):
            assert main([*shards, f"{k}/2", *extra]) == 0
        assert main(["merge", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert "dataset.h5 of an earlier run removed" in printed and "dataset.json of an earlier run removed" in printed
    assert not (merged / "dataset.h5").exists() and not (merged / "dataset.json").exists()


def test_a_damaged_or_huge_dataset_json_is_left_alone_without_a_traceback(tmp_path, capsys, monkeypatch):
    """Eighteenth hostile trial R2, R3: a dataset.json naming DoseAlign whose "training" is no list ended export and
    merge in a TypeError traceback; a sparse one of 2 GiB was read whole (4.3 GB). Neither is known to be
    DoseAlign's: it is left as it is, read within DOSEALIGN_META_MB, and the run goes on."""
    root = tmp_path / "in"
    hostile.study(root / "p0", "DSJSON-0", 93, with_structures=False, ct_size=(32, 32, 12))
    out = tmp_path / "out"
    base = ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"]
    assert main(base) == 0
    path = out / "dataset.json"
    for text in (
        '{"reference": "DoseAlign 0.1.0", "training": 5}',
        '{"reference": "DoseAlign 0.1.0", "validation": [1]}',
    ):
        path.write_text(text, encoding="utf-8")
        assert main([*base, "--resume"]) == 0
        assert path.read_text(encoding="utf-8") == text
    monkeypatch.setenv("DOSEALIGN_META_MB", "1")
    with open(path, "wb") as handle:  # a sparse file beyond the limit, DoseAlign's by its start
        handle.write(b'{"reference": "DoseAlign 0.1.0", "x": "')
        handle.truncate(64 << 20)
        handle.seek(0, 2)
        handle.write(b'"}')
    assert main([*base, "--resume"]) == 0
    assert path.stat().st_size == (64 << 20) + 2
    capsys.readouterr()
    shards = ["export", str(root), str(tmp_path / "merged"), "--quiet", "--workers", "1", "--no-qa-png", "--shard"]
    assert main([*shards, "1/1"]) == 0
    (tmp_path / "merged" / "dataset.json").write_text('{"reference": "DoseAlign 0.1.0", "training": 5}')
    assert main(["merge", str(tmp_path / "merged")]) == 2  # merge writes that name: it says so, no traceback
    assert "dataset.json: is a file (no DoseAlign datalist) that is not DoseAlign's" in capsys.readouterr().err


def test_copies_whose_patient_name_differs_only_in_case_are_copies(tmp_path, capsys):
    """Seventeenth hostile trial Q10: an RTSTRUCT and an RTPLAN sent again by a PACS that upper-cases names
    (`Doe^Jonathan`, `DOE^JONATHAN^`) failed the case: "which contours belong to the case cannot be told". A name
    that differs only in case, blanks or empty trailing components is one name; another name still fails."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "NAMECASE-1", 16, patient_name="Doe^Jonathan")
    structure, plan = Path(truth.struct_file), Path(truth.plan_file)
    for source, name in ((structure, "zz_rs_copy.dcm"), (plan, "zz_plan_copy.dcm")):
        ds = dd.read(source)
        ds.PatientName = "DOE^JONATHAN ^"
        dd.save(ds, source.with_name(name))
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], rows
    meta = json.loads((out / rows[0]["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"]["rtstruct_files"] == [structure.relative_to(root).as_posix()], meta["source"]
    assert meta["source"]["rtplan_file"] == plan.relative_to(root).as_posix(), meta["source"]
    for name in ("RTSTRUCT p/zz_rs_copy.dcm is a copy", "RTPLAN p/zz_plan_copy.dcm is a copy"):
        assert any(link.startswith(name) for link in meta["links"]), meta["links"]
    for name in ("zz_rs_copy.dcm", "zz_plan_copy.dcm"):  # another name: the case fails naming the files
        ds = dd.read(structure if name.startswith("zz_rs") else plan)
        ds.PatientName = "Roe^Richard"
        dd.save(ds, root / "p" / name)
    code, rows, out = _export(root, tmp_path / "again", capsys)
    assert code == 1 and rows[0]["status"] == "failed" and "zz_" in rows[0]["reason"], rows


def _one_frame(dose: Path) -> None:
    """Cut an RTDOSE file to its middle frame (NumberOfFrames 1, its slab 3 mm thick)."""
    ds = dd.read(dose)
    values = ds.pixel_array
    middle = values.shape[0] // 2
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    position = [float(v) for v in ds.ImagePositionPatient]
    position[2] += offsets[middle] - offsets[0]
    ds.ImagePositionPatient, ds.NumberOfFrames, ds.GridFrameOffsetVector = position, 1, [0]
    ds.PixelData, ds.SliceThickness = np.ascontiguousarray(values[middle]).tobytes(), 3
    dd.save(ds, dose)


@pytest.mark.parametrize("first", ["thin", "thick"])
def test_one_frame_doses_of_other_slabs_are_no_copies(tmp_path, capsys, first):
    """Eighteenth hostile trial R4: two one-frame RTDOSE files of one UID and the same pixels, 3 and 60 mm thick (the
    slab the export gives the frame), were "a copy, used once": the exported dose covered 2 or 24 CT slices by the
    file names. They are two doses, each its own case, whichever name sorts first."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "SLAB-1", 17, with_structures=False)
    dose = Path(truth.dose_files[0])
    _one_frame(dose)
    ds = dd.read(dose)
    ds.SliceThickness = 60
    dd.save(ds, dose.with_name("000_thick.dcm" if first == "thick" else "zz_thick.dcm"))
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok", "ok"], rows
    covered = sorted(  # the CT slices each case's dose reaches
        int((np.load(out / r["case_id"] / "pair.npz")["dose"].max(axis=(1, 2)) > 0).sum()) for r in rows
    )
    assert covered[0] < covered[1], covered  # a thin and a thick slab, not one of them twice


def test_a_dose_resent_with_its_patient_name_written_otherwise_is_a_copy(tmp_path, capsys):
    """Eighteenth hostile trial R7: an RTDOSE sent again with PatientName upper-cased or padded (`DOE^JONATHAN`,
    `Doe^Jonathan^^^`) became a second ok case with the same arrays (one dose, two training pairs). It is a copy,
    used once."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "RESENT-1", 18, patient_name="Doe^Jonathan")
    dose = Path(truth.dose_files[0])
    for n, name in enumerate(["DOE^JONATHAN", "Doe^Jonathan^^^"]):
        ds = dd.read(dose)
        ds.PatientName = name
        dd.save(ds, dose.with_name(f"zz_resent_{n}.dcm"))
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], rows
    meta = json.loads((out / rows[0]["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"]["rtdose_files"] == [dose.relative_to(root).as_posix()], meta["source"]


@pytest.mark.parametrize(
    "written",
    [
        "absolute offsets",
        "another SliceThickness",
        "requantized",
        "frames reversed",
        "name corrected",
        "plans reordered",
    ],
)
def test_a_dose_resent_written_otherwise_is_a_copy_as_under_append(tmp_path, capsys, written):
    """Nineteenth hostile trial S1: the same RTDOSE sent again with GridFrameOffsetVector absolute, another
    SliceThickness on its frames, or 32-bit pixels twice as large with half the DoseGridScaling (the same Gy) was one
    dose under --append but two ok cases with identical arrays in one input. Both use one rule now: the grid DoseAlign
    computes and the values in Gy."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "RESENT-2", 20)
    dose = Path(truth.dose_files[0])
    ds = dd.read(dose)
    if written == "absolute offsets":
        z = float(ds.ImagePositionPatient[2])
        ds.GridFrameOffsetVector = [f"{z + float(v):g}" for v in ds.GridFrameOffsetVector]
    elif written == "another SliceThickness":
        ds.SliceThickness = 0
    elif written == "requantized":
        values = ds.pixel_array.astype(np.uint32) * 2
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
        ds.PixelData = values.astype("<u4").tobytes()
        ds.DoseGridScaling = repr(float(ds.DoseGridScaling) / 2)
    elif written == "frames reversed":  # (twentieth trial T3) the last frame first: the same grid and values
        offsets = [float(v) for v in ds.GridFrameOffsetVector]
        position = [float(v) for v in ds.ImagePositionPatient]
        position[2] += offsets[-1]
        ds.ImagePositionPatient = [f"{v:g}" for v in position]
        ds.GridFrameOffsetVector = [f"{v - offsets[-1]:g}" for v in offsets[::-1]]
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()
    elif written == "name corrected":  # (T3) a corrected name: PatientID, plan, study and frame decide
        ds.PatientName = str(ds.PatientName) + "^Maria"
    else:  # (twenty-first trial) a dose of two plans, listed in the other order
        from pydicom.dataset import Dataset

        second = Dataset()
        second.ReferencedSOPClassUID = ds.ReferencedRTPlanSequence[0].ReferencedSOPClassUID
        second.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1234567"
        ds.ReferencedRTPlanSequence = [ds.ReferencedRTPlanSequence[0], second]
        dd.save(ds, dose)
        ds.ReferencedRTPlanSequence = list(ds.ReferencedRTPlanSequence)[::-1]
    dd.save(ds, dose.with_name("zz_resent.dcm"))
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], rows
    meta = json.loads((out / rows[0]["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"]["rtdose_files"] == [dose.relative_to(root).as_posix()], meta["source"]


@pytest.mark.parametrize("keyword", ["SliceThickness", "SpacingBetweenSlices"])
def test_a_ct_slice_resent_with_another_thickness_is_a_copy(tmp_path, capsys, keyword):
    """Nineteenth hostile trial S6: R4's fix made SliceThickness and SpacingBetweenSlices count for CT slice copies
    too, so a slice sent again with another thickness (the step comes from the positions) failed the case as two
    different images. It is a copy, used once."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "RESENT-3", 21)
    middle = Path(truth.ct_files[len(truth.ct_files) // 2])
    ds = dd.read(middle)
    setattr(ds, keyword, 3.25)
    dd.save(ds, middle.with_name("zz_resent_slice.dcm"))
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], rows


def test_copies_whose_identity_is_written_otherwise_are_copies(tmp_path, capsys):
    """Nineteenth hostile trial S11 and S8's addendum: an RTSTRUCT sent again without PatientName's ideographic and
    phonetic groups (a system without those character sets) failed the case as differing copies; an RTDOSE sent
    again with its PatientID in lower case (a PACS that changes case) became a second patient's case with identical
    arrays. Both are copies, as the pairing reads a PatientID and a name."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "IDCASE-1", 22, patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    structure, dose = Path(truth.struct_file), Path(truth.dose_files[0])
    ds = dd.read(structure)
    ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", "Yamada^Tarou"
    dd.save(ds, structure.with_name("zz_rs_resent.dcm"))
    ds = dd.read(dose)
    ds.PatientID = "idcase-1"
    dd.save(ds, dose.with_name("zz_dose_resent.dcm"))
    code, rows, out = _export(root, tmp_path, capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], rows
    meta = json.loads((out / rows[0]["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"]["rtdose_files"] == [dose.relative_to(root).as_posix()], meta["source"]
    assert meta["source"]["rtstruct_files"] == [structure.relative_to(root).as_posix()], meta["source"]


@pytest.mark.parametrize("name", [b"000_same_step.dcm", b"000_r\xe9sent.dcm", b"000_re\nsent.dcm"])
def test_a_one_slice_ct_whose_copy_gives_another_step_fails(tmp_path, capsys, name):
    """Twentieth hostile trial T8: S6's fix let a one-slice CT's copy with another SliceThickness count as a copy,
    and the exported grid's slice step (2.5 or 10 mm) followed the file names. A one-slice CT's copies must give
    the same step; otherwise the case fails naming both files. A copy giving the same step is used once.
    Twenty-first trial U4: a copy whose name is not UTF-8 or holds a newline was looked for under its escaped name
    and skipped; and a copy that states no step is no disagreement (the step its original states is used)."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "ONESLICE-1", 23, with_structures=False)
    keep = Path(truth.ct_files[len(truth.ct_files) // 2])
    for other in truth.ct_files:
        if Path(other) != keep:
            Path(other).unlink()
    ds = dd.read(keep)
    resent = keep.with_name(os.fsdecode(name))
    dd.save(ds, resent)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], rows
    thickness = float(ds.SliceThickness)
    ds.SliceThickness = thickness * 4
    dd.save(ds, resent)
    code, rows, _out = _export(root, tmp_path / "again", capsys)
    assert code == 1 and rows[0]["status"] == "failed", rows
    shown = name.decode("utf-8", "backslashreplace").replace("\n", "\\x0a")
    assert shown in rows[0]["reason"] and "which grid is the CT's cannot be told" in rows[0]["reason"], rows
    del ds.SliceThickness  # a copy whose anonymizer dropped the step: the original's is the CT's
    dd.save(ds, resent)
    code, rows, out = _export(root, tmp_path / "third", capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], rows
    meta = json.loads((out / rows[0]["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["spacing"][2] == pytest.approx(thickness), meta["spacing"]


def test_two_kept_cases_files_swapped_are_not_kept(tmp_path, capsys):
    """Twenty-fourth hostile trial X6: a kept case counted as complete whatever arrays its files held, as long as
    their names, shapes and types fit: two cases' pair.npz (or dose.nii.gz) swapped stayed "skipped", the manifest
    gave each the other's Dmax, and --resume built case.h5 and dataset.h5 from the other patient's arrays. meta.json
    records each file's SHA-256: a swapped pair.npz makes its case exported again, a swapped format file is written
    again from the case's pair.npz; every file is then what the export first wrote."""
    pytest.importorskip("nibabel")
    root = tmp_path / "in"
    for n in (1, 2):  # one grid, other doses
        hostile.study(root / f"p{n}", f"SWAP-{n}", 80 + n, dose_field=(0.02, -0.03, 0.05, 30.0 + 10 * n))
    out = tmp_path / "out"
    args = ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--format", "npz,nifti"]
    assert main(args) == 0
    first, second = sorted(p for p in out.iterdir() if (p / "meta.json").is_file())
    written = {p: {name: (p / name).read_bytes() for name in ("pair.npz", "dose.nii.gz")} for p in (first, second)}
    for name in ("pair.npz", "dose.nii.gz"):
        assert written[first][name] != written[second][name], name  # two cases, other doses
        (first / name).write_bytes(written[second][name])
        (second / name).write_bytes(written[first][name])
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    rows = {row["case_id"]: row for row in hostile.manifest(out)}
    assert {rows[p.name]["status"] for p in (first, second)} == {"ok"}, capsys.readouterr()  # exported again
    for case in (first, second):
        for name, data in written[case].items():
            assert (case / name).read_bytes() == data, (case.name, name)
    (first / "dose.nii.gz").write_bytes(written[second]["dose.nii.gz"])  # a format file alone: written again
    assert main(args + ["--resume"]) == 0
    assert [row["status"] for row in hostile.manifest(out)] == ["skipped", "skipped"]
    assert (first / "dose.nii.gz").read_bytes() == written[first]["dose.nii.gz"]


@pytest.mark.parametrize("damage", ["string", "list", "a digest that is no digest", "pair.npz's entry removed"])
def test_a_file_sha256_record_that_is_not_whole_makes_the_case_exported_again(tmp_path, capsys, damage):
    """Twenty-sixth hostile trial Z5: meta.json's file_sha256 of another type (a string, a list) or without pair.npz's
    entry was taken as "no digests" (an export before X6's), and --resume kept a pair.npz whose dose was halved,
    "skipped" with the old Dmax. What vouches for the files must be an object of SHA-256 digests of every file the
    export wrote (HDF5 apart): else the case is damaged and exported again, as first written."""
    import numpy as np

    root = tmp_path / "in"
    hostile.study(root / "p", "SHA-1", 82)
    out = tmp_path / "out"
    args = ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"]
    assert main(args) == 0
    (case,) = [p for p in out.iterdir() if (p / "meta.json").is_file()]
    written = (case / "pair.npz").read_bytes()
    meta = json.loads((case / "meta.json").read_text(encoding="utf-8"))
    assert set(meta["file_sha256"]) >= {"pair.npz", "dvh.csv"}
    if damage == "string":
        meta["file_sha256"] = "x"
    elif damage == "list":
        meta["file_sha256"] = [1, 2]
    elif damage == "a digest that is no digest":
        meta["file_sha256"]["pair.npz"] = ["a"]
    else:
        del meta["file_sha256"]["pair.npz"]
    (case / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    with np.load(case / "pair.npz") as pair:
        arrays = {name: pair[name] for name in pair.files}
    arrays["dose"] = arrays["dose"] * 0.5
    np.savez(case / "pair.npz", **arrays)
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    printed = capsys.readouterr()
    assert "exported again: its outputs were damaged (meta.json's file_sha256" in printed.out, printed.out
    assert [row["status"] for row in hostile.manifest(out)] == ["ok"]
    assert (case / "pair.npz").read_bytes() == written


def test_a_case_h5_changed_in_place_is_written_again(tmp_path, capsys):
    """Twenty-sixth hostile trial Z4: case.h5 was out of file_sha256 (HDF5 1.14 writes the time into each file) and
    only its attributes were compared, so its dose halved in place was kept by --resume, and dataset.h5 served it.
    meta.json records the SHA-256 of case.h5's datasets' values (the same from run to run): the changed file is
    written again from pair.npz; so is one whose attributes were changed (twenty-seventh hostile trial AA7)."""
    h5py = pytest.importorskip("h5py")
    root = tmp_path / "in"
    hostile.study(root / "p", "H5-1", 89)
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--format", "hdf5"]
    out, again = tmp_path / "out", tmp_path / "again"
    assert main(["export", str(root), str(out), *args]) == 0
    assert main(["export", str(root), str(again), *args]) == 0
    (case,) = [p for p in out.iterdir() if (p / "meta.json").is_file()]
    meta = json.loads((case / "meta.json").read_text(encoding="utf-8"))
    assert len(meta["file_sha256"]["case.h5"]) == 64
    assert (case / "meta.json").read_bytes() == (again / case.name / "meta.json").read_bytes()
    with np.load(case / "pair.npz") as pair:
        dose = pair["dose"]
    with h5py.File(case / "case.h5", "r+") as handle:
        handle["dose"][...] = handle["dose"][()] * 0.5
    capsys.readouterr()
    assert main(["export", str(root), str(out), *args, "--resume"]) == 0
    assert [row["status"] for row in hostile.manifest(out)] == ["skipped"]
    with h5py.File(case / "case.h5", "r") as handle:
        np.testing.assert_array_equal(handle["dose"][()], dose.astype(np.float32))
    with h5py.File(out / "dataset.h5", "r") as handle:
        np.testing.assert_array_equal(handle[case.name]["dose"][()], dose.astype(np.float32))
    # twenty-seventh hostile trial AA7: the attributes count too (spacing, a dataset's units changed in place)
    with h5py.File(case / "case.h5", "r") as handle:
        spacing, units = handle.attrs["spacing"][()], handle["dose"].attrs["units"]
    with h5py.File(case / "case.h5", "r+") as handle:
        handle.attrs["spacing"] = spacing * 2
        handle["dose"].attrs["units"] = "cGy"
    assert main(["export", str(root), str(out), *args, "--resume"]) == 0
    with h5py.File(case / "case.h5", "r") as handle:
        np.testing.assert_array_equal(handle.attrs["spacing"][()], spacing)
        assert handle["dose"].attrs["units"] == units


@pytest.mark.parametrize("other_part", ["removed", "in another frame of reference", "both, two structure sets"])
def test_a_case_whose_structure_set_references_ct_images_the_input_lacks_warns(tmp_path, capsys, other_part):
    """Thirty-eighth hostile trial AL13: a case made from half its CT (the other slices missing, or in a folder that
    could not be read elsewhere) was ok with audit flags only; nothing said that its structure set references CT
    images of the series the input does not hold. The case warns, naming the structure set and how many. Where the
    input holds them in a folder not joined with the CT (another frame of reference), the warning said the input
    did not hold them (forty-first hostile trial); it says where they are."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "HALF-CT-1", 144, ct_size=(32, 32, 16))
    slices = sorted(truth.ct_files, key=lambda p: float(dd.read(p).ImagePositionPatient[2]))
    elsewhere = root / "p" / "other-part"
    elsewhere.mkdir()
    if other_part.startswith("both"):  # a second structure set referencing the same images (forty-third trial AQ4)
        copy = dd.read(truth.struct_file)
        copy.SOPInstanceUID = copy.SOPInstanceUID + ".7"
        dd.save(copy, Path(truth.struct_file).with_name("second-struct.dcm"))
        slices[15].unlink()  # and one image nowhere
        slices = slices[:15]
    for path in slices[12:]:  # (a quarter: the structure set's CT is the rest, by most images referenced)
        if other_part == "removed":
            path.unlink()
        else:
            ds = dd.read(path)
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.144144"
            dd.save(ds, path)
            path.rename(elsewhere / path.name)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 0 and rows[0]["status"] == "ok", rows
    said = "reference CT images of this case's series that its CT does not hold"
    assert said in rows[0]["warnings"] and "(4 of 16)" in rows[0]["warnings"], rows[0]["warnings"]
    if other_part.startswith("both"):
        assert (
            "the input holds 3 of them outside this CT (not joined with it); the other is missing"
            in (rows[0]["warnings"])
        ), rows[0]["warnings"]
        return
    held = "the input holds 4 of them outside this CT (not joined with it)" in rows[0]["warnings"]
    assert held == (other_part != "removed"), rows[0]["warnings"]


def test_an_unused_structure_set_on_a_cases_ct_is_not_said_to_lie_on_no_cases_ct(tmp_path):
    """Forty-third hostile trial AQ3: a second structure set drawn on the case's CT, which the case does not take (its
    RTPLAN references the other), was listed "its CT is not part of any case": a user looks for a CT problem. It says
    that the case takes the structure set its plan references; one on a CT of no case says as before."""
    from DoseAlignLib import api

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "TWO-SETS-1", 19)
    copy = dd.read(truth.struct_file)
    copy.SOPInstanceUID = copy.SOPInstanceUID + ".9"
    dd.save(copy, root / "p" / "second-struct.dcm")
    orphans = {path: why for path, kind, why in api.form_cases(api.scan_folder(root)).orphans if kind == "RTSTRUCT"}
    assert orphans == {"p/second-struct.dcm": "its CT is a case's CT, and that case uses the structure set its RTPLAN "
                       "references"}, orphans  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        "two slices swapped",
        "two slices of one size and time swapped",
        "a slice rewritten in place, its size and time kept",
        "a slice removed",
        "a dose rewritten",
    ],
)
def test_an_input_file_changed_while_its_case_runs_fails_the_case(tmp_path, capsys, monkeypatch, change):
    """Forty-fifth hostile trial AS1: two CT slice files of a case swapped names (``mv``) after the scan; the case
    read each at the position the scan had seen for the other, status ok. A file changed, replaced or removed since
    the scan fails its case, named; nothing of it is written. Also two slices of one size and modification time
    (unpacked from one archive: forty-seventh trial AU1), told apart by their inodes."""
    from DoseAlignLib import batch

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "CHANGED-1", 145, with_structures=False, ct_size=(32, 32, 16))
    slices = sorted(truth.ct_files, key=lambda p: float(dd.read(p).ImagePositionPatient[2]))
    if change in ("two slices of one size and time swapped", "a slice rewritten in place, its size and time kept"):
        by_size: dict = {}
        for path in slices:
            by_size.setdefault(path.stat().st_size, []).append(path)
        pair = max(by_size.values(), key=len)[:2]
        assert len(pair) == 2, "no two slices of one size"
        for path in pair:
            os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        slices[5], slices[9] = pair
    real_run_case = batch.run_case

    def changed_first(case, *args, **kwargs):
        if change.startswith("two slices"):
            aside = slices[5].with_name("aside")
            os.rename(slices[5], aside)
            os.rename(slices[9], slices[5])
            os.rename(aside, slices[9])
        elif change.startswith("a slice rewritten"):  # (cp -p of another slice onto it: forty-ninth trial AW4)
            status = slices[5].stat()
            with open(slices[5], "r+b") as handle:
                handle.write(slices[9].read_bytes())
            os.utime(slices[5], ns=(status.st_atime_ns, status.st_mtime_ns))
        elif change == "a slice removed":
            slices[3].unlink()
        else:
            ds = dd.read(truth.dose_files[0])
            ds.DoseComment = "rewritten"
            dd.save(ds, truth.dose_files[0])
        return real_run_case(case, *args, **kwargs)

    monkeypatch.setattr(batch, "run_case", changed_first)
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert (code, row["status"]) == (1, "failed"), row
    named = {"a slice removed": slices[3], "a dose rewritten": truth.dose_files[0]}.get(change, slices[5])
    assert "changed since the input was scanned" in row["reason"] or "cannot be" in row["reason"], row["reason"]
    assert Path(named).name in row["reason"], row["reason"]
    assert not (out / row["case_id"]).exists()


@pytest.mark.parametrize("uid", ["one value", "two values"])
def test_a_case_read_through_another_mount_of_its_files_is_no_changed_input(tmp_path, capsys, monkeypatch, uid):
    """Forty-ninth hostile trial AW1: a ``tcp://`` Dask worker on another node sees the input's share under its own
    device number; the inode check of AU1 compared (device, inode) and failed every case there "another file of its
    size and time is in its place". There each file's SOPInstanceUID is read again (BB1), as the scan read it: a slice
    whose UID holds two values failed its case (fifty-eighth trial BF3)."""
    from DoseAlignLib import batch

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "MOUNT-1", 146, with_structures=False, ct_size=(32, 32, 16))
    if uid == "two values":
        path = sorted(truth.ct_files)[5]
        ds = dd.read(path)
        ds.SOPInstanceUID = [ds.SOPInstanceUID, "1.2.3.4"]
        dd.save(ds, path)
    real = batch.form_cases

    def seen_on_another_mount(*args, **kwargs):
        linked = real(*args, **kwargs)
        for case in linked.cases:
            for obj in [*case.doses, *(case.ct.file_objects if case.ct else [])]:
                device, inode = obj.info["inode"]
                obj.info["inode"] = (device + 1, inode + 7)  # (another client's device; its own inode numbers)
        return linked

    monkeypatch.setattr(batch, "form_cases", seen_on_another_mount)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], rows


def test_two_slices_swapped_while_read_through_another_mount_fail_their_case(tmp_path, capsys, monkeypatch):
    """Fifty-fourth hostile trial BB1: through another mount (a ``tcp://`` worker on another node: its own device
    number, AW1), two CT slices of one size and time swapped while the export ran were read at each other's place,
    status ok: the inode check counted on the scan's device only, and nothing else was looked at. There the
    SOPInstanceUID each file holds is read again."""
    from DoseAlignLib import batch

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "MOUNT-2", 148, with_structures=False, ct_size=(32, 32, 16))
    by_size: dict = {}
    for path in sorted(truth.ct_files):
        by_size.setdefault(Path(path).stat().st_size, []).append(Path(path))
    first, second = next(paths for paths in by_size.values() if len(paths) >= 2)[:2]
    real_form, real_run = batch.form_cases, batch.run_case

    def seen_on_another_mount(*args, **kwargs):
        linked = real_form(*args, **kwargs)
        for case in linked.cases:
            for obj in [*case.doses, *(case.ct.file_objects if case.ct else [])]:
                device, inode = obj.info["inode"]
                obj.info["inode"] = (device + 1, inode + 7)
        return linked

    def swapped_first(case, *args, **kwargs):
        times = os.stat(first)
        os.replace(first, first.with_name("held"))
        os.replace(second, first)
        os.replace(first.with_name("held"), second)
        for path in (first, second):  # (one size, one time: only their contents tell them apart)
            os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
        return real_run(case, *args, **kwargs)

    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    monkeypatch.setattr(batch, "form_cases", seen_on_another_mount)
    monkeypatch.setattr(batch, "run_case", swapped_first)
    code, rows, out = _export(root, tmp_path, capsys)
    (row,) = rows
    assert (code, row["status"]) == (1, "failed"), row
    assert "another SOPInstanceUID" in row["reason"], row["reason"]
    assert not (out / row["case_id"]).exists()


@pytest.mark.parametrize("change", ["its mode changed", "the same bytes under a new inode"])
def test_an_input_file_whose_inode_or_change_time_changed_but_not_its_contents_is_no_changed_input(
    tmp_path, capsys, monkeypatch, change
):
    """AU1 and AW4 are told by a file's inode and its change time, which also change without its contents: a chmod,
    a file system whose inode numbers are not kept (FAT's), a copy put back in place. The SOPInstanceUID the file holds
    decides there: the same, the case runs (forty-ninth trial, what it could not try on vfat)."""
    import shutil

    from DoseAlignLib import batch

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "SAME-1", 147, with_structures=False, ct_size=(32, 32, 16))
    target = sorted(truth.ct_files)[4]
    real_run_case = batch.run_case

    def touched_first(case, *args, **kwargs):
        if change == "its mode changed":
            os.chmod(target, 0o600)
        else:
            shutil.copy2(target, target.with_name("copy"))
            os.replace(target.with_name("copy"), target)
        return real_run_case(case, *args, **kwargs)

    monkeypatch.setattr(batch, "run_case", touched_first)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], rows


def _scan_json(root: Path, capsys, *options: str) -> tuple:
    code = main(["scan", str(root), "--json", *options])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "name, which, tags",
    [
        ("DoseType ERROR", "plan", {"DoseType": "ERROR"}),
        ("DoseType undefined", "plan", {"DoseType": None}),
        ("DoseUnits CGY", "plan", {"DoseUnits": "CGY"}),
        ("DoseUnits RELATIVE", "plan", {"DoseUnits": "RELATIVE"}),
        ("another frame", "plan", {"FrameOfReferenceUID": "1.2.826.0.1.3680043.10.999.4"}),
        ("a scaling out of bounds", "plan", {"DoseGridScaling": "2e5"}),
        ("a broken orientation", "plan", {"ImageOrientationPatient": [1, 0, 0, 1, 0, 0]}),
        ("a beam of another DoseType", "beams", {"DoseType": "EFFECTIVE"}),
    ],
)
def test_scan_says_a_case_cannot_be_exported_where_export_refuses_its_dose_header(
    clean, tmp_path, capsys, name, which, tags
):
    """Sixty-seventh hostile trial BO4: ``scan`` said exit 0 and ``"exportable": true`` for doses ``export`` then
    refused from their header values (DoseType ERROR, DoseUnits CGY, a dose of another frame than its CT's). Scan now
    says the case cannot be exported, for the reason the export gives."""
    root = _copy(clean, which, tmp_path)
    dose = root / _rel(clean, which, clean[which].dose_files[-1])
    dd.rewrite_tags(dose, **tags)
    code, document = _scan_json(root, capsys)
    (case,) = document["cases"]
    assert (code, case["exportable"]) == (1, False), case
    export_code, rows, _out = _export(root, tmp_path, capsys)
    assert export_code == 1
    (row,) = rows
    assert row["status"] == "failed" and dose.name in case["error"], (case["error"], row["reason"])
    assert case["error"] in row["reason"], (case["error"], row["reason"])


def test_scan_lists_a_relative_dose_as_exportable_with_allow_relative(clean, tmp_path, capsys):
    root = _copy(clean, "plan", tmp_path)
    dd.rewrite_tags(root / _rel(clean, "plan", clean["plan"].dose_files[0]), DoseUnits="RELATIVE")
    code, document = _scan_json(root, capsys, "--allow-relative")
    assert (code, [c["exportable"] for c in document["cases"]]) == (0, [True])


def test_scan_lists_a_clean_case_as_exportable(clean, capsys):
    code, document = _scan_json(clean["base"] / "beams", capsys)
    assert (code, [c["exportable"] for c in document["cases"]]) == (0, [True])


def _modality_lut(path: Path) -> None:
    from pydicom.dataset import Dataset

    ds = dd.read(path)
    del ds.RescaleSlope, ds.RescaleIntercept
    table = Dataset()
    table.LUTDescriptor = [2, 0, 16]
    table.ModalityLUTType = "HU"
    table.add_new(0x00283006, "US", [0, 1])  # LUTData
    ds.ModalityLUTSequence = [table]
    dd.save(ds, path)


@pytest.mark.parametrize(
    "variant",
    ["no rescale tags", "no intercept", "an empty intercept", "no slope", "a modality LUT"],
)
def test_a_ct_slice_whose_rescale_is_unknown_fails_the_case(clean, tmp_path, capsys, variant):
    """Seventieth hostile trial BR1: one CT slice without RescaleSlope/RescaleIntercept (or with an empty one, or with
    a Modality LUT in their place) was read as slope 1, intercept 0: that slice 1024 HU off, ok, no warning."""
    root = _copy(clean, "plan", tmp_path)
    slice_path = root / _rel(clean, "plan", clean["plan"].ct_files[2])
    if variant == "a modality LUT":
        _modality_lut(slice_path)
    else:
        tags = {
            "no rescale tags": {"RescaleSlope": None, "RescaleIntercept": None},
            "no intercept": {"RescaleIntercept": None},
            "an empty intercept": {"RescaleIntercept": ""},
            "no slope": {"RescaleSlope": None},
        }[variant]
        dd.rewrite_tags(slice_path, **tags)
    code, rows, _out = _export(root, tmp_path, capsys)
    assert code == 1
    tag = {"a modality LUT": "(0028,3000)", "no slope": "(0028,1053)", "no rescale tags": "(0028,1053)"}.get(
        variant, "(0028,1052)"
    )
    _failed_with(rows, slice_path.name, tag)


def test_an_empty_modality_lut_sequence_beside_the_rescale_is_no_table(clean, tmp_path, capsys):
    """Seventy-fourth hostile trial BV6: slices giving RescaleSlope and RescaleIntercept and an empty (0028,3000)
    ModalityLUTSequence (zero items, as some writers leave it) failed "turned into HU by a Modality LUT"; scan said
    they could be exported. An empty sequence holds no table: the rescale is read."""
    from pydicom.sequence import Sequence

    root = _copy(clean, "plan", tmp_path)
    for ct in clean["plan"].ct_files:
        path = root / _rel(clean, "plan", ct)
        ds = dd.read(path)
        ds.ModalityLUTSequence = Sequence([])
        dd.save(ds, path)
    assert "ModalityLUTSequence" in dd.read(path)  # (else this test proves nothing)
    row, _flags, _out = _one_ok_case(root, tmp_path, capsys)
    assert row["status"] == "ok"


def test_a_ct_none_of_whose_slices_gives_a_rescale_is_read_as_stored(clean, tmp_path, capsys):
    """The rule of BR1 is about one slice against its series: a series without any rescale tag exports as before."""
    root = _copy(clean, "plan", tmp_path)
    for ct in clean["plan"].ct_files:
        dd.rewrite_tags(root / _rel(clean, "plan", ct), RescaleSlope=None, RescaleIntercept=None)
    row, _flags, _out = _one_ok_case(root, tmp_path, capsys)
    assert row["status"] == "ok"


@pytest.mark.parametrize("interpolator", ["bs", "ws"])
def test_an_overshoot_beyond_int16_is_clipped_and_said_not_wrapped(tmp_path, capsys, interpolator):
    """Eighty-fourth hostile trial CF1: metal at the top of an extended CT scale (32 767 HU) beside air, resampled by
    B-spline or windowed sinc, overshoots beyond int16: those voxels wrapped round to about -30 000 HU in the default
    int16 CT, ok, without a word. They are clipped to int16's range, and a case warning says how many."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "METAL-1", 7, ct_size=(40, 36, 16))
    for path in truth.ct_files:
        ds = dd.read(Path(path))
        pixels = ds.pixel_array.copy()
        pixels[14:22, 14:22] = 32767 + 1024  # (stored with RescaleIntercept -1024)
        ds.PixelData = pixels.tobytes()
        dd.save(ds, Path(path))
    out = tmp_path / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--no-structures", "--spacing", "1.3"]
    assert main(["export", str(root), str(out), *args, "--interpolator", interpolator]) == 0, capsys.readouterr()
    (row,) = hostile.manifest(out)
    with np.load(out / row["case_id"] / "pair.npz") as pair:
        ct = pair["ct"]
    # (the interpolator's own ringing goes some thousand HU below air; wrapped voxels were at -30 000)
    assert ct.dtype == np.int16 and ct.min() > -10000, ct.min()
    assert ct.max() == 32767
    assert "overshoot the int16 range" in row["warnings"] and "clipped" in row["warnings"], row["warnings"]


def test_dose_beyond_the_ct_on_a_dose_grid_is_flagged(tmp_path, capsys):
    """Eighty-fourth hostile trial CF4: with --reference dose (or a custom box of the dose) the part of the dose beyond
    a short CT lay on the CT's fill value (-1000 HU) in the pair, ok, with no flag: the same input with --reference ct
    is flagged dose_outside_grid. It is now flagged dose_beyond_ct; onto the CT grid only dose_outside_grid says it.
    A cube partly beyond the CT (which also loses dose inside the CT) was silent again (eighty-sixth CH1): the flag
    counts the dose the output grid holds beyond the CT."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "SHORT-CT-1", 17, ct_size=(32, 28, 16))
    for path in truth.dose_files:
        ds = dd.read(Path(path))
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0] + 0.6 * 32 * float(truth.ct_pixel_spacing[0]), *position[1:]]
        dd.save(ds, Path(path))
    flags, beyond = {}, {}
    for grid in ("dose", "ct", "cube"):
        out = tmp_path / grid
        args = ["--quiet", "--workers", "1", "--no-qa-png", "--no-structures"]
        args += ["--size", "12", "--spacing", "2", "--centre", "dose"] if grid == "cube" else ["--reference", grid]
        assert main(["export", str(root), str(out), *args]) == 0, capsys.readouterr()
        (row,) = hostile.manifest(out)
        flags[grid] = set(row["audit_flags"].split(";"))
        meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
        beyond[grid] = meta["audit"]["dose"]["beyond_ct_integral_pct"]
    assert "dose_beyond_ct" in flags["dose"] and "dose_outside_grid" not in flags["dose"], flags
    assert "dose_outside_grid" in flags["ct"] and "dose_beyond_ct" not in flags["ct"], flags
    assert "dose_beyond_ct" in flags["cube"], (flags, beyond)
    assert beyond["dose"] > 5 and beyond["ct"] == 0 and beyond["cube"] > 1, beyond
