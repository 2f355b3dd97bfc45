"""Hostile inputs, class 7: a pseudonymized export leaks no identity, whatever the spelling.

A patient ``Doe^John`` (PatientID ``JD-4711-X``) whose name and ID are written into ROI names, labels
and descriptions the way people write them (joined, reversed, separators, case, camel case next to
other words) must not appear in any output byte of ``--pseudonymize`` (names, contents, compressed
members), searched here by a third method (every output squeezed to its letters and digits). The
pre-write check must be independent of the rewriting: with the rewriting disabled, it still refuses
the case. The key and the map are refused inside OUT even through a symbolic link, and never written
into the input.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import types
import unicodedata
from pathlib import Path

import dicom_damage as dd
import hostile
import pytest
from DoseAlignLib.cli import main
from test_pseudonym import _all_output_bytes

SPELLINGS = [
    "DoeJohn",
    "john_doe",
    "JOHN-DOE",
    "Doe^John",
    "PTV_Doe",
    "DoeBoost",
    "doe john",
    "J.Doe",
    "Heart_JohnDoe_prv",
    "jd4711x",
    "JD_4711_X ring",
]
#: What must not be found in any output, squeezed (lower-case letters and digits only).
NEEDLES = ["doejohn", "johndoe", "jd4711x"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("identity")
    root = base / "in"
    truth = hostile.study(root / "patient", "JD-4711-X", 60, patient_name="Doe^John", extra_organs=len(SPELLINGS))
    ds = dd.read(truth.struct_file)
    rois = list(ds.StructureSetROISequence)
    for roi, name in zip(rois[-len(SPELLINGS) :], SPELLINGS):  # the extra organs get the spellings
        roi.ROIName = name
    ds.StructureSetLabel = "John.Doe"
    ds.StructureSetDescription = "contours of DOEJOHN, JD 4711 X"
    dd.save(ds, truth.struct_file)
    dd.rewrite_tags(truth.plan_file, RTPlanLabel="doejohn", RTPlanName="Doe_John plan")
    return {"root": root, "base": base, "names": [r.ROIName for r in rois]}


def _formats() -> list:
    wanted = {"nifti": "nibabel", "nrrd": "nrrd", "hdf5": "h5py", "openkbp": None}
    found = [f for f, module in wanted.items() if module is None or importlib.util.find_spec(module)]
    return ["--format", ",".join(found)] if found else []


def _squeezed_leaks(out) -> list:
    leaks = []
    for where, data in _all_output_bytes(out):
        text = data.decode("latin-1").casefold()
        squeezed = "".join(c for c in text if c.isalnum())
        for needle in NEEDLES:
            if needle in squeezed:
                leaks.append(f"{needle} in {where}")
    return leaks


def test_spellings_of_the_name_and_id_never_reach_the_output(study, tmp_path, capsys):
    plain = tmp_path / "plain"
    main(["export", str(study["root"]), str(plain), "--quiet", "--workers", "1", *_formats()])
    assert _squeezed_leaks(plain), "the inputs must carry the name (else this test proves nothing)"
    out = tmp_path / "share" / "out"
    code = main(["export", str(study["root"]), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    capsys.readouterr()
    rows = hostile.manifest(out)
    assert code == 0, rows
    leaks = _squeezed_leaks(out)
    assert not leaks, "\n".join(leaks[:30])
    import json

    (row,) = rows
    structures = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))["structures"]
    names = structures["names"] + [s["name"] for s in structures.get("skipped", []) if s.get("name")]
    assert {"External", "PTV", "Cord", "Ring"} <= set(names), names  # ROIs that are no name keep theirs
    assert sum("[removed]" in n for n in names) == len(SPELLINGS), names


def test_the_check_is_independent_of_the_rewriting(study, tmp_path, monkeypatch, capsys):
    from DoseAlignLib.output import pseudonym

    monkeypatch.setattr(pseudonym.NameSpellings, "redact", lambda self, text, own=True: text)  # it misses all
    out = tmp_path / "share" / "out"
    code = main(["export", str(study["root"]), str(out), "--quiet", "--workers", "1", "--pseudonymize"])
    capsys.readouterr()
    assert code == 1
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed" and "pseudonymization left a patient name" in row["reason"]
    assert not [p for p in out.iterdir() if p.is_dir()], "a case that would leak is not written"
    assert not _squeezed_leaks(out)


@pytest.mark.parametrize("kept", [False, True], ids=["written now", "kept by --resume"])
def test_a_row_that_fails_its_check_takes_its_written_folder_with_it(study, tmp_path, monkeypatch, capsys, kept):
    # the files pass their check and the folder is renamed into place; a row the parent then finds leaking failed
    # the case but left the complete folder behind it (thirty-ninth trial's AM1 saw one); a case kept by --resume
    # too (forty-third AQ6)
    from DoseAlignLib.output import pseudonym

    def leaking(self, row):
        raise pseudonym.PseudonymError("pseudonymization left a patient name in a manifest row")

    out = tmp_path / "share" / "out"
    args = ["export", str(study["root"]), str(out), "--quiet", "--workers", "1", "--pseudonymize"]
    if kept:
        assert main(args) == 0
        args.append("--resume")
    monkeypatch.setattr(pseudonym.Pseudonymizer, "check_row", leaking)
    code = main(args)
    capsys.readouterr()
    assert code == 1
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed" and "in a manifest row" in row["reason"], row
    assert not (out / row["case_id"]).exists(), "a failed row has no case folder"
    assert not [p.name for p in out.iterdir() if p.is_dir()]


def test_key_and_map_through_a_symlink_into_out_are_refused(study, tmp_path, capsys):
    out = tmp_path / "share" / "out"
    out.mkdir(parents=True)
    os.symlink(out, tmp_path / "elsewhere")
    os.symlink(out, tmp_path / "share" / "keys")
    for option, path in [
        ("--key-file", tmp_path / "elsewhere" / "site.key"),
        ("--map-file", tmp_path / "share" / "keys" / "map.csv"),
    ]:
        code = main(["export", str(study["root"]), str(out), "--quiet", "--pseudonymize", option, str(path)])
        assert code == 2, option
        err = capsys.readouterr().err
        assert "inside the output folder" in err and "resolves to" in err, err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("default", [False, True], ids=["--map-file LINK", "a link at the default map path"])
def test_a_map_behind_a_symbolic_link_is_written_where_the_link_points(study, tmp_path, capsys, default):
    """Thirteenth hostile trial M4: a map path that is a symbolic link (the map kept on an encrypted volume) was
    replaced by a regular file holding the whole identity map where the link was, and the linked map missed the
    new patients. The map is now written where the link points, merged with what it held; the link stays."""
    secure = tmp_path / "secure"
    secure.mkdir()
    real_map = secure / "realmap.csv"
    first = tmp_path / "out1"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(secure / "k.key")]
    assert main(["export", str(study["root"]), str(first), *args, "--map-file", str(real_map)]) == 0
    rows_before = real_map.read_text(encoding="utf-8").splitlines()
    second = tmp_path / "out2"
    link = tmp_path / ("out2.pseudonym-map.csv" if default else "maplink.csv")
    os.symlink(real_map, link)
    other = tmp_path / "other"
    hostile.study(other / "q", "MAP-LINK-2", 93)
    more = [] if default else ["--map-file", str(link)]
    assert main(["export", str(other), str(second), *args, *more]) == 0, capsys.readouterr().err
    assert link.is_symlink() and os.readlink(link) == str(real_map)
    rows_after = real_map.read_text(encoding="utf-8").splitlines()
    assert set(rows_before) < set(rows_after) and any("MAP-LINK-2" in row for row in rows_after)
    assert oct(real_map.stat().st_mode & 0o777) == oct(0o600)


def test_key_and_map_are_never_written_into_the_input(study, tmp_path, capsys):
    before = hostile.snapshot(study["root"])
    out = tmp_path / "out"
    for option in ("--key-file", "--map-file"):
        code = main(
            ["export", str(study["root"]), str(out), "--quiet", "--pseudonymize", option, str(study["root"] / "x")]
        )
        assert code == 2, option
        assert "inside the input folder" in capsys.readouterr().err
    assert hostile.snapshot(study["root"]) == before


def test_an_output_folder_given_through_a_folder_link_inside_the_input_is_inside_it(study, tmp_path, capsys):
    """Sixty-seventh hostile trial BO2: OUT given as ``in/link/out``, ``in/link`` a link to a folder elsewhere, was
    taken to lie outside the input (its resolved path does), yet the input's scan follows the link: the pseudonym key
    and map were written beside OUT, into ``in/link/``, and OUT's files were read as the input's. OUT as given lies
    inside the input: the key and map are refused there, and OUT is left out of the scan."""
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    shutil.copytree(study["root"], root)
    elsewhere.mkdir()
    (root / "link").symlink_to(elsewhere, target_is_directory=True)
    before = hostile.snapshot(root)
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main(["export", str(root), str(root / "link" / "out"), *args]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == [] and hostile.snapshot(root) == before
    keys = ["--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "map.csv")]
    assert main(["export", str(root), str(root / "link" / "out"), *args, *keys]) == 0
    assert "is inside the input folder: it is left out of the scan" in capsys.readouterr().out
    assert sorted(p.name for p in elsewhere.iterdir()) == ["out"]


@pytest.mark.parametrize("given", ["through a link to the input", "from a shell there", "with the default key"])
def test_an_output_folder_given_through_a_link_to_the_input_then_its_folder_link_is_inside_it(
    study, tmp_path, capsys, monkeypatch, given
):
    """Seventy-fourth hostile trial BV1 (BT2's fix passed): OUT and the key given as ``lin/link/out``, ``lin`` a link
    to the input and ``in/link`` a folder link of it, or relative from a shell in ``lin/link``: the key and the map
    (the patients' names) were written into ``in/link/``, inside the input as its scan walks it, exit 0. Refused."""
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    shutil.copytree(study["root"], root)
    elsewhere.mkdir()
    (root / "link").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "lin").symlink_to(root, target_is_directory=True)
    before = hostile.snapshot(root)
    out, key = tmp_path / "lin" / "link" / "out", ["--key-file", str(tmp_path / "lin" / "link" / "k.key")]
    if given == "from a shell there":
        monkeypatch.chdir(tmp_path / "lin" / "link")
        monkeypatch.setenv("PWD", str(tmp_path / "lin" / "link"))
        out, key = Path("out"), ["--key-file", "k.key"]
    elif given == "with the default key":
        key = []
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", *key])
    assert code == 2 and "inside the input folder" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == [] and hostile.snapshot(root) == before


def test_an_output_folder_the_input_reaches_through_a_folder_link_is_not_read(study, tmp_path, capsys):
    """BO2's other side: OUT given by its own path, where a folder link of the input leads to it (or to a folder
    holding it), was walked by the export's scan as part of the input. It is left out wherever the scan meets it."""
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    shutil.copytree(study["root"], root)
    elsewhere.mkdir()
    (root / "link").symlink_to(elsewhere, target_is_directory=True)
    out = elsewhere / "out"
    for _run in range(2):
        assert main(["export", str(root), str(out), "--workers", "1", "--no-qa-png", "--resume"]) == 0
    assert "not read: the output folder" in capsys.readouterr().out


def test_names_with_marks_in_their_ascii_spellings(tmp_path, capsys):
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "MJ-0815", 61, patient_name="Müller^Jürgen", extra_organs=4)
    ds = dd.read(truth.struct_file)
    spellings = ["juergen_mueller", "MUELLER-JUERGEN", "MullerJurgen", "PTV Müller"]
    for roi, name in zip(list(ds.StructureSetROISequence)[-4:], spellings):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()]) == 0
    capsys.readouterr()
    found = []
    for where, data in _all_output_bytes(out):
        squeezed = "".join(c for c in data.decode("utf-8", "replace").casefold() if c.isalnum())
        found += [
            f"{n} in {where}" for n in ("mueller", "juergen", "muller", "jurgen", "müller", "jürgen") if n in squeezed
        ]
    assert not found, found[:10]


def test_a_name_whose_letter_was_lost_to_a_wrong_character_set_is_rewritten_not_refused(tmp_path, capsys):
    """``Müller^Hans`` in the CT, ``Mu?ller^Hans`` in the RTSTRUCT and ``M\ufffdller^Hans`` in the RTDOSE (a letter
    lost to a wrong character set), and ROI names holding such spellings: the check found ``M?ller`` (it reads
    letters and digits only) but the rewriting, matching ``Mu?ller`` and ``M\ufffdller`` as written, missed it, and
    the case was refused ("please report it"). The rewriting now reads such a component by its letters too."""
    root = tmp_path / "in"
    rois = ["PTV_Mu?ller", "M\ufffdller_ctv", "M?ller boost", "Hans_Mu?ller"]
    truth = hostile.study(root / "p", "MH-40417", 64, patient_name="M\u00fcller^Hans", extra_organs=len(rois))
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-len(rois) :], rois):
        roi.ROIName = name
    ds.PatientName = "Mu?ller^Hans"
    ds.SpecificCharacterSet = "ISO_IR 192"
    dd.save(ds, truth.struct_file)
    dose = dd.read(truth.dose_files[0])
    dose.PatientName = "M\ufffdller^Hans"
    dose.SpecificCharacterSet = "ISO_IR 192"
    dd.save(dose, truth.dose_files[0])
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert {"PTV_[removed]", "[removed]_ctv", "[removed] boost", "[removed]"} <= _untagged(names), names
    found = []
    for where, data in _all_output_bytes(out):
        squeezed = "".join(c for c in data.decode("utf-8", "replace").casefold() if c.isalnum())
        found += [f"{n} in {where}" for n in ("mller", "muller", "mueller", "müller") if n in squeezed]
    assert not found, found[:10]


def _spellings_in_output(out, needles) -> list:
    """Where any of ``needles`` (lower case) stands in OUT: every file's bytes (gunzipped too), NFC, letters and
    digits only."""
    found = []
    for where, data in _all_output_bytes(out):
        text = unicodedata.normalize("NFC", data.decode("utf-8", "replace").casefold())
        squeezed = "".join(c for c in text if c.isalnum())
        found += [f"{n} in {where}" for n in needles if n in squeezed]
    return found


#: Sixth hostile trial F1: names holding letters that Unicode does not decompose, the ROI names that spell them in
#: ASCII, the ASCII spellings that must not reach any output (lower case), and ROI names that only share letters.
UNDECOMPOSED = [
    (
        "Łukasiewicz^Paweł",
        ["PTV_Lukasiewicz", "Pawel_boost", "LUKASIEWICZ PAWEL"],
        ["lukasiewicz", "łukasiewicz", "pawel", "paweł"],
        ["Lungs", "Lips"],
    ),
    (
        "Sørensen^Søren",
        ["Sorensen_ctv", "PTV_Soerensen"],
        ["sorensen", "soerensen", "sørensen", "soren", "soeren", "søren"],
        ["Esophagus", "Spinal_cord"],
    ),
    ("Bræk^Lars", ["PTV_Braek"], ["braek", "bræk"], ["Brain", "Larynx", "Brachial_plexus"]),
    ("Đurić^Ana", ["Djuric_ptv", "Duric_ptv"], ["djuric", "duric", "đurić", "đuric"], ["Anal_canal", "Dura"]),
]


def _named_patient_study(root, name: str, rois: list, patient_id: str, seed: int, **changes) -> None:
    """A study in ``root/p`` whose every file names the patient ``name`` (in UTF-8, ISO_IR 192, so that any script is
    stored) and whose last ROIs are named ``rois``; ``changes`` go to the phantom."""
    truth = hostile.study(root / "p", patient_id, seed, extra_organs=len(rois), ct_size=(32, 28, 16), **changes)
    for path in sorted((root / "p").rglob("*.dcm")):
        ds = dd.read(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = name
        if path == truth.struct_file:
            for roi, roi_name in zip(list(ds.StructureSetROISequence)[-len(rois) :], rois):
                roi.ROIName = roi_name
        dd.save(ds, path)


@pytest.mark.parametrize("patient_name, rois, needles, kept", UNDECOMPOSED, ids=["pl", "da", "no", "hr"])
def test_letters_without_a_decomposition_in_their_ascii_spellings(tmp_path, capsys, patient_name, rois, needles, kept):
    """Sixth hostile trial F1: a name holding a letter that NFKD does not decompose (ł, ø, æ, đ) reached meta.json,
    dvh.csv, HDF5, NIfTI/NRRD headers and mask file names in its plain-ASCII spelling (``PTV_Lukasiewicz`` for
    ``Łukasiewicz``). Now no spelling of it is in any output, in every format, and ROI names that merely share
    letters with it are kept."""
    root = tmp_path / "in"
    _named_patient_study(root, patient_name, rois + kept, "PL-88213", 65)  # (UTF-8: ł, đ are in no single-byte set)
    plain = tmp_path / "plain"
    assert main(["export", str(root), str(plain), "--quiet", "--workers", "1", "--no-qa-png"]) == 0
    assert {*rois, *kept} <= set(_names_of(plain, hostile.manifest(plain)[0])), "the ROI names are exported"
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert set(kept) <= set(names), names  # a normal ROI name that shares letters is not mangled
    assert sum("[removed]" in n for n in names) == len(rois), names
    found = _spellings_in_output(out, needles)
    assert not found, found[:10]


#: A name held in plain letters by the DICOM header, typed with its letters in ROI names (the other way round).
MARKED_IN_ROIS = [
    ("Lukasiewicz^Pawel", ["PTV_Łukasiewicz", "Paweł_boost"], ["lukasiewicz", "pawel", "paweł"]),
    ("Sorensen^Soren", ["Sørensen_ctv", "PTV_SØRENSEN"], ["sorensen", "sørensen", "soren"]),
    ("Braek^Lars", ["PTV_Bræk"], ["braek", "bræk"]),
    ("Muller^Jurgen", ["PTV_Müller", "Ju\u0308rgen_ctv"], ["muller", "müller", "jurgen", "jürgen"]),
]


@pytest.mark.parametrize("patient_name, rois, needles", MARKED_IN_ROIS, ids=["pl", "da", "no", "de"])
def test_a_plain_name_typed_with_its_letters_is_rewritten_not_refused(tmp_path, capsys, patient_name, rois, needles):
    """From the re-check of the sixth trial: a PatientName in plain letters (``Lukasiewicz^Pawel``, ``Muller^Jurgen``)
    with an ROI typed with the letters (``PTV_Łukasiewicz``, ``PTV_Müller``) was found by the check but not by the
    rewriting: the case failed 'please report it'. The rewriting now reads a text's plain spellings too."""
    root = tmp_path / "in"
    _named_patient_study(root, patient_name, rois, "PL-88214", 66)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", "--no-qa-png"])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert sum("[removed]" in n for n in names) == len(rois), names
    found = _spellings_in_output(out, needles)
    assert not found, found[:10]


@pytest.mark.parametrize(
    "patient_name, spellings",
    [
        ("ŁUKASIEWICZ^PAWEŁ", ["PTV_Lukasiewicz", "pawel boost", "LukasiewiczPawel"]),
        ("SØRENSEN^SØREN", ["Sorensen_ctv", "PTV_SOERENSEN", "soeren_sorensen"]),
        ("Ærøskøbing^Bjørn", ["Aeroskobing", "AEROESKOEBING_x", "Bjorn_ptv", "bjoern"]),
        ("ĐURIĆ^Đorđe", ["Djuric_ptv", "DURIC", "Djordje_ctv", "Dorde"]),
        ("Þórðarson^Guðrún", ["Thordarson", "Thordharson_ptv", "Gudrun_boost"]),
        ("Cœurderoy^Hélène", ["Coeurderoy_ctv", "Helene"]),
        ("Yıldırım^Ayşe", ["PTV_Yildirim", "Ayse_x"]),
        ("Ħabela^Ġorġ", ["Habela_ptv", "Gorg_ctv"]),
        ("Əliyev^Rəşad", ["Aliyev_ptv", "Eliyev", "Resad"]),
        ("Ŋgasa^Kaĸo", ["Ngasa_ptv", "Ngasa", "Kako"]),
    ],
)
def test_both_sides_read_letters_without_a_decomposition(monkeypatch, patient_name, spellings):
    """F1, unit level: the rewriting removes each plain spelling of a name with such letters (also written in upper
    case), and the check alone finds it with the rewriting's spellings gone, so neither side relies on the other."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.add_name(patient_name)
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in spellings:
        assert "[removed]" in rewriting.text(text), (patient_name, text)
        assert rewriting.guard.find(text) == "a patient name", (patient_name, text)
    for text in ["Brain", "Lungs", "Esophagus", "Anal_canal", "Dura", "PTV_high", "Heart"]:
        assert rewriting.text(text) == text and rewriting.guard.find(text) == "", (patient_name, text)
    monkeypatch.setattr(pseudonym, "transliterations", lambda parts: set())
    alone = pseudonym.Identity()
    alone.add_name(patient_name)
    assert alone.persons == {tuple(p for p in patient_name.replace("^", " ").split())}
    guard = pseudonym.IdentityGuard(alone)
    for text in spellings:
        assert guard.find(text) == "a patient name", (patient_name, text)


@pytest.mark.parametrize("holder", ["every file", "the RTSTRUCT", "one CT slice"])
def test_ids_of_other_patient_ids_sequence_are_identity(tmp_path, capsys, holder):
    """Sixth hostile trial F13: the IDs of OtherPatientIDsSequence (0010,1002) items, the current form of the
    retired OtherPatientIDs, reached meta.json, dvh.csv, dataset.json, the NIfTI descrip and a mask file name
    (``PTV_MRN7781234``) with status ok. Now they are identity, in every file or in one object only (a CT slice
    that is not the one whose header the pseudonymizer reads again), and so are the other names of one CT slice."""
    from pydicom.dataset import Dataset

    root = tmp_path / "in"
    truth = hostile.study(
        root / "p", "VX-20931", 66, patient_name="Vexley^Maribel", extra_organs=2, ct_size=(32, 28, 16)
    )
    holders = {
        "every file": sorted((root / "p").rglob("*.dcm")),
        "the RTSTRUCT": [truth.struct_file],
        "one CT slice": [truth.ct_files[len(truth.ct_files) // 2]],
    }[holder]
    for path in sorted((root / "p").rglob("*.dcm")):
        ds = dd.read(path)
        if path in holders:
            ds.OtherPatientIDsSequence = [Dataset(), Dataset()]
            ds.OtherPatientIDsSequence[0].PatientID = "MRN7781234"
            ds.OtherPatientIDsSequence[0].IssuerOfPatientID = "HOSP2"
            ds.OtherPatientIDsSequence[1].PatientID = "INS-55190\\QRT88231"
            ds.PatientBirthName = "Thornquist^Maribel"
        if path == truth.struct_file:
            for roi, name in zip(list(ds.StructureSetROISequence)[-2:], ["PTV_MRN7781234", "Thornquist_ins55190"]):
                roi.ROIName = name
            ds.StructureSetLabel = "QRT88231"
        dd.save(ds, path)
    plain = tmp_path / "plain"
    assert main(["export", str(root), str(plain), "--quiet", "--workers", "1", "--no-qa-png"]) == 0
    assert "PTV_MRN7781234" in _names_of(plain, hostile.manifest(plain)[0]), "the ROI name is exported"
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    assert {"PTV_[removed]", "[removed]"} <= _untagged(_names_of(out, row)), _names_of(out, row)
    found = []
    for where, data in _all_output_bytes(out):
        squeezed = "".join(c for c in data.decode("utf-8", "replace").casefold() if c.isalnum())
        found += [f"{n} in {where}" for n in ("mrn7781234", "ins55190", "qrt88231", "thornquist") if n in squeezed]
    assert not found, found[:10]


def test_ids_in_sequences_and_the_patients_other_identifiers_are_read():
    """F13: an ID in any sequence item (OtherPatientIDsSequence, GroupOfPatientsIdentificationSequence), and the
    patient's telecom information, clinical-trial subject IDs, admission and service-episode IDs are identity."""
    from DoseAlignLib.output import pseudonym
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientID = "PX-1001"
    ds.OtherPatientIDsSequence = [Dataset()]
    ds.OtherPatientIDsSequence[0].PatientID = "MRN7781234"
    ds.OtherPatientIDsSequence[0].IssuerOfPatientID = "HOSPITAL2"
    ds.GroupOfPatientsIdentificationSequence = [Dataset()]
    ds.GroupOfPatientsIdentificationSequence[0].PatientID = "GRP44127"
    ds.PatientTelecomInformation = "maribel.vexley@example.org"
    ds.ClinicalTrialSubjectID = "SUBJ-0042-77"
    ds.ClinicalTrialSubjectReadingID = "READ-9913"
    ds.AdmissionID = "ADM6620187"
    ds.ServiceEpisodeID = "EPI30918"
    identity = pseudonym.Identity()
    identity.add_dataset(ds)
    values = ["MRN7781234", "HOSPITAL2", "GRP44127", "maribel.vexley@example.org", "SUBJ-0042-77", "READ-9913"]
    values += ["ADM6620187", "EPI30918"]
    assert set(values) <= identity.identifiers, identity.identifiers
    assert identity.patient_ids == {"PX-1001"}
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for value in values:
        assert "[removed]" in rewriting.text(f"PTV_{value}") and rewriting.guard.find(f"ctv {value}"), value


def test_long_name_parts_inside_words_short_ones_only_as_words(tmp_path, capsys):
    import json

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "SM-1", 62, patient_name="Smithers^Jo", extra_organs=5)
    ds = dd.read(truth.struct_file)
    rois = ["PTVsmithers", "smithersboost", "Jonas", "JoLung", "Jo_ring"]
    for roi, name in zip(list(ds.StructureSetROISequence)[-5:], rois):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", "--no-qa-png"]) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    structures = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))["structures"]
    names = structures["names"] + [s["name"] for s in structures.get("skipped", []) if s.get("name")]
    # a component of two letters is removed only joined with another (README, limits)
    assert {"PTV[removed]", "[removed]boost", "Jonas", "JoLung", "Jo_ring"} <= set(names), names


def test_other_ids_ideographic_names_and_roi_names_used_as_keys(tmp_path, capsys):
    """From a fresh hostile trial: OtherPatientIDs/OtherPatientNames and a name's ideographic group (two
    characters a component) in ROI names, and ROI names that the audit uses as keys (audit.reference_dvh.rois):
    none of it reaches an output byte, and the case is exported (not refused by the check)."""
    import json

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "XQ-99812", 63, patient_name="Yamada^Tarou", extra_organs=4, ct_size=(32, 28, 16))
    rois = ["PTV_ALT5531", "Bramblewick", "山田_PTV", "Tarou_CTV"]
    for path in sorted((root / "p").rglob("*.dcm")):
        ds = dd.read(path)
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so that the ideographic group is stored
        ds.PatientName = "Yamada^Tarou=山田^太郎"
        ds.OtherPatientIDs = "ALT5531"
        ds.OtherPatientNames = "Bramblewick^Ottoline"
        if path == truth.struct_file:
            for roi, name in zip(list(ds.StructureSetROISequence)[-4:], rois):
                roi.ROIName = name
        dd.save(ds, path)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    keyed = (meta["audit"].get("reference_dvh") or {}).get("rois") or {}
    assert sum("[removed]" in k for k in keyed) == 4, sorted(keyed)  # the keys existed, rewritten
    found = []
    for where, data in _all_output_bytes(out):
        text = data.decode("utf-8", "replace").casefold()
        squeezed = "".join(c for c in text if c.isalnum())
        found += [f"{n} in {where}" for n in ("alt5531", "bramblewick", "ottoline", "山田", "太郎") if n in squeezed]
        found += [f"tarou in {where}" for w in text.replace("_", " ").split() if w == "tarou"]
    assert not found, found[:10]


def test_the_check_finds_ids_beside_separators_and_names_in_keys():
    """The independent check (IdentityGuard) on its own: an ID joined to a word by a separator, a name
    component used as a key, and an ideographic component; keys of DoseAlign's vocabulary stay keys."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.patient_ids.add("XQ-99812")
    identity.other.add("ALT5531")
    identity.add_name("Bramblewick^Dose")
    identity.add_name("Yamada^Tarou=山田^太郎")
    guard = pseudonym.IdentityGuard(identity)
    for text in ("PTV_XQ-99812", "ring_xq_99812_2", "PTV_ALT5531", "山田_PTV", "PTV山田"):
        assert guard.find(text), text
    for text in ("PTV_ALT55312", "Heart", "XQ-998"):
        assert not guard.find(text), text
    checker = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for meta in ({"audit": {"rois": {"Bramblewick": {}}}}, {"rois": {"PTV_ALT5531": 1}}, {"rois": {"山田": 1}}):
        with pytest.raises(pseudonym.PseudonymError):
            checker.check(meta)
    checker.check({"dose": {"dose_type": "PHYSICAL"}, "rois": {"PTV": 1}})  # a surname "Dose": vocabulary stays


def test_an_id_without_separators_written_with_some_is_rewritten(tmp_path, capsys):
    """From the fourth hostile trial (D1): an ID that holds no separator written in an ROI name with one
    inserted (PatientID ``QX77415`` as ``QX-77415 ptv``, OtherPatientIDs ``OPX992`` as ``OPX 992 body``) was not
    rewritten; the independent check caught it and the case failed ("please report it"). The rewriting now
    matches what the check matches: the case is exported, and no output byte holds the IDs."""
    root = tmp_path / "in"
    spellings = ["QX-77415 ptv", "qx_77415", "OPX 992 body", "opx-992", "OPX_992_body"]
    truth = hostile.study(
        root / "p", "QX77415", 64, patient_name="Quorbeth^Ysolde", extra_organs=len(spellings), ct_size=(32, 28, 16)
    )
    for path in sorted((root / "p").rglob("*.dcm")):
        ds = dd.read(path)
        ds.OtherPatientIDs = "OPX992"
        if path == truth.struct_file:
            for roi, name in zip(list(ds.StructureSetROISequence)[-len(spellings) :], spellings):
                roi.ROIName = name
        dd.save(ds, path)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    found = []
    for where, data in _all_output_bytes(out):
        squeezed = "".join(c for c in data.decode("latin-1").casefold() if c.isalnum())
        found += [f"{n} in {where}" for n in ("qx77415", "opx992") if n in squeezed]
    assert not found, found[:10]


def test_the_rewriting_removes_every_id_spelling_the_check_finds():
    """The rewriting and the check on their own, over IDs written with separators put anywhere (one or more
    characters that are no ASCII letter or digit, or none): whatever the check reads as an ID is rewritten,
    and what the check passes is left as it was."""
    import random

    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.patient_ids.update({"QX77415", "AB-12-CD"})
    identity.other.add("OPX992")
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonymizer.guard
    rng = random.Random(17)
    separators = ["", "", "-", "_", " ", ".", "/", "^", " - ", "é", "\\", ":"]
    caught = 0
    for _ in range(600):
        ident = rng.choice(["QX77415", "OPX992", "AB12CD"])
        letters = [c.upper() if rng.random() < 0.5 else c.lower() for c in ident]
        spelled = "".join(c + (rng.choice(separators) if n < len(letters) - 1 else "") for n, c in enumerate(letters))
        text = rng.choice(["", "PTV_", "ring ", "x"]) + spelled + rng.choice(["", " ptv", "_body", "2"])
        rewritten = pseudonymizer.text(text)
        assert not guard.find(rewritten), (text, rewritten)
        if guard.find(text):
            caught += 1
            assert pseudonym.REMOVED in rewritten, (text, rewritten)
        else:
            assert rewritten == text, (text, rewritten)
    assert caught > 300  # most spellings are IDs to the check (else this test proves little)


def test_a_patient_name_of_several_values_is_several_names():
    """A PatientName read as written (``Doe^John\\Roe^Jane``: two PN values) is two names to the rewriting and
    to the check, not one person ``Doe John\\Roe Jane``."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.add_name("Quorbeth^Ysolde\\Vantreck^Ilse")
    assert {("Quorbeth", "Ysolde"), ("Vantreck", "Ilse")} <= identity.persons
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in ("PTV_Ilse.Vantreck", "ysolde-quorbeth ring", "VantreckIlse"):
        assert pseudonymizer.guard.find(text), text
        assert not pseudonymizer.guard.find(pseudonymizer.text(text)), pseudonymizer.text(text)


def _squeezed_nfkc(data: bytes) -> str:
    """An output's bytes read as UTF-8, compatibility forms made plain (fullwidth ``ＱＸ`` as ``QX``), squeezed to
    lower-case letters and digits."""
    text = unicodedata.normalize("NFKC", data.decode("utf-8", "replace")).casefold()
    return "".join(c for c in text if c.isalnum())


def test_an_id_glued_to_letters_is_rewritten(tmp_path, capsys):
    """From the fourth hostile trial (D11): an ID glued to other letters with no separator (``PTVqx77415``,
    ``QX77415boost`` for PatientID ``QX77415``, ``ctvOPX992`` for OtherPatientIDs ``OPX992``) passed both the
    rewriting and the check: status ok, the ID in meta.json, dvh.csv, manifest.csv and report.html. Written in
    fullwidth letters (``ＱＸ７７４１５``) it was refused ("please report it"). A surname glued to a word
    (``PTVQuorbeth``, ``quorbethPTV``) is removed as well. The case is exported, and no output byte holds any of it."""
    import json

    root = tmp_path / "in"
    spellings = ["PTVqx77415", "QX77415boost", "ctvOPX992", "ＱＸ７７４１５ ptv", "PTVQuorbeth", "quorbethPTV"]
    truth = hostile.study(
        root / "p", "QX77415", 65, patient_name="Quorbeth^Ysolde", extra_organs=len(spellings), ct_size=(32, 28, 16)
    )
    for path in sorted((root / "p").rglob("*.dcm")):
        ds = dd.read(path)
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so that the fullwidth spelling is stored
        ds.OtherPatientIDs = "OPX992"
        if path == truth.struct_file:
            for roi, name in zip(list(ds.StructureSetROISequence)[-len(spellings) :], spellings):
                roi.ROIName = name
        dd.save(ds, path)
    plain = tmp_path / "plain"
    main(["export", str(root), str(plain), "--quiet", "--workers", "1", "--no-qa-png"])
    needles = ("qx77415", "opx992", "quorbeth")
    assert all(any(n in _squeezed_nfkc(d) for _w, d in _all_output_bytes(plain)) for n in needles)  # else no test
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    found = [f"{n} in {where}" for where, data in _all_output_bytes(out) for n in needles if n in _squeezed_nfkc(data)]
    assert not found, found[:10]
    structures = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))["structures"]
    names = structures["names"] + [s["name"] for s in structures.get("skipped", []) if s.get("name")]
    assert {"[removed]boost", "ctv[removed]", "[removed] ptv", "[removed]PTV"} <= set(names), names
    # PTVqx77415 and PTVQuorbeth rewrite alike: each carries a keyed tag of itself (V4)
    assert len([n for n in names if re.fullmatch(r"PTV\[removed\]_[0-9a-f]{8}", n)]) == 2, names


def _glued_spelling(rng, ident: str) -> str:
    """``ident`` in random case, with separators (or none) between its characters, glued (or not) to letters, digits
    or separators on either side, some of it in fullwidth forms."""
    separators = ["", "", "", "-", "_", " ", ".", "^", "·"]
    letters = [c.upper() if rng.random() < 0.5 else c.lower() for c in ident]
    spelled = "".join(c + (rng.choice(separators) if n < len(letters) - 1 else "") for n, c in enumerate(letters))
    if rng.random() < 0.15:  # fullwidth: U+FF01..U+FF5E are ASCII ! .. ~ shifted by 0xFEE0
        spelled = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in spelled)
    before = rng.choice(["", "PTV", "ptv", "ctv_", "Ring ", "x", "7", "GTV2", "v2.", "é", "48x", "d", "D0.", "1."])
    after = rng.choice(["", "boost", "PTV", "_body", " 2", "2", "b7", ".1", "Ä", "x192", "cc_gy", "_gy", "e-05", "E5"])
    return before + spelled + after


def test_the_rewriting_removes_every_glued_id_the_check_finds():
    """The rewriting and the check on their own, over IDs glued to letters (D11): an ID that holds a digit is found
    glued to letters on either side, but a digit at its start (end) may not follow (precede) another digit; an
    ID of letters only is found only as a word of its own. The check finds every such spelling, the rewriting
    removes whatever the check finds, and leaves as it was what the check passes."""
    import random

    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.patient_ids.update({"QX77415", "12345", "99A7"})
    identity.other.update({"OPX992", "LUNGRT"})
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonymizer.guard
    rng = random.Random(1711)
    caught = passed = 0
    for _ in range(1500):
        ident = rng.choice(["QX77415", "OPX992", "12345", "99A7", "LUNGRT"])
        text = _glued_spelling(rng, ident)
        if re.search(r"[0-9]+(?:\.[0-9]+){2,}", text):
            continue  # UID-like (12.3.4.5.1): hashed as a UID, whatever else it holds
        rewritten = pseudonymizer.text(text)
        assert not guard.find(rewritten), (text, rewritten)
        if guard.find(text):
            caught += 1
            assert pseudonym.REMOVED in rewritten, (text, rewritten)
        else:
            passed += 1
            assert rewritten == text, (text, rewritten)
        plain = unicodedata.normalize("NFKC", text)
        core = re.sub(r"[^0-9a-z]", "", plain.casefold())
        squeezed_ident = ident.casefold()
        # what the rule says must be found: the ID's characters in order with only separators between them
        for m in re.finditer(
            "[^0-9A-Za-z]*".join(re.escape(c) for c in squeezed_ident), plain, flags=re.IGNORECASE | re.ASCII
        ):
            before = plain[m.start() - 1] if m.start() else " "
            after = plain[m.end()] if m.end() < len(plain) else " "
            if ident.isalpha():
                must = not (before.isascii() and before.isalnum()) and not (after.isascii() and after.isalnum())
            else:
                must = not (ident[0].isdigit() and before in "0123456789") and not (
                    ident[-1].isdigit() and after in "0123456789"
                )
            # DoseAlign's own words (a DVH point d0.03cc_gy, a size 48x160x192, a number 1.25e-05) hold no glued ID
            own = re.finditer(
                r"(?<![0-9a-z.])(?:d[0-9.]+(?:cc)?_gy|[0-9]+(?:x[0-9]+)+|[0-9.]+e[-+]?[0-9]+)(?![0-9a-z])",
                plain.lower(),
            )
            alone = not (before.isascii() and before.isalnum()) and not (after.isascii() and after.isalnum())
            if not alone and any(o.start() < m.end() and m.start() < o.end() for o in own):
                must = False
            # digits on both sides of a decimal point are one number, no ID (sixth hostile trial F16)
            inside = re.search(r"[0-9]\.[0-9]", m.group(0))
            lead = ident[0].isdigit() and m.start() >= 2 and re.fullmatch(r"[0-9]\.", plain[m.start() - 2 : m.start()])
            tail = ident[-1].isdigit() and re.match(r"\.[0-9]", plain[m.end() : m.end() + 2])
            if inside or lead or tail:
                must = False
            if must:
                assert guard.find(text), (text, core)
    assert caught > 500 and passed > 100, (caught, passed)  # both kinds occur (else this test proves little)
    for text in ("PTVqx77415", "QX77415boost", "ctvOPX992", "PTV12345", "v12345x", "ｐｔｖＱＸ７７４１５", "GTV99a7"):
        assert guard.find(text) and pseudonym.REMOVED in pseudonymizer.text(text), text
    # not an ID: a digits-only ID inside a longer number or a UID, an ID of letters only inside a word
    for text in ("9123456", "1.2.3.123456", "PTV123456", "199A7", "LUNGRTs", "xLungRT", "2.25.9123459"):
        assert not guard.find(text) and pseudonym.REMOVED not in pseudonymizer.text(text), text


