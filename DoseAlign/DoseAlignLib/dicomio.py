"""Small, version-tolerant helpers around pydicom (2.4 and 3.x): reading headers and values."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .errors import InputError

#: SOP classes by the name the engine uses for them.
SOP_CLASS_KIND = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",  # Enhanced CT (listed so it is named; not read as a series)
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
    "1.2.840.10008.5.1.4.1.1.481.8": "RTPLAN",  # RT Ion Plan
    "1.2.840.10008.5.1.4.1.1.481.1": "RTIMAGE",
}


def read_header(path: Path, *, stop_before_pixels: bool = True) -> Dataset:
    """Read a DICOM file's data set (without pixel data by default).

    Files without the 128-byte preamble and file meta (allowed for older exports) are read too,
    but only kept when they look like DICOM (carry a SOPClassUID or Modality).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, force=True)
                if "SOPClassUID" not in ds and "Modality" not in ds:
                    raise InputError("not a DICOM file", path=path) from None
                return ds
    except InputError:
        raise
    except Exception as error:  # pydicom raises many types on damaged files
        raise InputError(f"cannot be read as DICOM: {type(error).__name__}: {error}", path=path) from None


def kind_of(ds: Dataset) -> str:
    """CT, RTDOSE, RTSTRUCT, RTPLAN, RTIMAGE or OTHER, from the SOP class (Modality as fallback)."""
    kind = SOP_CLASS_KIND.get(str(ds.get("SOPClassUID", "")))
    if kind:
        return kind
    modality = str(ds.get("Modality", "")).upper()
    if modality in ("CT", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE"):
        return modality
    return "OTHER"


def text(ds: Dataset, keyword: str, default: str = "") -> str:
    """A string attribute, stripped; ``default`` when absent or empty."""
    value = ds.get(keyword)
    if value is None:
        return default
    value = str(value).strip()
    return value or default


def floats(ds: Dataset, keyword: str, tag: str, path: Optional[Path], count: Optional[int] = None) -> np.ndarray:
    """A numeric multi-value attribute as float64, checked for presence, count and finiteness."""
    value = ds.get(keyword)
    if value is None or value == "" or (hasattr(value, "__len__") and not isinstance(value, str) and len(value) == 0):
        raise InputError(f"{keyword} is missing or empty", path=path, tag=tag)
    try:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            values = [float(value)]
        else:
            values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(f"{keyword} is not numeric: {value!r}", path=path, tag=tag) from None
    array = np.array(values, dtype=np.float64)
    if count is not None and array.size != count:
        raise InputError(f"{keyword} must have {count} values, has {array.size}", path=path, tag=tag)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{keyword} holds NaN or infinity: {values}", path=path, tag=tag)
    return array


def number(ds: Dataset, keyword: str, tag: str, path: Optional[Path], default: Any = None) -> Optional[float]:
    """A single numeric attribute as float; ``default`` when absent, an error when not a finite number."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        result = float(value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value)
    except (TypeError, ValueError, IndexError):
        raise InputError(f"{keyword} is not a number: {value!r}", path=path, tag=tag) from None
    if not np.isfinite(result):
        raise InputError(f"{keyword} is not finite: {value!r}", path=path, tag=tag)
    return result


#: Transfer syntaxes whose pixel data are the plain little-endian values.
NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


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
    """Decoded pixel data, with a clear message when the transfer syntax has no decoder."""
    if "PixelData" not in ds:
        raise InputError("has no pixel data", path=path, tag="(7FE0,0010) PixelData")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except (NotImplementedError, RuntimeError) as error:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        name = getattr(syntax, "name", str(syntax))
        raise InputError(
            f"pixel data cannot be decoded ({name}): {error}",
            path=path,
            tag="(7FE0,0010) PixelData",
            hint="install a decoder, e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-rle",
        ) from None
    except Exception as error:
        raise InputError(
            f"pixel data is damaged: {type(error).__name__}: {error}", path=path, tag="(7FE0,0010) PixelData"
        ) from None
