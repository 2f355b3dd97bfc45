"""Which CT a dose is paired with: references first, only Modality CT series, and the user's --ct.

A phantom study holds the planning CT (the one its RTSTRUCT names) and, in the same frame of
reference, a rescan CT that covers more and whose slice step equals the dose's frame step, a
cone-beam CT, an MR and an MR stored as CT images. The Nelms phantom (../shared/data, skipped
without it) has three CTs that share one SeriesInstanceUID and doses whose plan is not in the set.
"""

from __future__ import annotations

import csv
import json

import pytest
from DoseAlignLib.dicom.scan import scan_folder
from DoseAlignLib.errors import InputError
from DoseAlignLib.link.cases import form_cases
from DoseAlignLib.phantom import PhantomSpec, write_phantom

EXTRA = ("rescan", "cbct", "mr", "mr_as_ct")


def _study(tmp_path, **spec):
    truth = write_phantom(tmp_path / "in", PhantomSpec(extra_series=EXTRA, dose_frame_spacing=3.0, **spec))
    return truth, scan_folder(tmp_path / "in")


def test_the_references_decide_before_coverage_or_slice_step(tmp_path):
    truth, scan = _study(tmp_path)
    # the MR is not a CT series at all; the MR written as CT images is one, but not a candidate
    assert sorted(s.folder for s in scan.ct_series) == [".", "cbct", "mr_as_ct", "rescan"]
    (case,) = form_cases(scan).cases
    assert case.ct.series_uid == truth.ct_series_uid and case.ct.folder == "."
    assert "via RTPLAN -> RTSTRUCT" in case.notes[-1]
    assert [s.rel_path for s in case.structs] == [truth.struct_file.name]


def test_without_references_only_ct_modality_and_no_cone_beam(tmp_path):
    truth, scan = _study(tmp_path, with_plan=False)
    (case,) = form_cases(scan).cases
    # the rescan covers the dose grid and its slice step is the dose's: it wins on geometry alone ...
    assert case.ct.folder == "rescan"
    note = case.notes[-1]
    assert "no reference decides" in note and "--ct" in note
    assert "cone-beam CT 'cbct'" in note and "'mr_as_ct'" in note and "Modality is MR" in note
    # ... and the user's choice decides: a folder, or a SeriesInstanceUID
    for choice in (".", truth.ct_series_uid, str(tmp_path / "in")):
        (case,) = form_cases(scan, ct=choice).cases
        assert case.ct.series_uid == truth.ct_series_uid, choice
        assert "chosen by --ct" in case.notes[-1]


def test_a_ct_chosen_by_its_folder_name_alone_is_a_case_warning(tmp_path):
    """Seventh hostile trial: a second CT series of the same geometry in the study (a MIP, +500 HU) and no
    reference that decides: the folder name chose it (`a_mip` over `z_ct`), status ok, the manifest's warnings
    empty. The choice stays the documented one, and the case warns that nothing else told the two apart."""
    import shutil

    import dicom_damage as dd
    from pydicom.uid import generate_uid

    truth = write_phantom(tmp_path / "in" / "z_ct", PhantomSpec(with_plan=False))
    mip = tmp_path / "in" / "a_mip"
    mip.mkdir()
    series_uid = generate_uid()
    for path in truth.ct_files:
        copy = mip / path.name
        shutil.copy(path, copy)
        ds = dd.read(copy)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = (ds.pixel_array + 500).astype(ds.pixel_array.dtype).tobytes()
        dd.save(ds, copy)
    (case,) = form_cases(scan_folder(tmp_path / "in")).cases
    assert case.ct.folder == "a_mip"
    (warning,) = [w for w in case.warnings if "chosen by its folder name" in w]
    assert "'z_ct'" in warning and "--ct" in warning, warning
    shutil.rmtree(mip)  # one CT: nothing to warn of
    (case,) = form_cases(scan_folder(tmp_path / "in")).cases
    assert not [w for w in case.warnings if "folder name" in w], case.warnings