def test_own_pseudonyms_are_no_id_that_sits_inside_them():
    """An ID of hexadecimal characters glued to letters matches inside DoseAlign's own path tokens and case ids
    (``d3a1f...``) by chance: those tokens are left whole by the rewriting and skipped by the check, which still
    finds the ID anywhere else."""
    from DoseAlignLib.output import pseudonym

    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32)
    paths = [pseudonymizer.path(f"folder/slice{n}.dcm") for n in range(400)]
    # an ID the glued rule finds inside one token: three hex characters, a letter first and last, a digit between
    candidates = [(p, p.split("/")[1][:-4], k) for p in paths for k in range(1, 9)]
    full, token, ident = next(
        (p, t, t[k : k + 3]) for p, t, k in candidates if t[k].isalpha() and t[k + 2].isalpha() and t[k + 1].isdigit()
    )
    pseudonymizer.identity.patient_ids.add(ident.upper())
    text = f"source {full}, patient {pseudonymizer.patient('someone')}"
    assert pseudonymizer.text(text) == text
    assert not pseudonymizer.guard.find(text)
    assert pseudonymizer.guard.find(f"PTV{ident}") and pseudonymizer.text(f"PTV{ident}") == "PTV[removed]"
    assert pseudonymizer.guard.find(f"x{token}")  # a token that is glued to more is no token of ours


def test_the_check_alone_refuses_a_glued_id_the_rewriting_missed(monkeypatch):
    """The check's own search finds an ID glued to letters (and in fullwidth forms) where the rewriting is made to
    miss every ID: the meta is refused, not written."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.patient_ids.add("QX77415")
    identity.other.add("OPX992")
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    monkeypatch.setattr(pseudonym, "_id_pattern", lambda identifier: re.compile(r"(?!)"))
    for name in ("PTVqx77415", "QX77415boost", "ctvOPX992", "ＱＸ７７４１５ ptv", "ptvＯＰＸ９９２"):
        meta = pseudonymizer.value({"structures": {"names": [name]}}, text_keys=frozenset([name]))
        assert meta["structures"]["names"] == [name]  # the rewriting missed it
        with pytest.raises(pseudonym.PseudonymError, match="a patient ID"):
            pseudonymizer.check(meta)
        with pytest.raises(pseudonym.PseudonymError, match="a patient ID"):
            pseudonymizer.check({"audit": {"reference_dvh": {"rois": {name: {}}}}})


def test_glued_surnames_by_length():
    """Names glued to other words (D11's question for names): a component of five letters or more is found inside
    any word by both sides (``PTVQuorbeth``, ``quorbethPTV``, ``ptvquorbethboost``); one of three or four letters as
    a word of its own, camel case included (``PTVRoth``, ``RothBoost``, ``roth_ptv``), which README states."""
    import random

    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.add_name("Quorbeth^Ysolde")
    identity.add_name("Roth^Ida")
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonymizer.guard
    rng = random.Random(411)
    for _ in range(400):
        name = "".join(c.upper() if rng.random() < 0.3 else c.lower() for c in rng.choice(["Quorbeth", "Ysolde"]))
        text = rng.choice(["", "PTV", "ptv", "ctv_", "x", "2"]) + name + rng.choice(["", "PTV", "boost", "_2", "b"])
        rewritten = pseudonymizer.text(text)
        assert guard.find(text) and pseudonym.REMOVED in rewritten and not guard.find(rewritten), (text, rewritten)
    for text in ("PTVRoth", "RothBoost", "roth_ptv", "ROTH ring", "ＰＴＶ＿Ｒｏｔｈ"):
        assert guard.find(text) and pseudonym.REMOVED in pseudonymizer.text(text), text
    for text in ("Rothko", "Heart", "Lung_L"):
        assert not guard.find(text) and pseudonymizer.text(text) == text, text


def test_short_numeric_ids_are_no_false_refusal(tmp_path, capsys):
    """An ID of three digits glued to letters would sit in DoseAlign's own words by chance: the DVH point
    ``d0.03cc_gy`` holds ``003``, the manifest's ``48x160x192`` holds ``160``, a number ``1.25e-05`` holds ``125``.
    Neither side reads those as the ID (an ID standing alone there is removed as before): a case of PatientID
    ``003`` is exported, not refused, and its outputs keep those words."""
    import json

    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.patient_ids.update({"003", "160", "125"})
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in ("d0.03cc_gy", "External d0.03cc_gy", "48x160x192", "tolerance 1.25e-05"):
        assert not pseudonymizer.guard.find(text) and pseudonymizer.text(text) == text, text
    pseudonymizer.check({"audit": {"rois": {"PTV": {"d0.03cc_gy": 1.0}}}, "shape": "48x160x192"})
    for text in ("PTV160", "ring_003x", "v125", "PTV 1-25"):
        assert pseudonymizer.guard.find(text) and pseudonym.REMOVED in pseudonymizer.text(text), text
    for text in ("1.25", "d0.03"):  # digits on both sides of a decimal point are one number (sixth trial F16)
        assert not pseudonymizer.guard.find(text) and pseudonymizer.text(text) == text, text

    root = tmp_path / "in"
    hostile.study(root / "p", "003", 66, patient_name="Quorbeth^Ysolde", ct_size=(32, 28, 16))
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", "--no-qa-png"])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    points = [k for roi in meta["audit"]["rois"] for k in roi.get("output", {})]
    assert "d0.03cc_gy" in points, points  # the DVH point this test is about is written


def _names_of(out, row) -> list:
    import json

    structures = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))["structures"]
    return structures["names"] + [s["name"] for s in structures.get("skipped", []) if s.get("name")]


#: An ROI name that was identity as a whole, written with its keyed tag (twenty-first hostile trial U12).
WHOLE_NAME_REMOVED = re.compile(r"\[removed\]_[0-9a-f]{8}")


def _untagged(names) -> set:
    """``names`` with each whole-name removal's tag taken off (``[removed]_3fa2c1d0`` as ``[removed]``)."""
    return {"[removed]" if WHOLE_NAME_REMOVED.fullmatch(n) else n for n in names}


@pytest.mark.parametrize(
    "patient_name, rois, removed",
    [
        ("Rossi^Marco", ["PTVrossi", "Rossi_boost", "marco_rossi"], ["PTV[removed]", "[removed]_boost", "[removed]"]),
        ("Plan^Jo", ["PlanJo", "jo_plan", "Plan"], ["[removed]", "[removed]", "[removed]"]),
        ("Cross^Ann", ["PTV_Cross", "crossring", "Across"], ["PTV_[removed]", "[removed]ring", "A[removed]"]),
    ],
)
def test_dosealigns_own_words_are_no_patient_name(tmp_path, capsys, patient_name, rois, removed):
    """Fifth hostile trial E12: a name component inside DoseAlign's own text (``Rossi`` in "across its" of
    meta.json, ``Plan`` as the summation type, ``Cross`` in "across") failed every pseudonymized case of that
    patient 'please report it', and the rewriting edited DoseAlign's prose. The same component written in an ROI
    name is still removed, also where it is one of DoseAlign's words or inside one (``Plan``, ``Across``: tenth
    hostile trial J5; README)."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "ZX-55123", 63, patient_name=patient_name, extra_organs=len(rois))
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-len(rois) :], rois):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert set(removed) <= _untagged(names) and not set(rois) & set(names), names
    meta = (out / row["case_id"] / "meta.json").read_text(encoding="utf-8")
    assert meta.count("[removed]") == sum(name.count("[removed]") for name in names), "DoseAlign's prose was rewritten"
    assert "across its" in meta or "across" not in meta


def test_the_demo_patient_exports_in_every_format(tmp_path, capsys):
    """E12: the demo's own patient (``Phantom^DoseAlign``) failed with ``--format openkbp`` (the key
    ``dosealign_version``) and ``--format nrrd``."""
    from DoseAlignLib.phantom import PhantomSpec, write_phantom

    write_phantom(tmp_path / "in" / "p", PhantomSpec())
    out = tmp_path / "share" / "out"
    code = main(["export", str(tmp_path / "in"), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), row["reason"]
    capsys.readouterr()


def test_own_vocabulary_holds_only_dosealigns_words():
    """The list of DoseAlign's own words holds no name-like input value: only words of its fixed text."""
    from DoseAlignLib.output import pseudonym

    assert {"across", "plan", "dosealign", "version", "body", "dose"} <= pseudonym.OWN_VOCABULARY
    assert not {"ptv", "external", "phantom", "doe", "john", "rossi"} & pseudonym.OWN_VOCABULARY
    assert all(len(w) >= 3 and w.isalpha() and w == w.casefold() for w in pseudonym.OWN_VOCABULARY)


def _export_with_rois(tmp_path, rois: list, birth: str = "19750302") -> tuple:
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "MJ-40417", 64, patient_name="Müller^Jürgen", extra_organs=len(rois))
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-len(rois) :], rois):
        roi.ROIName = name
    ds.PatientBirthDate = birth
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, as the trial wrote them (Latin-1 has no combining mark)
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    (row,) = hostile.manifest(out)
    return code, row, out


def test_decomposed_and_invisible_spellings_are_rewritten_not_refused(tmp_path, capsys):
    """Fifth hostile trial E11: spellings the check found but the rewriting missed failed the case 'please report
    it': the name decomposed (NFD, as macOS writes), with a zero-width space or a soft hyphen, and the birth date
    with a one-digit month and day."""
    rois = ["PTV_Mu\u0308ller", "M\u00fcl\u200bler_ctv", "J\u00fcr\u00adgen", "1975-3-2 plan"]
    code, row, out = _export_with_rois(tmp_path, rois)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert {"PTV_[removed]", "[removed]_ctv", "[removed]", "[removed] plan"} <= _untagged(names), names


def test_the_birth_date_in_other_spellings_is_removed(tmp_path, capsys):
    """Fifth hostile trial E10: the birth date as YYMMDD, with a month's name (day first, month first, glued)
    reached every output with status ok. Now removed; and the check alone finds those spellings."""
    rois = ["PTV 750302", "Mar 2, 1975", "bd_02Mar1975", "2 March 1975", "ctv 02.03.75"]
    code, row, out = _export_with_rois(tmp_path, rois)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert {"PTV [removed]", "[removed]", "bd_[removed]", "ctv [removed]"} <= _untagged(names), names
    found = []
    for where, data in _all_output_bytes(out):
        text = data.decode("utf-8", "replace").casefold()
        found += [f"{s} in {where}" for s in ("750302", "mar 2, 1975", "02mar1975", "2 march 1975") if s in text]
    assert not found, found[:10]


def _nowhere_in(out, needles) -> None:
    """None of ``needles`` in any byte DoseAlign wrote to ``out`` (read as UTF-8)."""
    found = []
    for where, data in _all_output_bytes(out):
        text = data.decode("utf-8", "replace")
        found += [f"{needle!r} in {where}" for needle in needles if needle in text]
    assert not found, found[:10]


def _birth_date_guard():
    """The check alone (:class:`IdentityGuard`) of an input whose one date is the birth date 1975-03-02."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard

    identity = Identity()
    identity.dates.add("19750302")
    return IdentityGuard(identity)


def test_the_birth_date_with_underscores_between_its_parts_is_removed(tmp_path, capsys):
    """Thirteenth hostile trial M1: a date whose parts are joined by underscores (``Opt_1975_03_02``,
    ``Boost_02_03_75``, ``PTV_1975_3_2``), as ROI names are written where a planning system allows no space or
    ``.``, reached meta.json, dvh.csv, manifest.csv, report.html and the mask file names with status ok, and the
    check passed it; the same date with ``-`` was removed. Now removed, and the check alone finds it."""

    rois = ["Opt_1975_03_02", "Boost_02_03_75", "PTV_1975_3_2", "ctv_03_02_1975", "H_1975_0302", "x_0203-1975"]
    code, row, out = _export_with_rois(tmp_path, rois)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert {"Opt_[removed]", "Boost_[removed]", "PTV_[removed]", "ctv_[removed]", "H_[removed]", "x_[removed]"} <= set(
        names
    ), names
    _nowhere_in(out, ("1975_03_02", "02_03_75", "1975_3_2", "03_02_1975", "1975_0302", "0203-1975"))
    guard = _birth_date_guard()
    for text in rois:
        assert guard.find(text) == "a date", text
    for text in ["Opt_1975_03_03", "ring_10_20_30", "v0_750_302", "H_1975_0303", "v 4000 1975", "1.1975_0302"]:
        assert guard.find(text) == "", text


def test_the_birth_date_with_separators_a_file_name_turns_into_underscores_is_removed(tmp_path, capsys):
    """Forty-second hostile trial AP8: an ROI name whose date has ``!``, ``#``, ``|`` or another character between its
    parts that no one writes in a date (``CTV 1975!03!02``) was left alone by the rewriting, and its mask file name
    (``CTV_1975_03_02``) then failed the case "please report it". The rewriting reads such a date as its file name
    spells it, and removes it."""

    rois = [
        "CTV 1975!03!02",
        "GTV 02#03#1975",
        "PTV 1975|03|02",
        "Boost 2:3:75",
        "ring 1975 ! 03 ! 02",
        "bd Mar!2!1975",
    ]
    code, row, out = _export_with_rois(tmp_path, rois)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert {f"{roi.split()[0]} [removed]" for roi in rois} <= set(names), names
    _nowhere_in(out, ("1975_03_02", "02_03_1975", "2_3_75", "1975!03", "02#03", "03|02", "Mar_2_1975", "Mar!2"))


def test_the_birth_date_with_typographic_or_spaced_separators_or_cjk_characters_is_removed(tmp_path, capsys):
    """Fifteenth hostile trial O1, O2, O6: the birth date written with an en dash, a minus sign, a division slash, a
    katakana middle dot, a point and a space (``2. 3. 1975``, ``1975. 03. 02.``), spaced separators (``02 / 03 /
    1975``), or with 年月日 / 년월일 (``1975年3月2日``, ``1975년 3월 2일``) reached meta.json and dvh.csv with status ok, and
    the check passed it. Now removed, and the check alone finds each spelling."""

    rois = [
        "a 1975\u201303\u201302",
        "b 02\u201303\u20131975",
        "c 1975\u221203\u221202",
        "d 02\u221503\u22151975",
        "e 1975\u30fb03\u30fb02",
        "f 2. 3. 1975",
        "g 1975. 03. 02.",
        "h 02 / 03 / 1975",
        "i 1975 - 03 - 02",
        "j 1975\u5e743\u67082\u65e5",
        "k 1975\ub144 3\uc6d4 2\uc77c",
        "l 1975\u5e7403\u670802\u65e5",
        "m 75\u5e743\u67082\u65e5",  # (a two-digit year: twenty-first hostile trial U9's addendum)
    ]
    code, row, out = _export_with_rois(tmp_path, rois)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    expected = {f"{roi[0]} [removed]" for roi in rois} - {"g [removed]"} | {"g [removed]."}
    assert expected <= set(names), sorted(set(names) - {"External", "PTV", "Cord", "Ring"})
    _nowhere_in(out, [roi[2:].rstrip(".") for roi in rois])
    guard = _birth_date_guard()
    for text in rois:
        assert guard.find(text) == "a date", text
    for text in [
        "a 1975\u201303\u201303",
        "f 2. 3. 1976",
        "h 03 / 03 / 1975",
        "j 1975\u5e743\u67083\u65e5",
        "x 19 75 03",
    ]:
        assert guard.find(text) == "", text


def test_a_date_or_id_before_or_after_a_point_and_digits_is_removed_not_refused(tmp_path, capsys):
    """Fifteenth hostile trial O15, O16: the birth date as DICOM's date-time (``19750302093000``) was kept, and a date
    touching ``.digits`` (``02.03.1975.1``, ``1975.03.02.2``, ``19750302.5``, ``1.1975.03.02``) failed the case
    "please report it": the check read a date where the rewriting saw a number. The whole ID, letters included,
    with a version (``PTV MJ40417.2``) was kept by both. Each is now removed; numbers stay numbers."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    rois = ["a 19750302093000", "b 197503020930", "c 02.03.1975.1", "d 1975.03.02.2", "e 19750302.5", "f 1.1975.03.02"]
    rois += ["PTV MJ40417.2", "CTV_MJ-40417.1", "g 1975030214", "h 750302093000"]  # (sixteenth trial P3: the hour, YY)
    rois += ["i 2nd of March 1975", "j 02\t03\t1975"]  # (P10: "of", tabs)
    rois += ["k March the 2nd, 1975", "l 2nd day of March 1975"]  # (seventeenth trial Q9: "the", "day of")
    rois += ["m Mar 2 10:00 1975", "n Sun Mar 2 10:00:00 UTC 1975"]  # (eighteenth trial R6: ctime, date)
    rois += ["o 2 Mar '75", "p Mar 2 10:00:00 +0000 1975", "q Sun Mar 2 10:00:00 GMT+02:00 1975", "r 2.3.'75"]  # (S2)
    rois += [
        "s 2 Mar \u201875",
        "t 2 Mar \u02bc75",
        "u Mar 2 10:00:00 +02:00 1975",
        "v Mar 2 10:00:00,5 Z 1975",
    ]  # (T1)
    rois += ["w 2.3.'1975", "x 2 Mar '1975", "y 1975-03-'02", "z 2 Mar 10:00 1975"]  # (T2: the check read these; T1)
    rois += ["aa 2ndMar1975", "ab PTV_2ndMarch1975", "ac 2NDMAR75"]  # (twenty-first trial U3: the check read these)
    rois += ["ad PTVMar2_1975", "ae BoostMarch 2, 1975", "af CTMAR 2 1975"]  # (U9: month-first after letters)
    code, row, out = _export_with_rois(tmp_path, rois)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = set(_names_of(out, row))
    expected = {"a [removed]", "b [removed]", "c [removed].1", "d [removed].2", "e [removed].5", "f 1.[removed]"}
    expected |= {"PTV [removed].2", "CTV_[removed].1", "g [removed]", "h [removed]", "i [removed]", "j [removed]"}
    expected |= {"k [removed]", "l [removed]", "m [removed]", "n Sun [removed]", "o [removed]", "p [removed]"}
    expected |= {"q Sun [removed]", "r [removed]", "s [removed]", "t [removed]", "u [removed]", "v [removed]"}
    expected |= {"w [removed]", "x [removed]", "y [removed]", "z [removed]"}
    expected |= {"aa [removed]", "ab PTV_[removed]", "ac [removed]", "ad PTV[removed]", "ae Boost[removed]"}
    expected |= {"af CT[removed]"}
    assert expected <= names, sorted(names)
    identity = Identity()
    identity.dates.add("19750302")
    identity.patient_ids.add("MJ-40417")
    guard = IdentityGuard(identity)
    for text in rois:
        assert guard.find(text), text
    rewriting = Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in rois:  # whatever the check reads as the date, the rewriting removes (twentieth trial T2)
        assert guard.find(rewriting.text(text)) == "", (text, rewriting.text(text))
    for number in ["63.0584", "0.750302", "19750303093000", "197503021", "x 1.25e-05", "MJ40418.2", "1975030224"]:
        assert guard.find(number) == "", number
        assert rewriting.text(number) == number, number
    for number in ["1stMar1975", "3rdMar1975", "2ndApr1975"]:  # other dates, glued to an ordinal too
        assert guard.find(number) == "", number
        assert rewriting.text(number) == number, number


def test_two_harmless_roi_names_side_by_side_are_no_date_or_id():
    """Sixteenth hostile trial P11: the check read meta.json's strings joined by newlines, so two ROI names that hold
    no date or ID each (``CTV 15`` and ``April 2023`` for a study of 2023-04-15; ``PTV 77`` and ``415 boost`` for
    the ID 77415) read as one across them, and the case was refused "please report it". Each string is checked on
    its own; a date or ID within one string is still found."""
    from DoseAlignLib.output.pseudonym import Identity, PseudonymError, Pseudonymizer

    identity = Identity()
    identity.dates.add("20230415")
    identity.patient_ids.add("77415")
    checker = Pseudonymizer(key=b"k" * 32, identity=identity)
    for names in (["CTV 15", "April 2023"], ["PTV 77", "415 boost"], ["Lung 774", "15 Gy ring"]):
        checker.check({"structures": {"names": names}, "audit": {"rois": [{"name": n} for n in names]}})
    for leak in (["CTV 15 April 2023"], ["PTV 77415"]):
        with pytest.raises(PseudonymError):
            checker.check({"structures": {"names": leak}})


def test_the_check_alone_finds_dates_in_other_spellings():
    """E10, the check's own code: six digits and month names are read as the input's dates, not as any number
    (not in a column of numbers: openkbp's voxel indices)."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard

    identity = Identity()
    identity.dates.add("19750302")
    guard = IdentityGuard(identity)
    for text in ["PTV 750302", "020375_ctv", "Mar 2, 1975", "bd_02Mar1975", "2 March 1975", "1975-3-2", "3/2/75"]:
        assert guard.find(text) == "a date", text
    for text in ["0.750302", "750303", "Mar 3, 1975", "summary 2 1975", "d0.750302_gy", "2 Mars 1975", "1,750302,2"]:
        assert guard.find(text) == "", text
    # a month's name glued after letters is read (PTVMAR2_1975: twenty-first hostile trial U9), "summar" too: the
    # rewriting removes the same, and only the input's own date
    assert guard.find("summar 2 1975") == "a date"


def test_dates_written_as_counts_are_removed_and_found_on_both_sides(tmp_path, capsys, monkeypatch):
    """Thirtieth hostile trial AD7: StudyDate 20230415 and PatientBirthDate 19750302 written as ISO 8601 ordinal
    dates (``2023-105``, ``1975061``, ``105_2023``), ISO week dates (``2023-W15-6``, ``2023W156``) and a Unix time
    (``1681516800``, 00:00 UTC; ``1681550000`` later that day; in milliseconds) passed --pseudonymize in ROI names.
    The rewriting removes them and the check finds them, each on its own; other days, longer numbers and decimals
    are left. A Unix time counts in any time zone, with a fraction, in micro- and nanoseconds too (AJ4)."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(dates={"20230415", "19750302"})
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonym.IdentityGuard(identity)
    counted = ["CT_2023-105", "CT_2023105", "PTV_2023-W15-6", "PTV_2023W156", "GTV_1681516800", "GTV 1681550000",
               "t1681516800000", "CTV_1975-061", "CTV_1975061", "BOOST_105_2023", "born 162950400",
               # thirty-sixth hostile trial AJ4: fractional seconds, micro- and nanoseconds, and the day's moments in
               # other time zones (15 April 08:00 +0900 is 14 April 23:00 UTC)
               "t1681516800.5", "t1681516800000000", "t1681516800000000000", "PTV_1681513200", "PTV_1681603200",
               # thirty-sixth AJ24: a week of one digit between separators
               "CTV_1975-W9-7", "CTV_1975_w9_7"]  # fmt: skip
    for text in counted:
        assert guard.find(text) == "a date", text
        rewritten = rewriting.text(text)
        assert "[removed]" in rewritten and not guard.find(rewritten), (text, rewritten)
    others = ["CT_2023-106", "PTV_2023-W15-7", "GTV_1681700000", "x12023105", "2023.105", "0.1681516800",
              "GTV_1681380000", "PTV 2023-366", "1975-000", "t16815168000", "CTV_1975W97"]  # fmt: skip
    for text in others:
        assert guard.find(text) == "" and rewriting.text(text) == text, text
    # the check alone, with the rewriting made to miss them
    monkeypatch.setattr(pseudonym.Pseudonymizer, "_remove_coded_dates", lambda self, value: value)
    with pytest.raises(pseudonym.PseudonymError, match="a date"):
        rewriting.check(rewriting.value({"structures": {"names": ["CTV_1975061"]}}, text_keys=frozenset()))


def test_order_and_procedure_step_numbers_are_identity():
    """Thirty-first hostile trial AE9: RequestedProcedureID, the procedure-step IDs and the order numbers (an RIS
    often sets one to the accession number; PS3.15's confidentiality profile removes them) were not taken: ROI names
    holding them passed. They count as visit IDs (from five characters), in sequence items too."""
    from DoseAlignLib.output import pseudonym
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.PerformedProcedureStepID = "PPS66321"
    ds.FillerOrderNumberImagingServiceRequest = "FO88765432"
    item = Dataset()
    item.RequestedProcedureID = "RP55432"
    item.ScheduledProcedureStepID = "SPS44321"
    item.PlacerOrderNumberImagingServiceRequest = "PO99"  # shorter than five characters: not removed
    ds.RequestAttributesSequence = Sequence([item])
    identity = pseudonym.Identity()
    identity.add_dataset(ds)
    assert {"PPS66321", "FO88765432", "RP55432", "SPS44321"} <= identity.identifiers
    assert "PO99" not in identity.identifiers
    rewriting, guard = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity), pseudonym.IdentityGuard(identity)
    for text in ["PTV_PPS66321", "CTV RP55432", "Z SPS44321", "X FO88765432"]:
        assert guard.find(text) == "a patient ID", text
        assert "[removed]" in rewriting.text(text) and not guard.find(rewriting.text(text)), text


def test_the_birth_date_as_eight_digits_day_or_month_first_is_removed(tmp_path, capsys):
    """Seventh hostile trial G11: the birth date 19750302 as DDMMYYYY (``PTV 02031975``) and MMDDYYYY
    (``03021975_ctv``), as people write it where a planning system forbids '.' and '/' in ROI names, reached
    meta.json, dvh.csv, dataset.json and the mask file names with status ok. Now removed as the input's date."""
    rois = ["PTV 02031975", "03021975_ctv", "boost02031975"]
    code, row, out = _export_with_rois(tmp_path, rois)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert {"PTV [removed]", "[removed]_ctv", "boost[removed]"} <= set(names), names
    found = []
    for where, data in _all_output_bytes(out):
        text = data.decode("utf-8", "replace")
        found += [f"{s} in {where}" for s in ("02031975", "03021975") if s in text]
    assert not found, found[:10]


def test_eight_digits_are_read_as_the_inputs_dates_only_and_not_in_numbers():
    """G11, both sides apart: the rewriting and the check each take eight digits as DDMMYYYY and MMDDYYYY of the
    input's dates, not as any other date, not inside a longer number and not in the decimals of a number (sixth
    trial F16: DoseAlign's own numbers stay as they are)."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.dates.add("19750302")
    guard = IdentityGuard(identity)
    rewriting = Pseudonymizer(key=bytes(32), identity=identity)
    # (before a point and digits too, a structure's version: thirty-first hostile trial AE15)
    for text in ["PTV 02031975", "03021975_ctv", "d02031975", "x-03021975-y", "C_02031975.1", "H 750302.2"]:
        assert guard.find(text) == "a date", text
        assert rewriting.text(text).count("[removed]") == 1, text
    others = ["PTV 02031976", "PTV 03031975", "102031975", "030219751", "63.02031975", "0.03021975", "1.750302"]
    for text in others:
        assert guard.find(text) == "", text
        assert rewriting.text(text) == text, text


@pytest.mark.parametrize(
    "patient_name, rois, parts",
    [
        ("García-López^María", ["PTV_Lopez", "Garcia_ctv", "lopez boost"], ("lopez", "garcia")),
        ("Doe-Smith^Ann", ["PTV_doe", "Smith_eval"], ("smith",)),
        ("O'Brien^Sean", ["Brien_x", "PTV OBrien"], ("brien",)),
    ],
)
def test_each_part_of_a_hyphenated_or_apostrophe_name_is_a_name(tmp_path, capsys, patient_name, rois, parts):
    # from the fifth hostile trial (E30): name components were split only at ^ = , and spaces, so Lopez of
    # García-López (Smith of Doe-Smith, Brien of O'Brien) reached file names, NIfTI headers, meta.json and dvh.csv
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "HY-5521", 63, patient_name=patient_name, extra_organs=len(rois))
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-len(rois) :], rois):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    capsys.readouterr()
    assert code == 0
    found = []
    for where, data in _all_output_bytes(out):
        text = unicodedata.normalize("NFKD", data.decode("utf-8", "replace").casefold())
        squeezed = "".join(c for c in text if c.isalnum() and not unicodedata.combining(c))
        found += [f"{p} in {where}" for p in parts if p in squeezed]
    assert not found, found[:10]


def test_digits_of_a_decimal_number_are_no_id():
    """Sixth hostile trial F16, the rewriting and the check on their own: a numeric PatientID whose digits stand
    in a decimal number, after or across its point, is no ID there (``63.0584`` is one number); written in free
    text, as an ROI name or with separators, it is removed and found as before."""
    from DoseAlignLib.output import pseudonym

    for pid, numbers, names in [
        ("0584", ["dmax 63.0584 Gy", "63.0584", "0584.5", "1.0584e-05"], ["PTV_0584", "PTV0584", "PTV 63-0584"]),
        ("630584", ["dmax 63.0584 Gy", "6.30584", "630.584"], ["PTV_630584", "PTV 63-0584", "ctv 630 584"]),
        ("631521", ["dmax_native_gy 63.1521", "63.1521,63.0584"], ["631521_boost", "PTV 63_1521"]),
    ]:
        identity = pseudonym.Identity()
        identity.patient_ids.add(pid)
        pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
        for text in numbers:
            assert pseudonymizer.text(text) == text and not pseudonymizer.guard.find(text), (pid, text)
        for text in names:
            rewritten = pseudonymizer.text(text)
            assert pseudonymizer.guard.find(text) and pseudonym.REMOVED in rewritten, (pid, text, rewritten)
            assert not pseudonymizer.guard.find(rewritten), (pid, text, rewritten)
    identity = pseudonym.Identity()
    identity.patient_ids.add("12.345")  # an ID written with a decimal point is still an ID where it stands so
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    assert pseudonymizer.guard.find("PTV 12.345") and pseudonymizer.text("PTV 12.345") == "PTV [removed]"


def _numbers(value, path: str = "") -> dict:
    """Every number in a JSON-like value (bools aside), by its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _numbers(item, f"{path}/{key}").items()}
    if isinstance(value, list):
        return {k: v for n, item in enumerate(value) for k, v in _numbers(item, f"{path}[{n}]").items()}
    return {path: value} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


def test_dosealigns_own_numbers_are_never_rewritten(tmp_path, capsys):
    """Sixth hostile trial F16: a numeric PatientID made of digits of DoseAlign's own numbers (the Dmax after its
    point, and with the point left out) was "removed" from them: manifest.csv ``dmax_gy`` ``63.[removed]``, meta.json
    ``manifest_extra`` a string. The PatientIDs here are taken from a plain export's numbers; the pseudonymized
    export keeps every number (manifest columns parse as the same floats, meta.json numbers stay numbers) and
    still removes the ID from an ROI name."""
    import json

    def export(pid: str, out, *options) -> tuple:
        root = tmp_path / f"in-{pid}"
        truth = hostile.study(root / "p", pid, 68, patient_name="Zentrop^Ilka", extra_organs=1, ct_size=(32, 28, 16))
        ds = dd.read(truth.struct_file)
        ds.StructureSetROISequence[-1].ROIName = f"PTV_{pid}"
        dd.save(ds, truth.struct_file)
        code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", *options])
        (row,) = hostile.manifest(out)
        assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
        return row, json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))

    plain_row, plain_meta = export("ZI-1", tmp_path / "plain")
    columns = [k for k, v in plain_row.items() if re.fullmatch(r"-?\d+\.\d+", v or "")]
    assert {"dmax_gy", "dmax_native_gy", "dmax_output_gy"} <= set(columns), plain_row
    pids = set()
    for key in ("dmax_gy", "dmax_native_gy"):
        whole, fraction = plain_row[key].lstrip("-").split(".")
        pids |= {fraction, whole + fraction} if len(fraction) >= 3 else {whole + fraction}
    for pid in sorted(pids):
        row, meta = export(pid, tmp_path / f"out-{pid}", "--pseudonymize")
        assert {k: float(row[k]) for k in columns} == {k: float(plain_row[k]) for k in columns}, (pid, row)
        for key, value in (plain_meta.get("manifest_extra") or {}).items():
            assert meta["manifest_extra"][key] == value, (pid, key)
        numbers = _numbers(plain_meta["dose"])
        assert numbers and _numbers(meta["dose"]) == numbers, pid
        assert f"PTV_{pid}" not in _names_of(tmp_path / f"out-{pid}", row) and "PTV_[removed]" in _names_of(
            tmp_path / f"out-{pid}", row
        ), pid


#: Sixth hostile trial F21: a PN's phonetic and ideographic groups in other kana, variant kanji, simplified Chinese.
CJK_VARIANTS = [
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["ﾔﾏﾀﾞ_PTV", "ヤマダ_PTV"], ["やまだ", "ヤマダ", "ﾔﾏﾀﾞ"]),
    ("Yamada^Tarou=山田^太郎=ヤマダ^タロウ", ["やまだ_PTV"], ["やまだ", "ヤマダ"]),
    ("Takahashi^Ichiro=髙橋^一郎=たかはし^いちろう", ["高橋_PTV"], ["高橋", "髙橋"]),
    ("Saito^Ken=齋藤^健", ["斎藤_PTV"], ["斎藤", "齋藤"]),
    ("陳^大文", ["陈_PTV"], ["陈", "陳"]),
    ("張^偉", ["张伟_ctv"], ["张", "張", "伟", "偉"]),
]


@pytest.mark.parametrize("patient_name, rois, needles", CJK_VARIANTS)
def test_kana_and_variant_ideographs_are_one_name_to_both_sides(patient_name, rois, needles):
    """F21, the rewriting and the check on their own: hiragana, katakana and half-width katakana, variant kanji and
    traditional/simplified Chinese are one name to each side; a one-character component only as a word of its
    own; other text is kept."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.add_name(patient_name)
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in rois:
        rewritten = pseudonymizer.text(text)
        assert pseudonymizer.guard.find(text) == "a patient name", text
        assert not any(n in rewritten for n in needles) and pseudonym.REMOVED in rewritten, (text, rewritten)
        assert not pseudonymizer.guard.find(rewritten), (text, rewritten)
    for text in ("PTV", "脊髄_PRV", "王府井", "肺_L"):
        assert pseudonymizer.text(text) == text and not pseudonymizer.guard.find(text), text


def _export_cjk(tmp_path, patient_name: str, rois: list) -> tuple:
    root = tmp_path / "in"
    _named_patient_study(root, patient_name, rois, "JP-30118", 69, patient_name="X^Y")  # (its groups all stored)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    (row,) = hostile.manifest(out)
    return code, row, out


@pytest.mark.parametrize("patient_name, rois, needles", CJK_VARIANTS)
def test_kana_and_variant_ideographs_never_reach_the_output(tmp_path, capsys, patient_name, rois, needles):
    """F21: ``ﾔﾏﾀﾞ_PTV``/``ヤマダ_PTV`` for a phonetic group in hiragana, ``やまだ_PTV`` for one in katakana, ``高橋_PTV`` for
    ``髙橋``, ``斎藤_PTV`` for ``齋藤``, ``陈_PTV`` for ``陳^大文``, ``张伟_ctv`` for ``張^偉`` reached every output with
    status ok. Now no output byte holds them (searched NFKC, so half-width kana too) and the case is exported."""
    code, row, out = _export_cjk(tmp_path, patient_name, rois)
    capsys.readouterr()
    assert (code, row["status"]) == (0, "ok"), row["reason"]
    assert sum("[removed]" in n for n in _names_of(out, row)) == len(rois), _names_of(out, row)
    found = []
    for where, data in _all_output_bytes(out):
        text = unicodedata.normalize("NFKC", data.decode("utf-8", "replace"))
        found += [f"{n} in {where}" for n in needles if unicodedata.normalize("NFKC", n) in text]
    assert not found, found[:10]


#: Seventh hostile trial G1: PatientIDs with leading zeros, each with texts holding its number without them (to be
#: removed by the rewriting and found by the check) and texts that are no such ID (kept, and passed by the check).
UNPADDED = [
    (
        "0072315",
        ["PTV_72315", "ctv-72315-boost", "PTV72315", "72315 ring", "PTV_0072315", "dmax 72315.5"],
        # (a number of five digits or more before a point is read as it is: thirty-first hostile trial AE13)
        ["1.72315", "172315", "723150", "7231", "ring 72.315", "d72315.0cc_gy", "dmax 7231.5"],
    ),
    (
        "MRN0072315",
        # (thirteenth hostile trial M13: the number as written in the ID, zeros first, was kept)
        [
            "PTV_72315",
            "CTV_72315.1",
            "72315.5",
            "MRN72315",
            "mrn-72315",
            "boost 72315",
            "MRN 0072315",
            "PTV 0072315",
            "CTV-0072315",
            "z_0072315_v2",
        ],
        ["PTV72315", "x72315", "172315", "63.72315", "7231", "x0072315", "10072315", "0.0072315"],
    ),
    ("AB-0004127-C", ["PTV 4127", "ab-4127-c", "AB4127C", "ctv_0004127"], ["PTV4127", "14127", "41.27", "PTV0004127"]),
    ("0000007", ["PTV 0000007"], ["PTV_7", "PTV 7"]),
    ("00123", ["PTV_00123"], ["PTV_123"]),
    # thirtieth hostile trial AD8: the number of an ID with letters or separators, zeros or none, where it runs to
    # MIN_BARE_DIGITS digits (a four-digit run without zeros is too common a number to remove alone)
    (
        "MRN1072315",
        ["PTV_1072315", "GTV 1072315", "CTV_MRN1072315", "1072315-boost", "PTV_1072315.1", "GTV 1072315.2"],
        ["PTV1072315", "11072315", "1.072315", "107231", "PTV_10723"],
    ),
    ("1072315A", ["PTV_1072315", "GTV 1072315"], ["GTV1072315", "10723150"]),
    ("10-72315", ["GTV 72315", "PTV_1072315", "PTV_10-72315.1", "CTV 72315.1"], ["PTV 10", "GTV72315", "172315"]),
    ("MRN1234", ["MRN 1234"], ["PTV_1234", "PTV 1234"]),
    # thirty-first hostile trial AE6: an ID written with a point, before a version's point and digits (the case failed
    # "please report it": the check read what the rewriting kept)
    ("10.72315", ["PTV_10.72315.1", "PTV 1072315.5", "ITV 1072315.0", "PTV 10.72315"], ["PTV 10.72316", "x1.5"]),
    # thirty-second hostile trial AF3: zeros added before an ID's digits, as fixed-width MRN fields print them
    (
        "1072315",
        # (and an ID right after one before a point, thirty-third trial AG2; zeros inside a number are no padding,
        # AG5)
        [
            "C 01072315",
            "C2 01072315_b",
            "C4 01072315.1",
            "Q_0001072315",
            "C 1072315.1072315",
            "E 1072315.01072315.001072315",
        ],
        ["101072315", "63.01072315", "0.1072315", "10072315", "Boost 10-07-23 15Gy", "C 10-072315", "C 107-02315"],
    ),
    ("15423", ["PTV 015423"], ["PTV_15-04-23", "C 15-0423"]),
    ("MRN-1072315", ["C5 MRN01072315.1", "C6 MRN-01072315", "C 01072315"], ["MRN-10072315", "x101072315"]),
]


@pytest.mark.parametrize("pid, found, kept", UNPADDED)
def test_an_ids_number_without_its_leading_zeros_to_both_sides(pid, found, kept):
    """Seventh hostile trial G1, the rewriting and the check on their own: a PatientID's number written without
    its leading zeros (``0072315`` as ``72315``, the number of ``MRN0072315`` likewise) is an ID where at least
    MIN_UNPADDED_DIGITS digits remain (``0000007`` as ``7`` is not): the ID of digits only in all its spellings, the
    number of an ID with letters as a word of its own; not inside a longer number or a decimal one (F16)."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.patient_ids.add(pid)
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in found:
        rewritten = pseudonymizer.text(text)
        assert pseudonym.REMOVED in rewritten and pseudonymizer.guard.find(text) == "a patient ID", (pid, text)
        assert not pseudonymizer.guard.find(rewritten), (pid, text, rewritten)
    for text in kept:
        assert pseudonymizer.text(text) == text and not pseudonymizer.guard.find(text), (pid, text)


