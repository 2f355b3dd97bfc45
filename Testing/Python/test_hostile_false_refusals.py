"""Hostile inputs, class 3: valid inputs are not refused.

A Deflated Explicit VR Little Endian RTSTRUCT whose contour data exceed the deferred-reading size (its
inflated positions lie beyond the file's size) is read and rasterized like the plain one; a DICOMDIR is
recognised under every spelling people and media give it (``dicomdir``, ``DICOMDIR.``, ``DICOMDIR;1``)
and by its SOP class under any name, and never reported as a damaged file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dicom_damage as dd
import hostile
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence

DEFLATED = "1.2.840.10008.1.2.1.99"


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple:
    """A study with structures and its plain export."""
    base = tmp_path_factory.mktemp("false")
    truth = hostile.study(base / "in" / "p", "FALSE-1", 4)
    out = base / "out"
    done = hostile.dosealign("export", str(base / "in"), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stderr
    return base, truth, out


def _dense(struct: Path, points: int) -> None:
    """Give the first contour ``points`` vertices on the same outline (ContourData well over 64 KiB)."""
    ds = dd.read(struct)
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    outline = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
    t = np.linspace(0, len(outline), points, endpoint=False)
    i0 = np.floor(t).astype(int) % len(outline)
    f = (t - np.floor(t))[:, None]
    dense = outline[i0] * (1 - f) + outline[(i0 + 1) % len(outline)] * f
    contour.ContourData = [f"{v:.6f}" for v in dense.ravel()]
    contour.NumberOfContourPoints = points
    dd.save(ds, struct)


def _deflate(path: Path) -> None:
    ds = pydicom.dcmread(str(path))
    ds.file_meta.TransferSyntaxUID = DEFLATED
    if dd.PYDICOM3:
        ds.save_as(str(path), enforce_file_format=True)
    else:
        ds.is_implicit_VR, ds.is_little_endian = False, True
        ds.save_as(str(path), write_like_original=False)


def test_a_deflated_rtstruct_is_read_like_the_plain_one(plain, tmp_path):
    base, truth, _out = plain
    dense_in = tmp_path / "dense"
    shutil.copytree(base / "in", dense_in)
    struct = dense_in / truth.struct_file.relative_to(base / "in")
    _dense(struct, 12000)
    reference = tmp_path / "reference"
    done = hostile.dosealign("export", str(dense_in), str(reference), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout
    _deflate(struct)
    assert pydicom.dcmread(str(struct)).file_meta.TransferSyntaxUID == DEFLATED
    assert struct.stat().st_size < 65536 * 2, "the test needs inflated positions beyond the file's size"
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(dense_in), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = hostile.manifest(out)
    (expected,) = hostile.manifest(reference)
    with np.load(out / row["case_id"] / "pair.npz") as a, np.load(reference / expected["case_id"] / "pair.npz") as b:
        np.testing.assert_array_equal(a["masks"], b["masks"])
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert len(meta["structures"]["names"]) >= 3


def _dicomdir(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "HOSTILE"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence([])
    if dd.PYDICOM3:
        ds.save_as(str(path), enforce_file_format=True)
    else:
        ds.is_implicit_VR, ds.is_little_endian = False, True
        ds.save_as(str(path), write_like_original=False)


@pytest.mark.parametrize("name", ["DICOMDIR", "dicomdir", "DICOMDIR.", "DICOMDIR;1", "index.dcm"])
def test_a_dicomdir_under_any_name_is_no_damaged_file(plain, tmp_path, name):
    base, _truth, _out = plain
    root = tmp_path / "in"
    shutil.copytree(base / "in", root)
    _dicomdir(root / name)
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["status"] for r in hostile.manifest(out)] == ["ok"]
    scan = hostile.dosealign("scan", str(root))
    assert name not in scan.stdout.split("Skipped files")[-1] if "Skipped files" in scan.stdout else True
    from DoseAlignLib.dicom.scan import scan_folder

    ignored = dict(scan_folder(root).ignored)
    assert ignored.get(name, "").startswith("DICOMDIR"), ignored


def _bare(path: Path, form: str, preamble: bool) -> None:
    """Write a slice as a data set without file meta (older exports): implicit or explicit VR little endian, or
    starting with an ACR-NEMA (0008,0000) group length; with the 128-byte preamble and 'DICM' or without."""
    ds = pydicom.dcmread(str(path))
    ds.file_meta = FileMetaDataset()
    ds.preamble = b"\0" * 128 if preamble else None
    if form == "group length":
        ds.add_new(0x00080000, "UL", 0)
    implicit = form != "explicit"
    if dd.PYDICOM3:
        pydicom.dcmwrite(str(path), ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    else:
        ds.is_implicit_VR, ds.is_little_endian = implicit, True
        pydicom.dcmwrite(str(path), ds, write_like_original=True)
    head = path.read_bytes()[:136]
    assert (head[128:132] == b"DICM") is preamble and (head[132:134] == b"\x08\x00" if preamble else True)
    assert pydicom.dcmread(str(path), force=True).file_meta.get("TransferSyntaxUID") is None


@pytest.mark.parametrize(
    "form, preamble", [("implicit", False), ("explicit", False), ("group length", False), ("implicit", True)]
)
def test_ct_slices_without_file_meta_are_read(plain, tmp_path, form, preamble):
    """From the fifth hostile trial (E23): CT slices stored as bare data sets (no file meta, so no
    (0002,0010) TransferSyntaxUID) were taken by the scan, then failed the whole case "pixel data is
    damaged: ... 'file_meta' has no (0002,0010) 'Transfer Syntax UID' element". The syntax pydicom read
    them in is taken as theirs: the case exports the same CT as with the original slices."""
    base, truth, out = plain
    root = tmp_path / "in"
    shutil.copytree(base / "in", root)
    for path in truth.ct_files[1:3]:
        _bare(root / path.relative_to(base / "in"), form, preamble)
    new = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(new), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = hostile.manifest(new)
    (expected,) = hostile.manifest(out)
    assert row["status"] == "ok", row["reason"]
    with np.load(new / row["case_id"] / "pair.npz") as a, np.load(out / expected["case_id"] / "pair.npz") as b:
        assert a["ct"].shape == b["ct"].shape
        np.testing.assert_array_equal(a["ct"], b["ct"])
        np.testing.assert_array_equal(a["dose"], b["dose"])


def test_roi_names_with_other_letters_export_as_nrrd(tmp_path, capsys):
    """From a fresh hostile trial: an ROI named with letters beyond ASCII (Rückenmark, the German spinal
    cord) failed its case with --format nrrd ("internal error (UnicodeEncodeError ...)"): an NRRD header
    is ASCII. The name is written escaped there (and as it is in meta.json); a line break cannot start a
    field of its own."""
    pytest.importorskip("nrrd")
    from DoseAlignLib.cli import main

    root = tmp_path / "in"
    truth = hostile.study(root / "p", "NRRD-1", 12)
    ds = dd.read(truth.struct_file)
    ds.SpecificCharacterSet = "ISO_IR 192"
    rois = list(ds.StructureSetROISequence)
    rois[1].ROIName, rois[2].ROIName = "Rückenmark", "PTV\nspace: evil"
    dd.save(ds, truth.struct_file)
    out = tmp_path / "out"
    assert main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png", "--format", "nrrd"]) == 0
    capsys.readouterr()
    (row,) = hostile.manifest(out)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert "Rückenmark" in meta["structures"]["names"]
    headers = {}
    for path in (out / row["case_id"] / "masks").glob("*.nrrd"):
        headers[path.name] = path.read_bytes().split(b"\n\n", 1)[0].decode("ascii")
    assert any("content: ROI R\\xfcckenmark" in h for h in headers.values()), headers
    assert not any(line.startswith("space: evil") for h in headers.values() for line in h.splitlines())


# ---- one structure set twice, encoded otherwise (fourth hostile trial L-b) -------------------------------------


_save_encoded = dd.save_encoded


def _point_moved(ds) -> None:
    contour = ds.ROIContourSequence[1].ContourSequence[0]
    values = [float(v) for v in contour.ContourData]
    values[0] += 0.5
    contour.ContourData = values


#: A second file of the plan's structure set (same SOPInstanceUID): how it was made, and what the export says.
COPIES = {
    "re-encoded implicit VR": (pydicom.uid.ImplicitVRLittleEndian, None, "encoded otherwise (Implicit VR"),
    "deflated": (DEFLATED, None, "encoded otherwise (Deflated Explicit VR"),
    "another description": (
        None,
        lambda ds: setattr(ds, "StructureSetDescription", "exported again from the TPS"),
        "differs only in StructureSetDescription, which the export does not read",
    ),
    "a contour point moved": (None, _point_moved, "ROIContourSequence[1].ContourSequence[0].ContourData"),
    "a ROI renamed": (
        pydicom.uid.ImplicitVRLittleEndian,
        lambda ds: setattr(ds.StructureSetROISequence[2], "ROIName", "Other"),
        "StructureSetROISequence[2].ROIName",
    ),
}


@pytest.mark.parametrize("copy", sorted(COPIES))
def test_one_structure_set_in_two_encodings_is_one(plain, tmp_path, copy):
    """From a fourth hostile trial: the same RTSTRUCT twice under one SOPInstanceUID, the copy re-encoded (Implicit
    VR, deflated) or differing only in StructureSetDescription, failed its case as conflicting copies. Copies whose
    decoded contents agree on everything the export reads are one structure set: the first by path is used (the
    export is the plain one), a note names the other and how it differs. A copy that differs in what the export
    reads (a contour point, a ROI name) still fails the case, naming both files and the element."""
    base, truth, clean = plain
    syntax, edit, said = COPIES[copy]
    root = tmp_path / "in"
    shutil.copytree(base / "in", root)
    original = root / truth.struct_file.relative_to(base / "in")
    second = original.parent / ("zz_" + original.name)  # after the original by path
    ds = pydicom.dcmread(str(original))
    if edit is not None:
        edit(ds)
    _save_encoded(ds, second, syntax or str(ds.file_meta.TransferSyntaxUID))
    assert pydicom.dcmread(str(second)).SOPInstanceUID == pydicom.dcmread(str(original)).SOPInstanceUID
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert "Traceback" not in done.stderr, done.stderr
    (row,) = hostile.manifest(out)
    if edit is not None and copy != "another description":
        assert done.returncode == 1, done.stdout
        assert row["status"] == "failed", row
        for part in (original.name, second.name, "share SOPInstanceUID", said, "(0008,0018)"):
            assert part in row["reason"], (part, row["reason"])
        return
    assert done.returncode == 0, done.stdout + done.stderr
    (expected,) = hostile.manifest(clean)
    assert row["status"] == "ok" and row["case_id"] == expected["case_id"], row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"]["rtstruct_files"] == [original.relative_to(root).as_posix()], meta["source"]
    note = [n for n in meta["links"] if n.startswith(f"RTSTRUCT {second.relative_to(root).as_posix()} is a copy")]
    assert note and said in note[0] and f"{original.relative_to(root).as_posix()} is used" in note[0], meta["links"]
    with np.load(out / row["case_id"] / "pair.npz") as a, np.load(clean / row["case_id"] / "pair.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])


# ---- CLOSEDPLANAR_XOR (PS3.3 C.8.8.6.3) ------------------------------------------------------------


def _ring_rtstruct(kinds: tuple) -> list:
    """One ROI on three planes: an outer square and an inner one (the hole), of geometric types ``kinds``."""
    from rt_builders import make_rtstruct, rect

    contours = []
    for z in (0.0, 3.0, 6.0):
        contours.append((kinds[0], rect(-20, -20, 20, 20, z)))
        contours.append((kinds[1], rect(-8, -8, 8, 8, z)))
    return make_rtstruct([{"number": 1, "name": "Ring", "type": "ORGAN", "contours": contours}])


def test_closedplanar_xor_contours_make_the_same_mask_and_a_ring_has_its_hole():
    """Sixth hostile trial F8: CLOSEDPLANAR_XOR contours (PS3.3 C.8.8.6.3: combined by exclusive disjunction)
    were not read: the ROI was left out with status ok. Read, the XOR of an outer and an inner contour is the
    ring with its hole, voxel for voxel the mask the same contours make as CLOSED_PLANAR (even-odd)."""
    from DoseAlignLib.dicom.rtstruct import read_structure_set
    from DoseAlignLib.geometry.grid import Grid
    from DoseAlignLib.structures.rasterize import rasterize_roi

    grid = Grid.from_spacing((12, 60, 60), (1.0, 1.0, 0.75), (-29.5, -29.5, -1.5), frame_of_reference_uid="1.2.3.4")
    masks = {}
    for kinds in (("CLOSED_PLANAR", "CLOSED_PLANAR"), ("CLOSEDPLANAR_XOR", "CLOSEDPLANAR_XOR")):
        (roi,) = read_structure_set(_ring_rtstruct(kinds), rel_path="rs.dcm")
        assert roi.skipped is None, roi.skipped
        masks[kinds[0]] = rasterize_roi(roi, grid, thickness_mm=3.0).full(grid.shape)
    xor = masks["CLOSEDPLANAR_XOR"]
    np.testing.assert_array_equal(xor, masks["CLOSED_PLANAR"])
    yy, xx = np.meshgrid(-29.5 + np.arange(60), -29.5 + np.arange(60), indexing="ij")
    ring = ((np.abs(xx) < 20) & (np.abs(yy) < 20)) & ~((np.abs(xx) < 8) & (np.abs(yy) < 8))
    np.testing.assert_array_equal(xor[4], ring)  # z = 1.5: the hole is a hole
    assert not xor[4, 30, 30] and xor[4, 30, 15]  # (x, y) = (0.5, 0.5) in the hole, (-14.5, 0.5) in the ring


def test_an_roi_mixing_closed_planar_and_xor_contours_is_left_out_with_the_reason():
    from DoseAlignLib.dicom.rtstruct import is_structure_set_defect, read_structure_set

    (roi,) = read_structure_set(_ring_rtstruct(("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")), rel_path="rs.dcm")
    assert roi.skipped and "mixes CLOSED_PLANAR and CLOSEDPLANAR_XOR" in roi.skipped and "(3006,0042)" in roi.skipped
    assert is_structure_set_defect(roi.skipped)  # said as a case warning, not only in meta.json


def test_an_export_reads_closedplanar_xor_rois_like_closed_planar_ones(plain, tmp_path):
    """F8 end to end: every contour of every ROI relabelled CLOSEDPLANAR_XOR exports the plain masks; one ROI
    mixing the two types is left out with a case warning in the manifest."""
    base, truth, out = plain
    xor_in = tmp_path / "xor"
    shutil.copytree(base / "in", xor_in)
    struct = xor_in / truth.struct_file.relative_to(base / "in")
    ds = dd.read(struct)
    for item in ds.ROIContourSequence:
        for contour in item.get("ContourSequence", []):
            if contour.ContourGeometricType == "CLOSED_PLANAR":
                contour.ContourGeometricType = "CLOSEDPLANAR_XOR"
    dd.save(ds, struct)
    xor_out = tmp_path / "xor-out"
    done = hostile.dosealign("export", str(xor_in), str(xor_out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = hostile.manifest(xor_out)
    (expected,) = hostile.manifest(out)
    assert row["n_rois"] == expected["n_rois"] and row["warnings"] == expected["warnings"], (row, expected)
    with np.load(xor_out / row["case_id"] / "pair.npz") as a, np.load(out / expected["case_id"] / "pair.npz") as b:
        np.testing.assert_array_equal(a["masks"], b["masks"])
    meta = json.loads((xor_out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert (
        meta["structures"]["skipped"]
        == json.loads((out / expected["case_id"] / "meta.json").read_text(encoding="utf-8"))["structures"]["skipped"]
    )
    assert any("CLOSEDPLANAR_XOR" in note for roi in meta["structures"]["rois"] for note in roi.get("notes", []))
    # one contour of one ROI back to CLOSED_PLANAR: that ROI is left out, said in the manifest's warnings
    item = next(i for i in ds.ROIContourSequence if len(i.get("ContourSequence", [])) > 1)
    item.ContourSequence[0].ContourGeometricType = "CLOSED_PLANAR"
    dd.save(ds, struct)
    mixed_out = tmp_path / "mixed-out"
    done = hostile.dosealign("export", str(xor_in), str(mixed_out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = hostile.manifest(mixed_out)
    assert int(row["n_rois"]) == int(expected["n_rois"]) - 1
    assert "mixes CLOSED_PLANAR and CLOSEDPLANAR_XOR" in row["warnings"], row["warnings"]


def test_limits_set_to_infinity_mean_no_limit(plain, tmp_path):
    """Eighth hostile trial H6: `inf` is the natural way to lift a limit, and passed the check (a positive float),
    then overflowed converting to bytes: DOSEALIGN_MEMORY_MULTIPLE/FLOOR_MB=inf failed every case as an "internal
    error", DOSEALIGN_META_MB/MANIFEST_MB=inf ended --resume in a traceback, DOSEALIGN_INFLATE_MB=inf called a valid
    deflated RTSTRUCT damaged. Each means no limit now."""
    base, truth, _out = plain
    root = tmp_path / "in"
    shutil.copytree(base / "in", root)
    _deflate(root / truth.struct_file.relative_to(base / "in"))
    names = ["MEMORY_MULTIPLE", "MEMORY_FLOOR_MB", "INFLATE_MB", "META_MB", "MANIFEST_MB"]
    env = {f"DOSEALIGN_{name}": "inf" for name in names}
    out = tmp_path / "out"
    for extra in ([], ["--resume"]):
        done = hostile.dosealign("export", str(root), str(out), "--workers", "2", "--no-qa-png", *extra, env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
        rows = hostile.manifest(out)
        assert [r["status"] for r in rows] == (["skipped"] if extra else ["ok"]), rows
    meta = json.loads((out / rows[0]["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert len(meta["structures"]["names"]) >= 3  # the deflated structure set was read


ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def _item(**values) -> DicomSequence:
    """A sequence of one item holding ``values`` (a functional group)."""
    one = Dataset()
    for keyword, value in values.items():
        setattr(one, keyword, value)
    return DicomSequence([one])


def _enhanced_ct(slices: list, order: list, per_frame_rescale: bool) -> tuple:
    """The single-frame CT ``slices`` as one Enhanced CT Image (PS3.3 A.38), its frames in ``order`` (indices into
    ``slices``): orientation and spacing shared, each frame's position in its own functional groups, rescale
    shared or, with ``per_frame_rescale``, per frame with the stored values shifted to give the same HU.
    Returns ``(data set, SOPInstanceUID of each frame's slice)``; the slices are read, not changed."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    read = [dd.read(p) for p in slices]
    ds = dd.read(slices[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = len(order)

    shared = Dataset()
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=read[0].ImageOrientationPatient)
    shared.PixelMeasuresSequence = _item(PixelSpacing=read[0].PixelSpacing, SliceThickness=read[0].SliceThickness)
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = _item(
            RescaleSlope=read[0].RescaleSlope, RescaleIntercept=read[0].RescaleIntercept, RescaleType="HU"
        )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    stored = "<i2" if int(ds.PixelRepresentation) == 1 else "<u2"
    frames, data = [], []
    for k, index in enumerate(order):
        one = read[index]
        frame = Dataset()
        frame.PlanePositionSequence = _item(ImagePositionPatient=one.ImagePositionPatient)
        frame.FrameContentSequence = _item(DimensionIndexValues=[1, index + 1], InStackPositionNumber=index + 1)
        values = np.frombuffer(one.PixelData, dtype=stored).astype(np.int64)
        if per_frame_rescale:  # the same HU from other stored values: intercept lowered, values raised by 7 k
            frame.PixelValueTransformationSequence = _item(
                RescaleSlope=one.RescaleSlope, RescaleIntercept=float(one.RescaleIntercept) - 7 * k, RescaleType="HU"
            )
            values = values + 7 * k
        data.append(values.astype(stored).tobytes())
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = b"".join(data)
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "RescaleSlope",
                    "RescaleIntercept", "SliceLocation", "InstanceNumber"):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    return ds, [read[i].SOPInstanceUID for i in order]


def _refer_to_frames(struct: Path, uid: str, frame_uids: list) -> None:
    """The structure set names the Enhanced CT's one SOPInstanceUID and a ReferencedFrameNumber where it named
    single-frame slices."""
    ds = dd.read(struct)
    numbers = {old: n + 1 for n, old in enumerate(frame_uids)}
    items = [
        image
        for frame in ds.ReferencedFrameOfReferenceSequence
        for study in frame.RTReferencedStudySequence
        for series in study.RTReferencedSeriesSequence
        for image in series.ContourImageSequence
    ]
    items += [
        image
        for roi in ds.ROIContourSequence
        for contour in roi.get("ContourSequence", [])
        for image in contour.get("ContourImageSequence", [])
    ]
    for image in items:
        image.ReferencedFrameNumber = numbers[image.ReferencedSOPInstanceUID]
        image.ReferencedSOPInstanceUID, image.ReferencedSOPClassUID = uid, ENHANCED_CT
    dd.save(ds, struct)


def _study_with_enhanced_ct(base: Path, truth, root: Path, per_frame_rescale: bool = True) -> tuple:
    """A copy of the study under ``root`` with its CT as one Enhanced CT file, frames not in slice order
    (backwards, then turned by three), the structure set referring to it. Returns ``(the file, the data set)``."""
    shutil.copytree(base / "in", root)
    slices = [root / p.relative_to(base / "in") for p in truth.ct_files]
    order = list(range(len(slices)))[::-1]
    order = order[3:] + order[:3]
    ds, frame_uids = _enhanced_ct(slices, order, per_frame_rescale)
    for path in slices:
        path.unlink()
    enhanced = slices[0].parent / "enhanced_ct.dcm"
    dd.save(ds, enhanced)
    _refer_to_frames(root / truth.struct_file.relative_to(base / "in"), ds.SOPInstanceUID, frame_uids)
    return enhanced, ds


def _same_export(out: Path, reference: Path) -> dict:
    """The one case of ``out`` equals the one of ``reference`` in every array and in the CT's grid; its meta.json."""
    (row,) = hostile.manifest(out)
    (expected,) = hostile.manifest(reference)
    assert row["status"] == "ok", row
    with np.load(out / row["case_id"] / "pair.npz") as a, np.load(reference / expected["case_id"] / "pair.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    before = json.loads((reference / expected["case_id"] / "meta.json").read_text(encoding="utf-8"))
    for key in ("shape", "ijk_to_lps", "frame_of_reference_uid", "geometry"):  # the grid, the CT's checks
        assert meta[key] == before[key], key
    return meta


def test_an_enhanced_multi_frame_ct_is_read_like_its_single_frame_series(plain, tmp_path):
    """Eighth hostile trial H11: an Enhanced (multi-frame) CT was refused (before stop 22 with a wrong reason,
    'ImageOrientationPatient is missing'; since, as not supported). Its frames are now the slices: the CT built
    from the phantom's single-frame slices (frames out of order, a rescale per frame, the structure set naming the
    one SOPInstanceUID with ReferencedFrameNumber) exports the same CT, grid, dose and masks as the series, and
    scan lists its true number of slices."""
    base, truth, reference = plain
    root = tmp_path / "in"
    enhanced, _ds = _study_with_enhanced_ct(base, truth, root)
    scanned = hostile.dosealign("scan", str(root))
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    count = len(truth.ct_files)
    assert f"({count} slices: the frames of 1 multi-frame file)" in scanned.stdout, scanned.stdout
    # the structure set's references (the one SOPInstanceUID, frame numbers) lead to it
    assert "chosen via RTPLAN -> RTSTRUCT" in scanned.stdout, scanned.stdout
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    meta = _same_export(out, reference)
    assert meta["source"]["ct_files"] == [enhanced.relative_to(root).as_posix()]
    assert [f["file"] for f in meta["source"]["input_files"]].count(enhanced.relative_to(root).as_posix()) == 1


def test_a_one_frame_enhanced_ct_present_twice_is_read_once(tmp_path):
    """Twenty-first hostile trial U7: a one-frame Enhanced CT and a byte copy of it failed the case ("its copy gives
    1 mm"): the copy's slice step was read from its top-level header, which an Enhanced CT does not use. The copy
    is read as the file is, from its functional groups, and the same bytes are one CT."""
    root = tmp_path / "in"
    truth = hostile.study(root / "p", "ENH1-1", 12, with_structures=False)
    slices = [Path(p) for p in truth.ct_files]
    middle = len(slices) // 2
    ds, _uids = _enhanced_ct(slices, [middle], per_frame_rescale=False)
    for path in slices:
        path.unlink()
    enhanced = slices[0].parent / "enhanced_ct.dcm"
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    expected = 2 * float(measures.SliceThickness) + 0.5  # not the in-plane spacing, which is assumed when none
    measures.SliceThickness = expected
    for keyword in ("SliceThickness", "SpacingBetweenSlices"):  # an Enhanced CT states it in its groups only
        if keyword in ds:
            delattr(ds, keyword)
    dd.save(ds, enhanced)
    shutil.copyfile(enhanced, enhanced.with_name("enhanced_ct_copy.dcm"))
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = hostile.manifest(out)
    assert row["status"] == "ok", row
    meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["shape"][0] == 1 and meta["spacing"][2] == pytest.approx(expected), meta["spacing"]


def test_a_compressed_enhanced_ct_is_read_alike(plain, tmp_path):
    """The frames of an RLE-compressed Enhanced CT (decoded by pydicom, not read in place) give the same export."""
    from pydicom.uid import RLELossless

    base, truth, reference = plain
    root = tmp_path / "in"
    enhanced, _ds = _study_with_enhanced_ct(base, truth, root)
    ds = pydicom.dcmread(str(enhanced))
    ds.compress(RLELossless, ds.pixel_array)
    ds.save_as(str(enhanced))
    assert pydicom.dcmread(str(enhanced)).file_meta.TransferSyntaxUID == RLELossless
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    _same_export(out, reference)
    # the memory check counts the CT as the series' and the whole file decoded (its frames are not read in place)
    needs = {name: _memory_parts(folder) for name, folder in (("series", base / "in"), ("enhanced", root))}
    decoded = needs["enhanced"].pop("CT frames decoded (multi-frame file)")
    assert needs["enhanced"] == needs["series"]
    assert decoded == 4 * len(truth.ct_files) * int(ds.Rows) * int(ds.Columns)


def _memory_parts(folder: Path) -> dict:
    """What the memory check counts for the one case under ``folder``, by part."""
    from DoseAlignLib.api import AlignOptions, ct_geometry, form_cases, scan_folder
    from DoseAlignLib.pipeline import case_memory

    (case,) = form_cases(scan_folder(folder)).cases
    return case_memory(case, AlignOptions(), ct_geometry(case.ct))[2]


def _tilt_one_frame(ds) -> None:
    """Frame 6 lies in another plane (the orientation moves from the shared groups into each frame's)."""
    from pydicom.dataset import Dataset

    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = list(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
    del shared.PlaneOrientationSequence
    for n, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        frame.PlaneOrientationSequence = DicomSequence([Dataset()])
        frame.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6] if n == 5 else iop


def _unplace_frame_3(ds) -> None:
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence


def _second_volume(ds) -> None:
    """Frame 5 lies where frame 2 does (a second stack or phase at the same positions)."""
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[4].PlanePositionSequence[0].ImagePositionPatient = frames[1].PlanePositionSequence[0].ImagePositionPatient


def _unscale_frame_4(ds) -> None:
    """Every frame has its own rescale but frame 4 (its HU cannot be known)."""
    import copy

    shared = ds.SharedFunctionalGroupsSequence[0]
    rescale = shared.PixelValueTransformationSequence
    del shared.PixelValueTransformationSequence
    for n, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        if n != 3:
            frame.PixelValueTransformationSequence = copy.deepcopy(rescale)


def _lose_a_frame_item(ds) -> None:
    del ds.PerFrameFunctionalGroupsSequence[-1]


@pytest.mark.parametrize(
    "damage, tag, words",
    [
        (_tilt_one_frame, "(0020,9116) PlaneOrientationSequence", ["frame 6 of", "ImageOrientationPatient", "differs"]),
        (_unplace_frame_3, "(0020,9113) PlanePositionSequence", ["frame 3 of", "ImagePositionPatient is missing"]),
        (_second_volume, "(0020,9113) PlanePositionSequence", ["two slices at one position", "(frame 5 of", "volume"]),
        (_unscale_frame_4, "(0028,9145) PixelValueTransformationSequence", ["frame 4 of", "are unknown"]),
        (_lose_a_frame_item, "(5200,9230) PerFrameFunctionalGroupsSequence", ["items for", "frames"]),
    ],
    ids=["orientations", "no-position", "two-volumes", "no-rescale", "item-count"],
)
def test_an_enhanced_ct_that_is_no_one_volume_is_refused_naming_file_frame_and_reason(
    plain, tmp_path, damage, tag, words
):
    """What is truly no CT volume (a frame in another plane or without a position, two frames at one place, a frame
    without the rescale the others have, fewer frame items than frames) fails its case naming the file, the
    functional group, the frame and the reason."""
    base, truth, _reference = plain
    root = tmp_path / "in"
    enhanced, ds = _study_with_enhanced_ct(base, truth, root, per_frame_rescale=False)
    damage(ds)
    dd.save(ds, enhanced)
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 1, done.stdout + done.stderr
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed", row
    assert row["reason"].startswith(f"{enhanced.relative_to(root).as_posix()}: {tag}"), row["reason"]
    for word in words:
        assert word in row["reason"], (word, row["reason"])


def test_an_enhanced_ct_whose_values_are_not_hu_is_said_so(plain, tmp_path):
    """Seventy-second hostile trial BT11: an Enhanced CT whose functional groups give RescaleType US exported without
    the warning single-frame slices of that type get ("not HU")."""
    base, truth, _reference = plain
    root = tmp_path / "in"
    enhanced, ds = _study_with_enhanced_ct(base, truth, root, per_frame_rescale=False)
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleType = "US"
    dd.save(ds, enhanced)
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = hostile.manifest(out)
    assert "RescaleType is US, not HU" in row["warnings"], row["warnings"]


@pytest.mark.parametrize("variant", ["beside slices", "an empty item"])
def test_an_enhanced_ct_frame_without_the_rescale_its_series_has_fails_the_case(plain, tmp_path, variant):
    """Seventy-second hostile trial BT3: an Enhanced CT file without any rescale beside single-frame slices that give
    theirs (or one frame whose PixelValueTransformationSequence item is empty) was read as slope 1, intercept 0: 1024
    HU off, ok. The frame fails the case, named, as a single-frame slice does (seventieth BR1)."""
    base, truth, _reference = plain
    root = tmp_path / "in"
    shutil.copytree(base / "in", root)
    slices = [root / p.relative_to(base / "in") for p in truth.ct_files]
    half = slices[: len(slices) // 2] if variant == "beside slices" else slices
    ds, _frame_uids = _enhanced_ct(half, list(range(len(half))), per_frame_rescale=variant == "an empty item")
    if variant == "beside slices":
        del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    else:
        item = ds.PerFrameFunctionalGroupsSequence[5].PixelValueTransformationSequence[0]
        del item.RescaleSlope, item.RescaleIntercept
    for path in half:
        path.unlink()
    enhanced = half[0].parent / "enhanced_ct.dcm"
    dd.save(ds, enhanced)
    out = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 1, done.stdout + done.stderr
    (row,) = hostile.manifest(out)
    assert row["status"] == "failed" and row["reason"].startswith(enhanced.relative_to(root).as_posix()), row
    assert "(0028,9145) PixelValueTransformationSequence" in row["reason"] and "unknown" in row["reason"], row


def test_an_enhanced_ct_of_many_frames_gives_each_frame_its_place_rescale_and_pixels(tmp_path):
    """The scan leaves values over 64 KiB unread (the pixel data are read later in place); a per-frame functional
    group sequence of 1500 frames is such a value, and every frame's position and rescale are in it. Frames
    written in a shuffled order come out sorted along the normal, each with its own pixels and rescale."""
    from DoseAlignLib.dicom import ct, scan
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    count, rows, columns = 1500, 3, 4
    order = np.random.default_rng(5).permutation(count)  # frame k holds slice order[k]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ENHANCED_CT, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "in" / "ct.dcm"
    path.parent.mkdir()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    if not dd.PYDICOM3:
        ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality, ds.PatientID = (
        ENHANCED_CT,
        meta.MediaStorageSOPInstanceUID,
        "CT",
        "M",
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.SamplesPerPixel = rows, columns, count, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PhotometricInterpretation = "MONOCHROME2"

    shared = Dataset()
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    shared.PixelMeasuresSequence = _item(PixelSpacing=[0.8, 0.6], SliceThickness=0.5)
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for z in order:  # slice z at 3 + 0.5 z mm, stored 2 z with intercept -z: z HU
        frame = Dataset()
        frame.PlanePositionSequence = _item(ImagePositionPatient=[-10, 20, f"{3 + 0.5 * z:g}"])
        frame.PixelValueTransformationSequence = _item(RescaleSlope=1, RescaleIntercept=int(-z), RescaleType="HU")
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = np.repeat(2 * order, rows * columns).astype("<i2").tobytes()
    dd.save(ds, path)
    scanned = scan.scan_folder(tmp_path / "in")
    (series,) = scanned.ct_series
    assert len(series.slices) == count and series.files == [path]
    geometry = ct.ct_geometry(series)
    assert geometry.grid.shape == (count, rows, columns) and geometry.uniform
    np.testing.assert_allclose(geometry.grid.spacing, [0.6, 0.8, 0.5])
    np.testing.assert_allclose(geometry.grid.origin, [-10, 20, 3])
    volume = ct.read_ct(series, geometry)
    np.testing.assert_array_equal(volume.array, np.broadcast_to(np.arange(count)[:, None, None], volume.array.shape))


def _as_12_bit(path: Path, corner_value: int, padding) -> None:
    """A CT slice re-stored as most 12-bit CTs are (unsigned, BitsStored 12, RescaleIntercept -1024), the same
    HU, its 5 x 5 corner given the stored value ``corner_value``; ``padding`` as (0028,0120) PixelPaddingValue."""
    ds = pydicom.dcmread(str(path))
    hu = ds.pixel_array.astype(np.int64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    values = np.rint(hu).astype(np.int64) + 1024
    assert values.min() >= 0 and values.max() <= 4095
    values[:5, :5] = corner_value
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = values.astype("<u2").tobytes()
    if padding is not None:
        ds.add_new(0x00280120, "US", padding)  # PixelPaddingValue, US as the pixels are unsigned
    ds.save_as(str(path))


@pytest.mark.parametrize("padding", [None, 63536], ids=["no padding value", "the padding value"])
def test_stored_values_beyond_bits_stored_in_a_ct(plain, tmp_path, padding):
    """Ninth hostile trial I10: a 12-bit CT (BitsStored 12) whose corner holds the stored value 63536 (0xF830, a
    padding value some writers put outside the stored range) was read with the high bits dropped: 1072 HU of
    bone in the corner, ok, no word (the dose has this check). Given as (0028,0120) PixelPaddingValue, those pixels
    are outside the image: the --ct-fill value (-1000 HU); without it, the case fails naming (0028,0101)."""
    base, truth, out = plain
    root = tmp_path / "in"
    shutil.copytree(base / "in", root)
    for path in truth.ct_files:
        _as_12_bit(root / path.relative_to(base / "in"), 63536, padding)
    new = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(new), "--quiet", "--workers", "1", "--no-qa-png")
    (row,) = hostile.manifest(new)
    (expected,) = hostile.manifest(out)
    if padding is None:
        assert done.returncode == 1 and row["status"] == "failed", row
        assert "(0028,0101) BitsStored" in row["reason"] and "63536..63536 do not fit BitsStored 12" in row["reason"]
        return
    assert done.returncode == 0 and row["status"] == "ok", row["reason"]
    meta = json.loads((new / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
    with np.load(new / row["case_id"] / "pair.npz") as a, np.load(out / expected["case_id"] / "pair.npz") as b:
        ct, before = a["ct"], b["ct"]
        assert meta["source"]["ct_files"]  # the CT's own grid: pixel (j, i) of each slice is voxel (k, j, i)
        corner = np.zeros(ct.shape, dtype=bool)
        corner[:, :5, :5] = True
        assert (ct[corner] == -1000).all(), np.unique(ct[corner])
        np.testing.assert_array_equal(ct[~corner], before[~corner])  # the rest: the same HU, read as 12-bit


@pytest.mark.parametrize("rescale_type", ["US", "OD", "HU"])
def test_a_ct_whose_values_are_not_hounsfield_units_is_said(plain, tmp_path, rescale_type):
    """Tenth hostile trial J10: a CT whose (0028,1054) RescaleType says its values are not HU (US, OD; PS3.3 C.8.2.1
    requires it then) was exported as HU without a word. The values are exported as they are, with a case warning
    naming the RescaleType; "HU" itself is no warning."""
    base, truth, out = plain
    root = tmp_path / "in"
    shutil.copytree(base / "in", root)
    for path in truth.ct_files:
        target = root / path.relative_to(base / "in")
        ds = pydicom.dcmread(str(target))
        ds.RescaleType = rescale_type
        ds.save_as(str(target))
    new = tmp_path / "out"
    done = hostile.dosealign("export", str(root), str(new), "--quiet", "--workers", "1", "--no-qa-png")
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = hostile.manifest(new)
    (expected,) = hostile.manifest(out)
    said = f"RescaleType is {rescale_type}, not HU" in row["warnings"]
    assert said == (rescale_type != "HU"), row["warnings"]
    with np.load(new / row["case_id"] / "pair.npz") as a, np.load(out / expected["case_id"] / "pair.npz") as b:
        np.testing.assert_array_equal(a["ct"], b["ct"])


def _ct_slices_changed_export_alike(tmp_path: Path, capsys, patient: str, seed: int, change) -> list:
    """Export a small study, ``change(ds)`` every CT slice's header, export again: exit 0 and the same CT array.
    Returns the CT files (as changed)."""
    from DoseAlignLib.cli import main

    root = tmp_path / "in"
    truth = hostile.study(root / "p", patient, seed, with_structures=False)
    plain = tmp_path / "plain"
    assert main(["export", str(root), str(plain), "--quiet", "--workers", "1", "--no-qa-png"]) == 0
    for path in truth.ct_files:
        ds = dd.read(path)
        change(ds)
        dd.save(ds, path)
    out = tmp_path / "out"
    code = main(["export", str(root), str(out), "--quiet", "--workers", "1", "--no-qa-png"])
    rows = hostile.manifest(out)
    capsys.readouterr()
    assert code == 0, rows
    (case,) = [p.name for p in out.iterdir() if p.is_dir()]
    np.testing.assert_array_equal(np.load(out / case / "pair.npz")["ct"], np.load(plain / case / "pair.npz")["ct"])
    return truth.ct_files


@pytest.mark.parametrize("frames", ["01", "+1", " 1"])
def test_classic_ct_slices_whose_number_of_frames_writes_one_otherwise_are_classic(tmp_path, capsys, frames):
    """Forty-first hostile trial AO2: NumberOfFrames written '01' or '+1' (IS values of 1) was compared as text with
    '1', and every classic slice was refused as a multi-frame image without functional groups."""
    from pydicom.dataelem import DataElement

    def written(ds) -> None:
        ds[0x00280008] = DataElement(0x00280008, "IS", frames)

    ct_files = _ct_slices_changed_export_alike(tmp_path, capsys, "FRAMES-1", 141, written)
    assert str(dd.read(ct_files[0]).NumberOfFrames).strip() == frames.strip()  # (as written, not '1')
    # and the reader's quick path (the pixels read where they sit) takes them, not only pydicom's decoding
    from DoseAlignLib.dicom import headers

    assert headers.pixel_data_position(pydicom.dcmread(ct_files[0], defer_size=1024)) is not None


def test_classic_ct_slices_that_carry_functional_groups_are_read_as_classic(tmp_path, capsys):
    """Thirty-sixth hostile trial AJ26: classic CT slices (CT Image Storage, one frame, their own
    ImagePositionPatient) that also carry a SharedFunctionalGroupsSequence (of frame content, as some converters
    write) were read as an Enhanced CT and refused. They are classic slices: exported as without it."""

    def grouped(ds) -> None:
        ds.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
        ds.SharedFunctionalGroupsSequence[0].FrameContentSequence = _item(FrameAcquisitionDateTime="20220214101010")

    _ct_slices_changed_export_alike(tmp_path, capsys, "GROUPS-1", 140, grouped)