def test_ct_choice_errors_name_what_is_wrong(tmp_path):
    truth, scan = _study(tmp_path, with_plan=False)
    with pytest.raises(InputError, match="no CT series with folder or SeriesInstanceUID 'nowhere'"):
        form_cases(scan, ct="nowhere")
    with pytest.raises(InputError, match="not a planning CT: its Modality is MR"):
        form_cases(scan, ct="mr_as_ct")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("dose;ct\nx;y\n", encoding="utf-8")
    with pytest.raises(InputError, match="columns dose and ct") as error:
        form_cases(scan, ct=str(pairs))
    assert "pairs.csv" in str(error.value)
    pairs.write_text("dose,ct\nRD_missing.dcm,rescan\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2: no RTDOSE 'RD_missing.dcm'"):
        form_cases(scan, ct=str(pairs))
    with pytest.raises(InputError, match="no such CSV"):
        form_cases(scan, ct=str(tmp_path / "absent.csv"))
    # a CSV pairing by file name wins over geometry; by SOPInstanceUID too
    for key in (truth.dose_files[0].name, truth.dose_sop_uids[0]):
        with open(pairs, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["dose", "ct"], [key, "."]])
        (case,) = form_cases(scan, ct=str(pairs)).cases
        assert case.ct.series_uid == truth.ct_series_uid


def test_a_csv_pairing_one_dose_with_two_cts_is_refused(tmp_path):
    """Thirteenth hostile trial M12: a --ct CSV with two rows for one dose (by its path twice, ``./path``, or path and
    SOPInstanceUID) naming two CTs was taken without a word, the last row winning. Both lines are named now; the
    same pairing twice is no conflict."""
    truth, scan = _study(tmp_path, with_plan=False)
    pairs = tmp_path / "pairs.csv"
    name, uid = truth.dose_files[0].name, truth.dose_sop_uids[0]
    for first, second in ((name, name), (name, f"./{name}"), (name, uid)):
        with open(pairs, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["dose", "ct"], [first, "."], [second, "rescan"]])
        with pytest.raises(InputError, match="line 3 pairs RTDOSE .* line 2 with CT .*one CT per dose") as error:
            form_cases(scan, ct=str(pairs))
        assert "pairs.csv" in str(error.value)
    with open(pairs, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["dose", "ct"], [name, "rescan"], [uid, "rescan"]])
    (case,) = form_cases(scan, ct=str(pairs)).cases
    assert case.ct.folder == "rescan"


def test_a_csv_pairing_the_summed_doses_of_one_case_with_two_cts_fails_the_case(tmp_path):
    """Seventy-fourth hostile trial BV7: a --ct CSV pairing two BEAM doses of one case (summed) with two CTs: the case
    took the CT of its first dose in path order, the other line not used, ok, no word. The case fails naming both
    pairings; the same CT on every line is no conflict."""
    truth, scan = _study(tmp_path, write_beam_doses=True, write_plan_dose=False)
    beams = [p.name for p, beam in zip(truth.dose_files, truth.dose_beam_numbers) if beam is not None]
    assert len(beams) >= 2  # (else this test proves nothing)
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["dose", "ct"], [beams[0], "."], [beams[1], "rescan"]])
    (case,) = form_cases(scan, ct=str(pairs)).cases
    assert case.error and "pairs the doses of this case" in case.error, case.error
    assert beams[0] in case.error and beams[1] in case.error and "'rescan'" in case.error
    with open(pairs, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["dose", "ct"], [beams[0], "rescan"], [beams[1], "rescan"]])
    (case,) = form_cases(scan, ct=str(pairs)).cases
    assert not case.error and case.ct.folder == "rescan", case.error


def test_a_csv_line_whose_dose_is_not_exported_is_said_to_be_unused(tmp_path):
    """BV7's neighbour: a --ct CSV whose only line pairs a BEAM dose, left out beside its plan's PLAN dose, with
    another CT: the PLAN dose's case took its CT by the references, and the line was not used, without a word."""
    truth, scan = _study(tmp_path, write_beam_doses=True)
    beam = next(p.name for p, b in zip(truth.dose_files, truth.dose_beam_numbers) if b is not None)
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["dose", "ct"], [beam, "rescan"]])
    (case,) = form_cases(scan, ct=str(pairs)).cases
    assert case.summation_type == "PLAN" and case.ct.folder == "."
    (warning,) = [w for w in case.warnings if "--ct CSV" in w]
    assert beam in warning and "'rescan'" in warning and "not used" in warning


def test_one_ct_for_several_studies_is_refused(tmp_path):
    write_phantom(tmp_path / "in" / "a", PhantomSpec(patient_id="A", seed=1))
    write_phantom(tmp_path / "in" / "b", PhantomSpec(patient_id="B", seed=2))
    scan = scan_folder(tmp_path / "in")
    with pytest.raises(InputError, match="2 studies: give a CSV"):
        form_cases(scan, ct="a")