def test_the_check_alone_finds_an_ids_number_without_its_leading_zeros(monkeypatch):
    """G1: with the rewriting made to miss every ID, the check still refuses the number without its zeros."""
    from DoseAlignLib.output import pseudonym

    monkeypatch.setattr(pseudonym, "_id_pattern", lambda identifier: re.compile(r"(?!)"))
    monkeypatch.setattr(pseudonym, "_bare_number", lambda number: re.compile(r"(?!)"), raising=False)
    for pid, name in [
        ("0072315", "PTV_72315"),
        ("0072315", "PTV72315"),
        ("MRN0072315", "PTV_72315"),
        ("MRN1072315", "PTV_1072315"),  # (AD8)
        ("10-72315", "GTV 72315"),
    ]:
        identity = pseudonym.Identity()
        identity.patient_ids.add(pid)
        pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
        meta = pseudonymizer.value({"structures": {"names": [name]}}, text_keys=frozenset([name]))
        assert meta["structures"]["names"] == [name]  # the rewriting missed it
        with pytest.raises(pseudonym.PseudonymError, match="a patient ID"):
            pseudonymizer.check(meta)


@pytest.mark.parametrize("pid", ["0072315", "MRN0072315"])
def test_an_ids_number_without_its_leading_zeros_never_reaches_the_output(tmp_path, capsys, pid):
    """Seventh hostile trial G1: PatientID ``0072315`` (or ``MRN0072315``) and an ROI ``PTV_72315``, as HIS exports and
    spreadsheets print MRNs: ``PTV_72315`` was in meta.json, dvh.csv, dataset.json and a mask file name (9 hits),
    status ok. The case is exported with ``PTV_[removed]``, and no output byte holds 72315."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", pid, 69, patient_name="Quillfeather^Odalys", extra_organs=2, ct_size=(32, 28, 16))
    ds = dd.read(truth.struct_file)
    ds.StructureSetROISequence[-1].ROIName = "PTV_72315"
    ds.StructureSetROISequence[-2].ROIName = "z_0072315_v2"  # thirteenth hostile trial M13
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    assert {"PTV_[removed]", "z_[removed]_v2"} <= set(_names_of(out, row)), _names_of(out, row)
    # as a number of its own (a keyed 2.25.<39 digits> UID may hold these digits inside it by chance)
    found = [where for where, data in _all_output_bytes(out) if re.search(rb"(?<![0-9.])72315(?![0-9])", data)]
    assert not found, found[:10]


def test_dotted_numbers_that_are_no_uid_are_not_hashed():
    """Seventh hostile trial G5, the rewriting on its own: every run of digits and dots of 10 characters or more was
    taken for a UID and replaced by a keyed 2.25.<...>, so an ROI ``CTV 03.10.2025`` became ``CTV 2.25.2640...``.
    Only the input's own UIDs and UIDs as DICOM writes them (no component with a leading zero, rooted as an OID)
    are hashed; a date is removed as a date where it is a header date, and kept otherwise."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.dates.add("20251003")
    identity.uids.update({"1.2.3.04.5", "9.9.9"})  # the input's own UIDs, even ill-formed ones
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in ("CTV 17.10.2025", "CTV 04.11.2025", "v 10.2.1.5.7", "PTV 60.0.2", "z 1.2.840.1", "GTV 00.10.20.30"):
        assert pseudonymizer.text(text) == text, text
    for text in ("CTV 03.10.2025", "CTV 2025.10.03", "CTV 3.10.2025"):  # the header date in other spellings
        assert pseudonymizer.text(text) == "CTV [removed]", text
    for text in ("ref 1.2.3.04.5", "u 9.9.9", "x 1.2.826.0.1.3680043.8.498.1", "y 2.25.12345678901"):
        rewritten = pseudonymizer.text(text)
        assert re.fullmatch(r"[a-z]+ 2\.25\.[0-9]+", rewritten) and text.split()[1] not in rewritten, (text, rewritten)
        assert not pseudonymizer.guard.find(rewritten)
    assert pseudonymizer.text("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"  # DICOM's own UIDs stay
    for text in ("1.2.3.4.5.6", "2.999.1.0.7", "0.9.2342.19200300"):
        assert pseudonym.looks_like_uid(text), text
    for text in ("03.10.2025", "17.10.2025", "1.02.3.4.5.6", "3.10.20251", "1.40.3.4.5.6", "1.2.3.4.5.a", "1" * 65):
        assert not pseudonym.looks_like_uid(text), text


def test_roi_names_with_dates_are_not_rewritten_into_uids(tmp_path, capsys):
    """Seventh hostile trial G5: ROIs labelled with a date the European way (``CTV 03.10.2025``, as re-plans are)
    were rewritten into keyed UIDs in meta.json, dvh.csv and the mask file names. A date that is no header date is
    kept, a header date (StudyDate 20240102 written ``02.01.2024``) removed as a date; the input's own UID and
    another valid UID in an ROI name are still hashed, and no output byte holds the input's UIDs."""
    root = tmp_path / "in"
    rois = ["CTV 03.10.2025", "CTV 17.10.2025", "PTV 02.01.2024", "ref {own}", "ext 1.2.826.0.1.3680043.8.498.77"]
    truth = hostile.study(root / "p", "GF-5511", 66, patient_name="Ardent^Vela", extra_organs=len(rois))
    ds = dd.read(truth.struct_file)
    own = str(ds.FrameOfReferenceUID if "FrameOfReferenceUID" in ds else ds.StudyInstanceUID)
    for roi, name in zip(list(ds.StructureSetROISequence)[-len(rois) :], rois):
        roi.ROIName = name.format(own=own)
    dd.save(ds, truth.struct_file)
    assert own in {str(v) for v in (ds.StudyInstanceUID, ds.get("FrameOfReferenceUID"))}
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    names = _names_of(out, row)
    assert {"CTV 03.10.2025", "CTV 17.10.2025", "PTV [removed]"} <= set(names), names
    hashed = [n for n in names if n.startswith(("ref ", "ext "))]
    assert len(hashed) == 2 and all(re.fullmatch(r"(ref|ext) 2\.25\.[0-9]+", n) for n in hashed), names
    files = sorted(p.name for p in (out / row["case_id"]).rglob("*"))
    assert not [n for n in files if "2.25." in n and not n.startswith(("ref ", "ext "))], files
    uids = {str(dd.read(p).SOPInstanceUID) for p in (root / "p").rglob("*.dcm")} | {own}
    found = [(where, u) for where, data in _all_output_bytes(out) for u in uids if u.encode() in data]
    assert not found, found[:10]


def _study_named(root, patient_name: str, rois: list):
    truth = hostile.study(
        root / "p", "HK-22817", 66, patient_name=patient_name, extra_organs=len(rois), ct_size=(40, 36, 16)
    )
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-len(rois) :], rois):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    return root


def _channel_voxels(out) -> dict:
    """``{channel name: voxels}`` of the one case in ``out``, from pair.npz and meta.json."""
    import json

    import numpy as np
    from DoseAlignLib.structures.masks import unpack_masks

    (row,) = hostile.manifest(out)
    assert row["status"] == "ok", row["reason"]
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    with np.load(out / row["case_id"] / "pair.npz") as pair:
        masks = unpack_masks(pair["masks"], meta["shape"])
    return {name: int(mask.sum()) for name, mask in zip(meta["structures"]["names"], masks)}


