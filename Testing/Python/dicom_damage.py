"""Damage DICOM files on purpose: the hostile inputs of the fuzzing, mixed-batch and killed-run tests.

Every helper edits a file in place (callers work on copies) and writes it back in its own transfer
syntax with pydicom's value validation off, so NaN, wrong VRs, huge and negative values reach the
file exactly as a broken exporter would write them. Nothing here uses the engine.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3
JPEG2000 = "1.2.840.10008.1.2.4.90"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
TEXT_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")


@contextlib.contextmanager
def lenient():
    """pydicom accepts and writes any value (NaN, 40-character DS, text in IS) inside this block."""
    settings = config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = config.IGNORE
    settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def read(path: Path, *, header_only: bool = False):
    with lenient():
        return pydicom.dcmread(str(path), force=True, stop_before_pixels=header_only)


def save(ds, path: Path) -> None:
    """Write ``ds`` back as it was read (same transfer syntax and preamble)."""
    with lenient():
        if PYDICOM3:
            ds.save_as(str(path), enforce_file_format=False)
        else:
            ds.save_as(str(path), write_like_original=True)


def save_encoded(ds, path: Path, syntax: str) -> None:
    """Write ``ds`` to ``path`` in the transfer syntax ``syntax`` (implicit or deflated, on pydicom 2.4 and 3)."""
    ds.file_meta.TransferSyntaxUID = syntax
    implicit = syntax == pydicom.uid.ImplicitVRLittleEndian
    if PYDICOM3:
        ds.save_as(str(path), implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    else:
        ds.is_implicit_VR, ds.is_little_endian = implicit, True
        ds.save_as(str(path), write_like_original=False)


def tag_name(keyword: str) -> str:
    """``(gggg,eeee) Keyword`` as the engine's messages name a tag."""
    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


def set_raw(ds, keyword: str, value, vr: Optional[str] = None) -> None:
    """Set ``keyword`` to ``value`` with ``vr`` (default: the dictionary's), bypassing validation.

    Multi-valued text goes in as one backslash-separated string, as it sits in the file.
    """
    tag = tag_for_keyword(keyword)
    vr = vr or dictionary_VR(tag)
    if isinstance(value, (list, tuple)) and vr in TEXT_VRS:
        value = "\\".join(str(v) for v in value)
    if (vr in TEXT_VRS and isinstance(value, str)) or isinstance(value, bytes):
        # the bytes as they sit in the file, unparsed: pydicom writes raw elements as they are
        raw = value if isinstance(value, bytes) else value.encode("latin-1")
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
        implicit = getattr(ds, "is_implicit_VR", False)
        little = getattr(ds, "is_little_endian", True)
        ds._dict[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, implicit, little)
        return
    with lenient():
        ds[tag] = DataElement(tag, vr, value)


@dataclass(frozen=True)
class Mutation:
    """One change to one header: ``op`` applied to ``keyword`` (see :func:`apply`).

    ``must_fail``: the case that owns the file cannot be exported correctly after it, so its row
    must be failed and name the file and one of ``tags`` (keywords). Other mutations may pass;
    their outputs must then still be sane (finite, dose not negative).
    """

    keyword: str
    op: str
    value: object = None
    must_fail: bool = True
    tags: tuple = ()

    @property
    def expected_tags(self) -> tuple:
        return self.tags or (self.keyword,)

    def __str__(self) -> str:
        return f"{self.keyword} {self.op}" + ("" if self.value is None else f" {self.value!r}")


