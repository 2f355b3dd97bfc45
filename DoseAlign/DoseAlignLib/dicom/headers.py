"""Small, version-tolerant helpers around pydicom (2.4 and 3.x): reading headers and values."""

from __future__ import annotations

import io
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pydicom
from pydicom import encaps
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from ..errors import InputError, UnreadableError, shortened, too_many_open_files
from ..limits import (  # noqa: F401 (the spacing bounds are read as headers.MAX_SPACING_MM)
    MAX_SPACING_MM,
    MIN_SPACING_MM,
    Deadline,
    LimitError,
    format_bytes,
    header_reads,
    inflate_bytes,
    open_regular,
)

#: SOP classes by the name the engine uses for them.
SOP_CLASS_KIND = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",  # Enhanced CT: one file, a frame per slice (see dicom/enhanced.py)
    "1.2.840.10008.5.1.4.1.1.2.2": "CT",  # Legacy Converted Enhanced CT: the same
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
    "1.2.840.10008.5.1.4.1.1.481.8": "RTPLAN",  # RT Ion Plan
    "1.2.840.10008.5.1.4.1.1.481.1": "RTIMAGE",
}


#: Values at least this large are not read by :func:`read_header` with ``defer_large``: they are
#: skipped and their file position kept (pixel data read later straight into place).
DEFER_BYTES = 64 * 1024
#: Values at least this large are read only when they are used (pydicom reads them again from the file then): an
#: element nothing reads, such as a planted private element of 1.5 GB in a structure set, costs no memory
#: (seventeenth hostile trial Q4: two such copies took 1.7 GB and the time to read them).
LARGE_VALUE_BYTES = 64 << 20


#: Why a file the scan listed cannot be opened any more because it is gone (the reason of a case's failure).
REMOVED_AFTER_SCAN = "it was removed after the scan"


def unreadable(error: OSError, path, removed: str = REMOVED_AFTER_SCAN) -> UnreadableError:
    """The :class:`UnreadableError` for an input file that could not be opened or read (``error``): gone since
    it was listed (``removed`` says when), refused as no regular file (a named pipe, a device: never opened),
    not permitted, an I/O error; or this process's open-file limit, which is not the file's fault."""
    limit_reached = too_many_open_files(error)
    if limit_reached:
        return UnreadableError(f"cannot be opened now: {limit_reached}; not a fault of the file", path=path)
    if isinstance(error, FileNotFoundError):
        return UnreadableError(f"cannot be read: {removed}", path=path)
    return UnreadableError(f"cannot be read: {error.strerror or one_line(error)}", path=path)


def read_header(
    path: Path,
    *,
    stop_before_pixels: bool = True,
    defer_large: bool = False,
    deadline: Optional[Deadline] = None,
    removed: str = REMOVED_AFTER_SCAN,
) -> Dataset:
    """Read a DICOM file's data set (without pixel data by default).

    With ``defer_large``, large values (pixel data) are skipped rather than the reading stopped,
    so that their file position is known (see :func:`pixel_data_position`).
    Files without the 128-byte preamble and file meta (allowed for older exports) are read too,
    but only when they start like a data set and kept only when they look like DICOM (carry a
    SOPClassUID or Modality). Only regular files are opened (a named pipe or device is refused,
    never waited on); a deflated data set may inflate to at most the limit of
    :func:`~DoseAlignLib.limits.inflate_bytes`; ``deadline`` bounds the time spent reading; the reads the header may
    take are bounded always (:func:`~DoseAlignLib.limits.header_reads`: what pydicom builds from a header is
    bounded by that, not by the file's size; a deflated data set is parsed through the same checks). A file that cannot
    be opened or read is an :class:`UnreadableError` (:func:`unreadable`; ``removed`` says when a missing file
    went: the scan reads files it has just listed).
    """
    handle = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # (bounded without a deadline too: a case reads its files again, and one replaced by a header bomb after
            # the scan took 5.3 GB before a MemoryError, fifty-fourth hostile trial BB3; a file the scan read passes)
            most_reads = header_reads()
            with DicomFile(path, deadline=deadline, most_reads=most_reads) as handle:
                head = handle.read(132)
                preamble = head[128:132] == b"DICM"
                if not preamble and not starts_like_a_data_set(head):
                    raise InputError("not a DICOM file", path=path)
                deflated = preamble and _transfer_syntax(handle) == DEFLATED
                if deflated:  # bounded first; then parsed from its inflated bytes through the same checks
                    _check_inflated_size(handle, path, deadline)
                    handle.read_inflated(_inflated(handle, path, deadline))
                handle.seek(0)
                # values of a deflated file cannot be read later by position (its inflated size is bounded)
                later = None if deflated else LARGE_VALUE_BYTES
                if defer_large and not deflated:
                    ds = pydicom.dcmread(handle, force=not preamble, defer_size=DEFER_BYTES)
                elif stop_before_pixels:
                    ds = pydicom.dcmread(handle, force=not preamble, stop_before_pixels=True, defer_size=later)
                else:
                    ds = _read_with_pixels(handle, path, force=not preamble, later=later)
                if deflated:  # read as the plain data set it inflates to
                    ds.file_meta.TransferSyntaxUID = DEFLATED
                if not preamble and "SOPClassUID" not in ds and "Modality" not in ds:
                    raise InputError("not a DICOM file", path=path)
                _decode_un_sequences(ds, handle, path)
                if most_reads is not None:
                    _charge_unparsed_items(ds, handle)
                _fill_in_transfer_syntax(ds)
        check_not_truncated(ds, path, inflated=deflated)
        check_value_lengths(ds, path)
        return ds
    except (InputError, LimitError):
        raise
    except Exception as error:  # pydicom raises many types on damaged files
        reached = getattr(handle, "limit_error", None)
        if reached is not None:  # a limit reached inside pydicom, which made it an OSError ("No tag to read")
            raise reached from None
        if isinstance(error, OSError):
            raise unreadable(error, path, removed) from None
        raise InputError(f"cannot be read as DICOM: {type(error).__name__}: {one_line(error)}", path=path) from None


#: The values of the few-valued attributes DoseAlign reads as numbers or words, and the bytes one value may take as
#: stored (a decimal string takes 16, a long string 64 characters; room is left for writers that pad or overrun).
_FEW_VALUES = {
    "PixelSpacing": 2,
    "ImageOrientationPatient": 6,
    "ImagePositionPatient": 3,
    "SliceThickness": 1,
    "SpacingBetweenSlices": 1,
    "SliceLocation": 1,
    "RescaleSlope": 1,
    "RescaleIntercept": 1,
    "RescaleType": 1,
    "DoseGridScaling": 1,
    "NumberOfFrames": 1,
    "DoseUnits": 1,
    "DoseType": 1,
    "DoseSummationType": 1,
}
_VALUE_BYTES = 256


def stored_length(element: Any) -> Optional[int]:
    """The bytes of an element's value as stored, before pydicom parses it (``UNDEFINED_LENGTH`` as stored), or None
    once it is parsed."""
    return element.length if isinstance(element, RawDataElement) else None


#: The length an element gives when its value runs to a delimiter (only sequences and encapsulated pixel data may).
UNDEFINED_LENGTH = 0xFFFFFFFF


def check_value_lengths(ds: Dataset, path: Path) -> None:
    """Refuse a few-valued attribute stored far longer than its values can be, or with an undefined length, before it
    is parsed: a PixelSpacing of 20 MB took 51 s and 4.5 GB to read, 30 MB ended in a MemoryError (seventy-fourth
    hostile trial BV2); a GridFrameOffsetVector of undefined length passed its own bound (BV5). Every attribute of a
    bounded number of values, in the sequences too, is bounded by what its values can take (:func:`overlong_item`):
    a 34 MB RTROIInterpretedType or SOPInstanceUID was copied into meta.json, a 22 MB ROIDisplayColor or
    TargetPrescriptionDose parsed whole (seventy-sixth trial BX1, BX2, BX4)."""
    found = overlong_value(ds) or overlong_item(ds)
    if found is not None:
        tag, why = found
        raise InputError(why, path=path, tag=tag, hint="the file is damaged or was not written by a DICOM writer")


#: The characters one value of a text VR may hold (PS3.5 6.2; PN: three groups of 64), and the bytes of a binary one.
_VR_CHARACTERS = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240, "PN": 194, "SH": 16,
    "ST": 1024, "TM": 16, "UI": 64, "US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "UV": 8, "SV": 8,
}  # fmt: skip
_MOST_BYTES: dict = {}
#: The most bytes of an attribute of words or names of any number of values (OtherPatientIDs, ImageType).
MANY_VALUES_BYTES = 4 << 20


def _most_bytes(tag: int) -> Optional[int]:
    """The most bytes an attribute of a bounded number of values may take as stored (four bytes a character, as a
    multi-byte character set may need, and room for writers that overrun; 64 KiB at least), or None where it has no
    bound (its VM is ``n``, its VR a bulk or sequence one, or it is not in the dictionary)."""
    if tag not in _MOST_BYTES:
        most = None
        try:
            vr, vm = dictionary_VR(tag), dictionary_VM(tag)
        except KeyError:
            vr = vm = ""
        last = vm.split("-")[-1]
        if vr in _VR_CHARACTERS and last.isdigit():  # (64 KiB at least: what a short length field can give, so
            # that an over-long description of a careless writer is no refusal; megabytes are)
            most = max(int(last) * (4 * _VR_CHARACTERS[vr] + 1) + _VALUE_BYTES, 1 << 16)
        elif vr in _VR_CHARACTERS and vr not in ("DS", "IS") and vm:  # of any number of values, but words and
            # names, not numbers of a contour or a grid: 4 MiB (OtherPatientIDs of 60 MB read by every scan, 3.3 GB:
            # seventy-eighth hostile trial BZ1)
            most = MANY_VALUES_BYTES
        _MOST_BYTES[tag] = most
    return _MOST_BYTES[tag]