@pytest.mark.parametrize(
    "patient_name, rois, channels, words",
    [
        ("Lung^Wai Man", ["Lung_L", "Lung_R"], ["PTV", "Lung_L", "Lung_R", "Cord"], ["lung", "waiman", "hk22817"]),
        ("Quillfeather^Odalys", ["PTV_Quillfeather"], ["PTV_Quillfeather", "Cord"], ["quillfeather", "odalys"]),
    ],
)
def test_rois_chosen_by_a_name_holding_identity_are_refused_never_empty(
    tmp_path, capsys, patient_name, rois, channels, words
):
    """Seventh hostile trial G14: under --pseudonymize ``--rois`` was matched against the rewritten ROI names, so a
    patient ``Lung^Wai Man`` got channels ``[removed]_L``/``[removed]_R`` of 0 voxels (and ``PTV_Quillfeather`` of
    patient Quillfeather an empty channel), status ok, no warning. A channel name that holds the identity is refused
    before anything is written (it could only be written rewritten, which a loader choosing channels by name takes
    for an absent ROI); the ROIs mapped to other channel names (the way the refusal names) hold their voxels."""
    import json

    root = _study_named(tmp_path / "in", patient_name, rois)
    plain = tmp_path / "plain"
    assert main(["export", str(root), str(plain), "--quiet", "--workers", "1", "--rois", ",".join(channels)]) == 0
    voxels = _channel_voxels(plain)
    assert all(voxels[name] > 0 for name in rois), voxels  # the ROIs exist: an empty channel would be wrong
    out = tmp_path / "share" / "out"
    common = ["--quiet", "--workers", "1", "--pseudonymize", *_formats()]
    code = main(["export", str(root), str(out), *common, "--rois", ",".join(channels)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--rois {rois[0]!r}" in err and "no case was written" in err and "--roi-map" in err, err
    assert not out.exists() or not any(out.iterdir())
    # the key this run created stays, and the refusal says so (thirty-first hostile trial AE8: "nothing was written")
    key = tmp_path / "share" / "dosealign-pseudonym.key"
    assert key.exists() and f"the key file {key} was created by this run and is kept" in err, err
    mapping = {f"Organ{n}": [name] for n, name in enumerate(rois)}
    (tmp_path / "map.json").write_text(json.dumps(mapping), encoding="utf-8")
    renamed = [next((new for new, old in mapping.items() if old == [c]), c) for c in channels]
    code = main(
        ["export", str(root), str(out), *common, "--roi-map", str(tmp_path / "map.json"), "--rois", ",".join(renamed)]
    )
    assert code == 0, capsys.readouterr()
    assert _channel_voxels(out) == {new: voxels[old] for new, old in zip(renamed, channels)}
    found = []
    for where, data in _all_output_bytes(out):
        text = data.decode("utf-8", "replace").casefold()
        squeezed = re.sub(r"[^0-9a-z]", "", text)
        found += [
            f"{w} in {where}" for w in words if (re.search(rf"(?<![a-z]){w}", text) if w == "lung" else w in squeezed)
        ]
    assert not found, found[:10]


def test_a_roi_map_channel_holding_identity_is_refused_as_a_rois_channel_is(tmp_path, capsys):
    """Twenty-fourth hostile trial X2: a --roi-map channel name holding the patient's name (``Lung_L`` of patient
    ``Lung^Wai Man``) was rewritten without a word (``[removed]_L`` in meta.json, the mask file names and
    dataset.json's labels), where the same channel in --rois is refused. It is refused the same way, before anything
    is written; a map to other names exports."""
    import json

    root = _study_named(tmp_path / "in", "Lung^Wai Man", ["Lung_L", "Heart"])
    (tmp_path / "map.json").write_text(json.dumps({"Lung_L": ["Lung_L", "LungL"], "Heart": ["Heart"]}))
    out = tmp_path / "share" / "out"
    common = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    code = main(["export", str(root), str(out), *common, "--roi-map", str(tmp_path / "map.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--roi-map 'Lung_L': the channel name holds" in err and "no case was written" in err, err
    assert not out.exists() or not any(out.iterdir())
    (tmp_path / "map.json").write_text(json.dumps({"Pulmo_L": ["Lung_L"], "Heart": ["Heart"]}))
    assert main(["export", str(root), str(out), *common, "--roi-map", str(tmp_path / "map.json")]) == 0
    (row,) = hostile.manifest(out)
    assert "Pulmo_L" in _channel_voxels(out), _channel_voxels(out)


def _squeezed_words_in_outputs(out, words: tuple) -> list:
    """``"word in file"`` for each of ``words`` found in an output's text, read with everything but letters and
    digits squeezed out (``Zentrop Ilka`` as ``zentropilka``)."""
    found = []
    for where, data in _all_output_bytes(out):
        squeezed = re.sub(r"[^0-9a-z]", "", data.decode("utf-8", "replace").casefold())
        found += [f"{w} in {where}" for w in words if w in squeezed]
    return found


def test_a_roi_map_channel_named_with_identity_under_pseudonymize(tmp_path, capsys):
    """An --roi-map channel holding the patient's ID or name (``{"PTV_HK-22817": ["PTV"]}``) failed the case under
    --pseudonymize: "pseudonymization left a patient ID in meta.json ... (please report it)", as meta.json records the
    map and its channel names were not rewritten. They were then rewritten as the ROI names are, without a word, where
    a --rois channel of the same name is refused (twenty-fourth hostile trial X2): such a map is refused before
    anything is written. A map to other names gives the plain export's masks, no output names the patient, and
    --resume keeps the case."""
    import json

    import numpy as np

    root = _study_named(tmp_path / "in", "Quillfeather^Odalys", ["Bladder"])
    mapping = {"PTV_HK-22817": ["PTV"], "Bladder_Quillfeather": ["Bladder"]}
    (tmp_path / "map.json").write_text(json.dumps(mapping), encoding="utf-8")
    common = ["--quiet", "--workers", "1", "--no-qa-png", "--roi-map", str(tmp_path / "map.json")]
    plain, out = tmp_path / "plain", tmp_path / "share" / "out"
    assert main(["export", str(root), str(plain), *common]) == 0, capsys.readouterr()
    code = main(["export", str(root), str(out), *common, "--pseudonymize", *_formats()])
    err = capsys.readouterr().err
    assert code == 2 and "--roi-map 'PTV_HK-22817': the channel name holds a patient ID" in err, err
    assert not out.exists() or not any(out.iterdir())
    (tmp_path / "map.json").write_text(json.dumps({"PTV_A": ["PTV"], "Bladder_A": ["Bladder"]}), encoding="utf-8")
    code = main(["export", str(root), str(out), *common, "--pseudonymize", *_formats()])
    assert code == 0, capsys.readouterr()
    (a,), (b,) = hostile.manifest(plain), hostile.manifest(out)
    assert b["status"] == "ok", b["reason"]
    with np.load(plain / a["case_id"] / "pair.npz") as x, np.load(out / b["case_id"] / "pair.npz") as y:
        np.testing.assert_array_equal(x["masks"], y["masks"])
    found = _squeezed_words_in_outputs(out, ("hk22817", "quillfeather", "odalys"))
    assert not found, found[:10]
    assert main(["export", str(root), str(out), *common, "--pseudonymize", *_formats(), "--resume"]) == 0
    assert [r["status"] for r in hostile.manifest(out)] == ["skipped"], capsys.readouterr()


def test_centre_on_a_roi_named_with_identity_under_pseudonymize(tmp_path, capsys):
    """G14: ``--centre roi:PTV_Quillfeather`` under --pseudonymize failed the case "no ROI 'PTV_[removed]' ... (they
    have: ..., PTV_[removed], ...)": the ROI is chosen by its name before the rewriting. The grid and the arrays are
    the plain export's, the outputs name the ROI rewritten, and --resume keeps the case (the request recorded
    rewritten is this run's)."""
    import json

    import numpy as np

    root = _study_named(tmp_path / "in", "Quillfeather^Odalys", ["PTV_Quillfeather"])
    centred = ["--spacing", "3", "--centre", "roi:PTV_Quillfeather", "--quiet", "--workers", "1"]
    plain, out = tmp_path / "plain", tmp_path / "share" / "out"
    assert main(["export", str(root), str(plain), *centred]) == 0
    assert main(["export", str(root), str(out), *centred, "--pseudonymize"]) == 0, capsys.readouterr()
    (a,), (b,) = hostile.manifest(plain), hostile.manifest(out)
    assert b["status"] == "ok", b["reason"]
    metas = [
        json.loads((o / r["case_id"] / "meta.json").read_text(encoding="utf-8")) for o, r in ((plain, a), (out, b))
    ]
    assert metas[0]["resampling"]["centre"]["roi"] == "PTV_Quillfeather"
    assert metas[1]["resampling"]["centre"]["roi"] == "PTV_[removed]"
    assert metas[0]["resampling"]["centre"]["centre_lps"] == metas[1]["resampling"]["centre"]["centre_lps"]
    with np.load(plain / a["case_id"] / "pair.npz") as p, np.load(out / b["case_id"] / "pair.npz") as q:
        for name in ("ct", "dose", "masks"):
            assert np.array_equal(p[name], q[name]), name
    assert not [w for w, d in _all_output_bytes(out) if b"quillfeather" in d.lower() or b"odalys" in d.lower()]
    assert main(["export", str(root), str(out), *centred, "--pseudonymize", "--resume"]) == 0
    assert [r["status"] for r in hostile.manifest(out)] == ["skipped"], hostile.manifest(out)
    capsys.readouterr()


def _study_with_rois(root, patient_id: str, patient_name: str, rois: list, seed: int):
    truth = hostile.study(
        root / patient_id, patient_id, seed, patient_name=patient_name, extra_organs=len(rois), ct_size=(40, 36, 16)
    )
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-len(rois) :], rois):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    return root


def test_centre_on_a_roi_is_compared_as_given_when_appending_another_cohort(tmp_path, capsys):
    """Twenty-fourth hostile trial X2 addendum: ``--centre roi:NAME`` was recorded and compared rewritten, so
    ``--append`` of a cohort whose identity does not hold the name, run with the same option, was refused as
    "other options" (centre "roi:PTV_[removed]" -> "roi:PTV_Quillfeather"). It is compared by a keyed hash of the
    option as given: the other cohort is appended; a name that rewrites alike but is another is still refused."""
    import json

    centred = ["--spacing", "3", "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    first = _study_with_rois(tmp_path / "a", "HK-22817", "Quillfeather^Odalys", ["PTV_Quillfeather"], 66)
    second = _study_with_rois(tmp_path / "b", "ZZ-40311", "Brennan^Ita", ["PTV_Quillfeather"], 67)
    out = tmp_path / "share" / "out"
    assert main(["export", str(first), str(out), *centred, "--centre", "roi:PTV_Quillfeather"]) == 0
    (row,) = hostile.manifest(out)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["options"]["centre"] == "roi:PTV_[removed]"
    assert len(meta["options"]["centre_keyed_sha256"]) == 64
    capsys.readouterr()

    assert main(["export", str(second), str(out), *centred, "--centre", "roi:PTV_Quillfeather", "--append"]) == 0
    err = capsys.readouterr().err
    assert "other options" not in err, err
    rows = hostile.manifest(out)
    assert [r["status"] for r in rows] == ["ok", "ok"] and len({r["patient"] for r in rows}) == 2, rows

    # another ROI whose name this input's identity rewrites alike (PTV_Odalys -> PTV_[removed]) is another request
    third = _study_with_rois(tmp_path / "c", "HK-22817", "Quillfeather^Odalys", ["PTV_Odalys"], 68)
    code = main(["export", str(third), str(out), *centred, "--centre", "roi:PTV_Odalys", "--append"])
    err = capsys.readouterr().err
    assert code == 2 and "--append would mix cases made with other options" in err and "centre" in err, err
    assert "quillfeather" not in err.lower() and "odalys" not in err.lower(), err


def test_rois_are_selected_by_their_names_before_the_rewriting():
    """G14, the selection itself: ROIs rewritten by the pseudonymization (``Lung_L`` -> ``[removed]_L``) are the
    channels the user named by the input's names; made unique as before (``Lungs_2`` joins ``Lungs``)."""
    import numpy as np
    from DoseAlignLib.dicom.rtstruct import RoiContours
    from DoseAlignLib.structures.case import fixed_channels
    from DoseAlignLib.structures.names import harmonise_names

    rois = [
        RoiContours(n, name, name, "ORGAN", None, "rs.dcm", np.array([0.0, 0.0, 1.0]))
        for n, name in enumerate(["Lung_L", "Lung_R", "Lungs", "Lungs", "Heart"], start=1)
    ]
    harmonise_names(rois, None, lambda name: name.replace("Lung", "[removed]"))
    assert [r.name for r in rois] == ["[removed]_L", "[removed]_R", "[removed]s", "[removed]s_2", "Heart"]
    kept, left_out = fixed_channels(rois, ["Lung_L", "LUNGS", "Heart"])
    assert [(r.number, r.name) for r in kept] == [(1, "Lung_L"), (3, "LUNGS"), (4, "LUNGS"), (5, "Heart")]
    assert left_out == ["[removed]_R"]


@pytest.mark.parametrize("damage", ["patient", "slice", "frame"])
def test_a_ct_folder_named_after_the_patient_never_reaches_a_failure_reason(tmp_path, capsys, damage):
    """Eighth hostile trial H5: three failure reasons named the CT folder unquoted, so the rewriting (which takes a
    bare folder name for a path only quoted or before a "/") left `Quillfeather Odalys` in manifest.csv and
    report.html under --pseudonymize: the CT of another PatientID, two CT files sharing one SOPInstanceUID, a
    structure set in another frame of reference. The folder holds identity the headers need not hold."""
    folder = "Zentrop Ilka MRN448812"
    truth = hostile.study(tmp_path / "in" / folder, "ZI-1", 13)
    if damage == "patient":
        for path in truth.ct_files:
            dd.rewrite_tags(path, PatientID="ZI-2")
    elif damage == "slice":
        copy = truth.ct_files[0].with_name("CT_extra.dcm")
        copy.write_bytes(truth.ct_files[0].read_bytes()[:3000])
        ds = dd.read(truth.ct_files[1])
        dd.rewrite_tags(copy, SOPInstanceUID=ds.SOPInstanceUID)
    else:
        ds = dd.read(truth.struct_file)
        for item in ds.ReferencedFrameOfReferenceSequence:
            item.FrameOfReferenceUID = "1.2.3.4.5"
        for item in ds.StructureSetROISequence:
            item.ReferencedFrameOfReferenceUID = "1.2.3.4.5"
        dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(tmp_path / "in"), str(out), "--quiet", "--workers", "1", "--pseudonymize"])
    capsys.readouterr()
    assert code == 1
    assert any(r["status"] == "failed" for r in hostile.manifest(out))
    found = [where for where, data in _all_output_bytes(out) if b"zentrop" in data.lower() or b"448812" in data]
    assert not found, found


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_map_lists_the_pseudonyms_a_case_made(tmp_path, capsys, workers):
    """A UID written inside an ROI name (``GTV 1.2.840.113619.2.55.3.<n>``) is replaced by its keyed hash while the
    case is exported; the map did not list it (nor any pseudonym a case makes), so its owner could not map it back.
    With two workers the cases run in other processes, whose pseudonyms come back with their rows."""
    import csv

    foreign = {}
    for n in range(2):
        truth = hostile.study(tmp_path / "in" / f"p{n}", f"MAPPED-{n}", 40 + n)
        ds = dd.read(truth.struct_file)
        foreign[n] = f"1.2.840.113619.2.55.3.{4711 + n}"
        ds.StructureSetROISequence[-1].ROIName = f"GTV {foreign[n]}"
        dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    args = ["export", str(tmp_path / "in"), str(out), "--quiet", "--no-qa-png", "--pseudonymize", "--workers", workers]
    assert main(args) == 0, capsys.readouterr()
    with open(tmp_path / "share" / "out.pseudonym-map.csv", newline="", encoding="utf-8") as handle:
        mapped = {row["original"]: row["pseudonym"] for row in csv.DictReader(handle) if row["kind"] == "uid"}
    for uid in foreign.values():
        assert uid in mapped, f"{uid} is not in the map"
        assert sum(mapped[uid] in data.decode("latin-1") for _where, data in _all_output_bytes(out)) > 0
        assert not any(uid in data.decode("latin-1") for _where, data in _all_output_bytes(out))


def test_a_cohort_roi_map_names_no_patient_under_pseudonymize(tmp_path, capsys):
    """Ninth hostile trial I4: a cohort's --roi-map whose synonyms hold a patient's name and ID, used on an input
    without that patient (a subset, a later batch), was copied whole into every case's meta.json: the synonyms
    are not this input's identity, so neither rewritten nor caught by the check. Under --pseudonymize meta.json
    records the map's channel names and a keyed hash of the whole map; --resume keeps the cases, and another map
    is told apart (the cases are exported again)."""
    import json

    hostile.study(tmp_path / "in" / "p2", "OTHER-2", 12)
    mapping = {"PTV": ["PTV_Quillfeather", "PTV_QX-77415"], "Cord": ["SpinalCord"]}
    (tmp_path / "map.json").write_text(json.dumps(mapping), encoding="utf-8")
    out = tmp_path / "share" / "out"
    args = ["export", str(tmp_path / "in"), str(out), "--quiet", "--no-qa-png", "--pseudonymize"]
    args += ["--roi-map", str(tmp_path / "map.json")]
    assert main(args) == 0, capsys.readouterr()
    (row,) = hostile.manifest(out)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    recorded = meta["options"]["roi_map"]
    assert recorded["channels"] == ["Cord", "PTV"] and len(recorded["keyed_sha256"]) == 64
    found = _squeezed_words_in_outputs(out, ("quillfeather", "qx77415"))
    assert not found, found
    assert main([*args, "--resume"]) == 0
    assert [r["status"] for r in hostile.manifest(out)] == ["skipped"]
    mapping["PTV"].append("PTV_Other")
    (tmp_path / "map.json").write_text(json.dumps(mapping), encoding="utf-8")
    assert main([*args, "--resume"]) == 0
    assert [r["status"] for r in hostile.manifest(out)] == ["ok"], "another map must not keep the case"


@pytest.mark.parametrize("how", ["folder", "csv"])
def test_the_ct_option_names_no_patient_under_pseudonymize(tmp_path, capsys, how):
    """Ninth hostile trial I5: ``--ct "Zentrop Ilka MRN448812"`` (the CT folder, named after the patient) stood in
    clear in meta.json's options and in the link "chosen by --ct (...)", and a CSV's patient-named path also in
    case.h5 and dataset.h5. The link names the series by its folder token; options.ct is path tokens (the
    folder's token is the one ct_folder has); --resume keeps the case."""
    import json

    folder = "Zentrop Ilka MRN448812"
    hostile.study(tmp_path / "in" / folder, "ZI-1", 14)
    if how == "folder":
        choice = folder
    else:
        from DoseAlignLib.api import scan_folder

        (dose,) = [o for o in scan_folder(tmp_path / "in").objects if o.kind == "RTDOSE"]
        csv_path = tmp_path / "Zentrop_Ilka_MRN448812" / "ct.csv"
        csv_path.parent.mkdir()
        csv_path.write_text(f"dose,ct\n{dose.rel_path},{folder}\n", encoding="utf-8")
        choice = str(csv_path)
    out = tmp_path / "share" / "out"
    args = ["export", str(tmp_path / "in"), str(out), "--quiet", "--no-qa-png", "--pseudonymize", "--ct", choice]
    args += _formats()
    assert main(args) == 0, capsys.readouterr()
    (row,) = hostile.manifest(out)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert any("chosen by --ct" in link for link in meta["links"]), meta["links"]
    if how == "folder":
        assert meta["options"]["ct"] == row["ct_folder"], (meta["options"]["ct"], row["ct_folder"])
    found = _squeezed_words_in_outputs(out, ("zentrop", "mrn448812"))
    assert not found, found
    assert main([*args, "--resume"]) == 0
    assert [r["status"] for r in hostile.manifest(out)] == ["skipped"]


def _export_renamed(tmp_path, patient_name: str, renamed: dict) -> tuple:
    """Export with ``--pseudonymize`` a study of ``patient_name`` whose ROIs are renamed by ``renamed`` (phantom name
    -> name): ``(exit code, manifest row, OUT)``."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "QK-30017", 66, patient_name=patient_name, ct_size=(40, 36, 16))
    ds = dd.read(truth.struct_file)
    for roi in ds.StructureSetROISequence:
        roi.ROIName = renamed.get(str(roi.ROIName), str(roi.ROIName))
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize"])
    (row,) = hostile.manifest(out)
    return code, row, out


def _squeezed_in_output(out, needles) -> list:
    found = []
    for where, data in _all_output_bytes(out):
        squeezed = re.sub(r"[^0-9a-z]", "", data.decode("utf-8", "replace").casefold())
        found += [f"{n} in {where}" for n in needles if n in squeezed]
    return found


def _walk(value, under: str = "", keys: list = None, texts: list = None) -> tuple:
    """``(keys, strings)`` of a meta: its keys, and its string values not under a name key."""
    from DoseAlignLib.output import pseudonym

    keys = [] if keys is None else keys
    texts = [] if texts is None else texts
    if isinstance(value, dict):
        for key, item in value.items():
            keys.append(key)
            _walk(item, key, keys, texts)
    elif isinstance(value, list):
        for item in value:
            _walk(item, under, keys, texts)
    elif isinstance(value, str) and under not in pseudonym._NAME_KEYS:
        texts.append(value)
    return keys, texts


@pytest.mark.parametrize(
    "patient_name, rois, needles",
    [
        ("Lang^Katrin", {"PTV": "PTV_Lang", "Cord": "Lang_boost"}, ["ptvlang", "langboost"]),
        ("Little^Harriet", {"PTV": "Little_Boost"}, ["littleboost"]),
        ("Rule^Anna", {"PTV": "PTV_Rule", "Cord": "Rule"}, ["ptvrule"]),
    ],
)
def test_a_surname_that_is_one_of_dosealigns_words_is_removed_from_roi_names(
    tmp_path, capsys, patient_name, rois, needles
):
    """Tenth hostile trial J5: a surname that is one of DoseAlign's own words (``Lang``, ``Little``, ``Rule``) stayed
    in clear in ROI names (``PTV_Lang`` in meta.json, dvh.csv, report.html): both sides exempted those words
    everywhere. In the names the input gave they are now a name; DoseAlign's own keys and prose stay as they are
    (a patient ``Rule``: meta.json's ``rule`` keys and texts are those of a patient of another name)."""
    import json

    code, row, out = _export_renamed(tmp_path / "a", patient_name, rois)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert len([n for n in names if "[removed]" in n]) == len(rois), names
    assert not set(rois.values()) & set(names), names
    assert not _squeezed_in_output(out, needles)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    keys, texts = _walk(meta)
    other = "Quillon^" + patient_name.split("^")[1]  # a surname none of DoseAlign's words: its text as it is
    code, plain_row, plain = _export_renamed(tmp_path / "b", other, rois)
    assert (code, plain_row["status"]) == (0, "ok"), plain_row["reason"]
    plain_keys, plain_texts = _walk(json.loads((plain / plain_row["case_id"] / "meta.json").read_text("utf-8")))
    own = re.compile(r"[a-z][a-z0-9_]*")
    assert sorted(k for k in keys if own.fullmatch(k)) == sorted(k for k in plain_keys if own.fullmatch(k))
    word = patient_name.split("^")[0].casefold()
    assert sum(re.findall(r"[a-z]+", t).count(word) for t in texts) == sum(
        re.findall(r"[a-z]+", t).count(word) for t in plain_texts
    ), "DoseAlign's own text was rewritten"
    assert not [t for t in texts if "[removed]" in t and not any(n in t for n in names if "[removed]" in n)]
    capsys.readouterr()


def test_the_check_alone_finds_a_surname_that_is_one_of_dosealigns_words_in_names(monkeypatch):
    """J5, the check: the names under name keys (``structures.names``, ``rois[].name``, ``original_name``) are
    searched without DoseAlign's words exempted, each apart, by the check's own means; its prose is not."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.add_name("Lang^Katrin")
    identity.add_name("Rule^Anna")
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    prose = {"rule": "the slab rule", "lang": "a lang attribute", "notes": ["Rule of thumb: head first"]}
    meta = {"structures": {"names": ["PTV_Lang", "Rule"], "rois": [{"name": "rule_ptv", "original_name": "Lang"}]}}
    rewritten = pseudonymizer.value({**meta, **prose}, text_keys=frozenset(["PTV_Lang"]))
    (ptv, rule) = rewritten["structures"]["names"]
    assert ptv == "PTV_[removed]" and WHOLE_NAME_REMOVED.fullmatch(rule), rewritten
    ((roi,),) = [rewritten["structures"]["rois"]]
    assert roi["name"] == "[removed]_ptv" and WHOLE_NAME_REMOVED.fullmatch(roi["original_name"]), rewritten
    assert {k: rewritten[k] for k in prose} == prose
    pseudonymizer.check(rewritten)
    keyed = {"structures": {"names": ["rule"]}, "audit": {"reference_dvh": {"rois": {"rule": {"rule": "x"}}}}}
    rewritten = pseudonymizer.value({**keyed, **prose}, text_keys=frozenset(["rule"]))  # an ROI named "rule"
    assert rewritten["audit"] == {"reference_dvh": {"rois": {rule: {"rule": "x"}}}}, rewritten  # the same tag
    assert {k: rewritten[k] for k in prose} == prose and rewritten["structures"]["names"] == [rule]
    pseudonymizer.check(rewritten)
    monkeypatch.setattr(pseudonym.NameSpellings, "redact", lambda self, text, own=True: text)  # misses all
    missed = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for names in (["PTV_Lang"], ["Rule"], ["rule_ptv"], ["LANG"]):
        leaked = missed.value({"structures": {"names": names}, **prose})
        assert leaked["structures"]["names"] == names
        with pytest.raises(pseudonym.PseudonymError, match="a patient name"):
            missed.check(leaked)
    missed.check(missed.value({"structures": {"names": ["PTV", "Rules_of_Lung"]}, **prose}))


#: ROI names that must stay as they are for a patient of two two-letter components.
COMMON_ROIS = ["PTV_60", "PTV_High", "CTV", "GTV", "Lung_L", "Lung_R", "Heart", "SpinalCord", "Esophagus", "Bladder"]


@pytest.mark.parametrize("patient_name", ["Li^Na", "Wu^Di", "Ng^Yu"])
def test_a_name_of_two_two_letter_components_to_both_sides(patient_name):
    """Tenth hostile trial J9: a name whose components have two letters each (``Li^Na``) was never matched: joined
    spellings were searched from five letters. Now, on both sides, the two joined in either order with separators
    or a case change between them (``PTV_LiNa``, ``Li_Na``, ``na li``) or as one word (``LINA``); in a name the input
    gave also inside other words (``ptvlina``); common ROI names and DoseAlign's prose stay as they are."""
    from DoseAlignLib.output import pseudonym

    first, second = patient_name.split("^")
    identity = pseudonym.Identity()
    identity.add_name(patient_name)
    pseudonymizer = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonymizer.guard
    joined = first + second
    words = [f"PTV_{joined}", f"{first}_{second}_boost", f"{first} {second} boost", f"{second}{first}",
             joined.upper(), f"ptv_{joined.lower()}", f"{second.lower()}-{first.lower()}", f"CTV{first}{second}"]  # fmt: skip
    for text in words:
        for rewrite, own in ((pseudonymizer.name, False), (pseudonymizer.text, True)):
            rewritten = rewrite(text)
            assert pseudonym.REMOVED in rewritten and guard.find(text, own=own), (text, own)
            assert not guard.find(rewritten, own=own), (text, rewritten)
    for text in (f"ptv{joined.lower()}", f"{joined.lower()}boost", f"PTV{joined.upper()}"):
        assert pseudonym.REMOVED in pseudonymizer.name(text) and guard.find(text, own=False), text
        assert not guard.find(pseudonymizer.name(text), own=False), text
    for text in COMMON_ROIS:
        assert pseudonymizer.name(text) == text and not guard.find(text, own=False), text
    prose = "normalization, the final alignment, trilinear resampling of undivided doses in young patients"
    assert pseudonymizer.text(prose) == prose and not guard.find(prose), prose


def test_a_name_of_two_two_letter_components_never_reaches_the_output(tmp_path, capsys):
    """J9 through an export: ``PTV_LiNa`` and ``Li Na boost`` were written in clear for patient ``Li^Na``; the
    common ROI names keep theirs."""
    rois = {"PTV": "PTV_LiNa", "Cord": "Li Na boost", "Ring": "Lung_L"}
    code, row, out = _export_renamed(tmp_path, "Li^Na", rois)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert {"PTV_[removed]", "[removed] boost", "Lung_L", "External"} <= set(names), names
    assert not _squeezed_in_output(out, ["ptvlina", "linaboost"])
    capsys.readouterr()


@pytest.mark.parametrize(
    "patient_name, roi, needle",
    [
        ("McDonald^Ewan", "PTV_Mc_Donald", "mcdonald"),
        ("Vandenberg^Ann", "PTV_van_den_Berg", "vandenberg"),
        ("Delacroix^Marie", "de la Croix boost", "delacroix"),
    ],
)
def test_a_surname_written_in_parts_is_rewritten_not_refused(tmp_path, capsys, patient_name, roi, needle):
    """Tenth hostile trial J11: a one-word surname written in parts in an ROI name (``McDonald`` as
    ``Mc_Donald``, ``Vandenberg`` as ``van_den_Berg``) was found by the check but not rewritten: the case failed
    'please report it'. The rewriting also reads a component apart at its case changes and particles."""
    code, row, out = _export_renamed(tmp_path, patient_name, {"PTV": roi})
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert roi not in names and [n for n in names if "[removed]" in n], names
    assert not _squeezed_in_output(out, [needle])
    capsys.readouterr()


def test_a_date_spelled_by_the_digits_of_dosealigns_own_tokens_is_no_leak():
    """Seventeenth hostile trial Q6: a path token such as ``f42de930525`` holds ``930525``, read as 1993-05-25: a
    patient born that day had the case refused "pseudonymization left a date ... please report it", for good under
    that key. This run's own tokens are left out of the date search on both sides; the date elsewhere is found."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    identity = Identity()
    identity.dates.add("19930525")
    rewriting = Pseudonymizer(key=b"k" * 32, identity=identity)
    token = "d3313407afa/f42de930525.dcm"
    assert rewriting.find_identity(token) == "a date", "a token not made by this run is read as anything else"
    rewriting.entries[("path", token)] = "p0/2cde513b.dcm"
    assert rewriting.find_identity(token) == ""
    assert rewriting.text(f"RTDOSE {token}: a copy") == f"RTDOSE {token}: a copy"
    for text in ["born 930525 in x", "x 25.05.1993", f"{token} 1993-05-25"]:
        assert rewriting.find_identity(text) == "a date", text
        assert "[removed]" in rewriting.text(text), text


def test_a_name_spelled_by_the_letters_of_dosealigns_own_tokens_is_no_leak():
    """Q6's sibling: a patient named with hexadecimal letters only (``Becca``) is found inside a path token such as
    ``fbecca12345``: the check refused the case "please report it", and the rewriting cut the token to
    ``f[removed]12345``. Own tokens are left out of the name search on both sides; the name elsewhere is found."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    identity = Identity()
    identity.add_name("Becca^Dee")
    rewriting = Pseudonymizer(key=b"k" * 32, identity=identity)
    token = "d3313407afa/fbecca12345.dcm"
    rewriting.entries[("path", token)] = "p0/2cde513b.dcm"
    assert rewriting.find_identity(token) == ""
    assert rewriting.text(f"RTDOSE {token}: a copy") == f"RTDOSE {token}: a copy"
    for text in ["ROI becca here", "xxbeccayy", f"{token} Becca", "BeccaDee"]:
        assert rewriting.find_identity(text) == "a patient name", text
        assert "[removed]" in rewriting.text(text), text


def _crowded_identity(other_names: int, particle: str = ""):
    """Chen^Wei and Yu^Kai (components too short to be found inside words alone) among ``other_names`` other
    names of four made-up words each (the family name after ``particle``)."""
    import random

    from DoseAlignLib.output import pseudonym

    rnd = random.Random(3)

    def word() -> str:
        return "".join(rnd.choice("bcdfghklmnprstvz") + rnd.choice("aeiou") for _ in range(3)).capitalize()

    identity = pseudonym.Identity()
    identity.add_name("Chen^Wei")
    identity.add_name("Yu^Kai")
    for _ in range(other_names):
        identity.add_name(f"{particle} {word()} {word()}^{word()} {word()}".strip())
    return identity


@pytest.mark.parametrize(
    "text",
    ["ptvweichenboost", "CHEN_WEI ring", "kaiyu2", "ptvyukai", "ptv\u212aaiyu", "ptvka\u0131yu", "wei.chen"],
)
def test_joined_names_among_hundreds_of_other_names_are_found_on_both_sides(text):
    """From the twentieth hostile trial (T10): hundreds of OtherPatientNames held a case for minutes, each name's
    joined spellings tried in every text. Both sides now try only the names one of whose components the text
    holds; a joined spelling of two short components (``weichen``, with a Kelvin sign or a dotless i too) is still
    found among 300 other names, as it is alone."""
    from DoseAlignLib.output import pseudonym

    alone = pseudonym.NameSpellings(_crowded_identity(0))
    crowded = pseudonym.NameSpellings(_crowded_identity(300))
    assert len(crowded._spelling_keys) > pseudonym._Needles.PLAIN_LOOP  # the index is what is tested here
    found = sorted(alone._joined_spans(text))
    assert found, text
    assert sorted(crowded._joined_spans(text)) == found
    assert crowded.redact(text) != text
    guard = pseudonym.IdentityGuard(_crowded_identity(300))
    assert len(guard.squeezed_names) > pseudonym._Needles.PLAIN_LOOP
    assert guard.find(text) == "a patient name"
    for harmless in ("ptvwiechenboost", "ptvyukia", "kiayu2"):
        assert guard.find(harmless) == "", harmless


def test_a_name_component_found_in_most_words_does_not_make_every_spelling_searched():
    """From the twenty-first hostile trial (U1): a particle ``de`` in each of 800 other names (found in ``dose``,
    ``decided``) had every name's joined spellings compiled and searched in every string written (59 s a case).
    Only the spellings whose letters a text holds are compiled now."""
    from DoseAlignLib.output import pseudonym

    crowded = pseudonym.NameSpellings(_crowded_identity(300, particle="de"))
    pseudonym._alternation.cache_clear()
    text = "dose decided by the planned dose grid, de-escalated"
    assert crowded.redact(text) == text
    assert pseudonym._alternation.cache_info().currsize == 0
    assert crowded.redact("PTV_weichen") == "PTV_" + pseudonym.REMOVED
    assert pseudonym._alternation.cache_info().currsize == 1


def test_needles_are_found_as_a_plain_search_finds_them():
    """:class:`_Needles` (the check's index of joined names) answers as ``any(needle in text)`` does."""
    import random

    from DoseAlignLib.output import pseudonym

    rnd = random.Random(5)
    for trial in range(40):
        needles = {"".join(rnd.choice("abc") for _ in range(rnd.randint(2, 7))) for _ in range(rnd.choice((5, 200)))}
        index = pseudonym._Needles(needles)
        for _ in range(30):
            text = "".join(rnd.choice("abcd") for _ in range(rnd.randint(0, 12)))
            assert index.in_text(text) == any(n in text for n in needles), (trial, text)
            assert index.found_in(text) == {n for n in needles if n in text}, (trial, text)


def test_dates_and_ids_in_the_digits_of_other_scripts_are_removed():
    """Twenty-first hostile trial U8: a date or ID written in Arabic-Indic, Persian or Devanagari digits
    (``١٥.٠٤.٢٠٢٣``, ``QX٧٧٤١٥``) was kept by the rewriting and passed by the check: NFKC leaves those digits as they
    are. Both sides read every decimal digit as its ASCII digit."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.dates.update({"20230415", "19750302"})
    identity.patient_ids.add("QX77415")
    guard = IdentityGuard(identity)
    rewriting = Pseudonymizer(key=b"k" * 32, identity=identity)
    arabic, persian, devanagari = "\u0660", "\u06f0", "\u0966"  # each script's zero

    def written(text: str, zero: str) -> str:
        return "".join(chr(ord(zero) + int(c)) if c.isdigit() else c for c in text)

    for text, zero in [
        ("PTV 15.04.2023", arabic),
        ("CT 2023-04-15", persian),
        ("born 02/03/1975", devanagari),
        ("plan 20230415", arabic),
        ("GTV QX77415", arabic),
    ]:
        hostile_text = written(text, zero)
        assert guard.find(hostile_text), hostile_text
        rewritten = rewriting.text(hostile_text)
        assert rewritten != hostile_text and guard.find(rewritten) == "", (hostile_text, rewritten)
    for harmless in [written("PTV 16.04.2023", arabic), written("dose 70", devanagari)]:
        assert guard.find(harmless) == "" and rewriting.text(harmless) == harmless, harmless
    # thirty-first hostile trial AE7: the patient's own ID written in those digits is also the ID in ASCII digits
    own = Identity(patient_ids={written("MRN-1072315", arabic)})
    guard, rewriting = IdentityGuard(own), Pseudonymizer(key=b"k" * 32, identity=own)
    for text in ["GTV MRN-1072315", "Z_MRN1072315", "PTV_1072315", written("CTV_1072315", arabic)]:
        assert guard.find(text) == "a patient ID", text
        rewritten = rewriting.text(text)
        assert "[removed]" in rewritten and not guard.find(rewritten), (text, rewritten)


def test_an_id_a_removed_date_leaves_on_its_own_is_removed_too():
    """Twenty-first hostile trial (next to U9): an ID's unpadded number (72315 of 0072315) after a date
    (``boost2023-04-15.72315Gy``) is the decimals of a number until the date is removed, then an ID on its own:
    the check refused the case. The IDs are looked for again after a date is removed."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.dates.add("20230415")
    identity.patient_ids.add("0072315")
    guard = IdentityGuard(identity)
    rewriting = Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in ["boost2023-04-15.72315Gy", "x2023-04-15.72315"]:
        assert guard.find(text), text
        for rewritten in (rewriting.text(text), rewriting.name(text)):
            assert "72315" not in rewritten and guard.find(rewritten, own=False) == "", (text, rewritten)
    assert rewriting.text("d 63.72315") == "d 63.72315"  # a number's decimals stay


def test_an_roi_named_after_a_patients_surname_is_one_channel_in_every_case(tmp_path, capsys):
    """Twenty-first hostile trial U12: patients named Ring^Anna and Cord^Peter made the ROIs ``Ring`` and ``Cord``
    ``[removed]`` in every case of the input, and the second of them ``[removed]_2`` by its order in each structure
    set: one channel name held the cord in one case and the ring in another, with status ok. An ROI name that is
    identity as a whole is written with a keyed tag of itself: each is one channel name in every case."""
    import json

    import numpy as np

    root = tmp_path / "in"
    order = {"RING-1": ("Ring", "Cord"), "SMITH-2": ("Cord", "Ring"), "CORD-3": ("Ring", "Cord")}
    names = {"RING-1": "Ring^Anna", "SMITH-2": "Smith^John", "CORD-3": "Cord^Peter"}
    for n, patient in enumerate(order):
        truth = hostile.study(root / patient, patient, 70 + n, patient_name=names[patient], extra_organs=2)
        ds = dd.read(truth.struct_file)
        for roi, name in zip(list(ds.StructureSetROISequence)[-2:], order[patient]):
            roi.ROIName = name
        dd.save(ds, truth.struct_file)
    plain, share = tmp_path / "plain", tmp_path / "share" / "out"
    assert main(["export", str(root), str(plain), "--quiet", "--workers", "1", "--no-qa-png"]) == 0
    assert main(["export", str(root), str(share), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 0
    capsys.readouterr()

    def masks(out, row) -> tuple:
        case = out / row["case_id"]
        meta = json.loads((case / "meta.json").read_text(encoding="utf-8"))
        with np.load(case / "pair.npz") as npz:
            return meta["structures"]["names"], np.unpackbits(npz["masks"], axis=-1, count=npz["ct"].shape[2])

    import csv

    from DoseAlignLib.output.pseudonym import default_paths

    plain_rows = {r["patient"]: r for r in hostile.manifest(plain)}
    with open(default_paths(share)[1], newline="", encoding="utf-8") as handle:
        patient_of = {row[1]: row[2] for row in csv.reader(handle) if row and row[0] == "patient"}
    channel_of: dict = {}
    for row in hostile.manifest(share):
        assert row["status"] == "ok", row
        patient = patient_of[row["patient"]]
        share_names, share_masks = masks(share, row)
        plain_names, plain_masks = masks(plain, plain_rows[patient])
        assert "Ring" not in share_names and "Cord" not in share_names, share_names
        for organ in ("Ring", "Cord"):
            reference = plain_masks[plain_names.index(organ)]
            found = [name for n, name in enumerate(share_names) if np.array_equal(share_masks[n], reference)]
            assert len(found) == 1 and WHOLE_NAME_REMOVED.fullmatch(found[0]), (patient, organ, share_names)
            channel_of.setdefault(organ, set()).add(found[0])
    assert len(channel_of["Ring"]) == 1 and len(channel_of["Cord"]) == 1, channel_of
    assert channel_of["Ring"] != channel_of["Cord"], channel_of


def test_a_date_only_later_ct_slices_hold_is_an_input_date(tmp_path, capsys):
    """From the twenty-first hostile trial's ideas: the pseudonymization read one CT slice's header a series, so a
    date only later slices hold (a scan across midnight: AcquisitionDate and ContentDate a day on) was no input date,
    and an ROI name holding it was kept. The scan records each slice's dates."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "MIDNIGHT-1", 65, extra_organs=1)
    for path in sorted(truth.ct_files)[len(truth.ct_files) // 2 :]:
        ds = dd.read(path)
        ds.AcquisitionDate = ds.ContentDate = "20230416"
        dd.save(ds, path)
    ds = dd.read(truth.struct_file)
    ds.StructureSetROISequence[-1].ROIName = "CT 16.04.2023"
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    assert "CT [removed]" in _names_of(out, row), _names_of(out, row)


def _today_or_zeros(tmp_path, date: str, capsys) -> None:
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "ZEROS-1", 67)
    for path in [*truth.ct_files, truth.struct_file, *truth.dose_files]:
        ds = dd.read(path)
        ds.PatientBirthDate = date
        dd.save(ds, path)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--format", "npz,nrrd",
                 "--pseudonymize"])  # fmt: skip
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())


def test_a_case_of_todays_date_exports_as_nrrd_under_pseudonymize(tmp_path, capsys):
    """Twenty-second hostile trial V5: pynrrd writes the day and time of writing into every NRRD header, and under
    --pseudonymize a case whose input holds today's date (a plan approved and exported the same day) failed the
    leak check, "please report it". The time in the header is written as zeros."""
    import datetime

    pytest.importorskip("nrrd")
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    _today_or_zeros(tmp_path / "zeros", "00000000", capsys)  # a placeholder date (twenty-third trial W6)
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "TODAY-1", 66)
    for path in [*truth.ct_files, truth.struct_file, *truth.dose_files]:
        ds = dd.read(path)
        ds.StudyDate = ds.ContentDate = today
        dd.save(ds, path)
    out = tmp_path / "share" / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--format", "npz,nrrd"]
    code = main(["export", str(root), str(out), *args, "--pseudonymize"])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    header = (out / row["case_id"] / "dose.nrrd").read_bytes()[:512]
    assert b"# on YYYY-MM-DD hh:mm:ss(GMT).\n" in header, header
    assert f"{today[:4]}-{today[4:6]}-{today[6:]}".encode() not in header


def _patient_id_everywhere(root, patient_id: str) -> None:
    for path in sorted(root.rglob("*.dcm")):
        ds = dd.read(path)
        ds.PatientID = patient_id
        dd.save(ds, path)


def test_a_short_numeric_patient_id_that_the_formats_own_numbers_hold_is_no_leak(tmp_path, capsys):
    """Twenty-third hostile trial W2: under --pseudonymize with --format nrrd or openkbp, a patient whose ID is a
    short number (100, 6464, 128) failed every case "please report it": the check read the NRRD header's own
    geometry (``sizes: 64 64 40``, ``space directions: (1,0,0) ...``) and OpenKBP's 128-voxel grid as the ID. The
    IDs are taken from this grid's own header, and the test first shows the old reading found each."""
    from DoseAlignLib.output import pseudonym

    pytest.importorskip("nrrd")
    root = tmp_path / "in"
    hostile.study(root / "p", "PLAIN-1", 68)
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--format", "npz,nrrd,openkbp"]
    plain = tmp_path / "plain"
    assert main(["export", str(root), str(plain), *args]) == 0
    (row,) = hostile.manifest(plain)
    header = (plain / row["case_id"] / "dose.nrrd").read_bytes().split(b"\n\n", 1)[0].decode()
    fields = dict(line.split(": ", 1) for line in header.splitlines() if ": " in line)
    sizes = fields["sizes"].split()
    first_direction = "".join(re.findall(r"\d", fields["space directions"].split()[0]))
    for patient_id in (sizes[0] + sizes[1], first_direction, "128"):
        assert len(patient_id) >= 3, patient_id
        raw = pseudonym.IdentityGuard(pseudonym.Identity(patient_ids={patient_id}))
        geometry = (plain / row["case_id"] / "openkbp" / "geometry.json").read_text()
        assert raw.find(header) or raw.find(geometry), patient_id  # what the check read before
        _patient_id_everywhere(root, patient_id)
        out = tmp_path / "share" / patient_id
        code = main(["export", str(root), str(out), *args, "--pseudonymize"])
        (row_out,) = hostile.manifest(out)
        assert (code, row_out["status"]) == (0, "ok"), (patient_id, row_out["reason"], capsys.readouterr())


def test_the_file_check_still_reads_every_field_and_string_that_is_not_dosealigns_own_number(tmp_path):
    """W2's fix reads NRRD fields of DoseAlign's own form, JSON numbers and CSV number cells as no text; every
    other NRRD field (content, case id, a field of its own name with another value), JSON string or key and CSV cell
    is still read."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(patient_ids={"100", "QX77415"})
    identity.add_name("Doe^Jane")
    checker = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    top = "NRRD0005\n# This NRRD file was generated by pynrrd\ntype: uint8\nsizes: 100 64 40\n"
    top += "space directions: (1,0,0) (0,1,0) (0,0,2.5)\nspace origin: (-100,-31.5,1e-05)\nencoding: gzip\n"
    cases = {
        "own.nrrd": (top + "content: ROI PTV\ndosealign_units:=mask\n\n", ""),
        "content.nrrd": (top + "content: ROI PTV_100\n\n", "a patient ID"),
        "case.nrrd": (top + "dosealign_case_id:=QX77415_plan\n\n", "a patient ID"),
        "space.nrrd": (top + "space: Doe Jane\n\n", "a patient name"),
        "comment.nrrd": (top + "# Jane Doe\n\n", "a patient name"),
        "own.json": ('{"shape": [100, 64], "flat_index": "index = (j * shape[1] + i)"}', ""),
        "string.json": ('{"shape": [100, 64], "note": "case 100"}', "a patient ID"),
        "key.json": ('{"structures": {"PTV 100": "PTV_100.csv"}}', "a patient ID"),
        "broken.json": ('{"shape": [100, ', "a patient ID"),  # not JSON: free text, numbers and all
        "own.csv": (",data\n100,1000\n2100,-1e-05\n", ""),
        "cell.csv": (",data\n100,DoeJane\n", "a patient name"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert checker._leak_in_file(path) == expected, name


def test_a_name_of_dosealigns_words_standing_together_in_its_keys_is_no_leak():
    """Twenty-second hostile trial V3: a patient Sum^Max (or Frame^Order, Relative^Arrays) failed every case "please
    report it": the check read DoseAlign's own keys joined, and found the name in beam_sum_max_diff_gy, or across
    two keys (allow_relative, arrays). DoseAlign's keys are read each apart, for IDs, dates and UIDs; the same name
    in an ROI name, key or value is still found."""
    from DoseAlignLib.output import pseudonym

    for name, keys in [("Sum^Max", ["beam_sum_max_diff_gy"]), ("Frame^Order", ["frame_order"])]:
        identity = pseudonym.Identity()
        identity.add_name(name)
        identity.patient_ids.add("QX77415")
        checker = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
        checker.check({"audit": {key: 1.0 for key in keys}})
        joined = "".join(name.split("^"))
        for meta in ({"rois": {f"PTV_{joined}": 1}}, {"structures": {"names": [f"ring {joined}"]}}):
            with pytest.raises(pseudonym.PseudonymError):
                checker.check(meta)
        with pytest.raises(pseudonym.PseudonymError):  # an ID in one of DoseAlign's keys is still found
            checker.check({"audit": {"frame_order_qx77415": 1.0}})
    identity = pseudonym.Identity()
    identity.add_name("Sum^Max")
    checker = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    with pytest.raises(pseudonym.PseudonymError):  # a key of the same form that holds other words: an ROI name
        checker.check({"audit": {"rois": {"ptv_summax": {}}}})


def test_many_other_ids_are_found_by_their_index_as_one_id_is_alone(monkeypatch):
    """Twenty-fourth hostile trial X7: the rewriting and the check searched every input ID in every text, one by
    one: 20 000 OtherPatientIDs held one case for six minutes. Both now look up the IDs whose letters and digits a
    text holds. Among 300 IDs each spelling is found and removed as it is with that ID alone, and a text holding
    none of them searches none."""
    from DoseAlignLib.output import pseudonym

    def checker(ids) -> pseudonym.Pseudonymizer:
        identity = pseudonym.Identity(patient_ids={"QX77415"}, other=set(ids))
        return pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)

    many = [f"AB{n:06d}" for n in range(300)] + [f"{n:07d}" for n in range(1000, 1100)]
    crowd = checker(many)
    texts = {
        "AB000123": ["PTV_ab-000123", "PTVab000123boost", "ctv AB 000 123 x", "AB000123"],
        "0001042": ["boost 0001042 gy", "PTV_1042_r", "plan-0001042"],
        "QX77415": ["ptvQX77415", "QX-77415 lung"],
    }
    for identifier, spellings in texts.items():
        alone = checker([identifier] if identifier != "QX77415" else [])
        for text in spellings:
            assert crowd.text(text) == alone.text(text), text
            assert crowd.find_identity(text) == alone.find_identity(text), text
        assert crowd.find_identity(spellings[0]) == "a patient ID"
        assert "[removed]" in crowd.text(spellings[0]), crowd.text(spellings[0])
    calls = []
    real = pseudonym.Pseudonymizer._remove_id
    monkeypatch.setattr(pseudonym.Pseudonymizer, "_remove_id", lambda self, i, v: calls.append(i) or real(self, i, v))
    assert crowd.text("PTV 70 Gy boost") == "PTV 70 Gy boost"
    assert calls == [], calls[:5]


def _other_names(path, names) -> None:
    ds = dd.read(path)
    ds.OtherPatientNames = list(names)
    dd.save(ds, path)


def test_other_names_beyond_the_limit_fail_their_case_and_the_batch_goes_on(tmp_path, capsys, monkeypatch):
    """Twenty-fourth hostile trial X3: the other patient names --pseudonymize takes were unbounded, and each costs
    the check some 80 kB and 2.5 ms: 60 000 in one CT slice took 150 s and 4.9 GB; 150 000 in ten slices ended the
    whole export in a MemoryError traceback, no manifest. A patient whose files hold more than DOSEALIGN_OTHER_NAMES
    distinct ones (in one slice or spread over several) fails by name, and so do the patients holding most where all
    together hold more than four times that; the other cases are exported, and a series that repeats its few names
    in every slice holds no more than those."""
    monkeypatch.setenv("DOSEALIGN_OTHER_NAMES", "50")
    root = tmp_path / "in"
    crowded = hostile.study(root / "crowded", "CROWD-1", 71)
    spread = hostile.study(root / "spread", "SPREAD-1", 72)
    repeated = hostile.study(root / "repeated", "REPEAT-1", 73)
    _other_names(sorted(crowded.ct_files)[3], [f"Crowd{n}^Name" for n in range(60)])
    for k, path in enumerate(sorted(spread.ct_files)[:3]):  # 20 each, 60 distinct in all
        _other_names(path, [f"Spread{k}x{n}^Name" for n in range(20)])
    for path in sorted(repeated.ct_files):  # the same 40 in every slice
        _other_names(path, [f"Repeat{n}^Name" for n in range(40)])
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    rows = hostile.manifest(out)
    assert code == 1, capsys.readouterr()
    assert sorted(row["status"] for row in rows) == ["failed", "failed", "ok"], rows
    reasons = [row["reason"] for row in rows if row["status"] == "failed"]
    # (the slices' StudyID and AccessionNumber count too; the crowded slice's header is beyond the bound as well)
    assert all(re.search(r"hold(s)? \d+ (other patient names and IDs|names, IDs and dates), more than the 50", r)
               for r in reasons), reasons  # fmt: skip
    assert all("(DOSEALIGN_OTHER_NAMES): the case is not exported" in r for r in reasons), reasons
    assert any("its patient's files hold" in r for r in reasons), reasons
    monkeypatch.setenv("DOSEALIGN_OTHER_NAMES", "70")  # each patient's 62, 62 and 42 (names, StudyID, AccessionNumber)
    out = tmp_path / "share" / "out70"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 0
    assert [row["status"] for row in hostile.manifest(out)] == ["ok"] * 3
    monkeypatch.setattr("DoseAlignLib.output.pseudonym.INPUT_OTHER_NAMES", 1)
    monkeypatch.setenv("DOSEALIGN_OTHER_NAMES", "70")  # each patient within, the input's 160 names beyond 70: 2 fail
    out = tmp_path / "share" / "input"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 1
    rows = hostile.manifest(out)
    failed = [row["reason"] for row in rows if row["status"] == "failed"]
    assert len(failed) == 2 and all("the input's patients hold" in r for r in failed), rows


def test_the_key_fingerprint_in_meta_json_holds_no_date_nor_id():
    """Twenty-fifth hostile trial Y6: the check read the key's fingerprint, which meta.json records, as a date or a
    numeric patient ID: with fingerprint ``581006c90bf9fac6`` one patient born 1958-10-06 failed every case of the
    input "please report it" (about one key in 25 holds a run that reads as a date). Its hex digits, and those of the
    ROI map's keyed digest, are DoseAlign's own; the same date or ID elsewhere is still found."""
    import datetime

    from DoseAlignLib.output import pseudonym

    def date_in(fingerprint: str):  # six digits that read as YYMMDD (581006: 1958-10-06)
        for run in re.findall(r"\d{6,}", fingerprint):
            for start in range(len(run) - 5):
                with contextlib.suppress(ValueError):
                    datetime.datetime.strptime(run[start : start + 6], "%y%m%d")
                    return run[start : start + 6]
        return None

    key = next(k for k in (n.to_bytes(4, "big") * 8 for n in range(5000)) if date_in(pseudonym.key_fingerprint(k)))
    fingerprint = pseudonym.key_fingerprint(key)
    short = date_in(fingerprint)
    dates = {"19" + short, "20" + short}  # either century
    digits = short[:4]
    identity = pseudonym.Identity(patient_ids={digits}, dates=dates)
    checker = pseudonym.Pseudonymizer(key=key, identity=identity)
    options = checker.options({"roi_map": {"PTV": ["PTV_1"]}})
    checker.check({"pseudonymized": {"key": fingerprint}, "options": options})  # no identity there
    with pytest.raises(pseudonym.PseudonymError):
        checker.check(
            {"note": f"planned 19{short[:2]}-{short[2:4]}-{short[4:]} or 20{short[:2]}-{short[2:4]}-{short[4:]}"}
        )
    with pytest.raises(pseudonym.PseudonymError):
        checker.check({"note": f"patient {digits}"})


def test_the_input_bound_on_other_names_leaves_out_the_patients_holding_most(monkeypatch):
    """X3's bound of the whole input (4 x DOSEALIGN_OTHER_NAMES), as the twenty-fifth hostile trial's Y7 fix counts
    it (each value's holders, not a union for each patient left out: 800 patients took 93 s): the patients holding
    most are left out until the rest hold no more than the bound; values two patients share count once. It counts
    names only (IDs are looked up by an index)."""
    import types

    from DoseAlignLib.output import pseudonym

    monkeypatch.setenv("DOSEALIGN_OTHER_NAMES", "60")  # the input: 240
    objects = [
        types.SimpleNamespace(
            rel_path=f"p{n}/a.dcm", patient_id=f"P{n}", info={"other_names": [f"X{n}y{k}" for k in range(20 + n)]}
        )
        for n in range(30)
    ]
    shared = types.SimpleNamespace(rel_path="q/a.dcm", patient_id="Q", info={"other_names": ["X0y0", "X1y0"]})
    crowded = pseudonym.crowded_files(types.SimpleNamespace(objects=[*objects, shared]))
    kept = [n for n in range(30) if f"p{n}/a.dcm" not in crowded]
    assert kept == list(range(9)) and "q/a.dcm" not in crowded, (kept, sorted(crowded)[:3])  # 20..28: 216 values
    assert all("the input's patients hold" in why for why in crowded.values())
    # IDs count for each patient, not for the input: a cohort's accession numbers, admission and study IDs are many
    cohort = [
        types.SimpleNamespace(
            rel_path=f"c{n}/a.dcm", patient_id=f"C{n}", info={"other_ids": [f"ACC{n}_{k}" for k in range(50)]}
        )
        for n in range(30)
    ]
    assert pseudonym.crowded_files(types.SimpleNamespace(objects=cohort)) == {}


def test_many_patient_names_or_header_dates_are_bounded_too(tmp_path, capsys, monkeypatch):
    """Twenty-fifth hostile trial Y1, Y5: X3's bound left out PatientName itself (600 000 values on the CT slices took
    a case 3 min and 3.1 GB, or a MemoryError under a 2.5 GB limit) and the names, IDs and dates of the headers read
    for identity (20 000 dates in one structure set element held every case of the input). Both count: the case of
    such a file fails by name, the others are exported."""
    monkeypatch.setenv("DOSEALIGN_OTHER_NAMES", "50")
    root = tmp_path / "in"
    names = hostile.study(root / "names", "NAMES-1", 74)
    dates = hostile.study(root / "dates", "DATES-1", 75)
    hostile.study(root / "plain", "PLAIN-2", 76)
    for path in sorted(names.ct_files):
        ds = dd.read(path)
        ds.PatientName = ["Names^One"] + [f"Alias{n}^Name" for n in range(60)]
        dd.save(ds, path)
    ds = dd.read(dates.struct_file)
    ds.DateOfLastCalibration = [f"2001{month:02d}{day:02d}" for month in range(1, 4) for day in range(1, 21)]
    dd.save(ds, dates.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    rows = hostile.manifest(out)
    assert code == 1, capsys.readouterr()
    assert sorted(row["status"] for row in rows) == ["failed", "failed", "ok"], rows
    reasons = " ".join(row["reason"] for row in rows)
    assert re.search(r"its patient's files hold 6\d other patient names and IDs, more than the 50", reasons), reasons
    assert "names, IDs and dates, more than the 50 a pseudonymized export takes of one file" in reasons, reasons


def test_the_input_files_stamps_hold_no_date_nor_id(tmp_path):
    """The stamps of the input files (keyed hashes of their sizes and times, 16 hex digits) stand in meta.json and in
    openkbp/geometry.json: a stamp ``ab100cdef1234567`` failed a patient ``100`` "please report it" (a test of W2's
    fix on the 3.9 stack, by the key it drew; the twenty-fifth trial's Y6 for the key's fingerprint). The export
    gives its stamps to the check as its own digests."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(patient_ids={"100"}, dates={"19581006"})
    checker = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    stamps = ["ab100cdef1234567", "581006c90bf9fac6"]
    path = tmp_path / "geometry.json"
    path.write_text(json.dumps({"source": {"input_files": [{"stamp": s} for s in stamps]}}))
    assert checker._leak_in_file(path)  # read as the ID or the date
    checker.add_own_digests(*stamps)
    assert checker._leak_in_file(path) == ""
    path.write_text(json.dumps({"note": "x100f"}))
    assert checker._leak_in_file(path) == "a patient ID"


def test_an_id_or_date_only_a_later_ct_slice_holds_is_removed(tmp_path, capsys):
    """Twenty-fifth hostile trial Y4: --pseudonymize read one CT slice of a series whole; an ID (AdmissionID,
    ClinicalTrialSubjectID) or a date (InstanceCreationDate) that only another slice held was never learned, and ROI
    names holding them were exported as they were, status ok. The scan records every slice's dates and IDs."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "LATER-1", 77, extra_organs=2)
    middle = sorted(truth.ct_files)[len(truth.ct_files) // 2]
    ds = dd.read(middle)
    ds.AdmissionID = "ADM99812Z"
    ds.InstanceCreationDate = "20230416"
    dd.save(ds, middle)
    ds = dd.read(truth.struct_file)
    organs = [roi for roi in ds.StructureSetROISequence if roi.ROIName.startswith("Organ")]
    organs[0].ROIName, organs[1].ROIName = "Boost_ADM99812Z", "PTV 2023-04-16"
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert "Boost_[removed]" in names and "PTV [removed]" in names, names
    found = _squeezed_words_in_outputs(out, ("adm99812z", "20230416"))
    assert not found, found[:5]


def _one_of_two_refused(root, out, capsys) -> str:
    """Export ``root`` pseudonymized into ``out``: one of its two cases fails, the other is exported; the reason."""
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    rows = hostile.manifest(out)
    assert code == 1, capsys.readouterr()
    assert sorted(row["status"] for row in rows) == ["failed", "ok"], rows
    (reason,) = [row["reason"] for row in rows if row["status"] == "failed"]
    return reason


def _as_new_mr_image(ds) -> None:
    """``ds`` (a CT slice read) made an MR image of its own series: a file of the patient no case uses."""
    from pydicom.uid import generate_uid

    ds.Modality = "MR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()


def test_dates_spread_over_a_patients_files_are_bounded_too(tmp_path, capsys, monkeypatch):
    """The dates of many headers (or CT slices) that each stay under DOSEALIGN_OTHER_NAMES were taken without bound,
    and the rewriting tried each input date on each text (2000 dates cost 300 short texts 10 s, 20 000 dates 84 s). A
    patient whose files hold more distinct dates than the bound fails by name; the other patient is exported."""
    monkeypatch.setenv("DOSEALIGN_OTHER_NAMES", "50")
    root = tmp_path / "in"
    spread = hostile.study(root / "spread", "SPREAD-2", 78)
    hostile.study(root / "plain", "PLAIN-3", 79)
    for k, path in enumerate([spread.struct_file, spread.plan_file]):  # 30 in each header: within, 60 together
        ds = dd.read(path)
        ds.DateOfLastCalibration = [f"20{k:02d}{month:02d}{day:02d}" for month in range(1, 4) for day in range(1, 11)]
        dd.save(ds, path)
    reason = _one_of_two_refused(root, tmp_path / "share" / "out", capsys)
    assert re.search(r"its patient's files hold 6\d dates, more than the 50", reason), reason
    monkeypatch.setenv("DOSEALIGN_OTHER_NAMES", "80")
    out = tmp_path / "share" / "out80"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 0
    assert [row["status"] for row in hostile.manifest(out)] == ["ok", "ok"]


def test_the_rewriting_tries_only_the_dates_a_text_could_hold(monkeypatch):
    """The rewriting looks up the input's dates by the year's last two digits, the day and the month a text holds:
    each spelling is removed as with that date alone, among 3000 others, and a text holding none of them tries
    none."""
    import random

    from DoseAlignLib.output import pseudonym

    rng = random.Random(5)
    decoys = {f"{rng.randint(1900, 2030)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}" for _ in range(3000)}
    spellings = {
        "20230415": ["PTV 15.04.2023", "boost_2023-04-15", "15thApr2023", "April the 15th, 2023", "230415",
                     "Sat Apr 15 09:30:00 UTC 2023", "2023年4月15日", "PTVApr15_2023", "15 Apr '23", "20230415093000",
                     "04/15/23 plan", "\u0661\u0665.\u0660\u0664.\u0662\u0660\u0662\u0663"],
        "19750302": ["born 2 March 1975", "Mar 2, 1975", "1975_0302", "02031975", "02.03.75", "1975-Mar-02"],
        "20011203": ["Dec 3rd 2001", "3.12.2001", "2001/12/3", "011203"],
    }  # fmt: skip
    for date, texts in spellings.items():
        alone = pseudonym.Pseudonymizer(key=b"k" * 32, identity=pseudonym.Identity(dates={date}))
        crowd = pseudonym.Pseudonymizer(key=b"k" * 32, identity=pseudonym.Identity(dates=decoys | {date}))
        for text in texts:
            removed = alone.text(text)
            assert "[removed]" in removed, (text, removed)
            assert crowd.text(text) == removed, text
    tried = []
    real = pseudonym.Pseudonymizer._remove_date
    monkeypatch.setattr(pseudonym.Pseudonymizer, "_remove_date", lambda s, d, v: tried.append(d) or real(s, d, v))
    assert crowd.text("PTV boost Lung_L cord") == "PTV boost Lung_L cord"
    assert crowd.text("PTV 70 Gy") == "PTV 70 Gy"
    assert tried == [], tried[:5]


@pytest.mark.parametrize("mr_patient", ["MRPAT-1", "mrpat-1 ", ""])
def test_a_patients_file_no_case_uses_left_out_for_its_identity_fails_the_patients_cases(
    tmp_path, capsys, monkeypatch, mr_patient
):
    """Twenty-sixth hostile trial Z7: an MR image of the patient, used by no case, holding more names, IDs and dates
    than DOSEALIGN_OTHER_NAMES was left out unread, and only cases holding that file were refused: the patient's case
    was exported, ok, with the AdmissionID and the date only the MR held in its ROI names. Every case of that patient
    fails by name; the other patient's case is exported. The MR's PatientID is compared as the pairing does (letter
    case and blanks aside: twenty-seventh hostile trial AA5); an MR of no PatientID may be any patient's, and every
    case fails."""

    monkeypatch.setenv("DOSEALIGN_OTHER_NAMES", "50")
    root = tmp_path / "in"
    truth = hostile.study(root / "a", "MRPAT-1", 80, extra_organs=2)
    hostile.study(root / "b", "PLAIN-4", 81)
    ds = dd.read(sorted(truth.ct_files)[0])
    _as_new_mr_image(ds)
    ds.AdmissionID = "ADM55123"
    ds.PatientID = mr_patient
    ds.DateOfLastCalibration = [f"1950{month:02d}{day:02d}" for month in range(1, 4) for day in range(1, 21)]
    dd.save(ds, root / "a" / "mr_0001.dcm")
    ds = dd.read(truth.struct_file)
    organs = [roi for roi in ds.StructureSetROISequence if roi.ROIName.startswith("Organ")]
    organs[0].ROIName = "CTV_ADM55123"
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    rows = hostile.manifest(out)
    assert code == 1, capsys.readouterr()
    if not mr_patient:
        assert [row["status"] for row in rows] == ["failed", "failed"], rows
        assert all("(a file of no PatientID, which may be the case's patient's)" in row["reason"] for row in rows)
        return
    assert sorted(row["status"] for row in rows) == ["failed", "ok"], rows
    (reason,) = [row["reason"] for row in rows if row["status"] == "failed"]
    assert "(another file of the case's patient): its header holds 6" in reason, reason
    assert not _squeezed_words_in_outputs(out, ("adm55123",))


def test_an_id_date_or_name_only_a_later_ct_slice_holds_in_a_sequence_or_pn_is_removed(tmp_path, capsys):
    """Twenty-sixth hostile trial Z1: Y4's fix read a later CT slice's top level only; a date or an AccessionNumber in
    a sequence item, or a PerformingPhysicianName, that only a slice other than the one read whole held reached the
    ROI names, status ok (on the slice read whole: removed). Each slice is read as a header read whole is."""
    from pydicom.dataset import Dataset

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "LATER-2", 83, extra_organs=3)
    slices = sorted(truth.ct_files)
    ds = dd.read(slices[-1])
    item = Dataset()
    item.ScheduledProcedureStepStartDate = "20230416"
    item.AccessionNumber = "ACC88123"
    ds.RequestAttributesSequence = [item]
    ds.PerformingPhysicianName = "Kowalski^Jan"
    dd.save(ds, slices[-1])
    ds = dd.read(truth.struct_file)
    organs = [roi for roi in ds.StructureSetROISequence if roi.ROIName.startswith("Organ")]
    organs[0].ROIName, organs[1].ROIName, organs[2].ROIName = "PTV_2023-04-16", "CTV_ACC88123", "Kowalski_marker"
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert {"PTV_[removed]", "CTV_[removed]", "[removed]_marker"} <= set(names), names
    found = _squeezed_words_in_outputs(out, ("acc88123", "20230416", "kowalski"))
    assert not found, found[:5]


@pytest.mark.parametrize("where", ["a later CT slice", "the structure set"])
def test_a_name_or_id_beyond_its_length_bound_fails_its_patients_cases(tmp_path, capsys, where):
    """Twenty-sixth hostile trial Z8: every bound counted an identifying value as one, whatever its length, and each
    character costs the rewriting and the check: a 2 MB PatientAddress on one CT slice held the input 423 s and
    8.9 GB before its first case, then exported ok (200 kB in the structure set: 47 s). A name or ID longer than
    DOSEALIGN_IDENTITY_CHARS fails its patient's cases by name, at once; the other patient's case is exported."""
    root = tmp_path / "in"
    truth = hostile.study(root / "a", "LONG-1", 84)
    hostile.study(root / "b", "PLAIN-5", 85)
    path = sorted(truth.ct_files)[-1] if where == "a later CT slice" else truth.struct_file
    ds = dd.read(path)
    ds.PatientAddress = " ".join(f"W{n:08d}" for n in range(2000))  # 20 000 characters
    dd.save(ds, path)
    reason = _one_of_two_refused(root, tmp_path / "share" / "out", capsys)
    assert "it holds a name or ID of 19999 characters, more than the 1024" in reason, reason
    assert "(DOSEALIGN_IDENTITY_CHARS): the case is not exported" in reason, reason


def test_a_patient_name_of_many_words_counts_by_its_words(tmp_path, capsys, monkeypatch):
    """Twenty-sixth hostile trial Z3: Y1's bound counted PatientName's values after the first, and an other name as
    one, however many words it held; each word is a name to find (one value of 3000 words on each of 40 slices held
    a case 80 s and 2.2 GB). A name counts by its words, the patient's own where it has more than a name has; an
    ordinary name counts as before."""
    monkeypatch.setenv("DOSEALIGN_OTHER_NAMES", "50")
    root = tmp_path / "in"
    truth = hostile.study(root / "a", "WORDS-1", 86)
    hostile.study(root / "b", "PLAIN-6", 87, patient_name="Quillfeather^Odalys^Maria^von^Dr")
    for k, path in enumerate(sorted(truth.ct_files)[:4]):  # 20 words each, 80 distinct in all
        ds = dd.read(path)
        ds.PatientName = " ".join(f"Word{k}x{n}" for n in range(20))
        dd.save(ds, path)
    reason = _one_of_two_refused(root, tmp_path / "share" / "out", capsys)
    # 80 words and 64 runs of five of them, and the slices' study ID
    assert re.search(r"its patient's files hold 14\d other patient names and IDs, more than the 50", reason), reason


def test_the_patients_other_ids_of_three_or_four_characters_are_removed(tmp_path, capsys):
    """Twenty-sixth hostile trial Z6: every other ID counted only from five characters, so an OtherPatientIDs
    ``Q774``, an AdmissionID ``A981`` or a MedicalRecordLocator ``MR55`` stayed in ROI names, while README keeps only
    IDs shorter than 3 characters (5 for accession numbers and study IDs). The patient's other IDs count from three,
    as PatientID does; a study ID of four characters is still no ID to remove."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "SHORT-1", 88, extra_organs=4)
    for path in sorted(truth.ct_files)[:2]:  # the slice read whole and another
        ds = dd.read(path)
        ds.OtherPatientIDs = "Q774"
        ds.AdmissionID = "A981"
        ds.MedicalRecordLocator = "MR55"
        ds.StudyID = "4711"
        dd.save(ds, path)
    ds = dd.read(truth.struct_file)
    organs = [roi for roi in ds.StructureSetROISequence if roi.ROIName.startswith("Organ")]
    for roi, name in zip(organs, ["PTV_Q774", "CTV_A981", "GTV_MR55", "Boost_4711"]):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    names = _names_of(out, row)
    assert {"PTV_[removed]", "CTV_[removed]", "GTV_[removed]", "Boost_4711"} <= set(names), names
    assert not _squeezed_words_in_outputs(out, ("q774", "a981", "mr55"))


def test_roi_names_that_rewrite_alike_keep_one_channel_name_for_one_roi(tmp_path, capsys):
    """Twenty-second hostile trial V4: U12's keyed tag was given only to ROI names that were identity as a whole;
    ``Lung_L`` and ``Lens_L`` of a cohort holding patients Lung and Lens both became ``[removed]_L`` and were numbered
    by each structure set's order, so one channel was the lung in one case and the lens in the other. Names of the
    input that rewrite alike each get a keyed tag of themselves: one channel name stands for one ROI in every case,
    as in the plain export."""
    import json

    import numpy as np
    from DoseAlignLib.structures.masks import unpack_masks

    root = tmp_path / "in"
    for n, (patient, name, order) in enumerate(
        [("LUNG-1", "Lung^Wai Man", ["Lung_L", "Lens_L"]), ("LENS-1", "Lens^Maria", ["Lens_L", "Lung_L"])]
    ):
        truth = hostile.study(root / f"p{n}", patient, 90 + n, patient_name=name, ct_size=(40, 36, 16))
        ds = dd.read(truth.struct_file)
        renamed = dict(zip(("Cord", "Ring"), order))  # two ROIs of other sizes, named in this case's order
        for roi in ds.StructureSetROISequence:
            roi.ROIName = renamed.get(roi.ROIName, roi.ROIName)
        dd.save(ds, truth.struct_file)

    def channels(out) -> list:
        found = []
        for row in sorted(hostile.manifest(out), key=lambda r: r["patient"]):
            assert row["status"] == "ok", row["reason"]
            meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
            with np.load(out / row["case_id"] / "pair.npz") as pair:
                masks = unpack_masks(pair["masks"], meta["shape"])
            found.append({name: int(mask.sum()) for name, mask in zip(meta["structures"]["names"], masks)})
        return found

    args = ["--quiet", "--workers", "1", "--no-qa-png"]
    assert main(["export", str(root), str(tmp_path / "plain"), *args]) == 0
    assert main(["export", str(root), str(tmp_path / "out"), *args, "--pseudonymize"]) == 0, capsys.readouterr()
    plain, pseudonymized = channels(tmp_path / "plain"), channels(tmp_path / "out")
    tagged = sorted(n for n in pseudonymized[0] if n.startswith("[removed]_L_"))
    assert len(tagged) == 2 and tagged == sorted(n for n in pseudonymized[1] if n.startswith("[removed]_L_")), tagged
    assert [case["Lung_L"] for case in plain] != [case["Lens_L"] for case in plain]  # the order tells them apart
    # each tagged channel is one ROI in both cases: its voxels are those of one plain channel in each case
    meant = {
        name: [roi for roi in ("Lung_L", "Lens_L") if [c[name] for c in pseudonymized] == [c[roi] for c in plain]]
        for name in tagged
    }
    assert sorted(sum(meant.values(), [])) == ["Lens_L", "Lung_L"], (meant, pseudonymized, plain)
    assert not _squeezed_words_in_outputs(tmp_path / "out", ("waiman", "maria"))


def test_names_count_by_the_words_the_rewriting_takes_and_date_ranges_give_both_dates():
    """Twenty-seventh hostile trial AA4: Z3's fix counted a name's blank-separated words, but the rewriting parts them
    further at ``-``, ``'`` and ``.``: 1200 hyphen-joined other names of 1020 characters held a case 158 s and 3.5 GB.
    AA9: a DA range ``20230420-20230421`` gave --pseudonymize its first date only."""
    import types

    from DoseAlignLib.dicom.headers import slice_identity
    from DoseAlignLib.output import pseudonym
    from pydicom.dataset import Dataset

    joined = "-".join(f"Word{n}" for n in range(100))
    obj = types.SimpleNamespace(rel_path="a.dcm", patient_id="P", info={"other_names": [joined, "O'Brien^Ann.Marie"]})
    assert len(pseudonym._other_name_words(obj)) == 100 + 96 + 1  # words and runs of five; the short name once
    assert pseudonym.dates_of_value("20230420-20230421") == ["20230420", "20230420", "20230421"]
    assert pseudonym.dates_of_value("2023.04.18") == ["20230418"]  # the old ACR-NEMA form
    ds = Dataset()
    ds.StudyDate = "20230420-20230421"
    assert slice_identity(ds)[0] == {"20230420", "20230421"}
    identity = pseudonym.Identity()
    identity.add_dataset(ds)
    assert identity.dates == {"20230420", "20230421"}


def test_an_roi_name_beyond_the_length_bound_fails_its_case_under_pseudonymize(tmp_path, capsys):
    """Twenty-seventh hostile trial AA6: an ROI name's length was not bounded under --pseudonymize, and its rewriting
    and check cost grows with its characters times the input's names: 200 kB held a case 79 s, 400 kB 140 s and then
    "please report it". A name the input gives longer than DOSEALIGN_IDENTITY_CHARS fails its case by name (DICOM's
    LO holds 64 characters); the other case is exported; without --pseudonymize too (AG6)."""
    root = tmp_path / "in"
    truth = hostile.study(root / "a", "ROI-LONG", 92, extra_organs=1)
    hostile.study(root / "b", "PLAIN-7", 93)
    ds = dd.read(truth.struct_file)
    [roi for roi in ds.StructureSetROISequence if roi.ROIName.startswith("Organ")][0].ROIName = "Boost_" + "x" * 2000
    dd.save(ds, truth.struct_file)
    args = ["--quiet", "--workers", "1", "--no-qa-png"]
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), *args, "--pseudonymize"]) == 1, capsys.readouterr()
    rows = hostile.manifest(out)
    assert sorted(row["status"] for row in rows) == ["failed", "ok"], rows
    (reason,) = [row["reason"] for row in rows if row["status"] == "failed"]
    assert "an ROI name of 2006 characters is longer than the limit of 1024 (DOSEALIGN_IDENTITY_CHARS)" in reason
    # and so without --pseudonymize: dvh.csv repeats a name on each row, three names of 1.5 MB made 2.7 GB of it
    # (thirty-third hostile trial AG6)
    assert main(["export", str(root), str(tmp_path / "plain"), *args]) == 1
    # and a --roi-map channel name (thirty-fourth hostile trial AH5: 200 000 characters made a 242 MB dvh.csv)
    (tmp_path / "map.json").write_text(json.dumps({"C" * 2000: ["PTV"]}), encoding="utf-8")
    mapped = tmp_path / "mapped"
    assert main(["export", str(root / "b"), str(mapped), *args, "--roi-map", str(tmp_path / "map.json")]) == 1
    (row,) = hostile.manifest(mapped)
    reason_mapped = row["reason"]
    assert "a channel name --roi-map gives of 2000 characters is longer than the limit of 1024" in reason_mapped
    assert "shorten the name in the --roi-map file" in reason_mapped, reason_mapped
    rows = hostile.manifest(tmp_path / "plain")
    assert sorted(row["status"] for row in rows) == ["failed", "ok"], rows
    assert reason.split(": ", 1)[1] in [row["reason"] for row in rows if row["status"] == "failed"][0]


def test_resume_exports_again_a_kept_case_holding_identity_the_input_now_has(tmp_path, capsys):
    """Twenty-seventh hostile trial AA10: --resume --pseudonymize kept earlier cases without reading them against
    the input's identity as it is now: after an MR naming ``Kowalski`` was added, the case stayed "skipped" with its
    ROI ``Kowalski_PTV``, while a fresh export removed it. A kept case is read as the check reads a case before it
    is written; one holding identity is exported again. Without new identity every case is kept."""

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "RESUME-ID", 94, extra_organs=1)
    ds = dd.read(truth.struct_file)
    [roi for roi in ds.StructureSetROISequence if roi.ROIName.startswith("Organ")][0].ROIName = "Kowalski_PTV"
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    args = ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main(args + ["--format", "npz,nrrd"]) == 0
    assert main(args + ["--format", "npz,nrrd", "--resume"]) == 0
    assert [row["status"] for row in hostile.manifest(out)] == ["skipped"]
    assert any(b"kowalski" in data.lower() for _w, data in _all_output_bytes(out))  # no identity yet
    ds = dd.read(sorted(truth.ct_files)[0])
    _as_new_mr_image(ds)
    ds.OtherPatientNames = "Kowalski^Jan"
    dd.save(ds, root / "p" / "mr_0001.dcm")
    capsys.readouterr()
    assert main(args + ["--format", "npz,nrrd", "--resume"]) == 0
    printed = capsys.readouterr()
    assert "its outputs hold what the input now tells to be identity (a patient name in meta.json)" in printed.out
    assert [row["status"] for row in hostile.manifest(out)] == ["ok"]
    assert not _squeezed_words_in_outputs(out, ("kowalski",))


@pytest.mark.parametrize("identifier", ["2.5", "1.0"])
def test_a_short_id_that_reads_as_a_decimal_number_fails_no_case(tmp_path, capsys, identifier):
    """Twenty-seventh hostile trial AA3: an ID of three characters that DoseAlign's own text holds (``2.5`` in a
    slice step, ``1.0`` of a version) failed every case of the patient "please report it" (since Z6 for other IDs
    too). Such an ID reads as a decimal number and, like any ID shorter than five characters of that form, is not
    removed from free text (README's limits)."""
    root = tmp_path / "in"
    hostile.study(root / "p", identifier, 95)
    for path in sorted((root / "p").rglob("*.dcm")):
        ds = dd.read(path)
        ds.OtherPatientIDs = identifier
        dd.save(ds, path)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())


