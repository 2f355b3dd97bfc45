"""Fuzzing the batch export with hostile DICOM-RT headers (hypothesis).

Each example copies a small input tree, damages one header of one file of one "victim" patient and
exports the whole tree, in-process through ``export_folder`` or the ``dosealign`` command. The
damage is missing, empty, wrong-VR, NaN, huge, negative or contradictory values of the tags the
engine reads (PixelSpacing, ImagePositionPatient, ImageOrientationPatient that is not orthonormal,
GridFrameOffsetVector shorter than NumberOfFrames, DoseGridScaling 0, BitsAllocated, truncated pixel
data, a second slice at one position, a transfer syntax that contradicts the data, ...). Properties:

* nothing raises, and no manifest row is an "internal error";
* a damage that makes the file unusable ("must fail") gives a failed row that names the file and
  the tag; no ok case uses the file; after a damaged dose no case of the victim's folder is ok;
* any other damage either fails in the same way or exports finite arrays with a dose >= 0;
* every case that does not use the damaged file exports the same bytes as the undamaged batch;
* no temporary file is left in the output folder.

Inputs: synthetic phantoms (16-bit HFS dose, 32-bit feet-first dose with absolute decreasing
offsets, per-beam doses summed) and, where ``../shared/data`` is present, the real rtkit phantom.

CI runs a bounded, derandomized number of examples per test (the file stays well under 90 s on two
shared cores). A long random run on demand::

    DOSEALIGN_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest Testing/Python/test_fuzz.py -q

Every crasher found so far is kept as a deterministic recipe in ``REGRESSIONS`` below, checked by
``test_regression_recipe`` and, all at once through a real ``dosealign`` process, by
``test_command_survives_every_regression``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import inspect
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dicom_damage as dd
import numpy as np
import pytest
from dicom_damage import Mutation
from DoseAlignLib.batch import export_folder
from DoseAlignLib.cli import main
from DoseAlignLib.options import AlignOptions
from DoseAlignLib.phantom import PhantomSpec, write_phantom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]

# ---- how many examples ---------------------------------------------------------------------------

LONG_RUN = int(os.environ.get("DOSEALIGN_FUZZ_EXAMPLES", "0") or 0)


_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
#: CI: bounded and derandomized (the same examples every run, no example database written).
settings.register_profile(
    "dosealign-ci", deadline=None, derandomize=True, database=None, suppress_health_check=_CHECKS, print_blob=True
)
#: On demand (DOSEALIGN_FUZZ_EXAMPLES=N): random examples, failures kept in .hypothesis/ and replayed first.
settings.register_profile(
    "dosealign-long", deadline=None, derandomize=False, suppress_health_check=_CHECKS, print_blob=True
)
PROFILE = settings.get_profile("dosealign-long" if LONG_RUN else "dosealign-ci")


def fuzz_settings(ci_examples: int):
    """The profile, with ``ci_examples`` examples in CI or ``DOSEALIGN_FUZZ_EXAMPLES`` on demand."""
    return settings(PROFILE, max_examples=LONG_RUN or ci_examples)


# ---- the inputs ------------------------------------------------------------------------------------

SMALL = {
    "ct_size": (12, 10, 6),
    "dose_size": (6, 5, 4),
    "ct_slice_spacing": 3.0,
    "dose_pixel_spacing": (2.0, 2.0),
    "dose_frame_spacing": 3.0,
    "dose_center_offset_lps": (0.3, -0.2, 0.1),
    "shuffle_files": False,
}
GOOD = PhantomSpec(patient_id="FUZZ-GOOD", seed=10, **SMALL)
VICTIMS = {
    "v16": PhantomSpec(patient_id="FUZZ-V16", seed=11, **SMALL),
    "v32": PhantomSpec(
        patient_id="FUZZ-V32",
        seed=12,
        patient_position="FFS",
        dose_bits=32,
        gfov_mode="absolute",
        frame_order="decreasing",
        **SMALL,
    ),
    "vbeam": PhantomSpec(patient_id="FUZZ-VBEAM", seed=13, write_plan_dose=False, write_beam_doses=True, **SMALL),
}
OPTIONS = AlignOptions()
TAG_PATTERN = re.compile(r"\([0-9A-F]{4},[0-9A-F]{4}\)")


@dataclass
class FileFacts:
    """What the oracle needs to know about a file before it is damaged."""

    rel: str
    kind: str  # "dose" or "ct"
    frames: int
    bits: int
    raw_min: int
    raw_max: int
    pixel_bytes: int
    values: dict  # original PixelSpacing, ImageOrientationPatient (floats)
    position: float  # along the slice normal (mm)


@dataclass
class Base:
    """An input tree, its undamaged export and the files a test may damage."""

    root: Path
    baseline: dict  # case_id -> {"folder": ct_folder, "files": {name: bytes}}
    doses: dict  # victim folder -> [FileFacts]
    slices: dict  # victim folder -> [FileFacts]


def _facts(path: Path, rel: str, kind: str) -> FileFacts:
    ds = dd.read(path)
    bits = int(ds.BitsAllocated)
    dtype = {16: "<u2", 32: "<u4"}[bits] if int(ds.get("PixelRepresentation", 0)) == 0 else {16: "<i2", 32: "<i4"}[bits]
    raw = np.frombuffer(ds.PixelData, dtype=dtype)
    values = {k: [float(v) for v in ds.get(k, [])] for k in ("PixelSpacing", "ImageOrientationPatient")}
    iop = np.array(values["ImageOrientationPatient"])
    position = float(np.array([float(v) for v in ds.ImagePositionPatient]) @ np.cross(iop[:3], iop[3:]))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return FileFacts(rel, kind, frames, bits, int(raw.min()), int(raw.max()), len(ds.PixelData), values, position)


def _fast_kwargs() -> dict:
    """No qa.png or report.html in the fuzz loop (where the engine has them): they cost a second a batch."""
    names = inspect.signature(export_folder).parameters
    return {k: False for k in ("qa_png", "report_html") if k in names}


def _export(root: Path, out: Path, use_cli: bool) -> list:
    """Export in-process; returns the manifest rows. Any exception fails the property."""
    if use_cli:
        args = ["export", str(root), str(out), "--quiet", "--workers", "1"]
        if "qa_png" in _fast_kwargs():
            args.append("--no-qa-png")
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
        rows = _manifest(out)
        assert code == (1 if any(r["status"] == "failed" for r in rows) else 0)
        return rows
    report = export_folder(root, out, OPTIONS, workers=1, **_fast_kwargs())
    rows = _manifest(out)
    assert [r["case_id"] for r in rows] == [r["case_id"] for r in report.rows]
    return rows


def _manifest(out: Path) -> list:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _case_files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _make_base(root: Path, victims: dict, extra_victims: tuple = ()) -> Base:
    write_phantom(root / "good", GOOD)
    doses, slices = {}, {}
    for name, spec in victims.items():
        truth = write_phantom(root / name, spec)
        doses[name] = [_facts(p, p.relative_to(root).as_posix(), "dose") for p in truth.dose_files]
        slices[name] = [_facts(p, p.relative_to(root).as_posix(), "ct") for p in truth.ct_files]
    for name, dose_paths, ct_paths in extra_victims:
        doses[name] = [_facts(p, p.relative_to(root).as_posix(), "dose") for p in dose_paths]
        slices[name] = sorted(  # spatial order along the slice normal, as the phantom's truth lists them
            (_facts(p, p.relative_to(root).as_posix(), "ct") for p in ct_paths), key=lambda f: f.position
        )
    out = root.parent / f"{root.name}-baseline"
    rows = _export(root, out, use_cli=False)
    assert all(r["status"] == "ok" for r in rows), rows
    baseline = {r["case_id"]: {"folder": r["ct_folder"], "files": _case_files(out / r["case_id"])} for r in rows}
    return Base(root, baseline, doses, slices)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Base:
    return _make_base(tmp_path_factory.mktemp("fuzz") / "in", VICTIMS)


@pytest.fixture(scope="module")
def real(tmp_path_factory, shared_data) -> Base:
    """The rtkit phantom (real Oncentra export: 5 CT slices, 3 beam doses summed) beside a good phantom."""
    root = tmp_path_factory.mktemp("fuzz-real") / "in"
    source = shared_data / "rtkit-phantom"
    (root / "rtkit").mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.name[:2] in ("CT", "RD", "RP", "RS"):
            shutil.copyfile(path, root / "rtkit" / path.name)
    beam_doses = []
    for path in sorted((root / "rtkit").glob("RD*.dcm")):
        ds = dd.read(path, header_only=True)
        refs = [
            b
            for p in ds.ReferencedRTPlanSequence
            for g in p.ReferencedFractionGroupSequence
            for b in g.ReferencedBeamSequence
        ]
        if len(refs) == 1:  # the all-zero dose of beams 1+2+3 is left out of the sum: damaging it changes nothing
            beam_doses.append(path)
    assert len(beam_doses) == 3
    return _make_base(root, {}, (("rtkit", beam_doses, sorted((root / "rtkit").glob("CT*.dcm"))),))


# ---- the mutations, each with what it must do ---------------------------------------------------

TEXT_ATOMS = ["abc", "", "NaN", "-inf", "1e400", "0x10", "1,5", "--1", "  "]


def _parse(atom: str):
    """What a decimal string reads as (None when it does not read as a number)."""
    try:
        return float(atom)
    except ValueError:
        return None


def _fmt(value) -> str:
    return value if isinstance(value, str) else repr(float(value))


atoms = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-5.0, max_value=5.0),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e308, -1e308, 1e-320, 2.5, 1e5, 1e6]),
    st.sampled_from(TEXT_ATOMS),
).map(_fmt)


def _valid_vector(keyword: str, values: list, facts: FileFacts) -> bool:
    numbers = [_parse(v) for v in values]
    if any(n is None or not math.isfinite(n) for n in numbers):
        return False
    if keyword == "PixelSpacing":
        return len(numbers) == 2 and all(1e-3 <= n <= 1e3 for n in numbers)
    if keyword == "ImagePositionPatient":
        return len(numbers) == 3 and all(abs(n) <= 1e5 for n in numbers)
    if keyword == "ImageOrientationPatient":
        if len(numbers) != 6:
            return False
        row, col = np.array(numbers[:3]), np.array(numbers[3:])
        norms = np.linalg.norm(row), np.linalg.norm(col)
        if min(norms) < 1e-6 or abs(norms[0] - 1) > 1e-2 or abs(norms[1] - 1) > 1e-2:
            return False
        return abs(float(row @ col) / (norms[0] * norms[1])) <= 1e-2
    if keyword == "GridFrameOffsetVector":
        if len(numbers) < facts.frames or any(abs(n) > 1e5 for n in numbers):
            return False
        steps = np.diff(numbers[: facts.frames])
        return bool((np.all(steps > 0) or np.all(steps < 0)) and np.all(np.abs(steps) >= 1e-3))
    raise AssertionError(keyword)


def _near_boundary(value: float, boundary: float) -> bool:
    return boundary > 0 and 0.99 < value / boundary < 1.01


@st.composite
def dose_mutations(draw, facts: FileFacts) -> Mutation:
    family = draw(
        st.sampled_from(
            ["delete", "empty", "vector", "integer", "scaling", "units", "identity", "syntax", "pixels", "wrong_vr"]
        )
    )
    if family == "delete":
        keyword = draw(
            st.sampled_from(
                [
                    "PixelSpacing",
                    "ImagePositionPatient",
                    "ImageOrientationPatient",
                    "GridFrameOffsetVector",
                    "Rows",
                    "Columns",
                    "BitsAllocated",
                    "PixelData",
                    "DoseGridScaling",
                    "DoseUnits",
                    "FrameOfReferenceUID",
                    "NumberOfFrames",
                    "BitsStored",
                    "PixelRepresentation",
                    "SamplesPerPixel",
                    "PhotometricInterpretation",
                    "HighBit",
                    "DoseSummationType",
                    "SOPInstanceUID",
                    "ReferencedRTPlanSequence",
                    "PatientID",
                ]
            )
        )
        optional = (
            "BitsStored",
            "PixelRepresentation",
            "SamplesPerPixel",
            "PhotometricInterpretation",
            "HighBit",
            "DoseSummationType",
            "SOPInstanceUID",
            "ReferencedRTPlanSequence",
            "PatientID",
        )
        must = keyword not in optional
        if keyword == "NumberOfFrames":
            must = facts.frames != 1
        tags = ("NumberOfFrames", "PixelData") if keyword == "NumberOfFrames" else ()
        if keyword == "FrameOfReferenceUID":
            tags = ("FrameOfReferenceUID",)
        return Mutation(keyword, "delete", None, must, tags)
    if family == "empty":
        keyword = draw(
            st.sampled_from(
                [
                    "PixelSpacing",
                    "ImagePositionPatient",
                    "ImageOrientationPatient",
                    "GridFrameOffsetVector",
                    "DoseGridScaling",
                    "DoseUnits",
                    "FrameOfReferenceUID",
                ]
            )
        )
        return Mutation(keyword, "set", "", True)
    if family == "vector":
        keyword = draw(
            st.sampled_from(
                ["PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "GridFrameOffsetVector"]
            )
        )
        size = {"PixelSpacing": 2, "ImagePositionPatient": 3, "ImageOrientationPatient": 6}.get(keyword, facts.frames)
        values = draw(st.lists(atoms, min_size=max(size - 2, 0), max_size=size + 2))
        valid = _valid_vector(keyword, values, facts)
        tags = (keyword, "ImagePositionPatient") if keyword in ("PixelSpacing", "GridFrameOffsetVector") else ()
        return Mutation(keyword, "set", values, not valid, tags)
    if family == "integer":
        keyword = draw(
            st.sampled_from(
                [
                    "Rows",
                    "Columns",
                    "NumberOfFrames",
                    "BitsAllocated",
                    "BitsStored",
                    "PixelRepresentation",
                    "SamplesPerPixel",
                ]
            )
        )
        value = draw(
            st.one_of(st.integers(0, 70), st.sampled_from([0, 1, 8, 12, 16, 31, 32, 64, 255, 4096, 65535]))
            if keyword != "NumberOfFrames"
            else st.one_of(st.integers(-3, 40), st.sampled_from(["2.5", "abc", "2147483647", "99999999999999", ""]))
        )
        if keyword == "NumberOfFrames":
            text_value = str(value)
            parsed = _parse(text_value) if text_value.strip() else None
            must = not (parsed is not None and float(parsed).is_integer() and int(parsed) == facts.frames)
            if text_value.strip() == "":
                must = facts.frames != 1
            return Mutation(keyword, "set", text_value, must, ("NumberOfFrames", "GridFrameOffsetVector", "PixelData"))
        if keyword in ("Rows", "Columns"):  # always a change: _apply moves off the file's own value
            return Mutation(keyword, "set_int", value, True, (keyword, "PixelData"))
        if keyword == "BitsStored":
            needed = max(int(facts.raw_max).bit_length(), 1)
            must = not (needed <= value <= facts.bits)
            return Mutation(keyword, "set", value, must, ("BitsStored", "BitsAllocated", "PixelData"))
        if keyword == "PixelRepresentation":
            must = value not in (0, 1) or (value == 1 and facts.raw_max >= 2 ** (facts.bits - 1))
            return Mutation(keyword, "set", value, must, ("PixelRepresentation",))
        must = value != (facts.bits if keyword == "BitsAllocated" else 1)
        return Mutation(keyword, "set", value, must, (keyword, "PixelData", "BitsStored"))
    if family == "scaling":
        values = draw(st.lists(atoms, min_size=1, max_size=3))
        numbers = [_parse(v) for v in values]
        peak = facts.raw_max * numbers[0] if len(numbers) == 1 and numbers[0] is not None else None
        valid = (
            len(values) == 1
            and numbers[0] is not None
            and math.isfinite(numbers[0])
            and numbers[0] > 0
            and math.isfinite(peak)
            and peak <= 1e5
        )
        if peak is not None and math.isfinite(peak) and _near_boundary(peak, 1e5):
            return Mutation("DoseGridScaling", "set", values, False)
        return Mutation("DoseGridScaling", "set", values, not valid)
    if family == "units":
        value = draw(st.sampled_from(["GY", "Gy", "CGY", "RELATIVE", "MGY", "abc", "G Y"]))
        return Mutation("DoseUnits", "set", value, value.strip().upper() != "GY")
    if family == "identity":
        keyword, value = draw(
            st.sampled_from(
                [
                    ("FrameOfReferenceUID", "1.2.3.4.5"),
                    ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
                    ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.481.5"),
                    ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.481.3"),
                    ("Modality", "CT"),
                    ("Modality", "RTPLAN"),
                    ("Modality", "OT"),
                    ("SOPClassUID", ""),
                ]
            )
        )
        must = not ((keyword == "Modality" and value == "OT") or (keyword == "SOPClassUID" and value == ""))
        return Mutation(keyword, "set", value, must, (keyword, "SOPClassUID"))
    if family == "syntax":
        value = draw(
            st.sampled_from(
                [
                    dd.JPEG2000,
                    dd.JPEG_LS_LOSSLESS,
                    "1.2.840.10008.1.2.4.50",
                    "1.2.840.10008.1.2.5",
                    "1.2.840.10008.1.2.2",
                    "1.2.3.4",
                    "1.2.840.10008.1.2",
                ]
            )
        )
        must = value != "1.2.840.10008.1.2"  # implicit VR: pydicom notices the explicit data set and reads it
        return Mutation("TransferSyntaxUID", "transfer_syntax", value, must, ("*",))
    if family == "pixels":
        op = draw(st.sampled_from(["truncate", "truncate_at", "garbage", "append"]))
        if op == "truncate":
            return Mutation("PixelData", op, draw(st.integers(1, facts.pixel_bytes)), True, ("PixelData",))
        if op == "truncate_at":
            return Mutation("PixelData", op, draw(st.floats(0.05, 0.95)), True, ("*",))
        if op == "garbage":
            value = (draw(st.floats(0.0, 0.99)), draw(st.integers(1, 64)))
            return Mutation("PixelData", op, value, False, ("*",))
        return Mutation("PixelData", op, bytes(draw(st.integers(1, 9))), False, ("*",))
    # wrong VR
    keyword = draw(
        st.sampled_from(["PixelSpacing", "ImagePositionPatient", "GridFrameOffsetVector", "DoseGridScaling"])
    )
    vr_value = draw(st.sampled_from([("LO", "abc"), ("OB", b"\x01\x02\x03\x04"), ("SQ", None), ("UN", b"\xff\xfe")]))
    if vr_value[0] == "SQ":
        return Mutation(keyword, "sequence", None, True)
    return Mutation(keyword, "vr", vr_value, True)


@st.composite
def ct_mutations(draw, facts: FileFacts) -> Mutation:
    family = draw(st.sampled_from(["delete", "vector", "integer", "rescale", "pixels", "duplicate", "series"]))
    if family == "delete":
        keyword = draw(
            st.sampled_from(
                [
                    "ImagePositionPatient",
                    "ImageOrientationPatient",
                    "PixelSpacing",
                    "Rows",
                    "Columns",
                    "PixelData",
                    "BitsAllocated",
                    "SeriesInstanceUID",
                    "InstanceNumber",
                    "SliceThickness",
                ]
            )
        )
        return Mutation(keyword, "delete", None, keyword not in ("InstanceNumber", "SliceThickness"))
    if family == "vector":
        keyword = draw(st.sampled_from(["PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"]))
        size = {"PixelSpacing": 2, "ImagePositionPatient": 3, "ImageOrientationPatient": 6}[keyword]
        values = draw(st.lists(atoms, min_size=max(size - 2, 0), max_size=size + 1))
        valid = _valid_vector(keyword, values, facts)
        if valid and keyword != "ImagePositionPatient":
            # a valid value that differs from the other slices' is a slice from elsewhere: refused too
            original = np.round(np.array(facts.values[keyword]), 4)
            valid = bool(np.array_equal(np.round(np.array([_parse(v) for v in values]), 4), original))
        return Mutation(keyword, "set", values, not valid)
    if family == "integer":
        keyword = draw(st.sampled_from(["Rows", "Columns", "BitsAllocated"]))
        value = draw(st.one_of(st.integers(0, 70), st.sampled_from([0, 1, 8, 32, 64, 65535])))
        if keyword == "BitsAllocated":
            return Mutation(keyword, "set", value, value != 16, ("BitsAllocated", "BitsStored", "PixelData"))
        return Mutation(keyword, "set_int", value, True, (keyword, "PixelData"))
    if family == "rescale":
        keyword = draw(st.sampled_from(["RescaleSlope", "RescaleIntercept"]))
        values = draw(st.lists(atoms, min_size=1, max_size=2))
        if len(values) == 1 and not values[0].strip():  # empty: absent, the default (slope 1, intercept 0) applies
            return Mutation(keyword, "set", values, False, ("RescaleSlope", "RescaleIntercept"))
        number = _parse(values[0]) if len(values) == 1 else None
        if number is None or not math.isfinite(number):
            return Mutation(keyword, "set", values, True, ("RescaleSlope", "RescaleIntercept"))
        slope, intercept = (number, -1024.0) if keyword == "RescaleSlope" else (1.0, number)
        ends = sorted([facts.raw_min * slope + intercept, facts.raw_max * slope + intercept])
        must = slope == 0 or ends[0] < -32768 or ends[1] > 32767
        near = _near_boundary(abs(ends[0]), 32768) or _near_boundary(abs(ends[1]), 32767)
        return Mutation(keyword, "set", values, must and not near, ("RescaleSlope", "RescaleIntercept"))
    if family == "pixels":
        op = draw(st.sampled_from(["truncate", "truncate_at", "garbage"]))
        if op == "truncate":
            return Mutation("PixelData", op, draw(st.integers(1, facts.pixel_bytes)), True, ("PixelData",))
        if op == "truncate_at":
            return Mutation("PixelData", op, draw(st.floats(0.05, 0.95)), True, ("*",))
        return Mutation("PixelData", op, (draw(st.floats(0.0, 0.99)), draw(st.integers(1, 64))), False, ("*",))
    if family == "duplicate":
        return Mutation("ImagePositionPatient", "duplicate_at", draw(st.integers(0, 100)), True)
    return Mutation("SeriesInstanceUID", "set", "1.2.826.0.1.3680043.10.99.1", False)


# ---- running one example and judging it --------------------------------------------------------


def _apply(root: Path, facts: FileFacts, mutation: Mutation, slices: list) -> list:
    """Damage the copy; returns the relative paths a failed row may name for this damage."""
    path = root / facts.rel
    names = [facts.rel]
    if mutation.op == "set_int":  # Rows/Columns set to a value; unchanged means no damage
        ds = dd.read(path, header_only=True)
        value = int(mutation.value)
        if int(ds.get(mutation.keyword)) == value:
            value += 1
        dd.apply(path, Mutation(mutation.keyword, "set", value))
    elif mutation.op == "duplicate_at":
        others = [s for s in slices if s.rel != facts.rel]
        other = others[int(mutation.value) % len(others)]
        copy = dd.duplicate_slice(path, root / other.rel, f"dup-{Path(facts.rel).name}")
        names += [other.rel, copy.relative_to(root).as_posix()]
    else:
        dd.apply(path, mutation)
    return names


def _names_tag(reason: str, mutation: Mutation) -> bool:
    for keyword in mutation.expected_tags:
        if keyword == "*":
            if TAG_PATTERN.search(reason):
                return True
        elif keyword in reason or dd.tag_name(keyword).split()[0] in reason:
            return True
    return False


def _judge(base: Base, out: Path, rows: list, victim: str, facts: FileFacts, mutation: Mutation, names: list) -> None:
    context = f"{mutation} on {facts.rel}"
    assert not [r for r in rows if "internal error" in r["reason"]], f"{context}: {rows}"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")], f"{context}: temporary files left"
    by_id = {r["case_id"]: r for r in rows}
    # every case that does not use the damaged file: unaffected, byte for byte
    for case_id, expected in base.baseline.items():
        if expected["folder"] == victim:
            continue
        assert by_id.get(case_id, {}).get("status") == "ok", (
            f"{context}: unaffected case {case_id}: {by_id.get(case_id)}"
        )
        assert _case_files(out / case_id) == expected["files"], f"{context}: case {case_id} changed"
    naming = [r for r in rows if r["status"] == "failed" and any(n in r["reason"] for n in names)]
    victim_rows = [r for r in rows if r["ct_folder"] == victim or r["files"].startswith(f"{victim}/")]
    for row in victim_rows:
        if row["status"] == "ok":
            with np.load(out / row["case_id"] / "pair.npz") as npz:
                why = dd.finite_and_sane({key: npz[key] for key in npz.files})
            assert why is None, f"{context}: {row['case_id']} exported, but {why}"
        else:
            assert TAG_PATTERN.search(row["reason"]) and f"{victim}/" in row["reason"], f"{context}: {row}"
    if not mutation.must_fail:
        return
    assert naming, f"{context}: no failed row names the file: {rows}"
    assert any(_names_tag(r["reason"], mutation) for r in naming), (
        f"{context}: no row names {mutation.expected_tags}: {naming}"
    )
    for row in rows:
        if row["status"] == "ok":
            assert facts.rel not in row["files"].split(";"), f"{context}: the damaged file is in ok case {row}"
    ok_victims = [r for r in victim_rows if r["status"] == "ok"]
    if facts.kind == "dose":
        assert not ok_victims, f"{context}: after a damaged dose the victim still exported: {ok_victims}"
    else:
        # the slice was unusable as a file (a damaged-file row): its case may export without it; a hole
        # it leaves inside the stack is regularized and said so (at either end the CT is a slice shorter)
        order = [s.rel for s in base.slices[victim]]
        interior = 0 < order.index(facts.rel) < len(order) - 1
        for row in ok_victims:
            damaged = [r for r in naming if r["case_id"].startswith("damaged-file")]
            assert damaged, f"{context}: the victim exported although a slice is damaged: {row}"
            meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
            assert len(meta["source"]["ct_files"]) == len(order) - 1, f"{context}: {meta['source']['ct_files']}"
            if interior:
                assert meta["geometry"]["ct"]["regularized"], f"{context}: the hole left by the slice is not reported"


def _run(base: Base, victim: str, facts: FileFacts, mutation: Mutation, use_cli: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="dosealign-fuzz-") as tmp:
        root = Path(tmp) / "in"
        shutil.copytree(base.root, root)
        names = _apply(root, facts, mutation, base.slices[victim])
        out = Path(tmp) / "out"
        rows = _export(root, out, use_cli)
        _judge(base, out, rows, victim, facts, mutation, names)


# ---- the properties ----------------------------------------------------------------------------


@fuzz_settings(ci_examples=60)
@given(data=st.data())
def test_damaged_dose_header(synthetic, data):
    victim = data.draw(st.sampled_from(sorted(synthetic.doses)), label="victim")
    facts = data.draw(st.sampled_from(synthetic.doses[victim]), label="dose")
    mutation = data.draw(dose_mutations(facts), label="mutation")
    _run(synthetic, victim, facts, mutation, use_cli=data.draw(st.booleans(), label="cli"))


@fuzz_settings(ci_examples=50)
@given(data=st.data())
def test_damaged_ct_slice(synthetic, data):
    victim = data.draw(st.sampled_from(sorted(synthetic.slices)), label="victim")
    facts = data.draw(st.sampled_from(synthetic.slices[victim]), label="slice")
    mutation = data.draw(ct_mutations(facts), label="mutation")
    _run(synthetic, victim, facts, mutation, use_cli=data.draw(st.booleans(), label="cli"))


@pytest.mark.shared_data
@fuzz_settings(ci_examples=20)
@given(data=st.data())
def test_damaged_real_rtkit_files(real, data):
    if data.draw(st.booleans(), label="dose or slice"):
        facts = data.draw(st.sampled_from(real.doses["rtkit"]), label="dose")
        mutation = data.draw(dose_mutations(facts), label="mutation")
    else:
        facts = data.draw(st.sampled_from(real.slices["rtkit"]), label="slice")
        mutation = data.draw(ct_mutations(facts), label="mutation")
    _run(real, "rtkit", facts, mutation, use_cli=False)


# ---- regressions: every crasher the fuzzing found, as a recipe -----------------------------------

#: (victim, "dose" or slice index, mutation, what the engine did before the fix)
REGRESSIONS = [
    ("v16", "dose", Mutation("PixelSpacing", "set", ["1e308", "2"]), "internal error: NaN to integer"),
    ("v16", "dose", Mutation("DoseGridScaling", "set", "1e300"), "internal error: inf dose in the audit"),
    ("v16", "dose", Mutation("DoseGridScaling", "set", "1e30"), "exported 6e34 Gy"),
    ("v16", "dose", Mutation("DoseGridScaling", "set", ["1", "2"]), "used the first of two scalings"),
    ("v16", "dose", Mutation("ImagePositionPatient", "set", ["1e30", "0", "0"]), "exported an all-zero dose"),
    ("v16", "dose", Mutation("ImagePositionPatient", "set", ["500", "0", "0"]), "exported an all-zero dose"),
    ("v16", "dose", Mutation("GridFrameOffsetVector", "set", ["0", "3", "1e9", "1e10"]), "a 10^10 mm grid"),
    ("v16", "dose", Mutation("NumberOfFrames", "set", "2.5", tags=("NumberOfFrames",)), "read as 2 frames"),
    ("v16", "dose", Mutation("NumberOfFrames", "delete", tags=("NumberOfFrames",)), "named only PixelData"),
    ("v16", "dose", Mutation("BitsStored", "set", 8), "high bits silently dropped"),
    ("v16", "dose", Mutation("SamplesPerPixel", "set", 3), "pydicom AttributeError text"),
    ("v16", "dose", Mutation("PhotometricInterpretation", "set", "RGB"), "exported"),
    ("v16", "dose", Mutation("SOPClassUID", "set", "1.2.840.10008.5.1.4.1.1.2"), "the dose became a CT: case gone"),
    ("v16", "dose", Mutation("Modality", "set", "CT", tags=("Modality",)), "contradiction ignored"),
    ("v16", "dose", Mutation("PixelData", "garbage", (0.2, 40), True, ("*",)), "unreadable: case gone"),
    ("v16", "dose", Mutation("PixelData", "truncate_at", 0.3, True, ("*",)), "named no tag"),
    ("v16", "dose", Mutation("TransferSyntaxUID", "transfer_syntax", "1.2.840.10008.1.2.2", True, ("*",)), "case gone"),
    ("v16", "dose", Mutation("TransferSyntaxUID", "transfer_syntax", dd.JPEG2000), "pydicom parser text"),
    ("vbeam", "dose", Mutation("PixelData", "garbage", (0.2, 40), True, ("*",)), "sum of 2 of 3 beams exported"),
    ("v32", "dose", Mutation("GridFrameOffsetVector", "drop_values", 2), "(kept working)"),
    ("v16", "dose", Mutation("PixelSpacing", "set", ["1.0", "5.794015960712902e-165"]), "spacing 0: no file named"),
    (
        "v16",
        "dose",
        Mutation("GridFrameOffsetVector", "set", ["0", "1e-200", "2e-200", "3e-200"]),
        "frames 1e-200 apart",
    ),
    ("v16", 2, Mutation("Columns", "delete"), "uncaught TypeError: the whole batch crashed"),
    ("v16", 2, Mutation("PixelSpacing", "set", ["nan", "1"]), "slice split off: silent hole"),
    ("v16", 2, Mutation("ImageOrientationPatient", "set", ["1", "0", "0", "1", "0", "0"]), "silent hole"),
    ("v16", 2, Mutation("Rows", "set", 11), "slice split off: silent hole"),
    ("v16", 2, Mutation("ImagePositionPatient", "set", ["0", "0", "1e6"]), "named the first slice"),
    ("v16", 2, Mutation("ImagePositionPatient", "set", ["50", "0", "0"]), "named the first slice"),
    ("v16", 2, Mutation("RescaleIntercept", "set", "1e6", tags=("RescaleIntercept",)), "int16 wrapped around"),
    ("v16", 2, Mutation("RescaleSlope", "set", "0"), "a constant slice"),
    ("v16", 2, Mutation("PixelData", "truncate_at", 0.5, True, ("*",)), "slice dropped: silent hole"),
    ("v16", 2, Mutation("SOPClassUID", "set", "1.2.840.10008.5.1.4.1.1.481.2"), "a CT slice read as a dose"),
    ("v16", 0, Mutation("ImagePositionPatient", "duplicate_at", 3), "(kept working)"),
    ("v16", 0, Mutation("PixelData", "truncate_at", 0.5625, True, ("*",)), "cut inside a UID: a series of its own"),
]
#: The same for the real rtkit files: (dose index among the three single-beam doses, mutation, before).
REAL_REGRESSIONS = [
    (0, Mutation("SOPClassUID", "set", "1.2.840.10008.5.1.4.1.1.2"), "the all-zero 1+2+3 dose exported as the sum"),
    (1, Mutation("PixelData", "truncate", 100, True, ("PixelData",)), "(kept working)"),
]


def _regression_id(recipe) -> str:
    victim, target, mutation, _before = recipe
    return f"{victim}-{target}-{mutation.keyword}-{mutation.op}-{mutation.value!r}"[:80]


@pytest.mark.parametrize("recipe", REGRESSIONS, ids=[_regression_id(r) for r in REGRESSIONS])
def test_regression_recipe(synthetic, recipe):
    victim, target, mutation, _before = recipe
    facts = synthetic.doses[victim][0] if target == "dose" else synthetic.slices[victim][target]
    _run(synthetic, victim, facts, mutation, use_cli=False)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "recipe", REAL_REGRESSIONS, ids=[f"rtkit-{r[0]}-{r[1].keyword}-{r[1].op}" for r in REAL_REGRESSIONS]
)
def test_real_regression_recipe(real, recipe):
    index, mutation, _before = recipe
    _run(real, "rtkit", real.doses["rtkit"][index], mutation, use_cli=False)


def test_command_survives_every_regression(tmp_path):
    """All recipes at once, each on its own patient, through a real ``dosealign export`` process."""
    root = tmp_path / "in"
    write_phantom(root / "good", GOOD)
    expected = {}
    for n, (victim, target, mutation, _before) in enumerate(REGRESSIONS):
        spec = VICTIMS[victim]
        truth = write_phantom(root / f"r{n:02d}", dataclasses.replace(spec, patient_id=f"REG-{n:02d}", seed=100 + n))
        path = truth.dose_files[0] if target == "dose" else truth.ct_files[target]
        facts = _facts(path, path.relative_to(root).as_posix(), "dose" if target == "dose" else "ct")
        slices = [_facts(p, p.relative_to(root).as_posix(), "ct") for p in truth.ct_files]
        expected[f"r{n:02d}"] = (_apply(root, facts, mutation, slices), mutation)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "DoseAlignLib.cli", "export", str(root), str(out), "--quiet", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "DoseAlign")}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    rows = _manifest(out)
    assert not [r for r in rows if "internal error" in r["reason"]]
    good = [r for r in rows if r["ct_folder"] == "good"]
    assert [r["status"] for r in good] == ["ok"]
    for folder, (names, mutation) in expected.items():
        naming = [r for r in rows if r["status"] == "failed" and any(n in r["reason"] for n in names)]
        assert naming, f"{folder} ({mutation}): no failed row names {names}"
        assert any(_names_tag(r["reason"], mutation) for r in naming), f"{folder} ({mutation}): {naming}"