def overlong_item(ds: Dataset, depth: int = 0) -> Optional[tuple]:
    """``(tag, why)`` for the first attribute of ``ds`` or of its sequences' items (as far as eight deep) stored
    longer than its values can take (:func:`_most_bytes`), or with an undefined length; None when there is none. Only
    the lengths are read, no value is parsed."""
    elements = getattr(ds, "_dict", {})
    for tag in list(elements):
        element, number = elements[tag], int(tag)
        if isinstance(element, RawDataElement):
            most = _most_bytes(number)
            if most is not None and element.length > most:
                why = (
                    "stored with an undefined length, which only sequences and pixel data may have"
                    if element.length == UNDEFINED_LENGTH
                    else f"stored in {element.length:,} bytes, more than its values can take ({most:,} at most)"
                )
                return f"({number >> 16:04X},{number & 0xFFFF:04X}) {keyword_for_tag(number) or 'private tag'}", why
        # a sequence as stored (or implicit VR, by the dictionary); one stored as UN is left as it is: reading it here
        # would keep its bytes, which decode_nested_un_sequences reads as a sequence later (twelfth trial L7)
        stored = getattr(element, "VR", None)
        sequence = stored == "SQ" or (stored is None and _dictionary_vr_or_none(number) == "SQ")
        if not sequence or depth >= 8:
            continue
        try:
            items = ds[tag].value
        except Exception:  # a damaged sequence: what reads it says so
            continue
        for item in items or ():
            found = overlong_item(item, depth + 1) if isinstance(item, Dataset) else None
            if found is not None:
                return found
    return None


def _dictionary_vr_or_none(tag: int) -> Optional[str]:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def overlong_value(ds: Dataset) -> Optional[tuple]:
    """``(tag, why)`` for the first few-valued attribute of ``ds`` (a data set or a sequence item) stored longer than
    its values can be, or with an undefined length; None when there is none."""
    elements = getattr(ds, "_dict", {})
    for keyword, values in (*_FEW_VALUES.items(), ("GridFrameOffsetVector", 0)):
        tag = tag_for_keyword(keyword)
        length = stored_length(elements.get(tag))
        most = _VALUE_BYTES * (values + 1) if values else OFFSET_BYTES * (MAX_FRAMES + SPARE_OFFSETS)
        if length is None or length <= most:
            continue
        if length == UNDEFINED_LENGTH:
            why = "stored with an undefined length, which only sequences and pixel data may have"
        else:
            what = f"{values} value{'s' if values > 1 else ''}" if values else f"the offsets of {MAX_FRAMES:,} frames"
            why = f"stored in {length:,} bytes, more than {what} can take ({most:,} at most)"
        return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}", why
    return None


#: Bytes a GridFrameOffsetVector may take per frame (a decimal string is 16 characters at most, and its separator),
#: and the few values more a single-frame dose may give.
OFFSET_BYTES, SPARE_OFFSETS = 17, 64


#: What a file may hold from the start of its pixel data beyond twice the bytes its header's image takes
#: uncompressed (no codec doubles an image): an odd length's pad byte, the item headers of the fragments, trailing
#: padding elements. More is a damaged or planted file, refused before the pixel data are read.
PIXEL_DATA_SLACK_BYTES = 1 << 20


def decoded_size(ds: Dataset) -> Optional[int]:
    """The bytes ``ds``'s pixel data decode to, from its header (None when it does not say)."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return (
            int(ds.Rows)
            * int(ds.Columns)
            * frames
            * int(ds.get("SamplesPerPixel", 1) or 1)
            * int(ds.BitsAllocated)
            // 8
        )
    except (AttributeError, TypeError, ValueError, KeyError):
        return None


def _read_with_pixels(handle: DicomFile, path: Path, force: bool, later: Optional[int]) -> Dataset:
    """The whole data set; the bytes from its pixel data on are read only when they are no more than
    :data:`PIXEL_DATA_SLACK_BYTES` beyond twice what the header's image takes uncompressed. Two sparse files of
    896 KB on disk, a 64 x 64 CT slice's header and a 1.5 GB PixelData element each, took the scan 7.1 GB
    (seventeenth hostile trial Q4): their size is known from the header and the file before a byte is read."""
    ds = pydicom.dcmread(handle, force=force, stop_before_pixels=True, defer_size=later)
    start = handle.tell()  # pydicom stops at the pixel data's element header
    end = handle.seek(0, os.SEEK_END)
    if end <= start:
        return ds  # the file ends with the header: nothing was left out
    size = decoded_size(ds)
    bound = 2 * (size or 0) + PIXEL_DATA_SLACK_BYTES
    if end - start > bound:
        described = (
            f"its header's image takes {size:,} bytes uncompressed" if size is not None else "its header has no image"
        )
        raise InputError(
            f"holds {end - start:,} bytes from its pixel data on, but {described} (at most {bound:,} are read): "
            "the header and the pixel data disagree",
            path=path,
            tag=TAG_PIXEL_DATA,
            hint="a damaged or planted file; export it again",
        )
    handle.seek(0)
    handle.restart()
    return pydicom.dcmread(handle, force=force, defer_size=later)


#: The item tag (FFFE,E000) in little endian: how a sequence's value starts.
_ITEM_LE = b"\xfe\xff\x00\xe0"


def _known_sequence(tag: int) -> bool:
    """Whether the DICOM dictionary knows ``tag`` as a sequence (SQ); a private tag's VR is unknown."""
    if (tag >> 16) % 2:
        return False
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _decode_un_sequences(ds: Dataset, handle: DicomFile, path: Path) -> None:
    """Read the sequences of ``ds`` that are stored with VR UN as the sequences they are.

    An archive that does not know a tag (the RT groups, for one) may store its value as UN when it writes a file in
    explicit VR; a UN value holds the element's implicit VR little endian encoding (PS3.5 6.2.2). pydicom gives a
    known tag its dictionary VR only for a value shorter than 64 KiB, and reads a short sequence in the file's
    encoding: a long one (an ROIContourSequence) stays bytes. Each top-level UN element of a tag the dictionary
    knows as SQ is read again here from ``handle`` as implicit VR little endian (its items' elements get their
    dictionary VRs), through the handle's time and reads limits (a UN value is no way around them). A value that is
    no sequence refuses the file, naming the element.
    """
    for tag, element in list(getattr(ds, "_dict", {}).items()):  # as read: get_item would read a deferred value
        if not isinstance(element, RawDataElement) or element.VR != "UN" or not _known_sequence(tag):
            continue
        name = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag)}"
        length, start = element.length, element.value_tell
        if length == 0xFFFFFFFF or start is None:  # pydicom reads a UN of undefined length as a sequence itself
            continue
        why = ""
        sequence = None
        if length:
            handle.seek(start)
            if handle.read(4) != _ITEM_LE:  # pydicom would read anything as items, with a warning
                why = "it does not start with an item (FFFE,E000)"
            else:
                handle.seek(start)
                encodings = convert_encodings(ds.get("SpecificCharacterSet", None) or "ISO_IR 6")
                try:
                    sequence = read_sequence(handle, True, True, length, encodings)
                except (LimitError, MemoryError):  # what they are, not damage (thirteenth hostile trial M11)
                    raise
                except Exception as error:  # pydicom raises many types on damaged values
                    if handle.limit_error is not None:  # a limit reached inside pydicom (an OSError there)
                        raise handle.limit_error from None
                    why = f"{type(error).__name__}: {one_line(error)}"
                if sequence is not None and handle.tell() != start + length:
                    sequence, why = None, f"its items end at byte {handle.tell() - start:,} of {length:,}"
        else:
            sequence = Sequence()
        if sequence is None:
            raise InputError(
                f"{name} is stored with VR UN and its value is not an implicit VR little endian sequence "
                f"(PS3.5 6.2.2): {why}",
                path=path,
            )
        ds[tag] = DataElement(tag, "SQ", sequence)


#: The item tag (FFFE,E000) in big endian.
_ITEM_BE = b"\xff\xfe\xe0\x00"
#: What one sequence item costs in the reads limit: pydicom reads an empty item with three reads.
_READS_PER_ITEM = 3