def test_the_key_and_map_are_not_written_into_another_exports_folder(tmp_path, capsys):
    """Twenty-seventh hostile trial AA8: an export into a folder inside another export's output folder wrote its key
    and its map (every PatientID and name with its pseudonym) beside its OUT, so into the outer folder meant for
    sharing. Refused before anything is written; given outside, they are used."""
    root = tmp_path / "in"
    hostile.study(root / "p", "NESTED-1", 96)
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    share = tmp_path / "share"
    assert main(["export", str(root), str(share), *args]) == 0
    before = sorted(p.name for p in share.iterdir())
    inner = share / "more"
    assert main(["export", str(root), str(inner), *args]) == 2
    err = capsys.readouterr().err
    assert "which is itself a DoseAlign export's output folder" in err and "nothing was written" in err, err
    assert sorted(p.name for p in share.iterdir()) == before
    elsewhere = ["--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    assert main(["export", str(root), str(inner), *args, *elsewhere]) == 0
    assert sorted(p.name for p in share.iterdir()) == sorted([*before, "more"])


def test_the_key_and_map_stay_out_of_any_export_around_or_inside_out(tmp_path, capsys):
    """Twenty-eighth hostile trial AB1, AB8: AA8's refusal looked at OUT's parent only (share/cohortB/out put the key
    and map into share), an outer export made after the inner one kept them inside what it shares, and a named pipe
    called manifest.csv in OUT's parent blocked the export. Every folder above OUT is looked at, a key or map inside
    OUT is refused, and only a regular manifest.csv is read."""
    root = tmp_path / "in"
    hostile.study(root / "p", "NESTED-2", 97)
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    share = tmp_path / "share"
    assert main(["export", str(root), str(share), *args]) == 0
    assert main(["export", str(root), str(share / "cohortB" / "out"), *args]) == 2
    assert "which is itself a DoseAlign export's output folder" in capsys.readouterr().err
    inner = tmp_path / "share2" / "more"
    assert main(["export", str(root), str(inner), *args]) == 0
    assert main(["export", str(root), str(tmp_path / "share2"), *args]) == 2
    err = capsys.readouterr().err
    assert "the output folder holds a pseudonym key or map (dosealign-pseudonym.key)" in err, err
    piped = tmp_path / "piped"
    piped.mkdir()
    os.mkfifo(piped / "manifest.csv")
    done = hostile.dosealign("export", str(root), str(piped / "out"), *args, timeout=120)
    assert done.returncode == 0, done.stderr
    # twenty-ninth hostile trial AC5, AC6: a key or map given inside an export, and OUT a link placed inside one
    inside = ["--key-file", str(share / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    assert main(["export", str(root), str(tmp_path / "elsewhere"), *args, *inside]) == 2
    assert "would be written inside" in capsys.readouterr().err
    (tmp_path / "real").mkdir()
    (share / "linked").symlink_to(tmp_path / "real" / "out", target_is_directory=True)
    assert main(["export", str(root), str(share / "linked"), *args]) == 2
    assert "would be written inside" in capsys.readouterr().err
    assert not (share / "dosealign-pseudonym.key").exists() and not list(share.glob("*.pseudonym-map.csv"))
    # thirtieth hostile trial AD1: a --map-file that is a link into an export; AD3: ".." after a link
    links = tmp_path / "links"
    links.mkdir()
    (links / "m.csv").symlink_to(share / "map.csv")
    given = ["--key-file", str(tmp_path / "k2.key"), "--map-file", str(links / "m.csv")]
    assert main(["export", str(root), str(tmp_path / "other"), *args, *given]) == 2
    assert "would be written inside" in capsys.readouterr().err
    (share / "sub").mkdir()
    (links / "s").symlink_to(share / "sub", target_is_directory=True)
    dotted = ["--key-file", f"{links}/s/../k.key", "--map-file", f"{links}/s/../m.csv"]
    assert main(["export", str(root), str(tmp_path / "other2"), *args, *dotted]) == 2
    assert "would be written inside" in capsys.readouterr().err
    assert not (share / "k.key").exists() and not (share / "m.csv").exists() and not (share / "map.csv").exists()


def test_what_lies_above_and_below_out_is_looked_at_whole(tmp_path, capsys, monkeypatch):
    """Thirtieth hostile trial AD5: a plain export inside a pseudonymized export's folder was written there, and a
    pseudonymized export above a plain one only noted it. AD6: a user's folder with another tool's meta.json was
    taken for a plain export and --pseudonymize refused. AD4: a key beside a user's meta.json two levels down was
    not seen. AD2: the look for a key gave up after 20 000 entries and answered "none"."""
    root = tmp_path / "in"
    hostile.study(root / "p", "NESTED-3", 98)
    plain = ["--quiet", "--workers", "1", "--no-qa-png"]
    args = [*plain, "--pseudonymize", "--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    share = tmp_path / "share"
    assert main(["export", str(root), str(share), *args]) == 0
    assert main(["export", str(root), str(share / "plain"), *plain]) == 2
    err = capsys.readouterr().err
    assert f"it lies inside {share}, a pseudonymized export's output folder" in err, err
    assert not (share / "plain").exists()
    (share / "manifest.csv").unlink()  # an export stopped before it wrote its manifest: told by its case folders
    assert main(["export", str(root), str(share / "a" / "plain"), *plain]) == 2
    assert f"it lies inside {share}, a pseudonymized export's output folder" in capsys.readouterr().err
    assert not (share / "a").exists()
    outer = tmp_path / "outer"
    assert main(["export", str(root), str(outer / "grp" / "plain"), *plain]) == 0
    assert main(["export", str(root), str(outer), *args]) == 2
    assert "holds a plain (not pseudonymized) export in grp/plain" in capsys.readouterr().err
    assert sorted(p.name for p in outer.iterdir()) == ["grp"]
    user = tmp_path / "user"
    (user / "notes").mkdir(parents=True)
    (user / "notes" / "meta.json").write_text('{"tool": "labelme", "version": "5.2", "images": []}')
    assert main(["export", str(root), str(user), *args]) == 0, capsys.readouterr().err
    (row,) = hostile.manifest(user)
    assert row["status"] == "ok", row["reason"]
    held = tmp_path / "held"
    (held / "grp" / "run1").mkdir(parents=True)
    (held / "grp" / "run1" / "meta.json").write_text("{}")
    (held / "grp" / "run1" / "dosealign-pseudonym.key").write_text("0" * 64)
    assert main(["export", str(root), str(held), *args]) == 2
    assert "holds a pseudonym key or map (grp/run1/dosealign-pseudonym.key)" in capsys.readouterr().err
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    for n in range(60):
        (crowded / f"file{n:02d}.txt").write_text("x")
    monkeypatch.setenv("DOSEALIGN_OUT_ENTRIES", "50")
    assert main(["export", str(root), str(crowded), *args]) == 2
    assert "holds more than 50 entries within 3 levels" in capsys.readouterr().err
    assert sorted(p.name for p in crowded.iterdir()) == [f"file{n:02d}.txt" for n in range(60)]


def test_exports_around_out_are_told_by_shards_cases_and_links(tmp_path, capsys, monkeypatch):
    """Thirty-first hostile trial AE1, AE2: a pseudonymized export of --shard jobs not merged yet (no manifest.csv)
    took a plain export inside it, and a second cohort's default key and map. AE3: a link in OUT to a plain export
    was not followed. AE4: a plain case folder at OUT's top under a hidden name was not seen. AE14: a user's
    meta.json recording a DoseAlign version inside was taken for a case. AE10: an ROI named ``Lung.pseudonym-map``
    made openkbp write a file the key/map look then refused the export's own OUT for."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "NESTED-4", 99, extra_organs=1)
    ds = dd.read(truth.struct_file)
    ds.StructureSetROISequence[0].ROIName = "Lung.pseudonym-map"  # (openkbp writes the outline of this study)
    dd.save(ds, truth.struct_file)
    plain = ["--quiet", "--workers", "1", "--no-qa-png"]
    keys = ["--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    share = tmp_path / "share"
    for shard in ("1/2", "2/2"):
        assert main(["export", str(root), str(share), *plain, "--pseudonymize", *keys, "--shard", shard]) == 0
    assert not (share / "manifest.csv").exists()
    assert main(["export", str(root), str(share / "plain"), *plain]) == 2
    assert f"it lies inside {share}, a pseudonymized export's output folder" in capsys.readouterr().err
    assert main(["export", str(root), str(share / "cohortB"), *plain, "--pseudonymize"]) == 2
    assert "which is itself a DoseAlign export's output folder" in capsys.readouterr().err
    assert not (share / "plain").exists() and not (share / "cohortB").exists()
    assert not (share / "dosealign-pseudonym.key").exists()
    made = tmp_path / "made"
    assert main(["export", str(root), str(made), *plain, "--pseudonymize", *keys, "--format", "npz,openkbp"]) == 0
    assert list(made.glob("*/openkbp/*pseudonym-map*")), sorted(p.name for p in made.rglob("*"))
    assert main(["export", str(root), str(made), *plain, "--pseudonymize", *keys, "--format", "npz,openkbp",
                 "--resume"]) == 0, capsys.readouterr().err  # fmt: skip
    identifying = tmp_path / "identifying"
    assert main(["export", str(root), str(identifying), *plain]) == 0
    (case,) = [p for p in identifying.iterdir() if p.is_dir()]
    for name, place in [("linked", lambda out: (out / "old").symlink_to(identifying, target_is_directory=True)),
                        ("case link", lambda out: (out / case.name).symlink_to(case, target_is_directory=True)),
                        ("hidden", lambda out: shutil.copytree(case, out / ".old"))]:  # fmt: skip
        out = tmp_path / name
        out.mkdir()
        place(out)
        assert main(["export", str(root), str(out), *plain, "--pseudonymize", *keys]) == 2, name
        assert "it holds a plain (not pseudonymized) export in" in capsys.readouterr().err, name
    # AE16: a manifest below OUT is read only as far as its first rows (every one was read whole: 100 links to one
    # of 50 MB held the export 319 s); one larger than DOSEALIGN_MANIFEST_MB is still told plain
    big = tmp_path / "big"
    (big / "old").mkdir(parents=True)
    header, *rows = (identifying / "manifest.csv").read_text().splitlines(keepends=True)
    (big / "old" / "manifest.csv").write_text(header + rows[0] * (2 * 2**20 // len(rows[0]) + 1))
    monkeypatch.setenv("DOSEALIGN_MANIFEST_MB", "1")
    assert main(["export", str(root), str(big), *plain, "--pseudonymize", *keys]) == 2
    assert "it holds a plain (not pseudonymized) export in old" in capsys.readouterr().err
    monkeypatch.delenv("DOSEALIGN_MANIFEST_MB")
    user = tmp_path / "user"
    (user / "unet_run1").mkdir(parents=True)
    (user / "unet_run1" / "meta.json").write_text('{"model": "unet", "data": {"dosealign_version": "0.1.0"}}')
    assert main(["export", str(root), str(user), *plain, "--pseudonymize", *keys]) == 0, capsys.readouterr().err


def test_an_export_is_told_by_what_its_files_say_not_by_their_look(tmp_path, capsys):
    """Thirty-second hostile trial AF5: one pseudonymized case folder copied into a home folder made every export
    below it refused ("inside a pseudonymized export"). AF6: a plain case folder whose meta.json went through a CRLF
    copy was no plain case any more. AF1: a plain case id of pseudonym shape (PatientID ``P`` + 12 hex, no plan) made
    its own export's --resume refused. AF4: a plain manifest whose first row outgrew 64 kB was not seen below OUT."""
    from DoseAlignLib.output import around_out, out_folder

    root = tmp_path / "in"
    hostile.study(root / "p", "NESTED-5", 100)
    plain = ["--quiet", "--workers", "1", "--no-qa-png"]
    keys = ["--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    share, identifying = tmp_path / "share", tmp_path / "identifying"
    assert main(["export", str(root), str(share), *plain, "--pseudonymize", *keys]) == 0
    assert main(["export", str(root), str(identifying), *plain]) == 0
    (shared_case,) = [p for p in share.iterdir() if p.is_dir()]
    (plain_case,) = [p for p in identifying.iterdir() if p.is_dir()]
    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    shutil.copytree(shared_case, home / shared_case.name)
    assert main(["export", str(root), str(home / "projects" / "out"), *plain]) == 0, capsys.readouterr().err
    assert main(["export", str(root), str(home / "cohort2"), *plain, "--pseudonymize"]) == 0, capsys.readouterr().err
    crlf = tmp_path / "crlf"
    shutil.copytree(plain_case, crlf / plain_case.name)
    meta = crlf / plain_case.name / "meta.json"
    meta.write_bytes(meta.read_bytes().replace(b"\n", b"\r\n"))
    assert main(["export", str(root), str(crlf), *plain, "--pseudonymize", *keys]) == 2
    assert f"it holds a plain (not pseudonymized) export: {plain_case.name}" in capsys.readouterr().err
    # thirty-third hostile trial AG1: keys sorted by a tool, or meta.json gone (the folder's name is the PatientID's)
    for how in ("sorted", "gone"):
        other = tmp_path / how
        shutil.copytree(plain_case, other / plain_case.name)
        meta = other / plain_case.name / "meta.json"
        if how == "sorted":
            meta.write_text(json.dumps(json.loads(meta.read_text()), sort_keys=True, indent=2))
        else:
            meta.unlink()
        assert main(["export", str(root), str(other), *plain, "--pseudonymize", *keys]) == 2, how
        assert f"it holds a plain (not pseudonymized) export: {plain_case.name}" in capsys.readouterr().err
    lookalike = tmp_path / "lookalike"
    shutil.copytree(plain_case, lookalike / "P3fa9b2c41d0e_rtdose_401c9558")
    header = (identifying / "manifest.csv").read_text().splitlines()[0]
    (lookalike / "manifest.csv").write_text(f"{header}\nP3fa9b2c41d0e_rtdose_401c9558,ok\n")
    assert out_folder.pseudonymization_conflict(out_folder.inspect_output(lookalike), pseudonymized=False) is None
    assert "plain" in around_out.export_kinds(lookalike)
    # a folder above OUT that holds anything else has no sub-folder opened (a dead network mount there hung every
    # export below it): the home folder above is told no export by its entries' names alone
    opened = []
    real = around_out.is_case_meta
    around_out.is_case_meta = lambda path: opened.append(path) or real(path)
    try:
        assert around_out.export_kinds(home) == set() and opened == []
        assert around_out.export_kinds(share) == {"pseudonymized"}
    finally:
        around_out.is_case_meta = real
    # thirty-fourth hostile trial AH7: a manifest saved again by a spreadsheet (a byte-order mark, quotes, ";"); AH6:
    # a plain case folder whose meta.json is gone, below OUT
    for how, text in [("bom", f"\ufeff{header}\nID77415_plan-X_0a958107,ok\n"),
                      ("quoted", '"case_id","status"\n"ID77415_plan-X_0a958107","ok"\n'),
                      ("semicolon", "case_id;status;files\nID77415_plan-X_0a958107;ok;x\n"),
                      # thirty-fifth hostile trial AI4: a Mac's CR line ends, tabs, UTF-16
                      ("cr", f"{header}\rID77415_plan-X_0a958107,ok\r"),
                      ("tab", "case_id\tstatus\nID77415_plan-X_0a958107\tok\n"),
                      ("utf16", "case_id\tstatus\nID77415_plan-X_0a958107\tok\n")]:  # fmt: skip
        saved = tmp_path / how
        (saved / "a").mkdir(parents=True)
        (saved / "a" / "manifest.csv").write_text(text, encoding="utf-16" if how == "utf16" else "utf-8")
        assert "plain (not pseudonymized) export in a" in (around_out.nested_conflict(saved, True) or ""), how
    bare = tmp_path / "bare"
    shutil.copytree(plain_case, bare / "a" / plain_case.name)
    (bare / "a" / plain_case.name / "meta.json").unlink()
    assert f"export in a/{plain_case.name}" in (around_out.nested_conflict(bare, True) or "")
    (bare / "a" / plain_case.name / "meta.json").write_text("")  # unreadable, not gone (thirty-fifth trial AI2)
    assert f"export in a/{plain_case.name}" in (around_out.nested_conflict(bare, True) or "")
    (bare / "a" / plain_case.name / "meta.json").unlink()
    (bare / "a" / plain_case.name).rename(bare / "a" / "my_training_data")  # a user's folder of another name
    assert around_out.nested_conflict(bare, True) is None
    deep = tmp_path / "deep"
    (deep / "a" / "b").mkdir(parents=True)
    (deep / "a" / "b" / "manifest.csv").write_text(f"{header}\nID77415_plan-X_0a958107,ok,{'w' * 100_000}\n")
    assert "plain (not pseudonymized) export in a/b" in (around_out.nested_conflict(deep, True) or "")


def test_kept_uids_procedure_codes_run_entries_and_shard_settings_are_not_refused(tmp_path, monkeypatch):
    """Thirty-second hostile trial AF11: with --keep-uids a UID holding the study date as a component
    (``...2.20230415.1``) failed its case "please report it". AF8: a procedure-step ID that is a code word
    (``PROSTATE``) removed that organ from every ROI name. AF7: a killed plain export's temporary case folder made
    the next --pseudonymize refused. AF9: a shard's settings file was called foreign."""
    from DoseAlignLib.output import around_out, out_folder, pseudonym

    uid = "1.2.246.352.71.2.1234.20230415093000.1"
    identity = pseudonym.Identity(dates={"20230415"}, uids={uid})
    kept = pseudonym.IdentityGuard(identity, keep_uids=True)
    assert kept.find(uid) == "" and kept.find(f"study {uid}") == ""
    assert kept.find("PTV 20230415") == "a date" and kept.find(f"{uid}9") == "a date"
    assert pseudonym.IdentityGuard(identity).find(uid) != ""
    coded = pseudonym.Identity(other={"PROSTATE", "RP55432"}, visit_ids={"PROSTATE", "RP55432"})
    assert "PROSTATE" not in coded.identifiers and "RP55432" in coded.identifiers
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=coded)
    assert rewriting.text("CTV_Prostate") == "CTV_Prostate" and "[removed]" in rewriting.text("CTV RP55432")
    out = tmp_path / "out"
    run = out / ".tmp-dosealign-0123456789abcdef-case-1e8f6c54"
    run.mkdir(parents=True)
    (run / "meta.json").write_text('{\n "dosealign_version": "0.1.0",\n "case_id": "ID77415_plan_x"\n}')
    # a run not known dead (no owner record, a container's gone run) is read: thirty-fourth hostile trial AH2
    assert "plain (not pseudonymized) export in .tmp-dosealign-" in (around_out.nested_conflict(out, True) or "")
    monkeypatch.setattr(around_out, "dead_claims", lambda folder: ["0123456789abcdef"])  # a dead one is removed
    assert around_out.nested_conflict(out, True) is None
    monkeypatch.undo()
    deeper = tmp_path / "deeper"  # thirty-third hostile trial AG3: one further down is no run's of this OUT
    shutil.copytree(out, deeper / "a")
    assert "plain (not pseudonymized) export in a/.tmp-dosealign-" in (around_out.nested_conflict(deeper, True) or "")
    (out / "manifest.shard-1-of-2.json").write_text('{\n "formats": []\n}')
    assert out_folder.inspect_output(out).other == []


def _uids_under(folder: Path, root: str) -> None:
    """Every UID of the files below ``folder`` (references alike) made one under ``root``, as a vendor writes them."""
    from pydicom.uid import generate_uid

    uids: dict = {}
    for path in folder.rglob("*.dcm"):
        ds = dd.read(path)
        for element in [*ds.iterall(), *ds.file_meta]:
            if element.VR != "UI" or str(element.value).startswith("1.2.840.10008") or element.tag == 0x00020010:
                continue
            values = [str(v) for v in element.value] if element.VM > 1 else [str(element.value)]
            new = [uids.setdefault(v, generate_uid(prefix=root + ".")) if v else v for v in values]
            element.value = new if element.VM > 1 else new[0]
        dd.save(ds, path)


def test_another_inputs_kept_uids_holding_this_inputs_day_refuse_no_append(tmp_path, capsys):
    """Eighty-seventh hostile trial CI1: a case kept in OUT, exported with --keep-uids, whose UIDs hold their scan's
    date-time (``1.2.246.352.71.2.417.20240102093000.n``, as README's own example), refused the --append of another
    patient scanned that day ("a date in meta.json"): the check read that case's kept UIDs for this input's dates.
    A kept case's kept UIDs are read whole, as UIDs."""
    first, second = tmp_path / "a", tmp_path / "b"
    hostile.study(first / "p", "ZY-11111", 236, patient_name="Nowak^Anna", ct_size=(24, 24, 10), dose_size=(12, 12, 6))
    _uids_under(first / "p", "1.2.246.352.71.2.417.20240102093000")
    hostile.study(
        second / "p", "ZY-77777", 237, patient_name="Brown^Alice", ct_size=(24, 24, 10), dose_size=(12, 12, 6)
    )
    for path in (second / "p").rglob("*.dcm"):
        dd.rewrite_tags(path, StudyDate="20240102")
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    for n, extra in enumerate(([], ["--keep-uids"])):
        out = tmp_path / f"share{n}" / "out"
        assert main(["export", str(first), str(out), *args, "--keep-uids"]) == 0, capsys.readouterr()
        code = main(["export", str(second), str(out), *args, *extra, "--append"])
        assert code == 0, (extra, capsys.readouterr())
        assert [row["status"] for row in hostile.manifest(out)] == ["ok", "ok"]


@pytest.mark.parametrize(
    "patient_id, root",
    [("1072315", "1.2.246.352.71.2.1072315.20230415093000"), ("1136192", "1.2.840.113619.2.55.3")],
)
def test_kept_uids_holding_the_patient_id_as_groups_fail_no_case(tmp_path, capsys, patient_id, root):
    """Eighty-fifth hostile trial CG3 (a regression of CE2's fix): with --keep-uids, a PatientID that is consecutive
    components of the input's kept UIDs (a vendor's root ``1.2.840.113619.2`` for 1136192, or a UID holding the ID as a
    component) was read there as an ID grouped by points, and every case failed "please report it". A kept UID is no
    grouped number, on both sides."""
    truth = hostile.study(tmp_path / "in" / "p", patient_id, 235, ct_size=(24, 24, 10), dose_size=(12, 12, 6))
    _uids_under(tmp_path / "in" / "p", root)
    assert truth.struct_file.exists()
    out = tmp_path / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--keep-uids"]
    code = main(["export", str(tmp_path / "in"), str(out), *args])
    rows = hostile.manifest(out)
    assert code == 0 and [r["status"] for r in rows] == ["ok"], (rows, capsys.readouterr())
    meta = (out / rows[0]["case_id"] / "meta.json").read_text(encoding="utf-8")
    assert root in meta  # (the UIDs kept, whole)


def test_a_plain_case_folder_inside_a_pseudonymized_one_is_seen(tmp_path):
    """Thirty-fifth hostile trial AI8: a plain case folder dropped into one of OUT's pseudonymized case folders was not
    seen (the look below OUT did not go into DoseAlign's case folders), so --pseudonymize wrote beside it. A case
    folder's own folders (masks, openkbp) are still not gone into: a big cohort's masks filled the bound (AE5)."""
    from DoseAlignLib.output import around_out

    out = tmp_path / "out"
    shared = out / "P0123456789ab_plan_0a1b2c3d"
    shared.mkdir(parents=True)
    pseudonymized = '{\n "dosealign_version": "0.1.0",\n "case_id": "P0123456789ab_plan_0a1b2c3d",\n'
    (shared / "meta.json").write_text(pseudonymized + ' "pseudonymized": {"key": "0123456789abcdef"}\n}')
    (shared / "masks" / "deeper").mkdir(parents=True)
    assert around_out.nested_conflict(out, True) is None
    plain = '{\n "dosealign_version": "0.1.0",\n "case_id": "ID77415_plan_x_0a958107"\n}'
    (shared / "masks" / "manifest.csv").write_text("case_id,status\nID77415_plan_x_0a958107,ok\n")
    assert around_out.nested_conflict(out, True) is None  # (DoseAlign's folder of the case: not read)
    dropped = shared / "ID77415_plan_x_0a958107"
    dropped.mkdir()
    (dropped / "meta.json").write_text(plain)
    found = around_out.nested_conflict(out, True) or ""
    assert f"plain (not pseudonymized) export in {shared.name}/{dropped.name}" in found, found


def test_a_linked_case_folder_in_out_is_never_vouched_for_nor_written_through(tmp_path, capsys):
    """Thirty-third hostile trial AG4: a case folder in OUT that is a link to another export's case folder was
    refused by a plain export but taken as complete by --resume, which wrote NIfTI files and a new meta.json
    through it into the other export. It is no case folder of OUT: its case fails by name, the other export is
    left as it was."""
    root = tmp_path / "in"
    hostile.study(root / "p", "LINKED-1", 101)
    args = ["--quiet", "--workers", "1", "--no-qa-png"]
    other = tmp_path / "other"
    assert main(["export", str(root), str(other), *args]) == 0
    (case,) = [p for p in other.iterdir() if p.is_dir()]
    before = {p.name: p.read_bytes() for p in case.iterdir() if p.is_file()}
    out = tmp_path / "out"
    out.mkdir()
    (out / case.name).symlink_to(case, target_is_directory=True)
    assert main(["export", str(root), str(out), *args, "--resume", "--format", "npz,nifti"]) == 1
    assert "it is a symbolic link; it is not replaced" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in case.iterdir() if p.is_file()} == before
    assert not (case / "masks").exists() and not list(case.glob("*.nii.gz"))
    # thirty-fourth hostile trial AH1 (the other way) and AH4: a link to a pseudonymized case, and a case folder named
    # as a pseudonym whose meta.json and manifest are gone, keep a plain export out
    shared = tmp_path / "shared"
    keys = ["--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    assert main(["export", str(root), str(shared), *args, "--pseudonymize", *keys]) == 0
    (pseudonymous,) = [p for p in shared.iterdir() if p.is_dir()]
    linking = tmp_path / "linking"
    linking.mkdir()
    (linking / pseudonymous.name).symlink_to(pseudonymous, target_is_directory=True)
    assert main(["export", str(root), str(linking), *args]) == 2
    assert f"it holds a link to a pseudonymized case folder: {pseudonymous.name}" in capsys.readouterr().err
    (pseudonymous / "meta.json").unlink()
    (shared / "manifest.csv").unlink()
    assert main(["export", str(root), str(shared), *args]) == 2
    assert f"it holds a pseudonymized export: {pseudonymous.name}" in capsys.readouterr().err


def test_many_ids_in_a_row_and_a_name_read_again_after_its_rewriting():
    """Thirty-fifth hostile trial AI1: 65 zero-padded IDs joined by points left one after 64 passes, and the check
    passed it. AI5: a name within DOSEALIGN_IDENTITY_CHARS read again after its rewriting (``[removed]`` is longer
    than a 7-digit ID) failed its case as too long."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(patient_ids={"1072315"})
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    text = "E " + ".".join("0" * (n % 3) + "1072315" for n in range(70))
    rewritten = rewriting.text(text)
    assert "1072315" not in rewritten and rewritten.count("[removed]") == 70, rewritten[:120]
    name = "a1072315 " * 113  # 1017 characters
    assert len(rewriting.name(rewriting.name(name))) > 1024
    # AI9: a pseudonymous case id keeps its summation label's digits (plan2)
    from DoseAlignLib.output import out_folder

    assert out_folder.PSEUDONYMOUS_ID.fullmatch("P3fa9b2c41d0e_plan2_401c9558")


def test_decimal_cells_are_dosealign_numbers_and_da_ranges_give_each_date(tmp_path, capsys):
    """Twenty-eighth hostile trial AB6: an OtherPatientIDs ``33.8645`` that equals the case's native Dmax made that
    measure ``[removed]`` in manifest.csv, meta.json and report.html, status ok; ``0.1.0`` (the version) failed the
    case. Decimals DoseAlign writes are its own. AB3: a DA range of dotted or dashed dates gave its first date only.
    AB4: a name's cost counts its joined spellings, not only its words."""
    import types

    from DoseAlignLib.output import pseudonym

    assert pseudonym.dates_of_value("2023.04.20-2023.04.21", "DA")[-1] == "20230421"
    assert "20230421" in pseudonym.dates_of_value("2023-04-20-2023-04-21", "DA")
    import random

    twelve = [f"Word{n}" for n in range(12)]
    rng = random.Random(1)
    names = [" ".join(rng.sample(twelve, 12)) for _ in range(50)]  # 12 words in 50 orders: 12 before AB4
    obj = types.SimpleNamespace(rel_path="a.dcm", patient_id="P", info={"other_names": names})
    assert len(pseudonym._other_name_words(obj)) > 300
    checker = pseudonym.Pseudonymizer(key=b"k" * 32, identity=pseudonym.Identity(other={"33.8645", "0.1.0"}))
    row = {"case_id": "x", "patient": "P", "dmax_native_gy": "33.8645", "note": "ID 33.8645"}
    written = checker.row(row)
    assert written["dmax_native_gy"] == "33.8645" and "[removed]" in written["note"], written
    checker.check({"dmax_native_gy": "33.8645", "dosealign_version": pseudonym.__version__})
    with pytest.raises(pseudonym.PseudonymError):
        checker.check({"note": "ID 33.8645"})
    # twenty-ninth hostile trial AC1, AC2: only DoseAlign's own numeric fields are exempt; the input's text that reads
    # as a number (a folder 2019E12345 named after the PatientID, a type 19750302.5 holding the birth date) is not
    dated = pseudonym.Pseudonymizer(
        key=b"k" * 32, identity=pseudonym.Identity(patient_ids={"2019E12345"}, dates={"19750302"})
    )
    assert "[removed]" in dated.value({"ct_folder": "2019E12345"})["ct_folder"]
    assert "[removed]" in dated.value({"type": "19750302.5"})["type"]
    assert dated.row({"case_id": "x", "patient": "P", "ct_folder": "2019E12345"})["ct_folder"] != "2019E12345"
    with pytest.raises(pseudonym.PseudonymError):
        dated.check({"type": "19750302.5"})
    with pytest.raises(pseudonym.PseudonymError):
        dated.check_row({"ct_folder": "2019E12345"})
    # AC4: each spelling of an accented name costs as a name
    accented = types.SimpleNamespace(rel_path="a.dcm", patient_id="P", info={"other_names": ["Müller^Jürgen"]})
    assert len(pseudonym._other_name_words(accented)) > 1


def _rename_rois(struct_file: Path, renamed: dict) -> None:
    """The ROIs of ``struct_file`` renamed (old name -> new name); the others as they are."""
    ds = dd.read(struct_file)
    for item in ds.StructureSetROISequence:
        item.ROIName = renamed.get(item.ROIName, item.ROIName)
    dd.save(ds, struct_file)


def _appended(tmp_path, capsys, first: tuple, second: tuple, renamed: dict, first_tags=None, rt_only=False):
    """Two inputs, ``first`` and ``second`` (PatientID, PatientName) with the second's ROIs renamed (old -> new) and
    ``first_tags`` rewritten in every file of the first (``rt_only``: its RT objects, not its CT); the first exported
    pseudonymized into OUT, then the second with --append: ``(OUT, the append's exit code)``."""
    roots = tmp_path / "a", tmp_path / "b"
    truth = hostile.study(roots[0] / "p", first[0], 98, patient_name=first[1], ct_size=(40, 36, 16))
    tagged = [truth.struct_file, truth.plan_file, *truth.dose_files] if rt_only else (roots[0] / "p").rglob("*.dcm")
    for path in tagged if first_tags else ():
        dd.rewrite_tags(Path(path), **first_tags)
    truth = hostile.study(roots[1] / "p", second[0], 99, patient_name=second[1], ct_size=(40, 36, 16))
    _rename_rois(truth.struct_file, renamed)
    out = tmp_path / "share" / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main(["export", str(roots[0]), str(out), *args]) == 0, capsys.readouterr()
    code = main(["export", str(roots[1]), str(out), *args, "--append"])
    return out, code


def test_an_appended_input_loses_the_patient_id_of_another_input_the_map_names(tmp_path, capsys):
    """Eighty-first hostile trial CC1: a second input whose ROI names another input's patient by its PatientID
    (``Ring_as_QX-12345``, contours copied from that patient's plan) was appended into the pseudonymized OUT of the
    first: the ID stood in clear in meta.json and dvh.csv, ok, beside that patient's case, though the map the run
    merges names it (exported together, it was removed). The map's PatientIDs are the run's identity too."""
    first, second = ("QX-12345", "Smithers^John"), ("ZY-77777", "Doe^Jane")
    out, code = _appended(tmp_path, capsys, first, second, {"Cord": "Ring_as_QX-12345"})
    assert code == 0 and [row["status"] for row in hostile.manifest(out)] == ["ok", "ok"], capsys.readouterr()
    assert not _spellings_in_output(out, ["qx12345"])
    names = [n for row in hostile.manifest(out) for n in _names_of(out, row)]
    assert "Ring_as_[removed]" in names, names


def test_an_appended_inputs_roi_that_is_another_inputs_patient_name_is_rewritten_in_either_order(tmp_path, capsys):
    """Eighty-first hostile trial CC2: patient Ring^Anna appended beside a case whose ROI is ``Ring`` was refused (the
    kept case holds her name), but the other way round, Ring first, the ROI ``Ring`` was appended in clear beside her
    case: exported together, it is rewritten. The map now holds the patients' names too, so an appended input's ROI
    that is another input's patient name is rewritten; the first order is refused as before (a kept case is never
    rewritten), with the advice to export the inputs together."""
    ring, doe = ("RING-1", "Ring^Anna"), ("DOE-1", "Doe^John")
    out, code = _appended(tmp_path, capsys, ring, doe, {"Cord": "Ring"})
    assert code == 0 and [row["status"] for row in hostile.manifest(out)] == ["ok", "ok"], capsys.readouterr()
    names = [n for row in hostile.manifest(out) for n in _names_of(out, row)]
    assert "Ring" not in names and any(WHOLE_NAME_REMOVED.fullmatch(n) for n in names), names
    other = tmp_path / "share2" / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main(["export", str(tmp_path / "b"), str(other), *args]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "a"), str(other), *args, "--append"]) == 2
    assert "export the inputs together" in capsys.readouterr().err


@pytest.mark.parametrize(
    "first_tags, rt_only, roi, needle",
    [
        # (eighty-third trial CE1: the map's name rows of a patient without PatientID were keyed by no pseudonym OUT
        # holds: a patient without one is told by its study)
        ({"PatientID": ""}, False, "Cord_Smithers", "smithers"),
        # (CE5: the map held only PatientID and PatientName)
        (
            {"OtherPatientIDs": "9434765919", "PatientBirthName": "Kowalczyk^Maria"},
            False,
            "Cord_Kowalczyk",
            "kowalczyk",
        ),
        ({"OtherPatientIDs": "9434765919"}, False, "GTV_9434765919", "9434765919"),
        # (eighty-fifth CG2: what only the RT objects hold, not the CT, was not in the map)
        ({"AdmissionID": "ADM4471902"}, True, "GTV_ADM4471902", "adm4471902"),
        ({"ReferringPhysicianName": "Okonkwo^Chidi"}, True, "Cord_Okonkwo", "okonkwo"),
        # (eighty-fifth CG4: the RT objects spell the PatientID in lower case, the case takes the CT's: the names of
        # the other spelling were keyed by a patient OUT does not hold)
        ({"PatientID": "noid-1", "PatientName": "Smithers^Kowalczyk"}, True, "Cord_Kowalczyk", "kowalczyk"),
    ],
)
def test_another_inputs_patients_names_and_ids_are_identity_of_an_append(
    tmp_path, capsys, first_tags, rt_only, roi, needle
):
    """Eighty-third hostile trial CE1 and CE5 (CC2's fix missed them): another input's patient without PatientID, and
    another patient's OtherPatientIDs and PatientBirthName, in an appended input's ROI name stood in clear beside
    that patient's case (exported together, they are removed). So did an AdmissionID or a person's name that only
    the RT objects hold (eighty-fifth CG2)."""
    first, second = ("NOID-1", "Smithers^John"), ("ZY-77777", "Brown^Alice")
    out, code = _appended(tmp_path, capsys, first, second, {"Cord": roi}, first_tags=first_tags, rt_only=rt_only)
    assert code == 0 and [row["status"] for row in hostile.manifest(out)] == ["ok", "ok"], capsys.readouterr()
    assert not _spellings_in_output(out, [needle])


def test_another_inputs_visit_code_without_a_digit_refuses_no_append(tmp_path, capsys):
    """Eighty-fifth hostile trial CG1: another input's CT StudyID ``LUNG`` (a worklist's procedure code) went into the
    map as an ID, and read back it was one without the visit rule (a visit's number is one only with a digit): the
    append beside that input's case holding ROIs ``Lung_L`` was refused, and an appended ROI ``Lung_L`` would be
    ``[removed]_L``. Exported together, or the other way round, all was well."""
    first, second = ("NOWAK-1", "Nowak^Anna"), ("ZY-77777", "Brown^Alice")
    out, code = _appended(tmp_path, capsys, first, second, {"Cord": "Lung_L"}, first_tags={"StudyID": "LUNG"})
    assert code == 0 and [row["status"] for row in hostile.manifest(out)] == ["ok", "ok"], capsys.readouterr()
    names = [n for row in hostile.manifest(out) for n in _names_of(out, row)]
    assert "Lung_L" in names, names


def test_a_patient_named_removed_in_out_refuses_no_later_append(tmp_path, capsys):
    """Eighty-third hostile trial CE4: a patient whose name and ID are the word of DoseAlign's own mark (``REMOVED``,
    what an earlier de-identification wrote) exports fine, as that word is no identity; but read back from the map by
    a later --append it was identity again, and the appended case (whose outputs hold the mark) failed "please report
    it" (or the run was refused)."""
    out, code = _appended(
        tmp_path, capsys, ("REMOVED", "[Removed]"), ("ZY-77777", "Brown^Alice"), {"Cord": "GTV_Brown"}
    )
    assert code == 0 and [row["status"] for row in hostile.manifest(out)] == ["ok", "ok"], capsys.readouterr()


def test_an_appended_inputs_roi_names_do_not_take_a_rewritten_name_of_another_input(tmp_path, capsys):
    """Twenty-eighth hostile trial AB2: V4's tags were decided per input, so --append of a second input into one
    pseudonymized OUT made ``[removed]_L`` the lung in the first input's case and the lens in the second's. An
    appended input's ROI names that rewrite to a channel name another input's cases hold carry a keyed tag."""
    import json

    first, second = tmp_path / "a", tmp_path / "b"
    for root, patient, name, roi in (
        (first, "LUNG-2", "Lung^Wai Man", "Lung_L"),
        (second, "LENS-2", "Lens^Maria", "Lens_L"),
    ):
        truth = hostile.study(root / "p", patient, 98, patient_name=name, ct_size=(40, 36, 16))
        ds = dd.read(truth.struct_file)
        for item in ds.StructureSetROISequence:
            item.ROIName = roi if item.ROIName == "Cord" else item.ROIName
        dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main(["export", str(first), str(out), *args]) == 0
    assert main(["export", str(second), str(out), *args, "--append"]) == 0, capsys.readouterr()
    names = {}
    for row in hostile.manifest(out):
        meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
        names[row["case_id"]] = [n for n in meta["structures"]["names"] if n.startswith("[removed]_L")]
    assert ["[removed]_L"] in names.values(), names
    assert any(len(v) == 1 and re.fullmatch(r"\[removed\]_L_[0-9a-f]{8}", v[0]) for v in names.values()), names
    # twenty-ninth hostile trial AC7: a --resume of the second input (a patient added) without --append tags too
    truth = hostile.study(second / "q", "LENS-3", 97, patient_name="Lens^Cara", ct_size=(40, 36, 16))
    ds = dd.read(truth.struct_file)
    for item in ds.StructureSetROISequence:
        item.ROIName = "Lens_L" if item.ROIName == "Cord" else item.ROIName
    dd.save(ds, truth.struct_file)
    assert main(["export", str(second), str(out), *args, "--resume"]) == 0, capsys.readouterr()
    for row in hostile.manifest(out):
        meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
        assert "[removed]_L" not in meta["structures"]["names"], (row["case_id"], meta["structures"]["names"])


def test_an_appended_inputs_own_marked_roi_name_does_not_share_another_inputs_channel(tmp_path, capsys):
    """Fifty-third hostile trial BA3: input A (patient Lung, its Lung_L written ``[removed]_L``) exported, then input B,
    whose structure set names its Ring ``[removed]_L`` itself, appended: ``[removed]_L`` was A's lung in one case and
    B's ring in the other (a fresh export of both tags A's lung). The kept cases cannot be renamed; the appended
    input's own marked name is told apart with its keyed tag, and a --resume of either input keeps every case."""
    import json

    first, second = tmp_path / "a", tmp_path / "b"
    for root, patient, name, renamed in (
        (first, "LUNG-3", "Lung^Wai Man", {"Cord": "Lung_L"}),
        (second, "ANON-3", "Anonymous", {"Ring": "[removed]_L"}),
    ):
        truth = hostile.study(root / "p", patient, 96, patient_name=name, ct_size=(40, 36, 16))
        _rename_rois(truth.struct_file, renamed)
    out = tmp_path / "share" / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main(["export", str(first), str(out), *args]) == 0
    assert main(["export", str(second), str(out), *args, "--append"]) == 0, capsys.readouterr()

    def marked() -> dict:
        found = {}
        for row in hostile.manifest(out):
            meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
            found[row["patient"]] = [n for n in meta["structures"]["names"] if n.startswith("[removed]_L")]
        return found

    names = marked()
    assert len(names) == 2 and ["[removed]_L"] in names.values(), names
    assert any(re.fullmatch(r"\[removed\]_L_[0-9a-f]{8}", v[0]) for v in names.values() if len(v) == 1), names
    for root, statuses in ((second, ["ok", "skipped"]), (first, ["skipped", "skipped"])):
        # (the other input's row is kept as its run wrote it)
        assert main(["export", str(root), str(out), *args, "--append", "--resume"]) == 0
        assert sorted(r["status"] for r in hostile.manifest(out)) == statuses
        assert marked() == names


def test_append_names_a_kept_case_of_the_same_dose_that_holds_identity_the_input_tells(tmp_path, capsys):
    """Twenty-eighth hostile trial AB10: --append of an input sent again with an MR naming ``Kowalski`` took its case
    for "the same RTDOSE as another input's case kept", and that case kept its ROI ``Kowalski_PTV`` without a word.
    The kept case is read against this input's identity; one that holds it makes this input's case fail, naming it."""
    import shutil

    first = tmp_path / "a"
    truth = hostile.study(first / "p", "APPEND-ID", 99, extra_organs=1)
    ds = dd.read(truth.struct_file)
    [roi for roi in ds.StructureSetROISequence if roi.ROIName.startswith("Organ")][0].ROIName = "Kowalski_PTV"
    dd.save(ds, truth.struct_file)
    second = tmp_path / "b"
    shutil.copytree(first, second / "resent")
    ds = dd.read(second / "resent" / "p" / sorted(truth.ct_files)[0].name)
    _as_new_mr_image(ds)
    ds.OtherPatientNames = "Kowalski^Jan"
    dd.save(ds, second / "resent" / "p" / "mr_0001.dcm")
    out = tmp_path / "share" / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main(["export", str(first), str(out), *args]) == 0
    assert main(["export", str(second), str(out), *args, "--append"]) == 1
    rows = {row["status"]: row for row in hostile.manifest(out)}
    assert sorted(rows) == ["failed", "ok"], rows
    kept = rows["ok"]["case_id"]
    assert (
        f"kept in the output folder as case {kept}, whose outputs hold what this input tells"
        in rows["failed"]["reason"]
    )


def test_an_roi_the_input_named_like_a_rewritten_one_keeps_its_channel_apart(tmp_path, capsys, monkeypatch):
    """Twenty-eighth hostile trial AB9, AB7: an ROI the input itself named ``[removed]_L`` beside ``Lung_L`` of patient
    Lung gave ``[removed]_L`` and ``[removed]_L_2`` by order (V4's symptom): the rewritten one carries its keyed tag.
    Beyond MAX_RENAMED distinct ROI names of the input, where names are numbered by order again, the run says so."""
    import json

    from DoseAlignLib.output import pseudonym

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "LITERAL-1", 100, patient_name="Lung^Wai Man", ct_size=(40, 36, 16))
    ds = dd.read(truth.struct_file)
    renamed = {"Cord": "[removed]_L", "Ring": "Lung_L"}
    for roi in ds.StructureSetROISequence:
        roi.ROIName = renamed.get(roi.ROIName, roi.ROIName)
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main(["export", str(root), str(out), *args]) == 0, capsys.readouterr()
    (row,) = hostile.manifest(out)
    names = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))["structures"]["names"]
    assert "[removed]_L" in names and any(re.fullmatch(r"\[removed\]_L_[0-9a-f]{8}", n) for n in names), names
    capsys.readouterr()
    monkeypatch.setattr(pseudonym, "MAX_RENAMED", 2)
    assert main(["export", str(root), str(tmp_path / "share" / "again"), *args]) == 0
    assert "distinct ROI names: beyond them, names that --pseudonymize rewrites alike" in capsys.readouterr().out