def test_the_plans_structure_set_is_used_on_another_ct_of_its_frame_chosen_by_ct(tmp_path):
    """Seventieth hostile trial BR3: --ct chose the rescan, a CT series of the plan's frame of reference; the plan's
    structure set, drawn on the planning CT, was left out without a word (0 ROIs, ok). It is used on the chosen CT,
    whose patient coordinates it shares, with a case warning naming both CTs; a CT of another frame gets none."""
    truth, scan = _study(tmp_path)
    (case,) = form_cases(scan, ct="rescan").cases
    assert case.ct.folder == "rescan"
    assert [s.rel_path for s in case.structs] == [truth.struct_file.name]
    (warning,) = [w for w in case.warnings if truth.struct_file.name in w]
    assert "'rescan'" in warning and "'.'" in warning and "same frame of reference" in warning, warning
    (case,) = form_cases(scan).cases  # the references decide: no warning
    assert case.ct.folder == "." and not [w for w in case.warnings if truth.struct_file.name in w]


def test_a_structure_set_drawn_on_the_ct_chosen_by_ct_is_used_before_the_plans(tmp_path):
    """Seventy-second hostile trial BT6 (a regression of BR3's fix): a re-scan with a structure set of its own, chosen
    by --ct: the plan's, drawn on the planning CT, was used, and the re-scan's own was left out as "not part of any
    case". A structure set drawn on the chosen CT comes first."""
    import pydicom
    from pydicom.uid import generate_uid

    truth, scan = _study(tmp_path)
    rescan = next(s for s in scan.ct_series if s.folder == "rescan")
    ds = pydicom.dcmread(str(truth.struct_file))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    images = sorted(rescan.sop_instance_uids)
    for frame in ds.ReferencedFrameOfReferenceSequence:
        for study in frame.RTReferencedStudySequence:
            for series in study.RTReferencedSeriesSequence:
                series.SeriesInstanceUID = rescan.series_uid
                for k, image in enumerate(series.ContourImageSequence):
                    image.ReferencedSOPInstanceUID = images[k % len(images)]
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            for image in contour.get("ContourImageSequence", []):
                image.ReferencedSOPInstanceUID = images[0]
    own = tmp_path / "in" / "rescan" / "rtstruct_rescan.dcm"
    ds.save_as(str(own))
    (case,) = form_cases(scan_folder(tmp_path / "in"), ct="rescan").cases
    assert [s.rel_path for s in case.structs] == ["rescan/rtstruct_rescan.dcm"], case.structs
    assert not [w for w in case.warnings if "RTSTRUCT" in w], case.warnings


def test_export_and_scan_take_ct(tmp_path, capsys):
    from DoseAlignLib.cli import main

    truth, _scan = _study(tmp_path, with_plan=False)
    assert main(["scan", str(tmp_path / "in"), "--ct", ".", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [c["ct_folder"] for c in document["cases"]] == ["."]
    code = main(["export", str(tmp_path / "in"), str(tmp_path / "out"), "--ct", ".", "--no-qa-png", "--quiet"])
    assert code == 0
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/meta.json")]
    assert meta["source"]["ct_series_uid"] == truth.ct_series_uid
    assert meta["options"]["ct"] == "."


@pytest.mark.shared_data
def test_nelms_doses_on_the_ct_the_user_names(shared_data, tmp_path):
    root = shared_data / "nelms-dvh-phantom"
    scan = scan_folder(root)
    by_default = {c.doses[0].rel_path: c.ct.folder for c in form_cases(scan).cases}
    # no reference decides (the plan is not in the set): the 3 mm doses go to the 2 mm CT by coverage
    assert by_default["DOSE GRIDS/Linear_AntPost_3mm_Aligned.dcm"] == "CT/2 mm CT"
    with pytest.raises(InputError, match="names 3 CT series"):
        form_cases(scan, ct=scan.ct_series[0].series_uid)  # the three CTs share one SeriesInstanceUID
    pairs = tmp_path / "nelms.csv"
    rows = [["dose", "ct"]]
    for field in ("AntPost", "SupInf"):
        rows += [[f"DOSE GRIDS/Linear_{field}_{mm}mm_Aligned.dcm", f"CT/{mm} mm CT"] for mm in (1, 2, 3)]
    with open(pairs, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    cases = form_cases(scan, ct=str(pairs)).cases
    assert len(cases) == 6
    for case in cases:
        mm = case.doses[0].rel_path.split("_")[-2]
        assert case.ct.folder == f"CT/{mm[:-2]} mm CT", case.doses[0].rel_path
        # the structure sets drawn on that CT (by their image references) come with it
        assert case.structs and all(f"_{mm[:-2]}0_" in s.rel_path for s in case.structs)