def _charge_unparsed_items(ds: Dataset, handle: DicomFile) -> None:
    """Count the items of the sequences pydicom left unparsed in ``ds`` against ``handle``'s reads limit.

    pydicom parses a sequence of defined length only when it is first used, from its value's bytes in memory (or
    from a deferred value it reads again from the file), where no limit of the handle applies: an RTSTRUCT of
    8.7 MB with 1 M empty items in its StructureSetROISequence took 18 s and 1.4 GB in the scan and was
    accepted (eleventh hostile trial K4, its gap). Each such value is read here through the handle (a deferred one
    is kept, so that pydicom does not open the file again), and the item tags it holds at any depth are charged as
    the reads that parsing them will take. Sequences of undefined length were parsed through the handle already;
    their items are looked into for unparsed ones.
    """
    for tag, element in list(getattr(ds, "_dict", {}).items()):
        if isinstance(element, RawDataElement):
            if element.length in (0, 0xFFFFFFFF) or tag == 0x7FE00010:
                continue
            vr = element.VR
            if not (vr == "SQ" or (vr in (None, "UN") and _known_sequence(tag))):
                continue
            data = element.value
            if data is None and element.value_tell is not None:  # deferred: read now, within the limits
                handle.seek(element.value_tell)
                data = handle.read(element.length)
                ds._dict[tag] = element._replace(value=data)
            if isinstance(data, bytes):
                item = _ITEM_LE if element.is_little_endian or vr == "UN" else _ITEM_BE
                handle.charge(_READS_PER_ITEM * data.count(item))
        elif isinstance(getattr(element, "value", None), Sequence):
            for item in element.value:
                _charge_unparsed_items(item, handle)


def decode_nested_un_sequences(ds: Dataset, path: Path, depth: int = 0) -> None:
    """Read the sequences nested in the items of ``ds``'s sequences that are stored with VR UN (as
    :func:`_decode_un_sequences` reads the top-level ones), from the bytes already read: an archive without the RT
    dictionary wrote each ROIContourSequence item's ContourSequence so (twelfth hostile trial L7: "internal
    error"). It looks into the items of the top-level sequences only, and converts nothing else: what a UN value
    holds is implicit VR, read with its dictionary VRs (walking every nested sequence cost 1.1-1.4 s per 20 000
    contours)."""
    for tag, element in list(getattr(ds, "_dict", {}).items()):
        if not _known_sequence(tag):
            continue
        if isinstance(element, RawDataElement) and element.VR == "UN" and isinstance(element.value, bytes):
            data = element.value
            if data and data[:4] != _ITEM_LE:
                raise InputError(
                    f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag)} is stored with VR UN and its value "
                    "is not an implicit VR little endian sequence (PS3.5 6.2.2): it does not start with an item "
                    "(FFFE,E000)",
                    path=path,
                )
            try:
                sequence = read_sequence(io.BytesIO(data), True, True, len(data), ds._character_set)
            except MemoryError:  # what it is, not damage (thirteenth hostile trial M11: the case went on without masks)
                raise
            except Exception as error:  # pydicom raises many types on damaged values
                raise InputError(
                    f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag)} is stored with VR UN and its value "
                    f"is not an implicit VR little endian sequence (PS3.5 6.2.2): {type(error).__name__}: "
                    f"{one_line(error)}",
                    path=path,
                ) from None
            ds[tag] = DataElement(tag, "SQ", sequence)
            continue
        if depth == 0:
            value = ds[tag].value
            for item in value if isinstance(value, Sequence) else ():
                decode_nested_un_sequences(item, path, depth + 1)


#: The uncompressed transfer syntaxes by (implicit VR, little endian): what a data set without one in its file meta
#: was read as.
_READ_AS = {
    (True, True): "1.2.840.10008.1.2",
    (False, True): "1.2.840.10008.1.2.1",
    (False, False): "1.2.840.10008.1.2.2",
}