def test_the_characters_of_a_cases_roi_names_are_bounded_together(tmp_path, capsys, monkeypatch):
    """Twenty-eighth hostile trial AB5: AA6 bounded each ROI name, not their sum: 400 names of 1000 characters held a
    case 46 s under --pseudonymize while the other patients waited. A case whose ROI names together pass 64 x
    DOSEALIGN_IDENTITY_CHARS fails by name (here a bound of 2 x 100); the other case is exported."""
    from DoseAlignLib import batch

    monkeypatch.setenv("DOSEALIGN_IDENTITY_CHARS", "100")
    monkeypatch.setattr(batch, "CASE_NAME_CHARS", 2)
    root = tmp_path / "in"
    truth = hostile.study(root / "a", "MANY-NAMES", 101, extra_organs=4)
    hostile.study(root / "b", "PLAIN-8", 102)
    ds = dd.read(truth.struct_file)
    for n, roi in enumerate(r for r in ds.StructureSetROISequence if r.ROIName.startswith("Organ")):
        roi.ROIName = f"Organ{n}_" + "x" * 60
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 1
    rows = hostile.manifest(out)
    assert sorted(row["status"] for row in rows) == ["failed", "ok"], rows
    (reason,) = [row["reason"] for row in rows if row["status"] == "failed"]
    assert "the case's ROI names hold more than 200 characters together" in reason, reason


def test_a_dose_summation_type_that_is_no_defined_term_is_other_in_a_pseudonymous_case_id(tmp_path, capsys):
    """Thirty-sixth hostile trial AJ2, AJ5: the RTDOSE's DoseSummationType (input text) was the pseudonymous case id's
    middle: the study date written there was in every folder name, meta.json, the manifest and the report, status ok
    (the check took its 8 digits for a digest of DoseAlign's), an ID there failed its case but named it in the
    failed row, and 300 characters made a name too long that stopped the batch (exit 4). A value DICOM does not
    define is ``OTHER``."""
    from DoseAlignLib.output import pseudonym

    root = tmp_path / "in"
    values = {"SUMDATE-1": None, "SUMID-22": None, "SUMLONG-3": "PLAN" + "X" * 300, "SUMOK-4": "FRACTION"}
    for n, patient in enumerate(values):
        truth = hostile.study(root / patient, patient, 120 + n)
        ds = dd.read(truth.dose_files[0])
        date = str(ds.StudyDate)
        given = {
            "SUMDATE-1": f"{date[:4]}-{date[4:6]}-{date[6:]}",
            "SUMID-22": patient,
        }.get(patient, values[patient])
        ds.DoseSummationType = given
        dd.save(ds, truth.dose_files[0])
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--format", "nifti,nrrd"]
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), *args, "--pseudonymize"]) == 0, capsys.readouterr()
    rows = hostile.manifest(out)
    assert sorted(row["case_id"].split("_")[1] for row in rows) == ["fraction", "other", "other", "other"], rows
    assert {row["summation_type"] for row in rows} == {"FRACTION", "OTHER"}
    leaked = _all_output_bytes(out)
    for needle in (date, date[:4] + "-" + date[4:6], "sumid-22", "SUMID-22", "XXXXXXXXXX"):
        assert not [where for where, data in leaked if needle.encode() in data], needle
    # the check alone: a case id's middle is no digest of DoseAlign's, whatever its characters
    tokens = pseudonym.own_tokens([f"P957bf5cc34b7_{date}_2d1f70a4", "d0123456789"])
    assert date not in tokens and {"P957bf5cc34b7", "2d1f70a4", "d0123456789"} <= tokens


def test_a_folder_name_holding_a_semicolon_is_written_as_tokens(tmp_path, capsys):
    """Thirty-sixth hostile trial AJ10: a path field holding several paths is split at ``;`` (the manifest's list);
    a folder named ``Kowalski Jan;CT`` gave the part before it to the text rewriting, which knows only the headers'
    identity: manifest.csv and meta.json named the patient in clear, status ok. Every part of a path field is a
    path, and parts are joined again where they make one of the input's paths."""
    from DoseAlignLib.output import pseudonym

    root = tmp_path / "in"
    hostile.study(root / "Kowalski Jan;CT", "SEMI-1", 130)
    (root / "Nowak;Ewa.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")  # a damaged file: its own row
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 1
    capsys.readouterr()
    leaked = _all_output_bytes(out)
    for needle in (b"Kowalski", b"Nowak", b"Ewa"):
        assert not [where for where, data in leaked if needle in data], needle
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=pseudonym.Identity(paths={"a;b", "a;b/c.dcm"}))
    assert rewriting._path_field("a;b/c.dcm;x/y.dcm") == f"{rewriting.path('a;b/c.dcm')};{rewriting.path('x/y.dcm')}"
    assert rewriting._path_field("a;b") == rewriting.path("a;b")
    assert rewriting._path_field("a description") == "a description"  # (no path: text)
    # thirty-ninth trial AM2: a CT of two nested folders joined with " + " was read as one path, garbled
    joined = pseudonym.Pseudonymizer(key=b"k" * 32, identity=pseudonym.Identity(paths={"D/1", "D/2", "K + J", "Z"}))
    assert joined._path_field("D/1 + D/2") == f"{joined.path('D/1')} + {joined.path('D/2')}"
    assert joined._path_field("K + J + Z") == f"{joined.path('K + J')} + {joined.path('Z')}"
    # AM7: folders holding ";" or ending in a blank, joined
    odd = pseudonym.Pseudonymizer(key=b"k" * 32, identity=pseudonym.Identity(paths={"K;1", "K;2", "K 1 ", "K 2 "}))
    assert odd._path_field("K;1 + K;2") == f"{odd.path('K;1')} + {odd.path('K;2')}"
    assert odd._path_field("K 1  + K 2 ") == f"{odd.path('K 1 ')} + {odd.path('K 2 ')}"


def test_append_refuses_beside_another_inputs_case_that_holds_this_inputs_identity(tmp_path, capsys):
    """Thirty-sixth and thirty-seventh hostile trials AJ12, AK1: --append of a second input kept the first input's
    cases unread, though an ROI name there (``PTV_Nowakowski``) is the surname of a patient the second input holds:
    the shared folder named a patient beside that patient's pseudonymized case. Exported as one input the name is
    removed. Such an --append is refused, nothing exported; one whose identity the kept cases do not hold runs."""
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    truth = hostile.study(first / "p", "KEPT-NAME-1", 131, extra_organs=1)
    ds = dd.read(truth.struct_file)
    [roi for roi in ds.StructureSetROISequence if roi.ROIName.startswith("Organ")][0].ROIName = "PTV_Nowakowski"
    dd.save(ds, truth.struct_file)
    hostile.study(second / "p", "APPENDED-2", 132, patient_name="Nowakowski^Anna")
    hostile.study(third / "p", "APPENDED-3", 133, patient_name="Lindqvist^Maja")
    out = tmp_path / "share" / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main(["export", str(first), str(out), *args]) == 0
    before = hostile.snapshot(out)
    assert main(["export", str(second), str(out), *args, "--append"]) == 2
    err = capsys.readouterr().err
    assert "holds 1 case(s) of other inputs whose outputs hold what this input tells to be identity" in err, err
    assert "(a patient name in meta.json)" in err and "nothing was exported" in err, err
    assert hostile.snapshot(out) == before
    # and so as a shard (shards share OUT without --append; merge reads no identity): thirty-seventh trial AK1
    assert main(["export", str(second), str(out), *args, "--shard", "1/2"]) == 2
    assert "--shard: the output folder holds 1 case(s) of other inputs" in capsys.readouterr().err
    assert hostile.snapshot(out) == before
    assert main(["export", str(third), str(out), *args, "--append"]) == 0
    assert len(hostile.manifest(out)) == 2


def test_the_key_and_map_under_another_name_inside_out_are_refused(tmp_path, capsys):
    """Thirty-sixth hostile trial AJ3: the key and map in use, hard-linked into OUT under other names
    (``notes/site-secret.txt``), were not seen: only their default names were looked for. Another name of this run's
    key or map file within three levels of OUT (a hard link, a symbolic link) is refused as the default names are."""
    root = tmp_path / "in"
    hostile.study(root / "p", "LINKED-KEY-1", 134, with_structures=False)
    out = tmp_path / "x" / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    keys = ["--key-file", str(tmp_path / "k.key"), "--map-file", str(tmp_path / "m.csv")]
    assert main(["export", str(root), str(out), *args, *keys]) == 0
    capsys.readouterr()
    (out / "notes").mkdir()
    for made, name, link in (("key", "k.key", os.link), ("map", "m.csv", os.symlink)):
        link(tmp_path / name, out / "notes" / f"site-{made}.txt")
        assert main(["export", str(root), str(out), *args, *keys]) == 2, made
        err = capsys.readouterr().err
        assert f"holds a pseudonym key or map (notes/site-{made}.txt)" in err, err
        (out / "notes" / f"site-{made}.txt").unlink()
    (out / "notes" / "copy.txt").write_bytes((tmp_path / "m.csv").read_bytes()[:10])  # another file: no matter
    assert main(["export", str(root), str(out), *args, *keys]) == 0


def test_dicom_files_below_out_keep_a_pseudonymized_export_out(tmp_path, capsys):
    """Thirty-sixth hostile trial AJ6: a copy of the input's DICOM files two levels below OUT (``raw/ct``) was shared
    with the pseudonymized export, every header identifying, exit 0 with a note that ``raw/`` is "left alone"; at
    OUT's top the same files are refused. Refused below OUT too (within three levels), by name or by preamble; a
    plain export is not refused for them."""
    from DoseAlignLib.output import around_out

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "BELOW-1", 135, with_structures=False)
    out = tmp_path / "out"
    (out / "raw" / "ct").mkdir(parents=True)
    shutil.copy(truth.ct_files[0], out / "raw" / "ct" / "1.2.826.0.1.3680043.2.1125.5")  # a UID as its name
    args = ["--quiet", "--workers", "1", "--no-qa-png"]
    assert main(["export", str(root), str(out), *args, "--pseudonymize"]) == 2
    err = capsys.readouterr().err
    assert "it holds DICOM files (raw/ct/1.2.826.0.1.3680043.2.1125.5)" in err, err
    (out / "raw" / "ct" / "1.2.826.0.1.3680043.2.1125.5").rename(out / "raw" / "ct" / "slice.DCM")
    assert "raw/ct/slice.DCM" in (around_out.nested_conflict(out, True) or "")
    (out / "raw" / "ct" / "slice.DCM").rename(out / "raw" / "ct" / "notes.txt")
    assert around_out.nested_conflict(out, True) is None
    # thirty-eighth trial AL6: a data set without the preamble and file meta, as older exports write them
    data, position = truth.ct_files[0].read_bytes(), 132
    while data[position : position + 2] == b"\x02\x00":  # (the file meta's elements, explicit VR)
        if data[position + 4 : position + 6] in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            position += 12 + int.from_bytes(data[position + 8 : position + 12], "little")
        else:
            position += 8 + int.from_bytes(data[position + 6 : position + 8], "little")
    (out / "raw" / "ct" / "1.2.3.4.5").write_bytes(data[position:])
    assert "raw/ct/1.2.3.4.5" in (around_out.nested_conflict(out, True) or "")
    (out / "raw" / "ct" / "1.2.3.4.5").unlink()
    (out / "raw" / "ct" / "notes.txt").rename(out / "raw" / "ct" / "slice.dcm")
    assert main(["export", str(root), str(out), *args]) == 0  # a plain export is not shared


@pytest.mark.parametrize("name", ["PTV 1072315x2", "1072315x2", "GTV_1072315e2", "Body d1072315_gy", "1072315e-2"])
def test_an_id_in_an_roi_name_of_the_shape_of_dosealigns_words_is_removed(name):
    """Thirty-sixth hostile trial AJ8: DoseAlign's own words (sizes ``48x160x192``, DVH points ``d95_gy``, numbers
    in exponent notation) were exempt in the names the input gave too: the patient's ID in ``PTV 1072315x2`` stayed,
    and the check passed it. In an ROI name they are a name like any other; in DoseAlign's own text they stay."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(patient_ids={"1072315"})
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    assert "1072315" not in rewriting.name(name), rewriting.name(name)
    assert pseudonym.IdentityGuard(identity).find(name, own=False) == "a patient ID"
    own = name.split()[-1].replace("1072315", "48")  # DoseAlign's word of the same shape, in its own text
    assert rewriting.text(f"size {own}") == f"size {own}"


def test_file_names_without_a_suffix_at_the_inputs_top_are_tokens_in_dosealigns_text(tmp_path, capsys):
    """Thirty-sixth hostile trial AJ15: the study's files at the input's top named ``Kowalski_Jan_<n>`` (no suffix, as
    PACS exports write them; the headers name another patient) stood in clear in meta.json's prose (``chosen via
    RTPLAN -> RTSTRUCT Kowalski_Jan_3 -> CT``) and the audit's ``object``; a damaged one in its failed row. In
    DoseAlign's own text such a name is a path wherever it stands whole; an ROI name equal to a file name stays."""
    source = tmp_path / "study"
    truth = hostile.study(source, "NOSUFFIX-1", 136)
    root = tmp_path / "in"
    root.mkdir()
    for n, path in enumerate(sorted(source.rglob("*.dcm")), 1):
        shutil.copy(path, root / f"Kowalski_Jan_{n}")
    (root / "Nowak_Anna_RS").write_bytes(truth.struct_file.read_bytes()[:700])  # truncated: its own failed row
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 1
    capsys.readouterr()
    leaked = _all_output_bytes(out)
    for needle in (b"Kowalski", b"Nowak"):
        assert not [where for where, data in leaked if needle in data], needle
    assert sorted(row["status"] for row in hostile.manifest(out)) == ["failed", "ok"]
    from DoseAlignLib.output import pseudonym

    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=pseudonym.Identity(paths={"Heart", "CT", "120"}))
    assert rewriting.text("CT '.' (120 slices)") == "CT '.' (120 slices)"  # (a file named as a number: AL1)
    assert (
        rewriting.name("Heart") == "Heart" and rewriting.text("RTSTRUCT Heart") == f"RTSTRUCT {rewriting.path('Heart')}"
    )
    assert rewriting.text("CT 'x' chosen") == "CT 'x' chosen"  # (a file named as DoseAlign's word: its word stays)


@pytest.mark.parametrize("invisible", ["\u3164", "\u034f", "\ufe0f", "\u180e", "\U000e0101", "\u200b"])
def test_a_name_with_an_invisible_character_inside_is_removed_and_found(invisible):
    """Thirty-sixth hostile trial AJ19: a surname written with a Hangul filler inside (a letter that shows nothing)
    was kept; with a combining grapheme joiner or a variation selector (no format characters, category Cf) the check
    found what the rewriting kept, and the case failed "please report it". Both read through every character that
    shows nothing."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.add_name("Lukasiewicz^Hieronim")
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    name = f"PTV_Lukasi{invisible}ewicz"
    assert rewriting.name(name) == "PTV_[removed]", rewriting.name(name)
    assert pseudonym.IdentityGuard(identity).find(name, own=False) == "a patient name"


@pytest.mark.parametrize(
    "written",
    [
        "PTV_Lukasi\u20ddewicz",
        "PTV_Lukasiewicz\u20e3",
        "CTV_1958\u03000314",
        "CTV_19580\u0301\u0302314",
        "CTV_1958\u04830314",  # a Cyrillic titlo on a digit (forty-second trial AP4)
        "CTV_1958\u05910314",  # a Hebrew accent
    ],
)
def test_decoration_inside_a_name_or_date_is_read_through_by_both_sides(written):
    """Fortieth hostile trial: an enclosing mark (a circle drawn around the letter before, ``\u20dd``) inside a
    surname hid it from the rewriting and the check alike; an accent on a date's digit hid the date from the
    rewriting only, and the case failed "please report it". Both read through them."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(dates={"19580314"})
    identity.add_name("Lukasiewicz^Hieronim")
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonym.IdentityGuard(identity)
    assert guard.find(written, own=False), "the check reads it as identity"
    rewritten = rewriting.name(written)
    assert "[removed]" in rewritten and not any(part in rewritten for part in ("Lukasi", "1958", "0314")), rewritten
    assert guard.find(rewritten, own=False) == "" and guard.find(rewriting.text(f"ROI {written}")) == ""


@pytest.mark.parametrize("name", ["PTV_{uid}", "S{uid}", "x{uid}x", "PTV {uid}", "PTV_{uid}.1", "PTV{uid}.2.5"])
def test_an_input_uid_glued_to_letters_in_an_roi_name_is_hashed(name):
    """Thirty-sixth hostile trial AJ22: an input UID after ``_`` or a letter in an ROI name (``PTV_<StudyUID>``) was
    not hashed by the rewriting (its pattern wanted no letter or ``_`` beside a UID) while the check found it: the
    case failed "please report it". The input's own UIDs are hashed wherever they stand, before ``.digits`` too
    (thirty-eighth AL4: ``PTV_<StudyUID>.1`` stood in clear, unseen by the check)."""
    from DoseAlignLib.output import pseudonym

    uid = "1.2.826.0.1.3680043.8.498.10245567"
    identity = pseudonym.Identity(uids={uid})
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    rewritten = rewriting.name(name.format(uid=uid))
    assert uid not in rewritten and rewriting.uid(uid) in rewritten, rewritten
    guard = pseudonym.IdentityGuard(identity)
    assert guard.find(rewritten, own=False) == "" and guard.find(name.format(uid=uid), own=False) == "a UID"
    assert rewriting.name("v1.2.3") == "v1.2.3"  # (no input UID: a version stays)


@pytest.mark.parametrize("folder", ["Nowak\\Anna", "Kowalski\nJan", "Kowalski Jan ", " Kowalski"])
def test_the_ct_folders_token_is_its_files_folder_token(folder, tmp_path, capsys):
    """Thirty-sixth hostile trial AJ17: a folder named with a backslash (or a control character, written escaped)
    was split at the backslash into two path components under --pseudonymize, and its last part was a file's token
    in ``ct_folder`` but a folder's in ``files``: a reader could not find the CT's files by its folder. Thirty-eighth
    AL3: one whose name begins or ends with a blank was written stripped, no path, in clear."""
    root = tmp_path / "in"
    hostile.study(root / folder, "BACKSLASH-1", 137, with_structures=False)
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    folders = {f.rsplit("/", 1)[0] for f in row["files"].split(";")}
    assert row["ct_folder"] in folders and row["ct_folder"].startswith("d"), (row["ct_folder"], folders)
    assert "Nowak" not in row["files"] and "Kowalski" not in row["files"] and "Kowalski" not in row["ct_folder"]


def test_a_full_folder_above_out_is_told_by_its_manifest(tmp_path, monkeypatch):
    """Thirty-sixth hostile trial AJ23: a folder above OUT with more than DOSEALIGN_OUT_ENTRIES entries (a home folder)
    refused every plain export below it, though a folder that holds anything else is an export by its manifest
    alone. It is told by its manifest.csv; a folder of that many case folders alone is still refused."""
    from DoseAlignLib.limits import LimitError
    from DoseAlignLib.output import around_out

    monkeypatch.setenv("DOSEALIGN_OUT_ENTRIES", "100")
    big = tmp_path / "big"
    big.mkdir()
    for n in range(300):
        (big / f"note{n}.txt").write_text("x")
    assert around_out.export_kinds(big, wanted="pseudonymized") == set()
    assert around_out.nested_conflict(big / "out", False) is None
    (big / "manifest.csv").write_text("case_id,status\nP0123456789ab_plan_0a1b2c3d,ok\n")
    assert around_out.export_kinds(big, wanted="pseudonymized") == {"pseudonymized"}
    cases = tmp_path / "cases"
    for n in range(150):
        (cases / f"CASE-{n}_plan_{n:08x}").mkdir(parents=True)
    with pytest.raises(LimitError, match="more than 100 entries"):
        around_out.export_kinds(cases)


def test_a_patient_id_that_is_one_of_dosealigns_words_fails_no_case(tmp_path, capsys):
    """Thirty-sixth hostile trial AJ20: a PatientID ``PLAN`` (a letters-only phantom ID that is one of DoseAlign's
    words) failed every case under --pseudonymize, "please report it": the row's own summation type and case id hold
    ``plan``. Such an ID is no ID in DoseAlign's own text; in the names the input gave it is removed."""
    from DoseAlignLib.output import pseudonym

    root = tmp_path / "in"
    hostile.study(root / "p", "PLAN", 138)
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 0
    capsys.readouterr()
    identity = pseudonym.Identity(patient_ids={"PLAN"})
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    assert rewriting.name("PLAN_boost") == "[removed]_boost" and rewriting.text("the plan's dose") == "the plan's dose"
    guard = pseudonym.IdentityGuard(identity)
    assert guard.find("PLAN_boost", own=False) == "a patient ID" and guard.find("P0123456789ab_plan_0a1b2c3d") == ""