def apply(path: Path, mutation: Mutation) -> None:
    """Apply ``mutation`` to the file at ``path`` (in place)."""
    op, keyword, value = mutation.op, mutation.keyword, mutation.value
    if op == "truncate":  # cut ``value`` bytes off the end of the file (pixel data comes last)
        data = path.read_bytes()
        path.write_bytes(data[: max(len(data) - int(value), 0)])
        return
    if op == "truncate_at":  # keep only the first ``value`` fraction of the file
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * float(value))])
        return
    if op == "append":  # extra bytes after the pixel data
        path.write_bytes(path.read_bytes() + bytes(value))
        return
    if op == "garbage":  # overwrite ``value`` = (fraction, length) of the file with 0xFF bytes
        data = bytearray(path.read_bytes())
        start = int(len(data) * value[0])
        data[start : start + value[1]] = b"\xff" * len(data[start : start + value[1]])
        path.write_bytes(bytes(data))
        return
    if op == "transfer_syntax":  # claim another transfer syntax without re-encoding the data set
        relabel_transfer_syntax(path, value)
        return
    ds = read(path)
    if op == "delete":
        if keyword in ds:
            del ds[keyword]
    elif op == "set":  # value in the dictionary VR (strings go in raw)
        set_raw(ds, keyword, value)
    elif op == "vr":  # value = (vr, raw value): the tag written with a wrong VR
        set_raw(ds, keyword, value[1], vr=value[0])
    elif op == "sequence":  # the tag written as an (empty) sequence
        set_raw(ds, keyword, DicomSequence([]), vr="SQ")
    elif op == "drop_values":  # keep only the first ``value`` values of a multi-valued tag
        values = list(ds[keyword].value)
        set_raw(ds, keyword, values[: int(value)])
    elif op == "extend_values":  # append one value
        values = list(ds[keyword].value)
        set_raw(ds, keyword, [*values, value])
    elif op == "scale_value":  # multiply value number ``value[0]`` by ``value[1]``
        values = [float(v) for v in ds[keyword].value]
        values[value[0]] *= value[1]
        set_raw(ds, keyword, [repr(v) for v in values])
    elif op == "repeat_value":  # value ``value`` equals the one before it (frames repeat)
        values = list(ds[keyword].value)
        values[int(value)] = values[int(value) - 1]
        set_raw(ds, keyword, values)
    elif op == "reverse_pair":  # swap values 1 and 2 (a non-monotonic GridFrameOffsetVector)
        values = list(ds[keyword].value)
        values[1], values[2] = values[2], values[1]
        set_raw(ds, keyword, values)
    else:
        raise ValueError(f"unknown op {op}")
    save(ds, path)


def relabel_transfer_syntax(path: Path, syntax: str) -> None:
    """Rewrite the file meta with another TransferSyntaxUID, leaving the data set's bytes as they are."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    data = path.read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path} has no file meta to relabel")
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR little endian
    body = data[144 + group_length :]
    meta = read(path, header_only=True).file_meta
    meta.TransferSyntaxUID = syntax
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    with lenient():
        write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(data[:128] + b"DICM" + buffer.getvalue() + body)


def duplicate_slice(slice_path: Path, other_slice: Path, new_name: str) -> Path:
    """A copy of ``slice_path`` at the position of ``other_slice`` with its own SOPInstanceUID."""
    ds = read(slice_path)
    ds.ImagePositionPatient = read(other_slice, header_only=True).ImagePositionPatient
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".9"
    target = slice_path.with_name(new_name)
    save(ds, target)
    return target


def compress_fake(path: Path, syntax: str = JPEG2000) -> None:
    """Re-label the pixel data as JPEG 2000 (or ``syntax``) with encapsulated fake frames.

    The payload is not a valid codestream: without a decoder pydicom cannot even try, with one it
    fails to decode. Either way the pixels are unusable and the engine must say why.
    """
    from pydicom.encaps import encapsulate

    ds = read(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    fake = [b"\xff\x4f\xff\x51" + bytes(range(60)) for _ in range(frames)]
    ds.PixelData = encapsulate(fake)
    ds["PixelData"].VR = "OB"
    if PYDICOM3:
        ds["PixelData"].is_undefined_length = True
    else:
        ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax
    save(ds, path)


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def rewrite_tags(path: Path, **values) -> None:
    """Set plain attributes (dates, names, UIDs) in a file; for building test inputs."""
    ds = read(path)
    for keyword, value in values.items():
        if value is None:
            if keyword in ds:
                del ds[keyword]
        else:
            setattr(ds, keyword, value)
    save(ds, path)


def dose_pixels_nbytes(path: Path) -> int:
    ds = read(path)
    return len(ds.PixelData)


def finite_and_sane(arrays: dict) -> Optional[str]:
    """Why exported arrays are not sane (None when they are): NaN/inf anywhere, negative dose."""
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            return f"{name} holds NaN or infinity"
    if "dose" in arrays and arrays["dose"].size and float(arrays["dose"].min()) < 0:
        return "dose is negative"
    return None