def _fill_in_transfer_syntax(ds: Dataset) -> None:
    """A data set without (0002,0010) TransferSyntaxUID (a bare data set, or file meta without it) gets the
    uncompressed syntax pydicom read it in: pydicom infers the encoding when reading such a file but will not
    decode its pixel data without the UID (nor would :func:`pixel_data_position` place them).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    encoding = ds.original_encoding if hasattr(type(ds), "original_encoding") else None  # pydicom 3
    if encoding is None:  # pydicom 2.4
        encoding = (getattr(ds, "read_implicit_vr", None), getattr(ds, "read_little_endian", None))
    syntax = _READ_AS.get(tuple(encoding))
    if syntax is None:
        return  # the encoding is not known: the pixel data stay undecodable and are reported so
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax


#: Deflated Explicit VR Little Endian: the data set after the file meta is zlib-compressed.
DEFLATED = "1.2.840.10008.1.2.1.99"
#: VRs whose explicit-VR element header has two reserved bytes and a 4-byte length.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class DicomFile:
    """A regular file opened for pydicom, with a time limit on reading (``deadline``) and a most number of reads
    (``most_reads``, see :func:`~DoseAlignLib.limits.header_reads`).

    pydicom reads a value it deferred by constructing this class again with the file's name, so
    that every read of a DICOM file, now or later, opens regular files only. A deflated data set is
    read through the same checks from its inflated bytes (:meth:`read_inflated`). pydicom turns an
    error raised inside some of its reads into an :class:`OSError` ("No tag to read at file
    position ..."): the limit reached is kept in :attr:`limit_error`, so that the reader can say so.
    """

    def __init__(
        self, path, mode: str = "rb", deadline: Optional[Deadline] = None, most_reads: Optional[int] = None
    ) -> None:
        self.name = str(path)
        self._file = open_regular(path)
        self._deadline = deadline
        self._most_reads = most_reads
        self._reads = 0
        self.limit_error: Optional[LimitError] = None
        self._bind()

    def _bind(self) -> None:
        # the file's own methods where no check is needed (pydicom calls them for every element)
        self.readinto, self.seek, self.tell = self._file.readinto, self._file.seek, self._file.tell
        if self._deadline is None and self._most_reads is None:
            self.read = self._file.read
        else:
            self.__dict__.pop("read", None)

    def read_inflated(self, data) -> None:
        """Read ``data`` (a binary file object in memory: the file as it would be uncompressed) from now on,
        through the same checks; the file itself is closed."""
        self._file.close()
        self._file = data
        self._bind()

    def read(self, size: int = -1) -> bytes:
        self._reads += 1
        if not self._reads & 63:
            self._check()
        return self._file.read(size)

    def restart(self) -> None:
        """Count reads from none again (the same file read once more from its start)."""
        self._reads = 0

    def charge(self, reads: int) -> None:
        """Count ``reads`` that will be made from memory later (items of a sequence parsed when first used)."""
        self._reads += reads
        self._check()

    def _check(self) -> None:
        try:
            if self._deadline is not None:
                self._deadline.check(self.name)
            if self._most_reads is not None and self._reads > self._most_reads:
                raise LimitError(
                    f"its header needs more than the limit of {self._most_reads:,} reads (data elements, values "
                    "and sequence items) to be parsed",
                    path=self.name,
                    hint="a header bomb or a damaged file; set DOSEALIGN_HEADER_READS to allow more",
                )
        except LimitError as error:
            self.limit_error = error
            raise

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> DicomFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def starts_like_a_data_set(head: bytes) -> bool:
    """Whether bytes without a preamble start like a DICOM data set: a first element of the file meta
    (group 0002) or identifying (0008) group, with a VR (explicit) or a length within the file (implicit).

    Older exports without file meta start so; anything else (text, pictures, archives, zero-filled
    raw volumes) is not read further.
    """
    if len(head) < 8:
        return False
    group_little = int.from_bytes(head[0:2], "little")
    group_big = int.from_bytes(head[0:2], "big")
    if group_little not in (0x0002, 0x0008) and group_big != 0x0008:
        return False
    explicit = head[4:6].isalpha() and head[4:6].isupper()
    length = int.from_bytes(head[4:8], "little" if group_little in (0x0002, 0x0008) else "big")
    return explicit or length < (1 << 24)


#: The value representations DICOM defines (an explicit VR data set names one after each tag).
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
#: First elements of a data set without file meta, implicit VR: group length, character set, image type, instance
#: creation date and time, SOP class.
_FIRST_ELEMENTS = frozenset({0x0000, 0x0005, 0x0008, 0x0012, 0x0013, 0x0016, 0x0018, 0x0020})


def surely_a_data_set(head: bytes) -> bool:
    """A stricter :func:`starts_like_a_data_set`, for the looks at OUT that read no further (little endian only): an
    explicit VR element of group 0002 or 0008, or an implicit one of group 0008 that a data set begins with and a
    short length. A raw array beside an export (int64 2, 5, ...) was taken for DICOM (thirty-ninth hostile trial
    AM6). ``head``: the file's first bytes (132 are read), its first element's value among them."""
    if len(head) < 8:
        return False
    group, element = int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little")
    if group not in (0x0002, 0x0008):
        return False
    if head[4:6] in _VRS:
        return True
    length = int.from_bytes(head[4:8], "little")
    if group != 0x0008 or element not in _FIRST_ELEMENTS or not 2 <= length < 4096:
        return False
    if element == 0x0000:  # (a group length: 4 bytes)
        return length == 4
    value = head[8 : 8 + min(length, 64)]  # a text value (a character set, image type, date, time, UID): ASCII
    return len(value) == min(length, 64) and all(32 <= b < 127 or b == 0 for b in value)


def _transfer_syntax(handle) -> str:
    """(0002,0010) TransferSyntaxUID from the file meta that follows the preamble ('' when unreadable)."""
    handle.seek(132)
    meta = handle.read(16384)
    position = 0
    while position + 8 <= len(meta):
        group = int.from_bytes(meta[position : position + 2], "little")
        element = int.from_bytes(meta[position + 2 : position + 4], "little")
        if group != 0x0002:
            break
        vr = meta[position + 4 : position + 6]
        if vr in _LONG_VRS:
            length = int.from_bytes(meta[position + 8 : position + 12], "little")
            start = position + 12
        else:
            length = int.from_bytes(meta[position + 6 : position + 8], "little")
            start = position + 8
        if element == 0x0010:
            return meta[start : start + length].decode("ascii", "replace").strip("\0 ")
        position = start + length
    return ""


#: Bytes inflated at a time while a deflated data set is measured (the memory the measuring takes).
INFLATE_PIECE = 1 << 20


def _check_inflated_size(handle, path: Path, deadline: Optional[Deadline]) -> None:
    """Inflate a deflated data set once, counting bytes only: refuse it beyond the stated limit."""
    handle.seek(132)
    meta = handle.read(16384)
    position = 0
    while position + 8 <= len(meta) and int.from_bytes(meta[position : position + 2], "little") == 0x0002:
        vr = meta[position + 4 : position + 6]
        if vr in _LONG_VRS:
            position += 12 + int.from_bytes(meta[position + 8 : position + 12], "little")
        else:
            position += 8 + int.from_bytes(meta[position + 6 : position + 8], "little")
    handle.seek(132 + position)
    limit = inflate_bytes()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while True:
        if deadline is not None:
            deadline.check(str(path))
        chunk = handle.read(1 << 20)
        if not chunk:
            break
        data = inflater.decompress(chunk, INFLATE_PIECE)  # counted piece by piece, never held whole
        total += len(data)
        while inflater.unconsumed_tail and total <= limit:
            data = inflater.decompress(inflater.unconsumed_tail, INFLATE_PIECE)
            total += len(data)
            if not data:
                break
        if total > limit:
            raise LimitError(
                f"the deflated data set inflates to more than the limit of {format_bytes(limit)} "
                f"({format_bytes(os.fstat(handle._file.fileno()).st_size)} in the file)",
                path=path,
                tag=TAG_SYNTAX,
                hint="a decompression bomb or a damaged file; set DOSEALIGN_INFLATE_MB to allow more",
            )
        if inflater.eof:
            break


#: Explicit VR Little Endian (20 bytes, padded): the transfer syntax a deflated file's meta names for pydicom once
#: the data set is inflated.
_PLAIN_SYNTAX = b"1.2.840.10008.1.2.1\0"


def _inflated(handle, path: Path, deadline: Optional[Deadline]) -> io.BytesIO:
    """The file as if it were not deflated: its preamble and file meta (TransferSyntaxUID Explicit VR Little Endian)
    and the inflated data set, in memory (measured by :func:`_check_inflated_size` first). pydicom inflates a
    deflated data set at once and parses it from memory, where no time limit or reads limit applies; parsed from
    this copy, through :class:`DicomFile`, it is bounded as a plain file is."""
    handle.seek(0)
    head = handle.read(132 + 16384)
    out = io.BytesIO()
    out.write(head[:132])
    position = 132
    while position + 8 <= len(head) and int.from_bytes(head[position : position + 2], "little") == 0x0002:
        vr = head[position + 4 : position + 6]
        if vr in _LONG_VRS:
            end = position + 12 + int.from_bytes(head[position + 8 : position + 12], "little")
        else:
            end = position + 8 + int.from_bytes(head[position + 6 : position + 8], "little")
        if int.from_bytes(head[position + 2 : position + 4], "little") == 0x0010:
            out.write(head[position : position + 6] + len(_PLAIN_SYNTAX).to_bytes(2, "little") + _PLAIN_SYNTAX)
        else:
            out.write(head[position:end])
        position = end
    handle.seek(position)
    most = out.tell() + inflate_bytes()  # measured before; bounded again should the file change meanwhile
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    while not inflater.eof:
        if deadline is not None:
            deadline.check(str(path))
        chunk = inflater.unconsumed_tail or handle.read(1 << 20)
        if not chunk:
            raise InputError(
                "the deflated data set ends before its deflate stream does: the file is truncated",
                path=path,
                tag=TAG_SYNTAX,
                hint="export the file again",
            )
        out.write(inflater.decompress(chunk, INFLATE_PIECE))
        if out.tell() > most:
            raise LimitError(
                f"the deflated data set inflates to more than the limit of {format_bytes(inflate_bytes())}",
                path=path,
                tag=TAG_SYNTAX,
                hint="a decompression bomb or a damaged file; set DOSEALIGN_INFLATE_MB to allow more",
            )
    out.seek(0)
    return out


def kind_of(ds: Dataset) -> str:
    """CT, RTDOSE, RTSTRUCT, RTPLAN, RTIMAGE or OTHER, from the SOP class (Modality as fallback)."""
    kind = SOP_CLASS_KIND.get(quick_text(ds, "SOPClassUID"))
    if kind:
        return kind
    modality = quick_text(ds, "Modality").upper()
    if modality in ("CT", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE"):
        return modality
    return "OTHER"


def folded_person_name(value: Any) -> str:
    """A person name (PN) as compared between copies of one object: case, blanks around its components and empty
    trailing components left out (``Doe^Jonathan`` and ``DOE^JONATHAN^^`` are one name, as a PACS that upper-cases
    names sends it again: seventeenth hostile trial Q10)."""
    groups = []
    for group in str(value if value is not None else "").split("="):
        parts = [part.strip() for part in group.split("^")]
        while parts and not parts[-1]:
            parts.pop()
        groups.append("^".join(parts).casefold())
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def same_person_name(first: Any, second: Any) -> bool:
    """Whether two person names are one as copies are compared (:func:`folded_person_name`); when one of them
    holds only its alphabetic group, that group alone is compared: a system without the ideographic and phonetic
    character sets sends ``Yamada^Tarou`` for ``Yamada^Tarou=山田^太郎=やまだ^たろう`` (nineteenth hostile trial S11)."""
    a, b = folded_person_name(first), folded_person_name(second)
    if "=" not in a or "=" not in b:
        a, b = a.split("=")[0], b.split("=")[0]
    return a == b


def text(ds: Dataset, keyword: str, default: str = "") -> str:
    """A string attribute as written, stripped; ``default`` when absent or empty (see :func:`value_text`)."""
    value = ds.get(keyword)
    if value is None:
        return default
    value = value_text(value).strip()
    return value or default


#: The patient's other names (PN) besides PatientName, read from every file the scan reads.
#: Attributes whose values identify a patient or a visit (besides every PN, DA and DT value), read at the top level
#: and in sequences (the PatientID and IssuerOfPatientID of each OtherPatientIDsSequence item, the current form of
#: the retired OtherPatientIDs; those of GroupOfPatientsIdentificationSequence items).
#: Order and procedure-step numbers, which PS3.15's confidentiality profile removes with the accession number (an RIS
#: often sets the requested procedure's ID to it; thirty-first hostile trial AE9).
ORDER_KEYWORDS = (
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberProcedure",
    "FillerOrderNumberProcedure",
)
IDENTIFYING_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "AccessionNumber",
    "MedicalRecordLocator",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "StudyID",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "AdmissionID",
    "ServiceEpisodeID",
    *ORDER_KEYWORDS,
)
_IDENTIFYING_TAGS: dict = {}


def slice_identity(ds: Dataset) -> tuple:
    """``(dates, IDs, names)`` of a CT slice, as --pseudonymize takes them of a header it reads whole: every DA and DT
    value (YYYYMMDD), the values of :data:`IDENTIFYING_KEYWORDS` but the top level's PatientID, and every PN value but
    the top level's PatientName, at the top level and in sequence items (four deep). --pseudonymize reads one slice
    of a series whole; a value only another slice held (an AdmissionID, an InstanceCreationDate: twenty-fifth
    hostile trial Y4; a date or an AccessionNumber in a sequence item, a PerformingPhysicianName: twenty-sixth Z1)
    was never learned, and an ROI name holding it was exported as it was."""
    if not _IDENTIFYING_TAGS:
        _IDENTIFYING_TAGS.update({tag_for_keyword(k): k for k in IDENTIFYING_KEYWORDS})
    dates: set = set()
    ids: list = []
    names: list = []
    _slice_values(ds, 0, dates, ids, names)
    return dates, ids, names


_PATIENT_ID_TAG = 0x00100020
_PATIENT_NAME_TAG = 0x00100010


def _slice_values(ds: Dataset, depth: int, dates: set, ids: list, names: list) -> None:
    for tag in list(ds.keys()):
        if tag == 0x7FE00010:
            continue
        element = ds._dict.get(tag)
        if tag in _IDENTIFYING_TAGS:
            if depth or tag != _PATIENT_ID_TAG:
                ids += [v.strip() for v in text(ds, _IDENTIFYING_TAGS[tag]).split("\\") if v.strip()]
            continue
        vr = getattr(element, "VR", None)
        if not vr or vr == "UN":
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                continue
        if vr == "SQ":
            if depth < 4:
                try:
                    items = list(ds[tag].value or [])
                except Exception:  # a damaged item: the scan's own checks name it; no identity is read of it
                    continue
                for item in items:
                    if isinstance(item, Dataset):
                        _slice_values(item, depth + 1, dates, ids, names)
            continue
        if vr not in ("DA", "DT", "PN") or (vr == "PN" and tag == _PATIENT_NAME_TAG and not depth):
            continue
        if vr == "PN":  # (decoded by the data set's character set)
            try:
                written = value_text(ds[tag].value)
            except Exception:
                continue
            names.extend(v.strip() for v in str(written).split("\\") if v.strip())
            continue
        value = element.value if element is not None else None
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("ascii", "replace")
        for item in str(value_text(value) if value is not None else "").split("\\"):
            dates.update(dates_of_value(item, vr))


OTHER_NAME_KEYWORDS = ("OtherPatientNames", "PatientBirthName", "PatientMotherBirthName")


def other_identity(ds: Dataset) -> tuple:
    """``(other IDs, other names)`` of a header, beyond PatientID and PatientName: OtherPatientIDs and the PatientID
    of each OtherPatientIDsSequence item (its current form); the names of :data:`OTHER_NAME_KEYWORDS`. The scan
    records them for every file, so that a pseudonymized export knows them when one CT slice alone holds them."""
    ids = [v for v in text(ds, "OtherPatientIDs").split("\\") if v.strip()]
    for item in ds.get("OtherPatientIDsSequence") or []:
        ids += [v for v in text(item, "PatientID").split("\\") if v.strip()]
    names = [text(ds, keyword) for keyword in OTHER_NAME_KEYWORDS]
    return [v.strip() for v in ids], [n for n in names if n]


def value_text(value: Any) -> str:
    """The text of an element's value as the file writes it.

    A backslash is DICOM's value delimiter, so free text holding one (an ROIName ``PTV\\boost``, a
    StructureSetLabel, a description) reaches pydicom as several values: they are joined by the backslash again,
    not written as a Python list (``['PTV', 'boost']``); so are the values of a multi-valued attribute (ImageType
    ``ORIGINAL\\PRIMARY``). Bytes (a value pydicom left undecoded) are read as UTF-8, padding removed.
    """
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace").strip("\0 ")
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(value_text(item) for item in value)
    return str(value)


_TAG_AND_VR: dict = {}


def _raw_value(ds: Dataset, keyword: str) -> tuple:
    """``(bytes, VR, little endian)`` of an element pydicom has read but not yet converted, else ``(None, ...)``.

    The scanner reads a few plain values of every file; decoding them from the bytes is several
    times faster than pydicom's conversion (its cost dominates a scan of thousands of slices).
    """
    if keyword not in _TAG_AND_VR:
        tag = tag_for_keyword(keyword)
        _TAG_AND_VR[keyword] = (tag, dictionary_VR(tag))
    tag, vr = _TAG_AND_VR[keyword]
    element = getattr(ds, "_dict", {}).get(tag)
    if isinstance(element, RawDataElement) and isinstance(element.value, bytes):
        return element.value, vr, element.is_little_endian
    return None, vr, True


def quick_dates(ds: Dataset, keyword: str) -> set:
    """The YYYYMMDD dates of a DA or DT attribute's first value (:func:`dates_of_value`), decoded from its bytes when
    they are plain."""
    raw, vr, _little = _raw_value(ds, keyword)
    plain = raw is not None and vr in ("DA", "DT")
    value = raw.decode("ascii", "replace") if plain else text(ds, keyword)
    return set(dates_of_value(value.split("\\")[0], vr or "DT"))


#: A date written with separators in a header, against the standard's YYYYMMDD: the year first (``1958/3/14``), or
#: last, after the day or the month (``14.03.1958``, ``03/14/1958``), as local scripts and old converters write them.
#: Between a date's parts in a header written against the standard: a point, slash or dash (spaced or not), or spaces.
_DATE_GAP = r"(?:\s*[./-]\s*|\s+)"
#: A date written with separators in a header, against the standard's YYYYMMDD: the year first (``1958/3/14``), or
#: last, after the day or the month (``14.03.1958``, ``03/14/1958``, ``14 03 1958``), the year of four digits or two
#: (``14.03.58``, ``58-03-14``), as local scripts and old converters write them.
_SEPARATED_DATE = re.compile(
    rf"(?<![\d.])(?:(\d{{4}}){_DATE_GAP}(\d{{1,2}}){_DATE_GAP}(\d{{1,2}})"
    rf"|(\d{{1,2}}){_DATE_GAP}(\d{{1,2}}){_DATE_GAP}(\d{{4}}|\d{{2}}))(?![\d])"
)
_MONTH_ABBREVIATIONS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
#: A date with its month's English name: ``14-MAR-1958``, ``14 March 58``, ``1958-Mar-14``, ``March 14, 1958``.
_NAMED_DATE = re.compile(
    rf"(?<![\d])(?:(\d{{1,2}})(?:st|nd|rd|th)?[\s./,-]*{_MONTH}[\s./,-]*(\d{{4}}|\d{{2}})"
    rf"|(\d{{4}})[\s./,-]*{_MONTH}[\s./,-]*(\d{{1,2}})"
    rf"|{_MONTH}[\s./,-]*(\d{{1,2}})(?:st|nd|rd|th)?[\s./,-]+(\d{{4}}))(?![\d])",
    re.IGNORECASE,
)


def _years(year: str) -> list:
    """A year as written: four digits, or two in either century."""
    return [year] if len(year) == 4 else [f"19{year}", f"20{year}"]


def dates_of_value(value: str, vr: str = "DT") -> list:
    """The YYYYMMDD dates of a DA or DT value: its first eight digits (``2023.04.18``, the old ACR-NEMA form, too),
    and the first eight of each run of at least eight digits (a range ``20230420-20230421`` holds two: twenty-seventh
    hostile trial AA9); of a DA, each eight of its digits (a range ``2023.04.20-2023.04.21`` or
    ``2023-04-20-2023-04-21``: twenty-eighth AB3). A date written otherwise is read as written, every way its day,
    month and year could be taken (``14.03.1958`` is no ``14031958``: the birth date stayed in clear, forty-fourth
    hostile trial AR4; ``14.03.58``, ``14 03 1958``, ``14-MAR-1958``: forty-sixth AT1); six digits alone as YYMMDD,
    in either century (``580314``); eight digits alone that are no YYYYMMDD as DDMMYYYY and MMDDYYYY (``15042023``)."""
    digits = re.sub(r"\D", "", value)
    found = [digits[:8]] if len(digits) >= 8 else []
    if vr == "DA":
        found += [digits[n : n + 8] for n in range(8, len(digits) - 7, 8)]
    found += [run[:8] for run in re.findall(r"\d{8,}", value)]
    readings: list = []  # (year, month, day) as written
    if re.fullmatch(r"\s*\d{6}\s*", value):  # YYMMDD (580314), in either century
        six = value.strip()
        readings += [(year, six[2:4], six[4:]) for year in _years(six[:2])]
    eight = value.strip()
    if re.fullmatch(r"\d{8}", eight) and not (1 <= int(eight[4:6]) <= 12 and 1 <= int(eight[6:]) <= 31):
        # no YYYYMMDD: DDMMYYYY or MMDDYYYY (15042023, 04152023: fifty-third hostile trial BA6)
        readings += [(eight[4:], eight[2:4], eight[:2]), (eight[4:], eight[:2], eight[2:4])]
    for match in _SEPARATED_DATE.finditer(value):
        if match.group(1):
            readings.append((match.group(1), match.group(2), match.group(3)))
            continue
        a, b, year = match.group(4), match.group(5), match.group(6)
        for full in _years(year):
            readings += [(full, b, a), (full, a, b)]  # day first, month first
        if len(year) == 2 and len(a) == 2:  # all two digits: also the year first (58-03-14)
            readings += [(full, b, year) for full in _years(a)]
    for match in _NAMED_DATE.finditer(value):
        groups = match.groups()
        if groups[0]:  # day, month, year
            day, month, year = groups[0], groups[1], groups[2]
        elif groups[3]:  # year, month, day
            year, month, day = groups[3], groups[4], groups[5]
        else:  # month, day, year
            month, day, year = groups[6], groups[7], groups[8]
        number = str(_MONTH_ABBREVIATIONS.index(month.lower()) + 1)
        readings += [(full, number, day) for full in _years(year)]
    for year, month, day in readings:
        if 1 <= int(month) <= 12 and 1 <= int(day) <= 31:
            date = f"{int(year):04d}{int(month):02d}{int(day):02d}"
            if date not in found:
                found.append(date)
    return found


def quick_text(ds: Dataset, keyword: str) -> str:
    """:func:`text` of a one-valued UI or CS attribute, decoded from its bytes when that is safe."""
    raw, vr, _little = _raw_value(ds, keyword)
    if raw is not None and vr in ("UI", "CS") and b"\\" not in raw:
        try:
            value = raw.decode("ascii")
        except UnicodeDecodeError:
            return text(ds, keyword)
        return (value.rstrip("\0 ") if vr == "UI" else value).strip()
    return text(ds, keyword)


def decimal(value: Any) -> float:
    """``float(value)`` of a DS or IS value (or its text), but a digit separator or another script's digit is no part
    of a decimal string: Python reads ``1_5`` as 15 and ``٢`` as 2, and an ImagePositionPatient ``1_5`` was 15 mm
    (forty-first and forty-third hostile trials, AQ2, AQ9). Raises ValueError for either."""
    text = value if isinstance(value, (str, bytes)) else getattr(value, "original_string", None)
    if isinstance(text, (str, bytes)) and ("_" in text if isinstance(text, str) else b"_" in text):
        raise ValueError(f"{text!r} is no number: it holds '_'")
    if isinstance(text, str) and not text.isascii():  # float() reads any script's digits: a slope '٢' was 2 (AQ9)
        raise ValueError(f"{text!r} is no number: a decimal string holds ASCII digits only")
    return float(value)


def quick_floats(ds: Dataset, keyword: str) -> Optional[list]:
    """A DS attribute's values as floats (None when absent or not numeric), as pydicom would give them."""
    raw, vr, _little = _raw_value(ds, keyword)
    if raw is not None and vr == "DS" and raw.strip(b" \0"):
        try:
            return [decimal(part) for part in raw.split(b"\\")]
        except ValueError:
            pass  # pydicom says what it makes of it
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        return [decimal(v) for v in value]
    except (TypeError, ValueError):
        return None


