"""Small in-memory DICOM-RT builders for the structure and audit tests (plain pydicom, no engine code)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

RT_STRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3


def rect(x0: float, y0: float, x1: float, y1: float, z: float, clockwise: bool = False) -> np.ndarray:
    """An axis-aligned rectangle at height z, (4, 3) LPS points."""
    pts = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float64)
    return pts[::-1] if clockwise else pts


def circle(cx: float, cy: float, r: float, z: float, n: int = 96) -> np.ndarray:
    """A regular n-gon approximating a circle at height z, (n, 3)."""
    t = np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, z)], axis=1)


def make_rtstruct(rois: Sequence[dict], frame_uid: str = "1.2.3.4") -> FileDataset:
    """An RTSTRUCT data set.

    Each ROI dict: ``number``, ``name``, ``type`` (RTROIInterpretedType), optional ``color`` and
    ``contours``: a list of ``(geometric type, (N, 3) points)``; ``contours=None`` writes an ROI
    with no ROIContourSequence item at all. Sequences are written in shuffled order on purpose
    (ROIs must be joined by number, not by position).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCT_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), preamble=b"\0" * 128, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
    ds.SOPClassUID = RT_STRUCT_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.FrameOfReferenceUID = frame_uid
    ss, rc, obs = [], [], []
    for roi in rois:
        item = Dataset()
        item.ROINumber = roi["number"]
        item.ROIName = roi["name"]
        item.ReferencedFrameOfReferenceUID = frame_uid
        ss.append(item)
        o = Dataset()
        o.ObservationNumber = roi["number"]
        o.ReferencedROINumber = roi["number"]
        o.RTROIInterpretedType = roi.get("type", "ORGAN")
        obs.append(o)
        if roi.get("contours") is None:
            continue
        c = Dataset()
        c.ReferencedROINumber = roi["number"]
        c.ROIDisplayColor = list(roi.get("color", (255, 0, 0)))
        contours = []
        for kind, points in roi["contours"]:
            contour = Dataset()
            contour.ContourGeometricType = kind
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.6f}" for v in np.asarray(points, dtype=np.float64).ravel()]
            contours.append(contour)
        if contours:
            c.ContourSequence = DicomSequence(contours)
        rc.append(c)
    ds.StructureSetROISequence = DicomSequence(ss)
    ds.ROIContourSequence = DicomSequence(rc[::-1])  # reversed: joined by number only
    ds.RTROIObservationsSequence = DicomSequence(obs[1:] + obs[:1])
    return ds


def save(ds: FileDataset, path: Path) -> Path:
    """Write a data set as a DICOM file (pydicom 2.4 and 3.x)."""
    if _PYDICOM3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(str(path), write_like_original=False)
    return Path(path)


def points_in_polygons_naive(points: np.ndarray, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Even-odd crossing number, one point and one edge at a time (the oracle for the fast code)."""
    out = np.zeros(len(points), dtype=bool)
    for n, (x, y) in enumerate(np.asarray(points, dtype=np.float64)):
        crossings = 0
        for poly in polygons:
            m = len(poly)
            for e in range(m):
                x0, y0 = poly[e]
                x1, y1 = poly[(e + 1) % m]
                if y0 == y1 or not (min(y0, y1) <= y < max(y0, y1)):
                    continue
                xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
                if xc < x:
                    crossings += 1
        out[n] = crossings % 2 == 1
    return out


def rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (extrinsic), degrees."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def slab_truth(
    points: np.ndarray,
    normal: np.ndarray,
    planes: Sequence[float],
    thickness: float,
    polygons_by_plane: Sequence[Sequence[np.ndarray]],
    basis: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The documented rule, written out slowly: nearest plane within [p - t/2, p + t/2), even-odd in it.

    ``basis`` (3, 2) maps LPS points to in-plane coordinates (default: x, y for an axial normal).
    """
    basis = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]) if basis is None else basis
    planes = np.asarray(planes, dtype=np.float64)
    out = np.zeros(len(points), dtype=bool)
    s_all = np.asarray(points) @ normal
    for n, p in enumerate(np.asarray(points)):
        s = s_all[n]
        candidates = [(abs(s - q), -q, m) for m, q in enumerate(planes) if -thickness / 2 <= s - q < thickness / 2]
        if not candidates:
            continue
        best = min(candidates)[2]
        uv = p @ basis
        polys = [poly @ basis for poly in polygons_by_plane[best]]
        out[n] = points_in_polygons_naive(uv[None, :], polys)[0]
    return out
