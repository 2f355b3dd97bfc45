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

import importlib.util
import os

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

    monkeypatch.setattr(pseudonym.NameSpellings, "redact", lambda self, text: text)  # the rewriting misses all
    out = tmp_path / "share" / "out"
    code = main(["export", str(study["root"]), str(out), "--quiet", "--workers", "1", "--pseudonymize"])
    capsys.readouterr()
    assert code == 1
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed" and "pseudonymization left a patient name" in row["reason"]
    assert not [p for p in out.iterdir() if p.is_dir()], "a case that would leak is not written"
    assert not _squeezed_leaks(out)


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