def quick_int(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """A one-valued US or SS attribute as int, decoded from its two bytes; else what ``ds.get`` gives."""
    raw, vr, little = _raw_value(ds, keyword)
    if raw is not None and vr in ("US", "SS") and len(raw) == 2:
        return int.from_bytes(raw, "little" if little else "big", signed=vr == "SS")
    return ds.get(keyword, default)


def floats(ds: Dataset, keyword: str, tag: str, path: Optional[Path], count: Optional[int] = None) -> np.ndarray:
    """A numeric multi-value attribute as float64, checked for presence, count and finiteness."""
    value = ds.get(keyword)
    if value is None or value == "" or (hasattr(value, "__len__") and not isinstance(value, str) and len(value) == 0):
        raise InputError(f"{keyword} is missing or empty", path=path, tag=tag)
    try:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            values = [decimal(value)]
        else:
            values = [decimal(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(f"{keyword} is not numeric: {shortened(repr(value), 200)}", path=path, tag=tag) from None
    array = np.array(values, dtype=np.float64)
    if count is not None and array.size != count:
        raise InputError(f"{keyword} must have {count} values, has {array.size}", path=path, tag=tag)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{keyword} holds NaN or infinity: {shortened(str(values), 200)}", path=path, tag=tag)
    return array


def number(ds: Dataset, keyword: str, tag: str, path: Optional[Path], default: Any = None) -> Optional[float]:
    """A single numeric attribute as float; ``default`` when absent, an error when not a finite number."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return default
        if len(value) > 1:
            raise InputError(f"{keyword} holds {len(value)} values, one expected: {list(value)}", path=path, tag=tag)
        value = value[0]
    try:
        result = decimal(value)
    except (TypeError, ValueError, IndexError):
        written = getattr(value, "original_string", None) or value  # (an IS 1_0 prints as 10)
        raise InputError(f"{keyword} is not a number: {written!r}", path=path, tag=tag) from None
    if not np.isfinite(result):
        raise InputError(f"{keyword} is not finite: {value!r}", path=path, tag=tag)
    return result


#: Transfer syntaxes whose pixel data are the plain little-endian values.
NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


def _frames_are(ds: Dataset, frames: int) -> bool:
    """Whether NumberOfFrames says ``frames`` (absent or empty: one), as a number: ``01`` and ``+1`` are one frame."""
    try:
        return decimal(ds.get("NumberOfFrames", 1) or 1) == frames
    except (TypeError, ValueError):
        return False


def pixel_data_position(ds: Dataset, frames: int = 1) -> Optional[dict]:
    """Where a plain 16-bit grey image's pixels sit in its file, or None when they must be decoded.

    Only for uncompressed little-endian, ``frames`` frames (NumberOfFrames must say so), one sample, 16 bits
    allocated, pixel data read with ``defer_large``. With fewer than 16 bits stored (12-bit CTs) ``bits_stored`` says so: the
    reader takes the values as they are only when they fit it (then there are no high bits to mask
    or sign-extend), and such an image's PixelRepresentation and PhotometricInterpretation must be
    ones :func:`pixel_module` accepts.
    """
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    stored = quick_int(ds, "BitsStored")
    if (
        syntax not in NATIVE_LITTLE_ENDIAN
        or quick_int(ds, "BitsAllocated") != 16
        or not isinstance(stored, int)
        or not 1 <= stored <= 16
        or quick_int(ds, "SamplesPerPixel", 1) != 1
        or not _frames_are(ds, frames)
        or "PixelData" not in ds
    ):
        return None
    if stored < 16 and (
        quick_int(ds, "PixelRepresentation", 0) not in (0, 1)
        or quick_text(ds, "PhotometricInterpretation").upper() not in ("", "MONOCHROME1", "MONOCHROME2")
    ):
        return None
    # the element as read, not get_item's: that would read a deferred value (the whole pixel data)
    element = getattr(ds, "_dict", {}).get(0x7FE00010)
    offset = getattr(element, "value_tell", None) or getattr(element, "file_tell", None)
    if offset is None:
        return None  # a pydicom that does not say where values are: decode normally
    position = {"offset": int(offset), "signed": quick_int(ds, "PixelRepresentation") == 1}
    if stored < 16:
        position["bits_stored"] = stored
    return position


def fit_bits_stored(pixels: np.ndarray, bits: int, signed: bool) -> bool:
    """Whether stored values lie in the range ``bits`` bits hold (then masking or sign extension changes nothing)."""
    if bits >= 16 or pixels.size == 0:
        return True
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return bool(pixels.min() >= low and pixels.max() <= high)


_PIXEL_TAG = b"\xe0\x7f\x10\x00"


def read_pixels_into(path: Path, position: dict, out: np.ndarray) -> bool:
    """Read a slice's stored values from ``position`` straight into ``out`` (rows x columns, 16-bit).

    The element header just before the position is checked first (tag, VR, length); False when it
    does not describe ``out``'s bytes (or, for frame ``position["frame"]`` of a multi-frame image, those of
    ``position["frames"]`` such frames), and the caller decodes with pydicom instead. The file is opened only
    as a regular file (a named pipe put in its place since the scan is refused, never waited on); one that
    cannot be opened or read is an :class:`UnreadableError` naming it (:func:`unreadable`).
    """
    offset = position["offset"]
    try:
        with open_regular(path) as handle:
            handle.seek(max(offset - 12, 0))
            header = handle.read(min(offset, 12))
            explicit = len(header) == 12 and header[:4] == _PIXEL_TAG and header[4:6] in (b"OW", b"OB")
            implicit = len(header) >= 8 and header[-8:-4] == _PIXEL_TAG
            length = int.from_bytes(header[-4:], "little") if (explicit or implicit) else -1
            if length != out.nbytes * int(position.get("frames", 1)):
                return False
            if position.get("frame"):
                handle.seek(offset + out.nbytes * int(position["frame"]))
            count = handle.readinto(memoryview(out).cast("B"))
    except OSError as error:
        raise unreadable(error, path) from None
    if count != out.nbytes:
        raise InputError(
            f"pixel data is truncated ({count} of {out.nbytes} bytes)", path=path, tag="(7FE0,0010) PixelData"
        )
    return True


def single_frame_pixels(ds: Dataset, path: Path) -> np.ndarray:
    """The pixels of a one-frame grey image, read straight from the buffer when the syntax allows.

    Uncompressed little-endian 16-bit data whose values already fit BitsStored need no decoding;
    anything else (compressed, big endian, high bits to mask or sign-extend) goes through pydicom.
    """
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if (
        syntax in NATIVE_LITTLE_ENDIAN
        and ds.get("BitsAllocated") == 16
        and ds.get("SamplesPerPixel", 1) == 1
        and int(ds.get("NumberOfFrames", 1) or 1) == 1
        and "PixelData" in ds
    ):
        rows, columns = int(ds.Rows), int(ds.Columns)
        signed = ds.get("PixelRepresentation", 0) == 1
        raw = ds.PixelData
        if len(raw) >= rows * columns * 2:
            pixels = np.frombuffer(raw, dtype="<i2" if signed else "<u2", count=rows * columns).reshape(rows, columns)
            bits = int(ds.get("BitsStored", 16) or 16)
            if bits == 16:
                return pixels
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            if pixels.min() >= low and pixels.max() <= high:
                return pixels
    return pixel_array(ds, path)


def pixel_array(ds: Dataset, path: Path) -> np.ndarray:
    """Decoded pixel data, with a clear message when the transfer syntax has no decoder.

    Compressed frames are first checked against the header (:func:`check_compressed_frames`): a decoder
    builds what the compressed data describe, whatever the header says."""
    if "PixelData" not in ds:
        raise InputError("has no pixel data", path=path, tag="(7FE0,0010) PixelData")
    check_compressed_frames(ds, path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = ds.pixel_array
        for warning in caught:  # pydicom keeps the first Rows x Columns bytes of a longer RLE segment, and warns
            found = _RLE_PADDING.search(str(warning.message))
            if found and int(found.group(1)) > int(found.group(2)) + 1:  # (one pad byte is common: pydicom #1438)
                raise InputError(
                    f"an RLE segment decodes to {int(found.group(1)):,} bytes, Rows x Columns call for "
                    f"{int(found.group(2)):,}: the header and the pixel data disagree",
                    path=path,
                    tag=TAG_PIXEL_DATA,
                    hint="a damaged or planted file; export it again",
                )
        return pixels
    except (NotImplementedError, RuntimeError) as error:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        name = getattr(syntax, "name", str(syntax))
        raise InputError(
            f"pixel data cannot be decoded: TransferSyntaxUID {syntax} ({name}) needs a decoder that is not "
            f"installed ({type(error).__name__}: {one_line(error)})",
            path=path,
            tag=TAG_SYNTAX,
            hint=decoder_hint(str(syntax)),
        ) from None
    except (MemoryError, InputError):  # this process's memory, not the file: the case fails "out of memory"
        raise
    except Exception as error:
        raise InputError(
            f"pixel data is damaged: {type(error).__name__}: {one_line(error)}", path=path, tag="(7FE0,0010) PixelData"
        ) from None


#: pydicom's warning (2.4 and 3) for an RLE segment longer than its plane: the decoded and the expected bytes.
_RLE_PADDING = re.compile(r"non-conformant padding - (\d+) vs\. (\d+) bytes expected")
#: RLE Lossless: PackBits segments, one a byte of each sample of a frame.
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
#: JPEG markers that start a frame (SOF0..SOF15 but DHT, JPG and DAC; SOF55 of JPEG-LS): height and width follow.
_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
#: The start of a JPEG 2000 codestream: SOC, then SIZ (its image size follows).
_J2K_SYNTAXES = ("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20")
#: JPEG (baseline, extended, lossless) and JPEG-LS.
_JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.7", "1.2.840.10008.1.2.4.8")
_J2K_START = b"\xff\x4f\xff\x51"


def check_compressed_frames(ds: Dataset, path: Path) -> None:
    """Refuse compressed pixel data whose frames decode to another image than the header describes, before they
    are decoded. An RLE segment must decode to Rows x Columns bytes (one pad byte allowed), a JPEG or JPEG 2000
    frame must say the header's Rows and Columns. An RLE file of 64 MB with a 64 x 64 slice's header decoded to
    4.4 GB, and pydicom kept the first 4 KiB of each segment with a warning (seventeenth hostile trial Q1, Q2).
    Data that cannot be parsed here are left to the decoder, which refuses them."""
    element = ds.get("PixelData")
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if element is None or syntax in NATIVE_SYNTAXES or not syntax.startswith("1.2.840.10008.1.2."):
        return
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return  # pixel_module names what is missing
    try:
        encoded = list(_encapsulated_frames(ds.PixelData, frames))
    except Exception:  # not encapsulated as it should be: the decoder says how
        return
    for number, frame in enumerate(encoded):
        where = f"frame {number + 1} of {len(encoded)}" if len(encoded) > 1 else "the image"
        found = _rle_excess(frame, rows * columns) if syntax == RLE_LOSSLESS else None
        if found is not None:
            segment, length = found
            raise InputError(
                f"RLE segment {segment} of {where} decodes to {length:,} bytes or more, Rows {rows} x Columns "
                f"{columns} call for {rows * columns:,}: the header and the pixel data disagree",
                path=path,
                tag=TAG_PIXEL_DATA,
                hint="a damaged or planted file; export it again",
            )
        size = _compressed_image_size(frame, syntax)
        if size is not None and size != (rows, columns):
            raise InputError(
                f"the compressed data of {where} describe {size[0]} x {size[1]} pixels, Rows x Columns say "
                f"{rows} x {columns}: the header and the pixel data disagree",
                path=path,
                tag=TAG_PIXEL_DATA,
                hint="a damaged or planted file; export it again",
            )


def _encapsulated_frames(data: bytes, frames: int):
    generate = getattr(encaps, "generate_frames", None)  # pydicom 3
    if generate is not None:
        return generate(data, number_of_frames=frames)
    return encaps.generate_pixel_data_frame(data, frames)  # pydicom 2.4


#: An RLE segment this long could decode to 64 times as much (two bytes repeat one 128 times): shorter ones are left
#: to the decoder (at most 64 MiB each; a segment longer than its plane is then found by pydicom's warning, see
#: :func:`pixel_array`), longer ones are counted first. Counting runs in Python, as long as pydicom's own decoder
#: (18 ms for a noisy 512 x 512 slice): a CT's slices are not counted twice.
RLE_COUNTED_SEGMENT_BYTES = 1 << 20


def _rle_excess(frame: bytes, plane: int) -> Optional[tuple]:
    """``(segment number, bytes)`` of the first segment of an RLE frame that decodes to more than ``plane`` + 1
    bytes (counted until then), or None; segments shorter than :data:`RLE_COUNTED_SEGMENT_BYTES` are not counted."""
    if len(frame) < 64:
        return None
    header = np.frombuffer(frame[:64], dtype="<u4")
    count = int(header[0])
    if not 1 <= count <= 15:
        return None
    offsets = [int(v) for v in header[1 : count + 1]] + [len(frame)]
    for segment in range(count):
        if min(offsets[segment + 1], len(frame)) - offsets[segment] <= RLE_COUNTED_SEGMENT_BYTES:
            continue  # it decodes to at most 64 MiB: the decoder's warning says whether more than its plane
        length = _packbits_length(frame, offsets[segment], offsets[segment + 1], plane + 1)
        if length > plane + 1:
            return segment + 1, length
    return None


def _packbits_length(data: bytes, start: int, stop: int, most: int) -> int:
    """The bytes the PackBits run ``data[start:stop]`` decodes to, counted until they exceed ``most``."""
    stop = min(stop, len(data))
    produced, position = 0, start
    while position < stop and produced <= most:
        code = data[position]
        position += 1
        if code < 128:  # the next code + 1 bytes as they are
            produced += max(0, min(code + 1, stop - position))
            position += code + 1
        elif code > 128:  # the next byte, 257 - code times
            if position >= stop:
                break
            produced += 257 - code
            position += 1
    return produced


def _compressed_image_size(frame: bytes, syntax: str) -> Optional[tuple]:
    """``(rows, columns)`` a JPEG (ITU T.81, JPEG-LS) or JPEG 2000 (HTJ2K too) frame says it holds, or None."""
    if syntax.startswith(_J2K_SYNTAXES):
        start = frame.find(_J2K_START, 0, 4096)  # a bare codestream, or one in a JP2 file's box
        if start < 0 or len(frame) < start + 24:
            return None
        width, height, left, top = (int.from_bytes(frame[start + n : start + n + 4], "big") for n in (8, 12, 16, 20))
        return height - top, width - left
    if not syntax.startswith(_JPEG_SYNTAXES) or not frame.startswith(b"\xff\xd8"):
        return None
    position = 2
    for _ in range(4096):  # markers before the frame header: tables, application data
        while frame[position : position + 1] == b"\xff" and frame[position + 1 : position + 2] == b"\xff":
            position += 1  # fill bytes
        if len(frame) < position + 9 or frame[position] != 0xFF:
            return None
        marker = frame[position + 1]
        if marker in _JPEG_FRAME_MARKERS:
            height = int.from_bytes(frame[position + 5 : position + 7], "big")
            width = int.from_bytes(frame[position + 7 : position + 9], "big")
            return (height, width) if height else None  # 0: the height comes later (DNL), a decoder's matter
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:
            position += 2
        else:
            position += 2 + int.from_bytes(frame[position + 2 : position + 4], "big")
    return None


# ---- hardening: header values a damaged or hostile file can hold -----------------------------

TAG_SYNTAX = "(0002,0010) TransferSyntaxUID"
TAG_PIXEL_DATA = "(7FE0,0010) PixelData"
#: Positions and offsets (mm) beyond this describe no patient: the header is damaged.
MAX_COORDINATE_MM = 1.0e5
#: Frames of one RTDOSE beyond this are a damaged NumberOfFrames.
MAX_FRAMES = 65536
#: Transfer syntaxes whose pixel data are stored as plain values (after inflating a deflated file).
NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
_DECODERS = (
    # (transfer syntax UID prefixes, what to install)
    (("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.20"), "pylibjpeg pylibjpeg-openjpeg"),
    (("1.2.840.10008.1.2.4.8",), "pylibjpeg pylibjpeg-libjpeg (JPEG-LS)"),
    (("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"), "pylibjpeg pylibjpeg-libjpeg"),
    (("1.2.840.10008.1.2.5",), "pylibjpeg pylibjpeg-rle"),
)


def check_not_truncated(ds: Dataset, path: Path, inflated: bool = False) -> None:
    """A header element whose value the file ends inside of: pydicom keeps the short value silently.

    Checked on the elements not yet converted (right after reading); the pixel data are left to
    :func:`pixel_module`, which says how many bytes are missing. For a deflated file (``inflated``)
    positions are in the inflated data, not the file: only values read short are checked there.
    """
    try:
        size = Path(path).stat().st_size
    except OSError:
        return
    end = float("inf") if inflated else size
    for tag, element in list(getattr(ds, "_dict", {}).items()):
        if tag == 0x7FE00010 or not getattr(element, "is_raw", False):
            continue
        length, value = element.length, element.value
        if length == 0xFFFFFFFF:
            continue
        short = len(value) < length if value is not None else element.value_tell + length > end
        if short:
            name = keyword_for_tag(tag) or "private tag"
            raise InputError(
                f"the file ends inside this element ({size} bytes): it is truncated",
                path=path,
                tag=f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {name}",
                hint="export the file again",
            )


def one_line(error) -> str:
    """A library's error text on one line (it goes into a manifest cell and a terminal line)."""
    return " ".join(str(error).split())


def decoder_hint(syntax: str) -> str:
    """What to install to decode pixel data of ``syntax``."""
    for prefixes, packages in _DECODERS:
        if any(syntax.startswith(p) for p in prefixes):
            return f"install a decoder: pip install {packages}; or export the file uncompressed"
    return "install a pydicom decoder for this transfer syntax (pylibjpeg and its plugins), or export uncompressed"


def integer(
    ds: Dataset,
    keyword: str,
    tag: str,
    path: Optional[Path],
    default: Optional[int] = None,
    minimum: Optional[int] = None,
    maximum: Optional[int] = None,
) -> int:
    """A single whole-number attribute; ``default`` when absent (an error when there is none)."""
    value = number(ds, keyword, tag, path, None)
    if value is None:
        if default is None:
            raise InputError(f"{keyword} is missing", path=path, tag=tag)
        return default
    if not float(value).is_integer():
        raise InputError(f"{keyword} {value:g} is not a whole number", path=path, tag=tag)
    result = int(value)
    if (minimum is not None and result < minimum) or (maximum is not None and result > maximum):
        low = "" if minimum is None else f"{minimum}"
        high = "" if maximum is None else f"{maximum}"
        raise InputError(f"{keyword} {result} is outside {low}..{high}", path=path, tag=tag)
    return result


def check_range(
    values: np.ndarray, keyword: str, tag: str, path: Optional[Path], limit: float, positive: bool = False
) -> np.ndarray:
    """``values`` unchanged, or an error when one is beyond +-``limit`` (or not positive)."""
    values = np.asarray(values, dtype=np.float64)
    if positive and np.any(values <= 0):
        raise InputError(f"{keyword} must be positive, got {values.tolist()}", path=path, tag=tag)
    if positive and np.any(values < MIN_SPACING_MM):
        raise InputError(
            f"{keyword} {values.tolist()} is below {MIN_SPACING_MM:g} mm: no image grid is that fine",
            path=path,
            tag=tag,
            hint="the header is damaged; export the file again",
        )
    if np.any(np.abs(values) > limit):
        raise InputError(
            f"{keyword} {values.tolist()} is beyond {limit:g} mm: no patient grid is that large",
            path=path,
            tag=tag,
            hint="the header is damaged; export the file again",
        )
    return values


def pixel_module(ds: Dataset, path: Path, *, bits_allowed: tuple = (8, 16, 32), max_frames: int = MAX_FRAMES) -> dict:
    """Check the Image Pixel attributes against each other and against the stored PixelData.

    Rows, Columns, NumberOfFrames, SamplesPerPixel (1), BitsAllocated, BitsStored, PixelRepresentation
    and PhotometricInterpretation must be whole, in range and consistent; uncompressed PixelData must
    hold exactly the bytes they call for, and compressed data must be encapsulated. Returns the values.
    """
    rows = integer(ds, "Rows", "(0028,0010) Rows", path, None, 1, 65535)
    columns = integer(ds, "Columns", "(0028,0011) Columns", path, None, 1, 65535)
    frames = integer(ds, "NumberOfFrames", "(0028,0008) NumberOfFrames", path, 1, 1, max_frames)
    samples = integer(ds, "SamplesPerPixel", "(0028,0002) SamplesPerPixel", path, 1)
    if samples != 1:
        raise InputError(
            f"SamplesPerPixel {samples}: a dose or CT image has one sample per pixel",
            path=path,
            tag="(0028,0002) SamplesPerPixel",
        )
    photometric = text(ds, "PhotometricInterpretation").upper()
    if photometric not in ("", "MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"PhotometricInterpretation {photometric} contradicts SamplesPerPixel 1 (a grey image is MONOCHROME2)",
            path=path,
            tag="(0028,0004) PhotometricInterpretation",
        )
    bits = integer(ds, "BitsAllocated", "(0028,0100) BitsAllocated", path, None)
    if bits not in bits_allowed:
        raise InputError(
            f"BitsAllocated {bits} is not {' or '.join(str(b) for b in bits_allowed)}",
            path=path,
            tag="(0028,0100) BitsAllocated",
        )
    stored = integer(ds, "BitsStored", "(0028,0101) BitsStored", path, bits)
    if not 1 <= stored <= bits:
        raise InputError(
            f"BitsStored {stored} must be 1..BitsAllocated ({bits})", path=path, tag="(0028,0101) BitsStored"
        )
    representation = integer(ds, "PixelRepresentation", "(0028,0103) PixelRepresentation", path, 0)
    if representation not in (0, 1):
        raise InputError(
            f"PixelRepresentation {representation} is neither 0 (unsigned) nor 1 (signed)",
            path=path,
            tag="(0028,0103) PixelRepresentation",
        )
    if "PixelData" not in ds:
        raise InputError("has no pixel data", path=path, tag=TAG_PIXEL_DATA)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    encapsulated = bool(getattr(ds["PixelData"], "is_undefined_length", False))
    if syntax and syntax not in NATIVE_SYNTAXES and not encapsulated:
        try:
            known = pydicom.uid.UID(syntax).is_transfer_syntax
        except ValueError:  # pydicom 2.4 on a UID it does not know
            known = False
        raise InputError(
            f"TransferSyntaxUID {syntax} "
            + ("is a compressed syntax" if known else "is not a known transfer syntax")
            + ", but the pixel data are stored uncompressed (the file meta and the data set contradict each other)",
            path=path,
            tag=TAG_SYNTAX,
            hint="export the file again",
        )
    if not encapsulated:
        expected = rows * columns * frames * bits // 8
        actual = len(ds.PixelData)
        if actual not in (expected, expected + 1 if expected % 2 else expected):
            raise InputError(
                f"PixelData holds {actual} bytes, but Rows {rows} x Columns {columns} x NumberOfFrames {frames} "
                f"x BitsAllocated {bits}/8 = {expected} bytes"
                + (": the file is truncated" if actual < expected else ": the header and the data disagree"),
                path=path,
                tag=TAG_PIXEL_DATA,
                hint="export the file again" if actual < expected else "one of these tags is wrong",
            )
    return {
        "rows": rows,
        "columns": columns,
        "frames": frames,
        "bits_allocated": bits,
        "bits_stored": stored,
        "signed": representation == 1,
    }


def padding_beyond_bits_stored(ds: Dataset, info: dict, path: Path) -> Optional[np.ndarray]:
    """Where uncompressed stored values lie beyond BitsStored, which a decoder masks or sign-extends into other
    values (a 12-bit CT's padding 0xF830 read as 2096): ``(frames, rows, columns)`` True at the pixels that hold
    (0028,0120) PixelPaddingValue (up to (0028,0121) PixelPaddingRangeLimit), to be taken as outside the image;
    None when every value fits (or the data are compressed: a decoder's values are all there is).

    Raises :class:`InputError` naming (0028,0101) BitsStored when other values do not fit: the header
    contradicts the pixel data, as for a dose (:func:`check_bits_stored`).
    """
    stored, signed, bits = info["bits_stored"], info["signed"], info["bits_allocated"]
    if stored >= bits or bits not in (8, 16, 32) or getattr(ds["PixelData"], "is_undefined_length", False):
        return None
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    order = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
    count = info["rows"] * info["columns"] * info["frames"]
    raw = np.frombuffer(ds.PixelData, dtype=f"{order}{'i' if signed else 'u'}{bits // 8}", count=count)
    low, high = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    beyond = (raw < low) | (raw > high)
    if not beyond.any():
        return None
    padding = np.zeros(raw.shape, dtype=bool)
    value, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
    if isinstance(value, (int, np.integer)):
        # compared as bit patterns of the stored width: a padding given as US for signed data (or SS for
        # unsigned) still names the same stored bits
        width = (1 << bits) - 1
        as_raw = np.array([int(value) & width, int(limit if isinstance(limit, (int, np.integer)) else value) & width])
        as_raw = as_raw.astype(f"u{bits // 8}").view(raw.dtype.newbyteorder("=")).astype(np.int64)
        padding = (raw >= as_raw.min()) & (raw <= as_raw.max())
    other = beyond & ~padding
    if other.any():
        said = " and are not its (0028,0120) PixelPaddingValue" if isinstance(value, (int, np.integer)) else ""
        raise InputError(
            f"stored values {int(raw[other].min())}..{int(raw[other].max())} do not fit BitsStored {stored} "
            f"(range {low}..{high}){said}: read as BitsStored says, they would become other values",
            path=path,
            tag="(0028,0101) BitsStored",
            hint="the header contradicts the pixel data",
        )
    return (padding & beyond).reshape(info["frames"], info["rows"], info["columns"])


def check_bits_stored(ds: Dataset, info: dict, path: Path) -> None:
    """Stored values must fit BitsStored; larger ones mean the header contradicts the data.

    Checked on the raw values of uncompressed data (a decoder may mask the high bits away, which
    hides the contradiction); compressed data are not checked.
    """
    stored, signed, bits = info["bits_stored"], info["signed"], info["bits_allocated"]
    if stored >= bits or getattr(ds["PixelData"], "is_undefined_length", False):
        return
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    order = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
    kind = "i" if signed else "u"
    count = info["rows"] * info["columns"] * info["frames"]
    pixels = np.frombuffer(ds.PixelData, dtype=f"{order}{kind}{bits // 8}", count=count)
    if pixels.size == 0:
        return
    low, high = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    lo, hi = int(pixels.min()), int(pixels.max())
    if lo < low or hi > high:
        raise InputError(
            f"stored values {lo}..{hi} do not fit BitsStored {stored} (range {low}..{high})",
            path=path,
            tag="(0028,0101) BitsStored",
            hint="the header contradicts the pixel data",
        )