def test_the_tags_of_roi_names_that_rewrite_alike_are_in_the_map_before_any_case_runs():
    """Thirty-sixth hostile trial AJ21: the keyed tags of ROI names that rewrite alike (``Lukas0_cord``,
    ``Lukas1_cord``: ``[removed]_cord``) were made in the workers and written with the map at the run's end only; a
    run killed after two cases lost their rows, and --resume, which keeps those cases, never wrote them. They are
    listed when the run prepares (and the map is written then)."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    for n in range(3):
        identity.add_name(f"Lukas{n}^Anna")
    identity.roi_names = {f"Lukas{n}_cord" for n in range(3)} | {"Anna", "PTV"}
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    rewriting._find_alike()  # (what prepare does before it writes the map)
    listed = {original: tag for (kind, tag), original in rewriting.entries.items() if kind == "roi"}
    for n in range(3):
        channel = rewriting.name(f"Lukas{n}_cord")
        assert channel == f"[removed]_cord_{listed[f'Lukas{n}_cord']}", (channel, listed)


@pytest.mark.parametrize("layout", ["halves", "odd and even"])
def test_the_folders_of_a_joined_ct_are_tokens(layout, tmp_path, capsys):
    """Thirty-sixth hostile trial AJ27: a CT series split over two top-level folders named after the patient
    (``Kowalski_CT1``, ``Kowalski_CT2``) is one CT whose folder is ``Kowalski_CT1 + Kowalski_CT2``: under
    --pseudonymize that stood in clear in ct_folder and meta.json's prose (a bare folder name was a path only quoted
    or before a ``/``). A folder name joined with `` + `` is a path too; so in the warning that the folders interleave
    (thirty-eighth AL11)."""
    source = tmp_path / "study"
    truth = hostile.study(source, "JOINED-1", 139, with_structures=False)
    root = tmp_path / "in"
    cts = sorted(truth.ct_files, key=lambda p: float(dd.read(p).ImagePositionPatient[2]))
    for k, path in enumerate(cts):  # (odd and even: the case warns that they interleave, naming them: AL11)
        first = k < len(cts) // 2 if layout == "halves" else k % 2 == 0
        folder = root / ("Kowalski_CT1" if first else "Kowalski_CT2")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    for path in source.rglob("*.dcm"):
        if path not in cts:
            shutil.copy(path, root / path.name)
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert " + " in row["ct_folder"], row["ct_folder"]
    assert ("which interleave" in row["warnings"]) == (layout == "odd and even"), row["warnings"]
    assert not [where for where, data in _all_output_bytes(out) if b"Kowalski" in data]


@pytest.mark.parametrize("name", ["PTV_Lukasi[removed]ewicz", "QX77[removed]415", "CTV_2024[removed]0102"])
def test_a_literal_removed_mark_inside_a_name_id_or_date_hides_nothing(name):
    """Thirty-sixth hostile trial AJ18: an ROI name holding DoseAlign's own mark ``[removed]`` inside the patient's
    name, ID or date was rewritten piece by piece and checked as written: neither saw it, and deleting the mark gave
    the identity back. Both read the name without the marks too."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(patient_ids={"QX77415"}, dates={"20240102"})
    identity.add_name("Lukasiewicz^Hieronim")
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonym.IdentityGuard(identity)
    assert guard.find(name, own=False) != ""
    rewritten = rewriting.name(name)
    assert not guard.find(rewritten, own=False) and not guard.find(rewritten.replace("[removed]", ""), own=False)
    assert rewriting.name(rewritten) == rewritten  # (the marks of the rewriting stay as they are)
    assert not guard.find(rewriting.text(f"label {name}"))


def test_an_ids_digit_groups_written_together_are_the_id():
    """Thirty-sixth hostile trial AJ13: PatientID ``AB12-34567`` written as ``1234567`` (its digits together, without
    its letters) stayed in ROI names; each run of 5 digits or more was removed, not the runs joined. They are a
    number of the ID, removed as a word of its own, both sides; a short ID's digits are not."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(patient_ids={"AB12-34567"})
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonym.IdentityGuard(identity)
    assert rewriting.name("PTV_1234567") == "PTV_[removed]" and guard.find("PTV_1234567", own=False) == "a patient ID"
    assert rewriting.name("PTV_12345670") == "PTV_12345670"  # (another number)
    short = pseudonym.Identity(patient_ids={"A1-2"})
    assert pseudonym.Pseudonymizer(key=b"k" * 32, identity=short).name("PTV_12") == "PTV_12"


@pytest.mark.parametrize(("patient", "roi"), [("Rains^Claude", "Brain_Stem"), ("Kowalski^Jan", "PTV_Kowal ski")])
def test_the_check_reads_a_single_name_component_across_no_separator(patient, roi):
    """Thirty-eighth hostile trial AL7: the check joined the letters across a separator when it looked for a single
    name component inside other words, the rewriting did not: every case of a patient Rains with the ROI
    ``Brain_Stem`` failed "please report it". Neither reads one across a separator now (README names the split
    surname, ``Kowal ski``, as a limit); inside one word both do (``BrainStem``)."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity()
    identity.add_name(patient)
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonym.IdentityGuard(identity)
    assert not guard.find(rewriting.name(roi), own=False), rewriting.name(roi)
    joined = roi.replace("_", "").replace(" ", "")
    assert guard.find(joined, own=False) == "a patient name" and rewriting.name(joined) != joined


@pytest.mark.parametrize(
    ("patient_id", "own_text"),
    [
        ("D95", "audit d95_gy"),
        ("INT16", "dtype int16"),
        ("CM3", "cm^3 and %"),
        ("KJI", "masks_fraction: (N, K, J, I) uint8"),
    ],
)
def test_an_id_that_is_one_of_dosealigns_words_with_digits_fails_no_case(patient_id, own_text):
    """Thirty-eighth hostile trial AL2: PatientIDs that are DoseAlign's words with digits (``D95``, ``INT16``, ``CM3``)
    failed every case "please report it" (meta.json's ``d95_gy``), or were removed from meta.json's own fields
    (``arrays.ct.dtype: [removed]``, read as damaged by every later --resume). As ``PLAN`` (AJ20): no ID in DoseAlign's
    own text, removed from the input's names. Thirty-ninth AM4: ``KJI`` also spelled letter by letter there."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(patient_ids={patient_id})
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonym.IdentityGuard(identity)
    assert rewriting.text(own_text) == own_text and guard.find(own_text) == ""
    assert rewriting.name(f"PTV_{patient_id}") == "PTV_[removed]"
    assert guard.find(f"PTV_{patient_id}", own=False) == "a patient ID"


def test_the_look_below_out_reads_nothing_of_the_system(tmp_path):
    """Thirty-eighth hostile trial AL8: a link in OUT to /proc/self (or to /, whose /proc lies two levels down) made
    the look below a pseudonymized OUT open and read every file there (/proc/kmsg would lose the kernel's log). Links
    into /proc, /sys, /dev and to a folder that holds OUT are not gone into."""
    from DoseAlignLib.output import around_out

    out = tmp_path / "out"
    out.mkdir()
    (out / "procself").symlink_to("/proc/self", target_is_directory=True)
    (out / "root").symlink_to("/", target_is_directory=True)
    (out / "up").symlink_to(tmp_path, target_is_directory=True)
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("x")
    seen = [os.path.relpath(entry.path, out) for entry, _level in around_out.entries_below(out)]
    assert "notes/a.txt" in seen and "root" in seen and "up" in seen, seen
    assert not [name for name in seen if name.startswith(("procself", "root/", "up/"))], seen
    assert around_out.nested_conflict(out, True) is None


@pytest.mark.parametrize(
    "text", ["born_45792000", "CTV_45792000000", "dob 45792000.0", "t45792000000000", "PTV 4579200", "x45835200"]
)
def test_a_unix_time_of_fewer_digits_is_a_date(text):
    """Fortieth hostile trial AN3: a Unix time was read by its number of digits (9 or 10 in seconds, 12 or 13 in
    milliseconds, ...): a birth date 1971-06-15 written ``45792000`` (8 digits) or ``45792000000`` (11 in
    milliseconds) was removed by neither side, every date from late 1966 to early 1973. A count is read in each
    unit; from about 11.6 days after 1970 (``4579200`` is 1970-02-23), not before (``PTV_7000`` stays)."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(dates={"19710615", "19700223", "19710616"})
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonym.IdentityGuard(identity)
    assert guard.find(text, own=False) == "a date" and "[removed]" in rewriting.name(text), rewriting.name(text)
    assert not guard.find(rewriting.name(text), own=False)
    for other in ("PTV_7000", "PTV_45000000", "CTV_999999", "GTV_46999999999"):  # (other days, or too few digits)
        assert guard.find(other, own=False) == "" and rewriting.name(other) == other, other


@pytest.mark.parametrize(
    "text",
    [
        "PTV_-277689600",
        "PTV_-277689600000",
        "dob=-277689600",
        "PTV-1704153600",
        "dob \u2212277689600",  # a typographic minus, an en dash (forty-second hostile trial AP5)
        "t\u2013277689600000",
    ],
)
def test_a_unix_time_before_1970_is_a_birth_date(text):
    """Thirty-eighth hostile trial AL5: a Unix time of a birth date before 1970 (negative: ``-277689600`` for
    1961-03-15) stayed; RT patients' birth dates are nearly all before 1970. A count after a minus is read both ways
    (a time before 1970, or a separator before a positive one), both sides."""
    from DoseAlignLib.output import pseudonym

    identity = pseudonym.Identity(dates={"19610315", "20240102"})
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    guard = pseudonym.IdentityGuard(identity)
    assert guard.find(text, own=False) == "a date" and "[removed]" in rewriting.name(text)
    assert not guard.find(rewriting.name(text), own=False)
    assert rewriting.name("PTV-1704153600").startswith("PTV-")  # (the minus a separator there: kept)


def test_the_names_of_what_the_scan_cannot_read_are_tokens(tmp_path, capsys):
    """Thirty-eighth hostile trial AL12: the names of folders the scan could not list (named after the patient) were
    in clear under --pseudonymize, in their failed rows, the case's warning and report.html: they were not among the
    paths the rewriting knows."""
    from DoseAlignLib.output import pseudonym

    scan = types.SimpleNamespace(
        objects=[], ct_series=[], skipped=[], unreadable=[("Kowalski_notes/", "x"), ("p/Kowalski_sub/", "x")],
        ignored=[],
    )  # fmt: skip
    identity = pseudonym.identity_of_scan(scan)
    rewriting = pseudonym.Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in ("Kowalski_notes/: the folder cannot be listed", "p/Kowalski_sub/ could not be read (beside it)"):
        assert "Kowalski" not in rewriting.text(text), rewriting.text(text)


def test_a_file_at_the_inputs_top_named_like_a_meta_json_key_leaves_the_key_alone(tmp_path, capsys):
    """Thirty-ninth hostile trial AM1: the dose file at the input's top named ``dose`` (no suffix) made meta.json's own
    ``dose`` keys path tokens under --pseudonymize: the case failed "internal error (KeyError ...)"; named ``audit``,
    meta.json lost its audit section, status ok. A key of DoseAlign's own shape is no path."""
    source = tmp_path / "study"
    truth = hostile.study(source, "KEYNAME-1", 145, with_structures=False)
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(truth.dose_files[0], root / "dose")
    for n, path in enumerate(sorted(truth.ct_files), 1):
        shutil.copy(path, root / f"CT.{n}")
    for path in source.rglob("*.dcm"):
        if path not in truth.ct_files and path not in truth.dose_files:
            shutil.copy(path, root / "audit")  # (the plan)
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert {"dose", "audit", "source", "arrays"} <= set(meta), sorted(meta)
    assert "dose" not in meta["source"]["rtdose_files"][0]  # (the file's own name is a token)


def test_one_patient_in_folders_named_ct_dose_plan_struct_exports_under_pseudonymize(tmp_path, capsys):
    """Thirty-ninth hostile trial AM3: one patient laid out by hand as ``ct/ dose/ plan/ struct/`` at the input's top
    failed under --pseudonymize "internal error (KeyError ...); please report it", and every --resume again: meta.json's
    own ``dose`` and ``ct`` keys were made the folders' path tokens (a key equal to an input path was one)."""
    source = tmp_path / "study"
    truth = hostile.study(source, "FOLDERS-1", 146)
    root = tmp_path / "in"
    kinds = {"CT": "ct", "RTDOSE": "dose", "RTPLAN": "plan", "RTSTRUCT": "struct"}
    for path in source.rglob("*.dcm"):
        folder = root / kinds[str(dd.read(path).Modality)]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert {"ct", "dose"} <= set(meta["arrays"]) and "ct" in meta["geometry"], (meta["arrays"], meta["geometry"])
    assert truth.struct_file is not None


@pytest.fixture(scope="module")
def own_words_meta(tmp_path_factory) -> str:
    """meta.json of a pseudonymized export of a phantom with beams and structures, whose patient is no word."""
    base = tmp_path_factory.mktemp("own-words")
    hostile.study(base / "in" / "p", "QX-31-ZZ", 61, patient_name="Quorbeth^Ysolde", write_beam_doses=True)
    out = base / "out"
    assert (
        main(["export", str(base / "in"), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]) == 0
    )
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    return (case / "meta.json").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "patient_id, written",
    [
        ("KEY", '"key":'),
        ("FACE", '"face":'),
        ("LOWEST", '"ct_lowest_hu":'),
        ("PLANS", "the plan's BEAM doses"),
        ("SAMPLES", "each sample's volume"),
        ("03CC", '"d0.03cc_gy":'),
    ],
)
def test_a_patient_id_that_is_one_of_dosealigns_own_words_fails_no_case(
    own_words_meta, tmp_path, capsys, patient_id, written
):
    """Fortieth hostile trial AN2: PatientIDs KEY, FACE, LOWEST, PLANS, SAMPLES, 03CC failed every case of their input
    "please report it": the check read meta.json's keys ``pseudonymized.key``, ``edge_faces[].face``,
    ``ct_lowest_hu``, ``d0.03cc_gy`` and its prose "the plan's BEAM doses", "each sample's volume" as the ID, which the
    rewriting leaves there as DoseAlign's own words."""
    assert written in own_words_meta  # (DoseAlign writes it: else this test proves nothing)
    root = tmp_path / "in"
    hostile.study(root / "p", patient_id, 61, patient_name="Quorbeth^Ysolde", write_beam_doses=True)
    out = tmp_path / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row


@pytest.mark.parametrize(
    "options, written",
    [
        (["--roi-map", "MAP"], '"keyed_sha256":'),
        (["--centre", "roi:PTV", "--spacing", "3"], '"centre_keyed_sha256":'),
    ],
    ids=["roi map", "centre roi"],
)
def test_a_patient_id_of_the_digits_of_a_keys_hash_name_fails_no_case(tmp_path, capsys, options, written):
    """Forty-fourth hostile trial AR2: a PatientID ``256`` failed every case of its input "please report it" with
    ``--roi-map`` or ``--centre roi:NAME``: the check read meta.json's keys ``keyed_sha256`` and
    ``centre_keyed_sha256`` as text, and ``256`` in them as the ID."""
    root = tmp_path / "in"
    hostile.study(root / "p", "256", 147, patient_name="Quorbeth^Ysolde")
    roi_map = tmp_path / "map.json"
    roi_map.write_text(json.dumps({"Target": ["PTV"]}), encoding="utf-8")
    out = tmp_path / "out"
    args = [str(roi_map) if a == "MAP" else a for a in options]
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", *args])
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    assert code == 0 and row["status"] == "ok", row
    assert written in (out / row["case_id"] / "meta.json").read_text(encoding="utf-8")  # (else it proves nothing)


def test_a_patient_already_deidentified_as_removed_fails_no_case(tmp_path, capsys):
    """Forty-second hostile trial AP6: a patient whose PatientName and PatientID an earlier de-identification wrote as
    ``REMOVED`` made every ``[removed]`` DoseAlign writes a leak of that "name": each case whose ROI names or prose
    had anything rewritten failed "please report it", another patient's in the same input too. The word of
    DoseAlign's own mark is no identity; the other patient's name is still removed."""
    root = tmp_path / "in"
    hostile.study(root / "a", "REMOVED", 62, patient_name="REMOVED^REMOVED")
    smith = hostile.study(root / "b", "SMITH-62", 63, patient_name="Smith^John")
    ds = dd.read(smith.struct_file)
    ds.StructureSetROISequence[2].ROIName = "PTV_Smith"  # (Cord)
    dd.save(ds, smith.struct_file)
    out = tmp_path / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"])
    capsys.readouterr()
    rows = hostile.manifest(out)
    assert code == 0 and [row["status"] for row in rows] == ["ok", "ok"], rows
    names = [json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))["structures"]["names"]
             for row in rows]  # fmt: skip
    assert any("PTV_[removed]" in n for n in names) and not any("Smith" in name for n in names for name in n), names


def test_summed_plans_labels_stay_out_of_the_prose(tmp_path, capsys):
    """Forty-second hostile trial AP7: with --sum-plans the note "2 plans on one CT summed (--sum-plans): Lang, ..."
    quoted the plans' labels in DoseAlign's own prose, where a label that is the patient's surname and one of
    DoseAlign's words (``Lang``) stood in clear under --pseudonymize. The note names where the labels are."""
    import pydicom
    from DoseAlignLib.phantom import PhantomSpec, write_phantom

    root = tmp_path / "in"
    truth = write_phantom(
        root,
        PhantomSpec(patient_id="LANG-7", patient_name="Lang^Katrin", boost_fraction=0.25, seed=64, **hostile.SMALL),
    )
    plan = pydicom.dcmread(str(truth.plan_file))
    plan.RTPlanLabel = "Lang"
    plan.save_as(str(truth.plan_file))
    out = tmp_path / "out"
    args = ["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--sum-plans", "--pseudonymize"]
    assert main(args) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    said = "summed (--sum-plans): their labels are in meta.json's dose.plans"
    assert said in json.dumps(meta["links"]), meta["links"]
    labels = [part["plan_label"] for part in meta["dose"]["plans"]]
    assert "BOOST" in labels and any(label.startswith("[removed]") for label in labels), labels
    assert "Lang" not in json.dumps(meta) and "Lang" not in (out / "manifest.csv").read_text(encoding="utf-8")


def _last_rois_renamed_and_exported(tmp_path, root, truth, names: list, capsys) -> tuple:
    """The last ``len(names)`` ROIs of ``truth``'s structure set renamed ``names``, the input exported pseudonymized
    in every format: ``(its one row, ok, OUT)``."""
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-len(names) :], names):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    return row, out


@pytest.mark.parametrize(
    "birth, study, where",
    [
        ("14.03.1958", "15.04.2023", "every file"),
        ("03/14/1958", "04/15/2023", "every file"),
        ("1958/3/14", "2023-4-15", "every file"),
        ("580314", "230415", "every file"),
        ("14.03.58", "15.04.23", "every file"),  # (forty-sixth trial AT1: two-digit years, spaces, month names)
        ("14 03 1958", "15 04 2023", "every file"),
        ("14-MAR-1958", "15-APR-2023", "every file"),
        ("58-03-14", "23-04-15", "CT slices only"),
        ("14.03.1958", "15.04.2023", "CT slices only"),
        ("14031958", "15042023", "every file"),  # (no separators, day or month first: fifty-third trial BA6)
        ("03141958", "04152023", "every file"),
    ],
)
def test_a_header_date_written_with_separators_is_read_as_that_date(tmp_path, capsys, birth, study, where):
    """Forty-fourth hostile trial AR4: a DA written day-first or month-first (``14.03.1958``, ``03/14/1958``), against
    the standard's YYYYMMDD, was taken as the date 14031958: the real birth date and study date stayed in clear in every
    output (an ROI ``DOB 14.03.1958``, a mask file ``PTV_19580314``), case ok. The value is read as the date it
    writes (both ways where day and month could be either), as a header and as each CT slice's own dates."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "SEPARATED-1", 146, extra_organs=3)
    files = [*truth.ct_files] + ([truth.struct_file, *truth.dose_files] if where == "every file" else [])
    for path in files:
        ds = dd.read(path)
        ds.PatientBirthDate = birth
        ds.StudyDate = ds.ContentDate = study
        dd.save(ds, path)
    row, out = _last_rois_renamed_and_exported(
        tmp_path, root, truth, ["DOB 14.03.1958", "PTV_19580314", "CTV 2023-04-15"], capsys
    )
    assert {"DOB [removed]", "PTV_[removed]", "CTV [removed]"} <= set(_names_of(out, row)), _names_of(out, row)
    _nowhere_in(out, ("14.03.1958", "19580314", "2023-04-15", "1958-03-14", "20230415"))


def test_a_date_value_is_read_as_written_both_ways_where_day_and_month_could_be_either():
    """AR4: the readings of one header value."""
    from DoseAlignLib.dicom.headers import dates_of_value

    assert "19580314" in dates_of_value("14.03.1958", "DA")
    assert "19580314" in dates_of_value("03/14/1958", "DA")
    assert {"20230504", "20230405"} <= set(dates_of_value("04/05/2023", "DA"))
    assert "19580314" in dates_of_value("1958/3/14", "DA")
    assert not {"19581403", "19580014"} & set(dates_of_value("14.03.1958", "DA"))  # (no month 14)
    assert {"19580314", "20580314"} <= set(dates_of_value("580314", "DA"))
    for written in [
        "14.03.58",
        "58-03-14",
        "14 03 1958",
        "14-MAR-1958",
        "14 March 58",
        "1958-Mar-14",
        "March 14, 1958",
    ]:
        assert "19580314" in dates_of_value(written, "DA"), written
    assert dates_of_value("581403", "DA") == []  # (no month 14)
    # eight digits that are no YYYYMMDD: DDMMYYYY and MMDDYYYY (BA6); a YYYYMMDD stays the one date
    assert "19580314" in dates_of_value("14031958", "DA") and "19580314" in dates_of_value("03141958", "DA")
    assert dates_of_value("20230415", "DA") == ["20230415", "20230415"]


@pytest.mark.parametrize(
    "patient_id, rois",
    [
        ("12345678909", ["PTV_123.456.789-09", "Cord 123.456.789-09"]),  # a Brazilian CPF
        ("123456782", ["PTV_1234.56.782", "CTV 12.345.6782"]),  # a Dutch BSN
        ("7561234567897", ["PTV 756.1234.5678.97", "Ring_756.1234.5678.97"]),  # a Swiss AHV number
        ("58091412345", ["PTV 58.09.14-123.45"]),  # a Belgian national number
        ("AB1234567", ["PTV AB.123.4567", "CTV AB 1.234.567"]),  # an ID with letters: no decimal number
    ],
)
def test_a_national_id_in_its_dotted_notation_is_removed(tmp_path, capsys, patient_id, rois):
    """Eighty-first hostile trial CC3: a PatientID stored as digits and written in an ROI name the way its country
    prints it (``123.456.789-09``, ``1234.56.782``, ``756.1234.5678.97``) stood in clear in meta.json, dvh.csv,
    case.h5 and the mask file names, ok: only groups of three were read as a grouped number, and both sides missed
    it. Groups of any size joined by points (two at least), hyphens or slashes are an ID where all their digits are
    one; a version or a decimal stays as it is. An ID with letters is found with points between its digits too
    (``AB.123.4567``): with its letters it is no number."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", patient_id, 233, extra_organs=len(rois))
    row, out = _last_rois_renamed_and_exported(tmp_path, root, truth, rois, capsys)
    expected = {re.sub(r"(?:AB[ .])?[0-9][0-9./-]*[0-9]", "[removed]", roi) for roi in rois}
    assert expected <= set(_names_of(out, row)), _names_of(out, row)
    _nowhere_in(out, [patient_id, *(r.split()[-1].split("_")[-1] for r in rois)])
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard

    guard = IdentityGuard(Identity(patient_ids={patient_id}))
    assert all(guard.find(text) == "a patient ID" for text in rois)
    digits = patient_id.lstrip("AB")
    kept = ["dose 1.2.3", "numpy 1.26.4", "v 12.345", f"PTV {digits[:-1]}.{digits[-1]}"]
    assert not any(guard.find(text) for text in kept), [guard.find(text) for text in kept]


def test_a_dotted_national_id_with_a_suffix_or_its_last_group_set_apart_is_removed(tmp_path, capsys):
    """Eighty-third hostile trial CE2 (CC3's fix took a dotted run only when all its groups were the ID): a CPF with a
    suffix (``123.456.789-09-2``, ``-09/1``), its check digits set apart by a blank, an en dash or an underscore, and
    ``1.072.315.1`` stood in clear in every output and file name, ok (with --format openkbp the case failed "please
    report it"). The ID is whole groups of the run, one after the other; the suffix stays."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "12345678909", 234, extra_organs=6)
    rois = ["PTV_123.456.789-09-2", "Cord 123.456.789 09", "GTV_123.456.789 - 09", "Heart_123.456.789-09/1",
            "Ring 123.456.789_09", "PTV 60 123.456.789-09"]  # fmt: skip
    row, out = _last_rois_renamed_and_exported(tmp_path, root, truth, rois, capsys)
    expected = {"PTV_[removed]-2", "Cord [removed]", "GTV_[removed]", "Heart_[removed]/1", "Ring [removed]",
                "PTV 60 [removed]"}  # fmt: skip
    assert expected <= set(_names_of(out, row)), _names_of(out, row)
    _nowhere_in(out, ["12345678909", "123.456.789"])
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard

    cpf = IdentityGuard(Identity(patient_ids={"12345678909"}))
    assert cpf.find("GTV_123.456.789\u201309") == "a patient ID"
    # (after a number and a blank: eighty-fifth trial CG5)
    assert cpf.find("PTV 60 123.456.789-09") == "a patient ID" and cpf.find("PTV 2 123.456.789 09") == "a patient ID"
    # what stands before a blank does not make a part with one point a grouped number (the rewriting, reading a name
    # whose ID it removed first, and the check disagreed: a case failed "please report it", eighty-fifth trial's fuzz)
    from DoseAlignLib.output.pseudonym import Pseudonymizer

    rewriting = Pseudonymizer(key=b"k" * 32, identity=Identity(patient_ids={"12345678909"}))
    for text in ("GTV-1234567-890 .9 3.10.1 12345-6789.09", "PTV_1234. 5\u20136789. 09 123.4_5.67/890.9"):
        assert not rewriting.guard.find(rewriting.name(text), own=False), (text, rewriting.name(text))
    guard = IdentityGuard(Identity(patient_ids={"1072315"}))
    assert guard.find("GTV 1.072.315.1") == "a patient ID" and guard.find("PTV 1.072.315-2") == "a patient ID"
    assert not any(guard.find(t) for t in ("v 1.072.316", "x 1.5 2.5 3.5", "d 1.072.3151", "e 1.072.314.5"))


def test_an_id_grouped_in_thousands_by_points_is_removed(tmp_path, capsys):
    """Forty-fourth hostile trial AR7: a PatientID 12345678 written grouped by points (``PTV 12.345.678``, as German or
    Dutch software prints a number) stayed in clear everywhere, case ok; grouped by commas it was removed. A number
    of two points or more in groups of three is read as the commas' grouping, by both sides; a decimal (``12.345``)
    stays a number."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "12345678", 148, extra_organs=3)
    rois = ["PTV 12.345.678", "CTV_12.345.678_boost", "Pat.-Nr.12.345.678"]  # (after a point: forty-sixth AT2)
    row, out = _last_rois_renamed_and_exported(tmp_path, root, truth, rois, capsys)
    assert {"PTV [removed]", "CTV_[removed]_boost", "Pat.-Nr.[removed]"} <= set(_names_of(out, row))
    _nowhere_in(out, ("12.345.678", "12345678", "12_345_678"))
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard

    guard = IdentityGuard(Identity(patient_ids={"12345678"}))
    assert all(guard.find(text) == "a patient ID" for text in rois)
    assert not any(guard.find(text) for text in ["v 12.345", "w 12.345.679", "1.234.567", "2.5.678"])
    # an ID only where all of a grouped number's digits are one, on both sides: a round PatientID 2500 failed the case
    # "please report it" for an ROI "MC 1.250.000" (forty-sixth trial AT3)
    from DoseAlignLib.output.pseudonym import Pseudonymizer

    for patient, text in [
        ("2500", "MC 1.250.000"),
        ("1000", "Ring 10.000.000"),
        ("2500", "MC 1,250,000"),  # (grouped by commas: the check read 250,000 as 250,0 with its zeros dropped)
        ("1000", "Ring 10,000,000"),
        ("2500", "MC 1 250 000"),  # (by spaces, thin spaces, apostrophes: forty-eighth trial AV5)
        ("2500", "MC 1\u2009250\u2009000"),
        ("2500", "MC 1'250'000"),
        ("2500", "MC \u0661\u066c\u0662\u0665\u0660\u066c\u0660\u0660\u0660"),  # (fiftieth trial AX3)
        ("2500", "MC 1\uff0c250\uff0c000"),
        ("2500", "MC 1\u00b7250\u00b7000"),
        ("2500", "MC 1\u2007250\u2007000"),
        ("2500", "MC 1\u02bc250\u02bc000"),
        ("10000", "MC 1,00,000"),  # (Indian grouping, a decimal comma: fifty-second trial AZ1)
        ("250", "PTV 25,00 Gy"),
        ("10000", "MC 1 00 000"),  # (groups apart by spaces, a time: fifty-third trial BA5)
        ("250", "PTV 25\u00a000 Gy"),
        ("1830", "Fx 1 08:30"),
        ("1500", "Rx 1\t0500 cGy"),
        ("1830", "Fx1 08:30"),  # (a word ending in a number before the space: fifty-fifth trial BC3)
        ("2500", "PTV2 0500"),
        ("1830", "Fx1  08:30"),  # (two spaces: fifty-seventh trial BE3)
        ("1250", "12  050 cGy"),
        ("12523", "Replan 12/05/23"),  # (a mark between the numbers: fifty-ninth trial BG1)
        ("1830", "Fx1 - 08:30"),
        ("6830", "Fx 6%0830"),  # (and @ % * ×: sixty-first trial's note)
        ("72830", "5\u00d77Gy 72\u00d70830"),
        ("1830", "Fx1@08:30"),
    ]:
        identity = Identity(patient_ids={patient})
        assert IdentityGuard(identity).find(text) == "", (patient, text)
        assert Pseudonymizer(key=b"k" * 32, identity=identity).name(text) == text, (patient, text)
    identity = Identity(patient_ids={"0072315"})
    assert IdentityGuard(identity).find("b 0.072.315") == "a patient ID"
    assert Pseudonymizer(key=b"k" * 32, identity=identity).name("b 0.072.315") == "b [removed]"
    # whole groups of a longer run are the ID, before or after other groups (a suffix: eighty-third trial CE2)
    grouped = Identity(patient_ids={"12345678"})
    assert IdentityGuard(grouped).find("v1.12.345.678") == "a patient ID"
    assert Pseudonymizer(key=b"k" * 32, identity=grouped).name("v1.12.345.678") == "v1.[removed]"


def test_a_name_stored_as_utf8_read_as_latin1_is_found_as_typed(tmp_path, capsys):
    """Forty-fourth hostile trial AR6: every header held the patient's name as a planning system stores it after
    decoding UTF-8 as Latin-1 (``MÃ¼ller^JÃ¼rgen``) while the ROI names were typed right (``PTV_Müller``): neither
    side knew ``Müller``, and the names stayed in clear everywhere, case ok. The name as typed is the patient's too."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "MOJI-1", 149, patient_name="Doe^Jane", extra_organs=3)
    for path in [*truth.ct_files, truth.struct_file, *truth.dose_files]:
        ds = dd.read(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "M\u00c3\u00bcller^J\u00c3\u00bcrgen"
        dd.save(ds, path)
    rois = ["PTV_M\u00fcller", "J\u00fcrgen_boost", "Muller_CTV"]
    row, out = _last_rois_renamed_and_exported(tmp_path, root, truth, rois, capsys)
    assert {"PTV_[removed]", "[removed]_boost", "[removed]_CTV"} <= set(_names_of(out, row)), _names_of(out, row)
    _nowhere_in(out, ("M\u00fcller", "J\u00fcrgen", "Muller", "Mueller", "M\u00c3\u00bcller"))


def test_a_name_stored_mixing_latin1_and_windows1252_bytes_is_repaired():
    """Forty-sixth hostile trial AT4: ``Wiśniewski^Łukasz`` stored as Windows decodes UTF-8 (``WiÅ›niewski^Å\x81ukasz``:
    ``›`` only Windows-1252 maps back, U+0081 only Latin-1) was repaired by neither codec, and the name as typed stayed
    in clear. Each character is taken back to its byte."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.add_name("Wi\u00c5\u203aniewski^\u00c5\u0081ukasz")
    guard, pseudonymizer = IdentityGuard(identity), Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in ["PTV_Wi\u015bniewski", "\u0141ukasz_boost", "Wisniewski CTV", "GTV Lukasz"]:
        assert guard.find(text) == "a patient name", text
        assert "[removed]" in pseudonymizer.name(text), text
    assert guard.find("PTV_Wisla") == ""


@pytest.mark.parametrize(
    "typed, found",
    [
        ("D\u2019Angelo^Jos\u00e9", ["PTV_Jos\u00e9", "Jose_CTV", "GTV Angelo"]),
        ("M\u00fcller\u2013L\u00fcdenscheidt^J\u00fcrgen", ["PTV_M\u00fcller", "J\u00fcrgen_boost"]),
        ("Colom\u00b7Vidal^N\u00faria", ["ColomVidal_PTV", "N\u00faria_CTV"]),
        ("Jose\u0301^Nu\u0301n\u0303ez", ["PTV_Jos\u00e9", "N\u00fa\u00f1ez_CTV"]),  # (typed decomposed, NFD)
        ("\u0e2a\u0e21\u0e0a\u0e32\u0e22^\u0e43\u0e08\u0e14\u0e35", ["PTV_\u0e43\u0e08\u0e14\u0e35"]),  # (Thai: AZ2)
        ("\u062d\u0633\u06cc\u0646\u200c\u0632\u0627\u062f\u0647^\u0639\u0644\u06cc", ["PTV_\u0639\u0644\u06cc"]),
    ],
    ids=["apostrophe", "en dash", "middle dot", "decomposed", "Thai", "Persian with a joiner"],
)
def test_a_garbled_name_with_punctuation_or_decomposed_letters_is_repaired(typed, found):
    """Fiftieth hostile trial AX2, a regression of the AV3 fix: a garbled name (UTF-8 read as Windows-1252) holding a
    typographic apostrophe, an en dash, a middle dot, or typed decomposed, was no longer repaired (only letters were
    allowed in a repair), and the name as typed stayed in clear. Punctuation, marks that compose and marks on letters of
    their script (Thai, fifty-second trial AZ2) are allowed."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    garbled = "".join(
        chr(b) if b < 0x80 or b >= 0xA0 or b in (0x81, 0x8D, 0x8F, 0x90, 0x9D) else bytes([b]).decode("cp1252")
        for b in typed.encode("utf-8")
    )
    identity = Identity()
    identity.add_name(garbled)
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in found:
        assert "[removed]" in pseudonymizer.name(text), (garbled, text)


#: Fifty-second hostile trial AZ3: names of scripts whose vowel signs and viramas are combining marks (surname, given
#: name), each with an ordinary ROI name of its script that must be kept.
MARKED_SCRIPTS = [
    ("\u0936\u0930\u094d\u092e\u093e", "\u0930\u093e\u0939\u0941\u0932", "\u0939\u0943\u0926\u092f"),  # Hindi
    ("\u09ae\u09c1\u0996\u09be\u09b0\u09cd\u099c\u09bf", "\u0985\u09ae\u09bf\u09a4", "\u09ab\u09c1\u09b8\u09ab\u09c1\u09b8"),  # Bengali
    ("\u0bb8\u0bcd\u0bb0\u0bc0\u0ba8\u0bbf\u0bb5\u0bbe\u0b9a\u0ba9\u0bcd", "\u0bb0\u0bbe\u0b9c\u0bbe", "\u0b87\u0ba4\u0baf\u0bae\u0bcd"),  # Tamil
    ("\u0e2a\u0e21\u0e0a\u0e32\u0e22", "\u0e43\u0e08\u0e14\u0e35", "\u0e2b\u0e31\u0e27\u0e43\u0e08"),  # Thai
]  # fmt: skip


@pytest.mark.parametrize("surname, given, organ", MARKED_SCRIPTS, ids=["hi", "bn", "ta", "th"])
def test_a_name_in_a_script_whose_vowel_signs_are_marks_is_removed_whole(tmp_path, capsys, surname, given, organ):
    """Fifty-second hostile trial AZ3: a name stored right in Devanagari, Bengali, Tamil or Thai stayed in clear in the
    ROI names (``PTV_\u0930\u093e\u0939\u0941\u0932``), status ok, or lost only its letters (``GTV [removed]\u093e``): both sides
    cut the name into words at its vowel signs, which are marks, not letters. A mark or joiner after a letter is now
    part of its word, on both sides; an ordinary ROI name of the script is kept."""
    rois = [f"PTV_{given}", f"GTV {surname}", f"{surname}_boost"]
    out, names = _named_patient_exported(tmp_path, capsys, f"{surname}^{given}", [*rois, organ])
    assert {"PTV_[removed]", "GTV [removed]", "[removed]_boost", organ} <= set(names), names
    _no_letters_of(out, (surname, given))


def _named_patient_exported(tmp_path, capsys, patient_name: str, rois: list) -> tuple:
    """A study of the patient ``patient_name`` (UTF-8) whose last ROIs are named ``rois``, exported pseudonymized in
    every format: ``(OUT, its one case's ROI names)``, the case ok."""
    root = tmp_path / "in"
    _named_patient_study(root, patient_name, rois, "IN-40417", 153)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), (row["reason"], capsys.readouterr())
    return out, _names_of(out, row)


def _no_letters_of(out, words) -> None:
    """None of ``words``, by their letters and digits alone, in any byte written to OUT, nor as JSON escapes them."""
    letters = ["".join(c for c in word.casefold() if c.isalnum()) for word in words]
    escaped = [json.dumps(word)[1:-1].casefold() for word in words]  # (as meta.json writes them)
    found = _spellings_in_output(out, letters + ["".join(c for c in e if c.isalnum()) for e in escaped])
    assert not found, found[:10]


#: Apostrophes people type in names: ASCII, the typographic one, the Ukrainian and Uzbek modifier letters, the turned
#: comma, none.
APOSTROPHES = ["'", "\u2019", "\u02bc", "\u02bb", "\u2018", ""]


