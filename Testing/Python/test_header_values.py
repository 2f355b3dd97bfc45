"""Header values the scanner decodes from their bytes equal what pydicom makes of them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from DoseAlignLib.dicom import headers as dicomio
from DoseAlignLib.phantom import PhantomSpec, write_phantom

TEXT = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "Modality", "SOPClassUID"]
TEXT += ["DoseSummationType", "DoseUnits", "DoseType"]
NUMBERS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "GridFrameOffsetVector"]
INTEGERS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PixelRepresentation"]


def _pydicom_floats(ds, keyword):
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _files(shared_root: Path, phantom_root: Path) -> list:
    pydicom_files = Path(pydicom.__file__).parent / "data" / "test_files"  # big endian, implicit VR, odd files
    roots = [pydicom_files, phantom_root] + ([shared_root] if shared_root is not None else [])
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, PhantomSpec(ct_size=(32, 32, 6), patient_position="FFP"))
    return root


def test_quick_values_equal_pydicom(phantom_root):
    from conftest import SHARED_DATA

    shared = SHARED_DATA if (SHARED_DATA / "README.md").is_file() else None
    compared = 0
    for path in _files(shared, phantom_root):
        try:
            quick = dicomio.read_header(path, defer_large=True)
            slow = dicomio.read_header(path, defer_large=True)
        except Exception:
            continue  # not DICOM: nothing to compare
        compared += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for keyword in TEXT:
                assert dicomio.quick_text(quick, keyword) == dicomio.text(slow, keyword), (path, keyword)
            for keyword in NUMBERS:
                assert dicomio.quick_floats(quick, keyword) == _pydicom_floats(slow, keyword), (path, keyword)
            for keyword in INTEGERS:
                fast, reference = dicomio.quick_int(quick, keyword), slow.get(keyword)
                assert fast == reference and type(fast) is type(reference), (path, keyword)
    assert compared > 50


def test_text_with_dicoms_value_delimiter_is_read_as_written(tmp_path):
    """A backslash is DICOM's value delimiter: pydicom gives ``PTV\\boost`` as two values. Free text (LO, SH, PN,
    and CS lists like ImageType) is read as written, the values joined by the backslash, not as a Python list
    (the fourth hostile trial's ROI ``\\u00e9 lit`` was named ``['', 'u00e9 lit']``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    written = {
        "StructureSetLabel": "plan\\v2",
        "SeriesDescription": "CT\\contrast",
        "RTPlanLabel": "\\u00e9 lit",
        "PatientName": "Doe^John\\Roe^Jane",
        "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
        "StudyDescription": "one value",
    }
    for keyword, value in written.items():
        setattr(ds, keyword, value)
    item = Dataset()
    item.ROIName = "Rücken\\mark"
    ds.StructureSetROISequence = [item]
    path = tmp_path / "text.dcm"
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=False)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=True)
    read = pydicom.dcmread(path, force=True)
    assert len(read.get("SeriesDescription")) == 2  # pydicom's reading: two values (else this test proves nothing)
    for keyword, value in written.items():
        assert dicomio.text(read, keyword) == value, keyword
    assert dicomio.text(read.StructureSetROISequence[0], "ROIName") == "Rücken\\mark"
    assert dicomio.text(read, "ProtocolName", "none") == "none"


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "NumberOfFrames"])
def test_a_decimal_string_with_a_digit_separator_is_no_number(keyword):
    """Forty-first hostile trial (beside AO1): Python's float() and int() read ``1_5`` as 15, and pydicom keeps the
    value as written: an ImagePositionPatient ``1_5`` was 15 mm. A DS or IS value with ``_`` is no number, read from
    its bytes or through pydicom; plain values read as before."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    vr, bad, good = ("DS", b"1_5\\2\\3 ", b"+1.5\\ 2\\3E0") if keyword != "NumberOfFrames" else ("IS", b"1_0 ", b"+10 ")
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))

    def read(raw: bytes):
        ds = Dataset()
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, True, True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (pydicom warns of the invalid value)
            if keyword == "NumberOfFrames":
                return dicomio.integer(ds, keyword, "(0028,0008)", None, 1), None
            return list(dicomio.floats(ds, keyword, "(0020,0032)", None, 3)), dicomio.quick_floats(ds, keyword)

    assert read(good) == ((10, None) if keyword == "NumberOfFrames" else ([1.5, 2.0, 3.0], [1.5, 2.0, 3.0]))
    with pytest.raises(dicomio.InputError, match="1_"):
        read(bad)
    if keyword != "NumberOfFrames":
        ds = Dataset()
        ds[tag] = RawDataElement(tag, vr, len(bad), bad, 0, True, True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert dicomio.quick_floats(ds, keyword) is None


def test_a_decimal_string_of_another_scripts_digits_is_no_number():
    """Forty-third hostile trial AQ9: in a slice of character set ISO_IR 192, pydicom hands a RescaleSlope of the
    Arabic-Indic digit two over as the text '٢', and float() read it as 2 (every HU doubled, status ok). A decimal
    string holds ASCII digits only."""
    for text in ("\u0662", "1.\u0665", "\uff12"):  # Arabic-Indic 2, 1.5 with an Arabic-Indic 5, fullwidth 2
        with pytest.raises(ValueError):
            dicomio.decimal(text)
    assert dicomio.decimal(" 2.5 ") == 2.5 and dicomio.decimal(b"+1E1") == 10.0