def test_a_name_with_an_apostrophe_of_another_keyboard_is_found_in_every_spelling():
    """Fifty-third hostile trial BA4: a name whose apostrophe is a modifier letter (Ukrainian ``Демʼяненко``, Uzbek
    ``Gʻulomov``) or a turned comma (``O‘Sullivan``) was one word to both sides (those apostrophes are letters to
    Unicode): ``PTV_Gulomov``, ``GTV Мар'яна``, ``PTV_Sullivan`` stayed in clear, status ok. Any of them is read as
    ``'`` by both sides, in the header and in the text; a middle dot parts a name too (``Colom·Vidal``, which the check
    did not find)."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    for written in [
        "\u0414\u0435\u043c{a}\u044f\u043d\u0435\u043d\u043a\u043e^\u041c\u0430\u0440{a}\u044f\u043d\u0430",
        "G{a}ulomov^O{a}tkir",
        "O{a}Sullivan^Sean",
    ]:
        for header in APOSTROPHES[:-1]:
            identity = Identity()
            identity.add_name(written.format(a=header))
            guard, pseudonymizer = IdentityGuard(identity), Pseudonymizer(key=b"k" * 32, identity=identity)
            surname, given = written.split("^")
            for typed in APOSTROPHES:
                for text in [f"PTV_{surname}".format(a=typed), f"GTV {given}".format(a=typed)]:
                    assert guard.find(text, own=False) == "a patient name", (header, text)
                    rewritten = pseudonymizer.name(text)
                    assert "[removed]" in rewritten and not guard.find(rewritten, own=False), (header, rewritten)
    identity = Identity()
    identity.add_name("Colom\u00b7Vidal^N\u00faria")
    guard = IdentityGuard(identity)
    assert all(guard.find(t, own=False) for t in ["PTV Colom\u00b7Vidal", "Vidal_boost", "Colom Vidal"])
    assert guard.find("PTV_Gulomov", own=False) == ""  # (another patient's name is none)


def test_an_uzbek_name_with_its_modifier_apostrophe_leaves_no_spelling_in_the_export(tmp_path, capsys):
    """BA4 end to end: the header writes ``Gʻulomov^Oʻtkir`` (U+02BB), the ROIs the same name as typed elsewhere."""
    rois = ["PTV_Gulomov", "GTV O'tkir", "Otkir_boost", "PTV_G\u02bbulomov"]
    out, names = _named_patient_exported(tmp_path, capsys, "G\u02bbulomov^O\u02bbtkir", [*rois, "Lung_L"])
    assert sum("[removed]" in n for n in names) == len(rois) and "Lung_L" in names, names
    _no_letters_of(out, ("Gulomov", "Otkir", "tkir"))


@pytest.mark.parametrize(
    "header, texts",
    [
        ("H\u00e5konsen^\u00c5se", ["PTV_Haakonsen", "GTV Aase", "PTV_Hakonsen", "HAAKONSEN_boost"]),
        ("Haakonsen^Aase", ["PTV_H\u00e5konsen", "GTV \u00c5se"]),
        ("Erd\u0151s^\u00d6d\u00f6n", ["PTV_Erdoes", "PTV_Erdos", "GTV Oedoen"]),
        ("Erdoes^Oedoen", ["PTV_Erd\u0151s", "GTV \u00d6d\u00f6n"]),
        ("Sz\u0171cs^Anna", ["PTV_Szuecs", "PTV_Szucs"]),
    ],
    ids=["aa for \u00e5", "\u00e5 for aa", "oe for \u0151", "\u0151 for oe", "ue for \u0171"],
)
def test_a_letter_written_as_two_is_one_name_both_ways(header, texts):
    """Fifty-third hostile trial BA7: ``å`` written ``aa`` (Håkonsen, Haakonsen) and Hungarian ``ő ű`` written ``oe``
    ``ue`` (Erdős, Erdoes) were not one name, either way: the ROIs stayed in clear, status ok (``ü`` and ``ue`` were).
    Both sides read them as one; ``Saad`` is still no ``Sad``."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    _one_name_on_both_sides(header, texts, [])
    identity = Identity()
    identity.add_name("Saad^Ali")
    assert IdentityGuard(identity).find("PTV_Sad", own=False) == ""
    assert Pseudonymizer(key=b"k" * 32, identity=identity).name("PTV_Sad") == "PTV_Sad"


#: Fifty-third hostile trial BA1, BA2: an Arabic-script name as the header writes it, and as another keyboard or a
#: stretched layout types it (Persian ی ک, alef maksura ى, ta marbuta ة, tatweel ـ).
ARABIC_FORMS = [
    ("\u0643\u0631\u064a\u0645\u064a^\u0639\u0644\u064a", ["PTV_\u06a9\u0631\u06cc\u0645\u06cc", "GTV \u0639\u0644\u06cc", "PTV_\u0643\u0631\u064a\u0645\u0649", "PTV_\u0639\u0640\u0640\u0644\u064a"]),
    ("\u06a9\u0631\u06cc\u0645\u06cc^\u0639\u0644\u06cc", ["PTV_\u0643\u0631\u064a\u0645\u064a", "GTV \u0639\u0644\u064a"]),
    ("\u0641\u0627\u0637\u0645\u0629^\u0623\u062d\u0645\u062f", ["PTV_\u0641\u0627\u0637\u0645\u0647", "GTV \u0627\u062d\u0645\u062f"]),
    ("\u064a\u0648\u0633\u0641^\u0645\u062d\u0645\u062f", ["PTV_\u06cc\u0648\u0633\u0641", "PTV_\u064a\u0640\u0648\u0633\u0640\u0641", "\u0645\u0640\u062d\u0640\u0645\u0640\u062f_boost"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "header, texts", ARABIC_FORMS, ids=["arabic header", "persian header", "ta marbuta", "tatweel"]
)
def test_an_arabic_script_name_typed_on_another_keyboard_is_one_name(header, texts):
    """BA1, BA2: ``کریمی`` typed on a Persian keyboard for a header's ``كريمي``, and ``يـوسـف`` stretched by tatweels,
    stayed in clear, status ok. Both sides read one form of those letters, without the tatweel; another name is none."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.add_name(header)
    guard, pseudonymizer = IdentityGuard(identity), Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in texts:
        assert guard.find(text, own=False) == "a patient name", text
        rewritten = pseudonymizer.name(text)
        assert "[removed]" in rewritten and not guard.find(rewritten, own=False), rewritten
        assert "\u0640" not in rewritten, rewritten
    for other in ["PTV_\u062d\u0633\u0646", "\u0642\u0644\u0628"]:  # (Hassan, the heart)
        assert guard.find(other, own=False) == "" and pseudonymizer.name(other) == other


def test_an_arabic_name_typed_on_a_persian_keyboard_leaves_no_spelling_in_the_export(tmp_path, capsys):
    """BA1 end to end: the header writes ``كريمي^علي``, the ROIs ``کریمی``, ``علی`` and a stretched ``عــلي``."""
    header, texts = ARABIC_FORMS[0]
    out, names = _named_patient_exported(tmp_path, capsys, header, [*texts, "\u0642\u0644\u0628"])
    assert sum("[removed]" in n for n in names) == len(texts) and "\u0642\u0644\u0628" in names, names
    _no_letters_of(
        out,
        [
            "\u06a9\u0631\u06cc\u0645\u06cc",
            "\u0639\u0644\u06cc",
            "\u0643\u0631\u064a\u0645\u0649",
            "\u0639\u0640\u0640\u0644\u064a",
            *header.split("^"),
        ],
    )


def test_a_one_syllable_korean_name_is_removed_only_as_a_word_of_its_own():
    """Fifty-third hostile trial BA8: for a patient surnamed ``장`` (Jang), the organs ``심장`` (heart), ``소장``, ``대장``
    were written ``심[removed]``...: the plain spelling of a Hangul syllable (NFKD, marks dropped) took it apart into
    three letters, a name long enough to be removed inside words. It stays one syllable; ``장`` alone, or joined with the
    given name, is still removed, and the check agrees."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.add_name("\uc7a5^\ubbfc\uc218")
    guard, pseudonymizer = IdentityGuard(identity), Pseudonymizer(key=b"k" * 32, identity=identity)
    for organ in ["\uc2ec\uc7a5", "\uc18c\uc7a5", "\ub300\uc7a5"]:
        assert pseudonymizer.name(organ) == organ and guard.find(organ, own=False) == ""
    for text in ["PTV \uc7a5", "\uc7a5\ubbfc\uc218", "PTV_\ubbfc\uc218"]:
        assert guard.find(text, own=False) == "a patient name", text
        assert "[removed]" in pseudonymizer.name(text), text


def _one_name_on_both_sides(header: str, spelled: list, kept: list) -> None:
    """For a header name: each of ``spelled`` is found by the check and rewritten by the pseudonymizer to a text the
    check finds nothing in; each of ``kept`` is neither found nor rewritten."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.add_name(header)
    guard, pseudonymizer = IdentityGuard(identity), Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in spelled:
        assert guard.find(text, own=False) == "a patient name", text
        rewritten = pseudonymizer.name(text)
        assert "[removed]" in rewritten and not guard.find(rewritten, own=False), rewritten
    for text in kept:
        assert guard.find(text, own=False) == "" and pseudonymizer.name(text) == text, text


#: Fifty-fifth hostile trial BC1, BC2, BC4-BC6, BC8: a header name, ROI names that spell it otherwise and must be
#: removed (and found by the check), and ordinary ROI names beside it that must be kept by both sides.
OTHER_SPELLINGS = [
    ("\u05d7\u05f3\u05d5\u05e8\u05d9^\u05d2\u05f3\u05de\u05d0\u05dc", ["PTV_\u05d7\u05f3\u05d5\u05e8\u05d9", "PTV_\u05d7'\u05d5\u05e8\u05d9", "\u05d2\u05f3\u05de\u05d0\u05dc_boost"], ["Lung_L"]),
    ("SMITH^JOHN=\u30b9\u30df\u30b9\u30fb\u30b8\u30e7\u30f3", ["PTV_\u30b9\u30df\u30b9", "GTV \u30b8\u30e7\u30f3"], ["PTV_70"]),
    ("\uff27\uff21\uff32\uff23\uff29\uff21\uff0d\uff2c\uff2f\uff30\uff25\uff3a^\uff21\uff2e\uff21", ["PTV_Lopez", "GTV Garcia"], ["Lung_R"]),
    ("\u4e70\u4e70\u63d0\u2022\u827e\u529b", ["PTV_\u827e\u529b", "\u4e70\u4e70\u63d0_boost"], ["Heart"]),
    ("\u0d2c\u0d37\u0d40\u0d7c^\u0d05\u0d28\u0d3f\u0d7d", ["PTV_\u0d05\u0d28\u0d3f\u0d32\u0d4d\u200d", "GTV \u0d2c\u0d37\u0d40\u0d30\u0d4d\u200d"], ["Brain"]),
    ("\u0985\u09ad\u09bf\u099c\u09bf\u09a4\u09cd\u200d^\u09a6\u09be\u09b8", ["PTV_\u0985\u09ad\u09bf\u099c\u09bf\u09ce"], ["Bladder"]),
    ("\u0643\u0631\u064a\u0645^\u0641\u0627\u0637\u0645\u0629", ["PTV_\u0641\u0627\u0637\u0645\u06c3", "GTV \u06aa\u0631\u064a\u0645"], ["\u0642\u0644\u0628"]),
    ("Sa\u02bfadi^Ja\u02bffar", ["PTV_Saadi", "GTV Ja'far", "Jafar_boost"], ["Rectum"]),
    ("Sa'adi^Ja'far", ["PTV_Sa\u02bfadi", "GTV Ja\u02bffar"], ["Rectum"]),
    ("\u05db\u05d4\u05df^\u05d3\u05d5\u05d3", ["PTV\u05d3\u05d5\u05d3", "GTV\u05db\u05d4\u05df", "\u05d3\u05d5\u05d3boost"], ["PTV\u05d3\u05d5\u05d3\u05d9"]),
    ("\u0936\u0930\u094d\u092e\u093e^\u0930\u093e\u0939\u0941\u0932", ["PTV\u0930\u093e\u0939\u0941\u0932"], ["PTV_70Gy"]),
    ("\u05db\u05d4\u05df\u05be\u05dc\u05d5\u05d9^\u05d3\u05d5\u05d3", ["PTV_\u05dc\u05d5\u05d9", "GTV \u05db\u05d4\u05df"], ["Lung_L"]),  # (BE2)
    ("\u30b8\u30e3\u30f3\u30a0\u30ea\u30e5\u30c3\u30af^X", ["PTV_\u30ea\u30e5\u30c3\u30af", "PTV_\u30b8\u30e3\u30f3"], ["PTV_70"]),
    ("\u041a\u043e\u0432\u0430\u043b\u044c\u0447\u0443\u043a^I\u0432\u0430\u043d", ["PTV_I\u0432\u0430\u043d", "GTV I\u0432\u0430\u043d", "I\u0432\u0430\u043d_boost"], ["PTV_70"]),  # (BE4)
    ("O'Neil-Smith^Mary-Kate", ["PTV_ONEIL", "GTV_Oneil", "PTV_Smith"], ["Lung_L"]),  # (BG5)
    ("Hansen^Gro", ["PTV_Gro"], ["GRO\u1e9eHIRN", "Gro\u00dfhirn"]),  # (the capital sharp s: BG3)
    ("\u0d2c\u0d37\u0d40\u0d7c^\u0d05\u0d28\u0d3f\u0d7d", ["PTV_\u0d05\u0d28\u0d3f\u0d32\u0d4d", "GTV \u0d2c\u0d37\u0d40\u0d30\u0d4d"], ["PTV_\u0d05\u0d28\u0d3f\u0d32\u0d4d\u0d32"]),
    ("\u0d2c\u0d37\u0d40\u0d30\u0d4d^\u0d05\u0d28\u0d3f\u0d32\u0d4d", ["PTV_\u0d05\u0d28\u0d3f\u0d7d", "GTV \u0d2c\u0d37\u0d40\u0d30\u0d4d\u200d"], ["Brain"]),
    ("\u0985\u09ad\u09bf\u099c\u09bf\u09ce^\u09a6\u09be\u09b8", ["PTV_\u0985\u09ad\u09bf\u099c\u09bf\u09a4\u09cd"], ["Bladder"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "header, spelled, kept",
    OTHER_SPELLINGS,
    ids=[
        "geresh",
        "katakana dot",
        "fullwidth",
        "bullet",
        "chillu",
        "khanda ta",
        "urdu sindhi",
        "ayn",
        "ayn in roi",
        "glued hebrew",
        "glued devanagari",
        "maqaf",
        "double hyphen",
        "latin I in cyrillic",
        "apostrophe in a double-barrelled name",
        "capital sharp s",
        "chillu without joiner in roi",
        "chillu without joiner in header",
        "khanda ta without joiner",
    ],  # fmt: skip
)
def test_a_name_written_with_other_characters_for_one_is_one_name(header, spelled, kept):
    """Fifty-fifth hostile trial: a Hebrew name with a geresh (BC1), names parted by a katakana middle dot, a bullet or
    written in fullwidth forms (BC2), Malayalam and Bengali letters written as one code point or as three (BC4), Urdu
    and Sindhi forms of Arabic letters (BC5), the ʿayn of transliterations (BC6), and a name of a script without case
    glued to Latin letters (BC8) stayed in clear, status ok. Both sides read each as the name; ordinary ROI names are
    kept. A chillu or khanda ta written without its joiner at a word's end (older text) is the letter too."""
    _one_name_on_both_sides(header, spelled, kept)


#: Sixty-first hostile trial: a header name, ROI names that write it and must be removed (and found by the check), and
#: ordinary ROI names beside it that both sides keep.
SIXTY_FIRST = [
    ("VO\u00df^ANNA", ["PTV VO\u00df", "VO\u00df_boost"], ["PTV_VOLL"]),  # (BI1: German capitals keep ß)
    ("Fu\u00df^Karl", ["FU\u00df_LINKS"], ["Lung_L"]),
    ("Borg^Adam", ["PTV_Adam"], ["G\u0126ADAM_PELVIKU"]),  # (BI2: Maltese pelvic bone in capitals)
    ("Nowak^Uco", ["PTV_Uco"], ["P\u0141UCO_L", "P\u0141UCA"]),
    ("OBRIEN^SEAN", ["PTV_O'Brien", "GTV_O'BRIEN", "PTV_O\u2019Brien"], ["PTV_O"]),  # (BI3: the header without it)
    ("Gulomov^Otkir", ["PTV_G'ulomov", "PTV_G\u02bbulomov"], ["Rectum"]),
    ("O NEIL^MARY", ["PTV_ONEIL", "PTV_O'Neil"], ["PTV_O_Boost", "Lung_L"]),
    ("HAKONSEN^OLE", ["PTV_H\u00e5konsen", "PTV_H\u00c5KONSEN"], ["Heart"]),  # (BI4: å as a, on the check's side)
    ("Berg^Asa", ["GTV_\u00c5sa"], ["Bladder"]),
    ("IJff^Jan", ["PTV_IJff", "GTV IJff"], ["PTV_IJ"]),  # (BI5: two capitals, as the header writes the name)
    ("ODea^Ann", ["PTV_ODea"], ["Lung_R"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "header, spelled, kept",
    SIXTY_FIRST,
    ids=["VOß", "Fuß", "GĦADAM", "PŁUCO", "OBRIEN", "Gulomov", "O NEIL", "HAKONSEN", "Asa", "IJff", "ODea"],
)
def test_the_sixty_first_trials_spellings_are_one_name(header, spelled, kept):
    """Sixty-first hostile trial: a surname with ß in German capitals (``VOß``) was parted before ß by the rewriting and
    its case failed "please report it" (BI1); the check's two-letter copy wrote a capital as a small letter
    (``GĦADAM`` as ``GhADAM``) and a patient Adam failed the Maltese pelvic bone (BI2); a header without the apostrophe
    (``OBRIEN``, or with a space: ``O NEIL``) left ``PTV_O'Brien`` in clear, status ok (BI3); the check read ``å`` as
    ``aa`` only and missed ``Håkonsen`` for a header ``HAKONSEN`` (BI4); a name of two capitals as the header writes
    it (``IJff``, ``ODea``) stayed in clear, status ok (BI5). Both sides read each as the name; the ordinary ROI
    names beside it are kept."""
    _one_name_on_both_sides(header, spelled, kept)


@pytest.mark.parametrize(
    "header, spelled, kept",
    [
        (
            "OBRIEN^SEAN",
            ["PTV_O''Brien", "GTV_O''BRIEN"],
            ["PTV_O''"],
        ),  # (BK1: an apostrophe doubled, as SQL escapes it)
        ("DANGELO^MARIA", ["CTV_D''Angelo"], ["Lung_L"]),
        ("IJff^Jan", ["PTVIJff", "IJffBoost", "ptvIJff"], ["PTVIJffe", "Lung_R"]),  # (BK2: glued in camel case)
        ("ODea^Ann", ["PTVODea", "ODeaBoost"], ["ODean", "PTV_Oden"]),
    ],
    ids=["doubled apostrophe", "doubled apostrophe D'", "two capitals glued", "two capitals glued O"],
)
def test_the_sixty_third_trials_spellings_are_one_name(header, spelled, kept):
    """Sixty-third hostile trial BK1, BK2, the edges of the sixty-first's fixes: an apostrophe written twice
    (``PTV_O''Brien`` for a header ``OBRIEN``) and a name of two capitals glued to other words in camel case
    (``PTVIJff``, ``IJffBoost``) stayed in clear, status ok. Both sides read each as the name."""
    _one_name_on_both_sides(header, spelled, kept)


@pytest.mark.parametrize(
    "patient_id, name, text",
    [
        ("1830", "", "30_L'Aorte_18"),
        ("6050", "", "50\u201360"),
        ("", "Li^Na", "Na_L'Aorte_Li"),
        ("1830", "", "30_L\u00e9_18"),
    ],
    ids=["apostrophe, ID", "en dash, ID", "apostrophe, name", "accent, ID"],
)
def test_the_check_reads_each_reading_of_a_text_on_its_own(patient_id, name, text):
    """Sixty-third hostile trial BK3: the check read a text and its other readings (without apostrophes, folded) joined
    by a line break, and the last number of one with the first of the next: a PatientID 1830 failed the ROI
    ``30_L'Aorte_18`` "please report it", a patient Li^Na the ROI ``Na_L'Aorte_Li``. Each reading is read alone."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity(patient_ids={patient_id} if patient_id else set())
    if name:
        identity.add_name(name)
    guard = IdentityGuard(identity)
    assert guard.find(text) == "" and guard.find(text, own=False) == "", text
    assert Pseudonymizer(key=b"k" * 32, identity=identity).name(text) == text


def test_a_name_removed_between_the_halves_of_an_id_fails_no_case(tmp_path, capsys):
    """Sixty-eighth hostile trial BP1, as exported: a PatientID 6030 and the ROI ``PTV 60 Smith 30`` of patient Smith:
    the rewriting wrote ``PTV 60 [removed] 30``, and the check, reading it without the mark, joined 60 and 30 and failed
    the case "please report it". The check reads a text without its marks for names only; the case is ok."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard

    guard = IdentityGuard(Identity(patient_ids={"6030"}))
    assert guard.find("PTV_60_[removed]_30") == "" and guard.find("PTV 60 [removed] 30", own=False) == ""
    root = tmp_path / "in"
    _named_patient_study(root, "Smith^John", ["PTV 60 Smith 30", "PTV_60_Smith_30"], "6030", 161)
    out = tmp_path / "share" / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", "--no-qa-png"])
    (row,) = hostile.manifest(out)
    assert (code, row["status"]) == (0, "ok"), row["reason"]
    assert not [n for n in _names_of(out, row) if "smith" in n.casefold()], _names_of(out, row)


def test_a_name_the_header_writes_without_its_apostrophe_is_removed_from_every_format(tmp_path, capsys):
    """Sixty-first hostile trial BI3, as exported: a header ``OBRIEN^SEAN`` and ROIs ``PTV_O'Brien``, ``GTV_O'BRIEN``:
    the case was ok with the surname in meta.json, dvh.csv, the HDF5 files, dataset.json, OpenKBP and the mask file
    names. It is ok, and no output holds it."""
    out, names = _named_patient_exported(tmp_path, capsys, "OBRIEN^SEAN", ["PTV_O'Brien", "GTV_O'BRIEN"])
    assert not [n for n in names if "brien" in n.casefold()], names
    assert not _spellings_in_output(out, ["brien"])


@pytest.mark.parametrize("header", ["Loew^Hans", "Haert^Jan", "Loeng^Wei", "Mueller^Jan"])
def test_an_ascii_name_with_oe_is_not_the_word_without_its_e(header):
    """Fifty-fifth hostile trial BC7: the check read oe, ae, ue of a header name typed in ASCII as o, a, u: a patient
    Loew made the dose-level ROIs ``PTV_Low`` and ``CTV_Low`` his name (the rewriting kept them), and the case failed
    "please report it"; Haert the Dutch ``Hart``, Loeng ``Long_L``. Such a name is read as typed and with its umlaut
    (``Löw``), on both sides."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.add_name(header)
    guard, pseudonymizer = IdentityGuard(identity), Pseudonymizer(key=b"k" * 32, identity=identity)
    surname = header.split("^")[0]
    plain = surname.replace("oe", "o").replace("ae", "a").replace("ue", "u")
    umlaut = surname.replace("oe", "\u00f6").replace("ae", "\u00e4").replace("ue", "\u00fc")
    for word in (f"PTV_{plain}", f"{plain}_L"):
        assert guard.find(word, own=False) == "" and pseudonymizer.name(word) == word, word
    for word in (f"PTV_{surname}", f"PTV_{umlaut}"):
        assert guard.find(word, own=False) == "a patient name", word
        assert "[removed]" in pseudonymizer.name(word), word


@pytest.mark.parametrize(
    "header, kept, found",
    [
        ("Ga\u00eblle^Ana\u00ebl", ["Galle", "Gallenblase", "Anal_Canal"], ["PTV_Gaelle", "PTV_Ga\u00eblle"]),
        ("Bakken^Ola", ["B\u00e6kken"], ["PTV_Bakken"]),
        ("Cour^Jean", ["C\u0153ur"], ["PTV_Cour"]),
        ("Muller^Jan", ["PTV_Mueller_\u00fc"], ["PTV_Muller"]),
        ("Soerensen^Jan", ["PTV_Sorensen"], ["PTV_S\u00f8rensen", "PTV_Soerensen"]),
        ("M\u00fcller^J\u00fcrgen", ["PTV_Mller"], ["PTV_Mueller", "PTV_Muller", "GTV Juergen"]),
    ],
    ids=["diaeresis", "ae letter", "oe letter", "ascii ue", "o slash", "umlaut"],
)
def test_two_letters_are_not_read_as_one_where_they_are_two(header, kept, found):
    """Fifty-seventh hostile trial BE1, BE5: the check read ae, oe, ue as one vowel wherever marks were dropped: the
    name Gaëlle as Galle (the German ROI Galle, gallbladder, failed the case "please report it"), the ROI Bækken as
    Bakken and Cœur as Cour (patients Bakken, Cour), Mueller in a text holding any non-ASCII letter as Muller. A
    letter's two-letter spelling is one of the name's spellings; two letters are not read as one."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.add_name(header)
    guard, pseudonymizer = IdentityGuard(identity), Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in kept:
        assert guard.find(text, own=False) == "" and pseudonymizer.name(text) == text, text
    for text in found:
        assert guard.find(text, own=False) == "a patient name", text
        assert "[removed]" in pseudonymizer.name(text), text


def test_a_halfwidth_kana_name_leaves_no_voiced_mark_behind():
    """Fifty-seventh hostile trial: ``PTV_ﾔﾏﾀﾞ`` (halfwidth katakana) for a patient ヤマダ was written ``PTV_[removed]ﾞ``:
    the voiced mark ﾞ is a letter to Unicode, not a mark, and stayed after the name it belongs to."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    identity = Identity()
    identity.add_name("\u30e4\u30de\u30c0^\u30bf\u30ed\u30a6")
    assert Pseudonymizer(key=b"k" * 32, identity=identity).name("PTV_\uff94\uff8f\uff80\uff9e") == "PTV_[removed]"


def test_a_header_date_with_a_prime_before_its_year_is_removed():
    """Fifty-ninth hostile trial BG4: the check reads a prime or a modifier apostrophe as ``'``, the rewriting did not
    before a two-digit year: ``CT 15.4.′23`` failed its case "please report it" (and before the check read them, it
    left the date in clear)."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity(dates={"20230415"})
    guard, pseudonymizer = IdentityGuard(identity), Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in ["CT 15.4.\u203223", "PTV 15-04-\u02bb23", "CT 15.4.'23"]:
        assert guard.find(text) == "a date", text
        assert guard.find(pseudonymizer.name(text)) == "", pseudonymizer.name(text)


def test_roi_names_whose_letters_a_file_name_cannot_hold_do_not_fail_the_case(tmp_path, capsys):
    """Fifty-ninth hostile trial BG2: a mask file name writes the letters it cannot hold as ``_``: ``Weiße_Substanz``
    as ``Wei_e_Substanz``, whose ``Wei`` is patient Wang^Wei's name, and the case failed "please report it" (so did
    ``Großhirn`` for Hansen^Gro). A file name made of an ROI name meta.json holds is read there, not again."""
    out, names = _named_patient_exported(
        tmp_path, capsys, "Wang^Wei", ["Wei\u00dfe_Substanz", "Gro\u00dfhirn", "PTV_Wei"]
    )
    assert {"Wei\u00dfe_Substanz", "Gro\u00dfhirn", "PTV_[removed]"} <= set(names), names


def test_a_near_name_in_a_script_with_marks_is_kept_by_both_sides():
    """The check of AZ3's fix reads a word of such a script with its marks: a name that differs by a vowel sign
    (\u0930\u093e\u0939\u0941\u0932\u0940 beside \u0930\u093e\u0939\u0941\u0932) is another name, kept by the rewriting and not found by the check
    (else its case would fail "please report it"); the name itself, and with a virama after it, is found."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    identity = Identity()
    identity.add_name("\u0936\u0930\u094d\u092e\u093e^\u0930\u093e\u0939\u0941\u0932")
    guard, pseudonymizer = IdentityGuard(identity), Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in ["PTV_\u0930\u093e\u0939\u0941\u0932\u0940", "\u0939\u0943\u0926\u092f", "PTV_70Gy"]:
        assert guard.find(text, own=False) == "", text
        assert pseudonymizer.name(text) == text
    for text in [
        "PTV_\u0930\u093e\u0939\u0941\u0932",
        "GTV \u0936\u0930\u094d\u092e\u093e",
        "\u0936\u0930\u094d\u092e\u093e \u0930\u093e\u0939\u0941\u0932",
    ]:
        assert guard.find(text, own=False) == "a patient name", text
        rewritten = pseudonymizer.name(text)
        assert "[removed]" in rewritten and not guard.find(rewritten, own=False), rewritten
        assert not any(unicodedata.category(c)[0] == "M" for c in rewritten), rewritten  # (no vowel sign left over)


def test_a_name_stored_right_is_not_repaired_into_another():
    """Forty-eighth hostile trial AV3: an upper-case Czech name stored right, ``PÍŠA^JAN``, encodes to bytes of UTF-8 by
    chance (ÍŠ: 0xCD 0x8A, a combining mark), and its "repair" ``P\u034aA`` made every ROI ``PA`` (the pulmonary artery)
    a removed name. A repair gives letters only."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard, Pseudonymizer

    for name, word in [("P\u00cd\u0160A^JAN", "PA"), ("KN\u00cd\u017dE^PETR", "KNE"), ("M\u00cd\u0160EK^JAN", "MEK")]:
        identity = Identity()
        identity.add_name(name)
        assert IdentityGuard(identity).find(f"{word}_trunk") == "", name
        assert Pseudonymizer(key=b"k" * 32, identity=identity).name(word) == word, name
        assert IdentityGuard(identity).find("PTV_" + name.split("^")[0].title()) == "a patient name", name


def test_no_advice_nor_channel_names_a_rewritten_roi_as_rois_cannot_select_it(tmp_path, capsys):
    """Forty-fourth hostile trial AR9: under --pseudonymize dataset.json's ``label_note`` advised ``--rois
    "[removed]_L,..."``, names as the export wrote them; --rois matches the input's names, so following the advice
    gave all-zero channels, every case ok. The advice names no rewritten ROI, and a --rois channel holding DoseAlign's
    mark that no ROI of the input (nor a --roi-map channel) is named is refused; an ROI the input itself named so
    is still chosen."""
    from DoseAlignLib.output.datalist import label_note

    note = label_note([["[removed]_L", "Cord"], ["[removed]_R", "Heart"]], [])
    assert "[removed]" not in note and '--rois "Cord,Heart"' in note and "--roi-map" in note, note
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "LUNG-1", 151, patient_name="Lung^Wei")
    ds = dd.read(truth.struct_file)
    ds.StructureSetROISequence[2].ROIName = "Lung_L"  # (Cord)
    dd.save(ds, truth.struct_file)
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--rois"]
    assert main(["export", str(root), str(tmp_path / "out"), *args, "PTV,[removed]_L"]) == 2
    err = capsys.readouterr().err
    assert "--rois '[removed]_L': no ROI of the input has this name" in err and "--roi-map" in err, err
    ds.StructureSetROISequence[2].ROIName = "[removed]_L"  # (an earlier de-identification named it so: AB9)
    dd.save(ds, truth.struct_file)
    assert main(["export", str(root), str(tmp_path / "out2"), *args, "PTV,[removed]_L"]) == 0
    capsys.readouterr()
    (case,) = [p for p in (tmp_path / "out2").iterdir() if p.is_dir()]
    present = json.loads((case / "meta.json").read_text(encoding="utf-8"))["structures"]["roi_present"]
    assert present == [True, True], present


#: Seventy-first hostile trial BS1, BS2: names of four components or more whose surname has particles, written with
#: the given name before the surname joined (``Mary Vanderberg`` for ``van der Berg^Mary``): the rewriting found the
#: given name with the particles, then not the joined surname overlapping it, and left ``[removed]berg``: refused
#: ("please report it"), or with a digit after it kept (``[removed]cruz2``), since the check did not read a name of
#: three or four letters glued to digits.
SURNAMES_WITH_PARTICLES = [
    ("van der Berg^Mary", ["Mary Vanderberg", "MARY VANDERBERG", "PTV_Mary_Vanderberg", "Mary Vanderberg2", "Berg2"]),
    ("de la Cruz^Juan", ["PTV_Juan_Delacruz2", "JUAN DELACRUZ1", "Juan Delacruz70Gy", "2Cruz"]),
    ("van Dijk^Jan Willem", ["Jan Willem Vandijk", "JAN WILLEM VANDIJK1"]),
    ("Nguyen^Thi Minh Anh", ["Nguyen Thi Minhanh", "PTV_Anh2"]),
    ("Roth^Eva", ["PTV_Roth2", "ROTH1", "Roth70Gy", "x1eva"]),
    ("ODea^Ann", ["PTV_ODea2", "ODea2"]),
]


@pytest.mark.parametrize("header, spelled", SURNAMES_WITH_PARTICLES, ids=[h for h, _s in SURNAMES_WITH_PARTICLES])
def test_a_joined_surname_after_a_given_name_and_short_names_beside_digits(header, spelled):
    _one_name_on_both_sides(header, spelled, kept=["PTV_70", "Lung_L", "CTV_54Gy", "D2cc", "V20Gy", "Bladder"])


def test_a_joined_surname_with_a_digit_is_not_kept_in_clear(tmp_path, capsys):
    """BS2 end to end: ``PTV_Juan_Delacruz2`` for ``de la Cruz^Juan`` wrote ``PTV_[removed]cruz2`` into meta.json,
    case.h5 and dataset.h5, ok, exit 0."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "DLC-4711", 63, patient_name="de la Cruz^Juan", extra_organs=2)
    ds = dd.read(truth.struct_file)
    for roi, name in zip(list(ds.StructureSetROISequence)[-2:], ["PTV_Juan_Delacruz2", "JUAN DELACRUZ1"]):
        roi.ROIName = name
    dd.save(ds, truth.struct_file)
    out = tmp_path / "share" / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--pseudonymize", *_formats()]) == 0
    capsys.readouterr()
    found = [where for where, data in _all_output_bytes(out) if b"cruz" in data.lower()]
    assert not found, found


def test_a_hash_digest_of_another_export_holds_no_short_name():
    """Seventy-third hostile trial BU1 (a regression of BS2's fix): the check's reading of letters beside digits found
    a patient Ada in another input's file token ``fc688ada6c9`` and damaged-file row id, and an --append run stopped
    whole. Hash digests are left out of that reading; a name beside digits elsewhere is still found."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard

    identity = Identity()
    identity.add_name("Lovelace^Ada")
    guard = IdentityGuard(identity)
    for text in ("f/fc688ada6c9.dcm", "damaged-file_1c74ada3b7", "3ada9c0f1b2e"):
        assert guard.find(text, own=False) == "" and guard.find(text) == "", text
    for text in ("PTV_Ada2", "ADA1", "Ada70Gy"):
        assert guard.find(text, own=False) == "a patient name", text


@pytest.mark.parametrize(
    "header, spelled, kept",
    [("Rem^Ove", ["PTV_Ove", "Rem_boost"], ["CTV", "Boost"]), ("Lo Re^Giuseppe", ["PTV_Lore", "Giuseppe_1"], [])],
)
def test_dosealigns_own_mark_spells_no_joined_name(header, spelled, kept):
    """Seventy-third hostile trial BU2: the check read the letters of DoseAlign's own ``[removed]`` mark as part of a
    joined name: for Rem^Ove every case where anything was removed failed ("remove"), and PTV_Lo_[removed] made Lo
    Re's "lore". The mark is a separator to the check."""
    from DoseAlignLib.output.pseudonym import Identity, IdentityGuard

    _one_name_on_both_sides(header, spelled, kept)
    identity = Identity()
    identity.add_name(header)
    guard = IdentityGuard(identity)
    for text in ("CBCT_[removed]", "PTV_Lo_[removed]", "[removed]_boost"):
        assert guard.find(text, own=False) == "" and guard.find(text) == "", text


@pytest.mark.parametrize("spelling", ["dot-dot", "shell in the link", "input through a link"])
def test_a_key_below_the_input_through_a_folder_link_is_refused_however_spelt(
    study, tmp_path, capsys, monkeypatch, spelling
):
    """Seventy-second hostile trial BT2: BO2's fix was passed by ``in/link/sub/../key.csv``, by a relative key given
    from a shell in ``in/link`` (the system names that folder by its resolved path) and by the input given through
    a link to it: the key and map were written into what the scan of the input walks. Each is refused."""
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    shutil.copytree(study["root"], root)
    (elsewhere / "sub").mkdir(parents=True)
    (root / "link").symlink_to(elsewhere, target_is_directory=True)
    given = root
    key, out = root / "link" / "key.csv", root / "link" / "out"
    if spelling == "dot-dot":
        key, out = root / "link" / "sub" / ".." / "key.csv", root / "link" / "sub" / ".." / "out"
    elif spelling == "shell in the link":
        monkeypatch.chdir(root / "link")
        monkeypatch.setenv("PWD", str(root / "link"))
        key, out = "key.csv", "out"
    else:
        given = tmp_path / "input-link"
        given.symlink_to(root, target_is_directory=True)
    args = ["export", str(given), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize"]
    assert main([*args, "--key-file", str(key)]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["sub"]


#: Digits that NFKC reads as 0-9 and Python's ``\\d`` does not (category No): subscript, superscript, circled.
COMPATIBLE_DIGITS = {
    "subscript": "\u2080\u2081\u2082\u2083\u2084\u2085\u2086\u2087\u2088\u2089",
    "superscript": "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079",
    "circled": "\u24ea\u2460\u2461\u2462\u2463\u2464\u2465\u2466\u2467\u2468",
}


@pytest.mark.parametrize("digits", sorted(COMPATIBLE_DIGITS))
def test_a_uid_written_in_compatible_digits_is_removed_and_the_case_exports(tmp_path, capsys, digits):
    """Seventy-ninth hostile trial CA3: the input's StudyInstanceUID written in subscript or circled digits in an ROI
    name was found by the leak check (which reads NFKC) and kept by the rewriting, so the case failed "please report
    it". The rewriting reads each character's NFKC form too: the case is ok and the digits are nowhere."""
    truth = hostile.study(tmp_path / "in" / "p", "UIDSUB-1", 232, ct_size=(24, 24, 10), dose_size=(12, 12, 6))
    uid = str(dd.read(truth.plan_file).StudyInstanceUID)
    spelled = uid.translate(str.maketrans("0123456789", COMPATIBLE_DIGITS[digits]))
    last = uid.split(".")[-1]
    ds = dd.read(truth.struct_file)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StructureSetROISequence[-1].ROIName = f"R{spelled}x"
    ds.StructureSetLabel = f"CT {spelled.split('.')[-1]}"
    dd.save(ds, truth.struct_file)
    out = tmp_path / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]
    assert main(["export", str(tmp_path / "in"), str(out), *args, "--format", "npz,nifti"]) == 0, capsys.readouterr()
    assert [row["status"] for row in hostile.manifest(out)] == ["ok"]
    for where, data in _all_output_bytes(out):
        text = "".join(c for c in unicodedata.normalize("NFKC", data.decode("utf-8", "replace")) if c.isalnum())
        assert last not in text, f"the UID's digits are in {where}"


@pytest.mark.parametrize("separator", ["_", "-", " ", "", "^", "\uff0e", "\u00b7", " -- "])
def test_a_uid_written_with_other_separators_never_reaches_the_output(tmp_path, capsys, separator):
    """Seventy-fifth hostile trial BW1: the input's StudyInstanceUID written with another separator than the point
    (``2_25_2414...``, ``2 25 2414...``, or without any) in an ROI name and a label stood in clear in meta.json,
    dvh.csv, the mask file names, case.h5 and dataset.json, status ok, the check as blind as the rewriting; so did a
    UID's long last component alone. Both are removed, and the check finds them on its own."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    truth = hostile.study(tmp_path / "in" / "p", "UIDSEP-1", 231, ct_size=(24, 24, 10), dose_size=(12, 12, 6))
    uid = str(dd.read(truth.plan_file).StudyInstanceUID)
    spelled = uid.replace(".", separator)
    last = uid.split(".")[-1]
    assert len(last) >= 16, uid  # (else the component alone is no needle: the test would prove less)
    ds = dd.read(truth.struct_file)
    ds.StructureSetROISequence[-1].ROIName = f"R{spelled}"
    ds.StructureSetLabel = f"CT_{last}"
    dd.save(ds, truth.struct_file)
    (tmp_path / "site.key").write_text("5a" * 32, encoding="utf-8")
    out = tmp_path / "out"
    args = ["--quiet", "--workers", "1", "--no-qa-png", "--pseudonymize", "--key-file", str(tmp_path / "site.key")]
    assert main(["export", str(tmp_path / "in"), str(out), *args, "--format", "npz,nifti,hdf5"]) == 0
    capsys.readouterr()
    assert [row["status"] for row in hostile.manifest(out)] == ["ok"]
    assert not _spellings_in_output(out, [last]), "the UID's digits are in the output"
    identity = Identity(uids={uid})
    guard = Pseudonymizer(key=b"k" * 32, identity=identity).guard
    assert guard.find(f"R{spelled}", own=False) == "a UID" and guard.find(f"CT_{last}") == "a UID"
