"""A clinical-shaped bench case (issue 14): a Philips-like planning CT and a Pinnacle-like RTDOSE.

Shape, as the clinical case of issue 14 has it:

* CT: 512 x 512 x 152 slices, one file per slice, implicit VR little endian, 0.9765625 mm pixels,
  2 mm slices, uint16 (12 bits stored) with RescaleIntercept -1024 and RescaleSlope 1, a few private
  elements in the header; a thorax lying on a couch: body ellipse (fat under the skin, soft tissue),
  two lungs with a diaphragm dome, heart, liver, spine with spinal canal, ribs, sternum, a foam
  mattress and a carbon-fibre couch top, and the reconstruction circle (-1024 HU outside). Noise.
* RTDOSE: 129 x 91 x 98 at 3 mm, implicit VR, uint16 with DoseGridScaling, DoseSummationType PLAN,
  on a grid offset by a fraction of a CT voxel in every axis. Its box holds about 30 % of the CT's
  voxel centres: it runs past the CT's superior end, as a treatment-planning grid may; the dose is
  zero where the CT has no data and in air.
* No RTSTRUCT and no RTPLAN (153 files, as in the issue): the dose references a plan that is not in
  the folder and finds its CT through frame of reference and study (link/ct_choice.py, when no
  reference decides).

Everything is computed from the seed with plain numpy and written with pydicom; the same seed gives
the same bytes. About 5 s for the whole case.

    python bench/clinical_case.py OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ImplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.2"
#: a UID root of our own for the implementation (2.25: a UUID-derived root needs no registration)
IMPLEMENTATION_UID = "2.25.190010773519412330455276094387093102153"
_PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3


@dataclass(frozen=True)
class ClinicalSpec:
    """The case's geometry (mm, DICOM patient coordinates LPS, head first supine)."""

    patient_id: str = "CLIN000"
    seed: int = 0
    ct_size: tuple = (512, 512, 152)  # columns, rows, slices
    pixel_spacing: float = 0.9765625  # a 500 mm reconstruction field of view
    slice_spacing: float = 2.0
    first_slice_z: float = -455.0  # the most inferior slice
    dose_size: tuple = (129, 91, 98)  # columns, rows, frames
    dose_spacing: float = 3.0
    # the first dose voxel: fractions of a CT voxel off the CT grid in x, y and z
    dose_origin: tuple = (-191.37, -146.61, -371.3)
    prescription_gy: float = 60.0

    def ct_shape(self) -> tuple:
        """(K, J, I) of the CT."""
        return self.ct_size[2], self.ct_size[1], self.ct_size[0]


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    for digits in range(12, 0, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(value)


def _uids(spec: ClinicalSpec):
    def make(role: str) -> str:
        digest = hashlib.sha256(f"DoseAlign clinical bench case|{spec!r}|{role}".encode()).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    return make


def _new_file(sop_class: str, sop_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds = FileDataset("", Dataset(), preamble=b"\0" * 128, file_meta=meta)
    if not _PYDICOM3:
        ds.is_implicit_VR, ds.is_little_endian = True, True
    return ds


def _save(ds: FileDataset, path: Path) -> None:
    if _PYDICOM3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(str(path), write_like_original=False)


# ---- anatomy ------------------------------------------------------------------------------------


def _inside(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1.0


def _body_axes(t: float) -> tuple:
    """Semi-axes (left-right, anterior-posterior) of the body at height t (0 inferior .. 1 superior)."""
    return 158.0 + 12.0 * np.sin(np.pi * t), 104.0 + 9.0 * np.sin(np.pi * 0.8 * t)


COUCH_TOP_Y = 128.0  # posterior is +y: the couch lies under the patient's back
MATTRESS_MM = 6.0


def _slice_hu(spec: ClinicalSpec, x: np.ndarray, y: np.ndarray, z: float, rng) -> np.ndarray:
    """HU of one axial slice (float32), noise included."""
    k = (z - spec.first_slice_z) / spec.slice_spacing
    t = float(k / (spec.ct_size[2] - 1))
    a, b = _body_axes(t)
    back = COUCH_TOP_Y - MATTRESS_MM
    cy = back - b  # the back rests on the mattress
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    body = _inside(x, y, 0.0, cy, a, b)
    hu[body] = -100.0  # subcutaneous fat
    hu[_inside(x, y, 0.0, cy, a - 14.0, b - 12.0)] = 40.0  # muscle and organs
    # lungs: a dome from below (t 0.22 .. 0.45), full height, narrowing at the apex
    lung_scale = np.clip((t - 0.22) / 0.23, 0.0, 1.0) * np.clip((1.02 - t) / 0.25, 0.35, 1.0)
    if lung_scale > 0:
        for side, width in ((-1.0, 0.33), (1.0, 0.29)):  # right lung (-x in LPS is patient right) larger
            lung = _inside(x, y, side * 0.44 * a, cy - 0.05 * b, width * a * lung_scale, 0.62 * b * lung_scale)
            hu[lung] = -830.0
    if 0.28 < t < 0.62:  # heart, anterior and to the patient's left
        h = np.sin(np.pi * (t - 0.28) / 0.34)
        hu[_inside(x, y, 0.12 * a, cy - 0.22 * b, 0.30 * a * h + 1.0, 0.36 * b * h + 1.0)] = 45.0
    if t < 0.36:  # liver under the right dome
        hu[_inside(x, y, -0.30 * a, cy - 0.05 * b, 0.55 * a, 0.62 * b) & (hu > -500)] = 60.0
    # ribs: a broken shell every 24 mm, not at the sternum or spine
    if 0.25 < t < 0.97 and (z % 24.0) < 10.0:
        r2 = (x / (a - 9.0)) ** 2 + ((y - cy) / (b - 8.0)) ** 2
        angle = np.degrees(np.arctan2(y - cy, x))
        rib = (r2 > 0.86) & (r2 < 0.95) & (np.abs(angle + 90.0) > 18.0) & (np.abs(angle - 90.0) > 14.0)
        hu[rib & body] = 750.0
    if 0.45 < t < 0.9:  # sternum
        hu[_inside(x, y, 0.0, cy - b + 24.0, 15.0, 6.0)] = 550.0
    # spine: vertebral body (cortical rim, cancellous core, discs), canal and arch
    vy = cy + 0.55 * b
    disc = (z % 26.0) < 6.0
    hu[_inside(x, y, 0.0, vy, 20.0, 17.0)] = 900.0
    hu[_inside(x, y, 0.0, vy, 17.5, 14.5)] = 80.0 if disc else 230.0
    hu[_inside(x, y, 0.0, vy + 29.0, 15.0, 13.0)] = 700.0
    hu[_inside(x, y, 0.0, vy + 29.0, 8.0, 7.0)] = 20.0
    # noise: more in soft tissue than in air
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    hu += noise * np.where(hu > -900.0, np.float32(12.0), np.float32(4.0))
    # foam mattress and carbon-fibre couch top (skins and foam core), across the field of view
    mattress = (y >= back) & (y < COUCH_TOP_Y) & (np.abs(x) < 260.0)
    hu[mattress] = -880.0 + 6.0 * noise[mattress]
    couch = (y >= COUCH_TOP_Y) & (y < COUCH_TOP_Y + 48.0)
    hu[couch] = -950.0
    hu[couch & ((y < COUCH_TOP_Y + 2.5) | (y >= COUCH_TOP_Y + 45.5))] = 260.0
    # outside the 500 mm reconstruction circle the scanner writes its lowest value
    hu[x**2 + y**2 > 250.0**2] = -1024.0
    return hu


def _dose_field(spec: ClinicalSpec, points: np.ndarray, ct_z: tuple) -> np.ndarray:
    """A plan-like dose (Gy): 60 Gy over a right-lung target, three beams, a bath, zero in air."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    t = (z - spec.first_slice_z) / (spec.slice_spacing * (spec.ct_size[2] - 1))
    a, b = _body_axes(np.clip(t, 0.0, 1.0))
    cy = COUCH_TOP_Y - MATTRESS_MM - b
    in_body = ((x / a) ** 2 + ((y - cy) / b) ** 2 < 1.0) & (z >= ct_z[0] - 1.0) & (z <= ct_z[1] + 1.0)
    centre = np.array([-62.0, -5.0, spec.first_slice_z + 0.62 * spec.slice_spacing * (spec.ct_size[2] - 1)])
    d = points - centre
    distance = np.linalg.norm(d, axis=-1)
    dose = 0.65 / (1.0 + np.exp((distance - 38.0) / 4.0))
    for gantry in (0.0, 120.0, 240.0):  # beams in the axial plane: a 50 mm field along each axis
        g = np.radians(gantry)
        axis = np.array([np.sin(g), -np.cos(g), 0.0])
        lateral = np.linalg.norm(d - (d @ axis)[..., None] * axis, axis=-1)
        dose += 0.12 * np.exp(-0.004 * np.abs(d @ axis)) / (1.0 + np.exp((lateral - 30.0) / 3.0))
    dose += 0.03 * np.exp(-distance / 120.0)
    return np.where(in_body, spec.prescription_gy * dose, 0.0)


# ---- writing ------------------------------------------------------------------------------------


def _common(ds: Dataset, spec: ClinicalSpec, uid) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate, ds.StudyTime = "20240311", "081512"
    ds.AccessionNumber = "A24031100017"
    ds.ReferringPhysicianName = "Physician^Bench"
    ds.StudyDescription = "THORAX RT PLANNING"
    ds.PatientName = "Bench^Clinical"
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19580101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = uid("study")
    ds.StudyID = "7811"


def _write_ct_slice(path: Path, spec: ClinicalSpec, uid, n: int, z: float, stored: np.ndarray) -> None:
    sop = uid(f"ct-{n}")
    ds = _new_file(CT_IMAGE_STORAGE, sop)
    _common(ds, spec, uid)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20240311", "082233"
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240311"
    ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = "081947", "082001.412", "082233"
    ds.Modality = "CT"
    ds.Manufacturer = "Philips"
    ds.InstitutionName = "Bench Hospital"
    ds.StationName = "CTBB01"
    ds.SeriesDescription = "Thorax 2mm"
    ds.ManufacturerModelName = "Brilliance Big Bore"
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELIX"
    ds.SliceThickness = _ds(spec.slice_spacing)
    ds.KVP = "120"
    ds.DataCollectionDiameter = "600"
    ds.SoftwareVersions = "4.1.6"
    ds.ReconstructionDiameter = _ds(spec.pixel_spacing * spec.ct_size[0])
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = "1040", "570"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "158.5"
    ds.RotationDirection = "CW"
    ds.ExposureTime, ds.XRayTubeCurrent, ds.Exposure = "750", "278", "263"
    ds.FilterType, ds.GeneratorPower, ds.FocalSpots = "B", "34", "1.2"
    ds.ConvolutionKernel = "B"
    ds.PatientPosition = "HFS"
    ds.SeriesInstanceUID = uid("ct-series")
    ds.SeriesNumber, ds.AcquisitionNumber = 3, 1
    ds.InstanceNumber = spec.ct_size[2] - n  # the scanner numbers from the head down
    half = (spec.ct_size[0] - 1) / 2 * spec.pixel_spacing
    ds.ImagePositionPatient = [_ds(-half), _ds(-half), _ds(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid("frame")
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(z)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.ct_size[1], spec.ct_size[0]
    ds.PixelSpacing = [_ds(spec.pixel_spacing), _ds(spec.pixel_spacing)]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    block = ds.private_block(0x01F1, "ELSCINT1", create=True)  # scanner-private values, as Philips adds
    block.add_new(0x01, "CS", "HELICAL")
    block.add_new(0x02, "CS", "F")
    block.add_new(0x26, "DS", "0.938")
    block.add_new(0x27, "DS", "0.75")
    block.add_new(0x32, "CS", "RIGHT_ON_LEFT")
    block = ds.private_block(0x00E1, "ELSCINT1", create=True)
    block.add_new(0x21, "DS", "17.4")
    block.add_new(0x50, "DS", "21.6")
    ds.PixelData = stored.tobytes()
    _save(ds, path)


def _write_dose(path: Path, spec: ClinicalSpec, uid, values: np.ndarray) -> float:
    scaling = float(f"{values.max() / 65000.0:.4e}")
    ds = _new_file(RT_DOSE_STORAGE, uid("dose"))
    _common(ds, spec, uid)
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20240318", "142207"
    ds.SOPClassUID, ds.SOPInstanceUID = RT_DOSE_STORAGE, uid("dose")
    ds.Modality = "RTDOSE"
    ds.Manufacturer = "Philips Radiation Oncology Systems"
    ds.StationName = "pinnacle01"
    ds.ManufacturerModelName = "Pinnacle3"
    ds.ReferencedStudySequence = DicomSequence([Dataset()])
    ds.ReferencedStudySequence[0].ReferencedSOPClassUID = STUDY_COMPONENT
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = uid("study")
    ds.SliceThickness = _ds(spec.dose_spacing)
    ds.SoftwareVersions = "16.2"
    ds.SeriesInstanceUID = uid("dose-series")
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImagePositionPatient = [_ds(v) for v in spec.dose_origin]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid("frame")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = spec.dose_size[2]
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.Rows, ds.Columns = spec.dose_size[1], spec.dose_size[0]
    ds.PixelSpacing = [_ds(spec.dose_spacing), _ds(spec.dose_spacing)]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.GridFrameOffsetVector = [_ds(n * spec.dose_spacing) for n in range(spec.dose_size[2])]
    ds.DoseGridScaling = f"{scaling:.4e}"
    plan = Dataset()
    plan.ReferencedSOPClassUID = RT_PLAN_STORAGE
    plan.ReferencedSOPInstanceUID = uid("plan")  # the plan is not exported with the dose
    group = Dataset()
    group.ReferencedFractionGroupNumber = 1
    plan.ReferencedFractionGroupSequence = DicomSequence([group])
    ds.ReferencedRTPlanSequence = DicomSequence([plan])
    ds.PixelData = np.rint(values / scaling).astype("<u2").tobytes()
    _save(ds, path)
    return scaling


def write_clinical_case(out_dir, spec: ClinicalSpec = ClinicalSpec()) -> dict:  # noqa: B008
    """Write the case into ``out_dir`` (created; nothing else in it) and return a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    uid = _uids(spec)
    columns, rows, slices = spec.ct_size
    half = (columns - 1) / 2 * spec.pixel_spacing
    axis = np.arange(columns, dtype=np.float32) * np.float32(spec.pixel_spacing) - np.float32(half)
    x, y = np.meshgrid(axis, np.arange(rows, dtype=np.float32) * np.float32(spec.pixel_spacing) - np.float32(half))
    z_values = [spec.first_slice_z + n * spec.slice_spacing for n in range(slices)]
    stored_range = [65535, 0]
    for n, z in enumerate(z_values):
        rng = np.random.default_rng([spec.seed, n])
        stored = np.clip(np.rint(_slice_hu(spec, x, y, z, rng) + 1024.0), 0, 4095).astype("<u2")
        stored_range = [min(stored_range[0], int(stored.min())), max(stored_range[1], int(stored.max()))]
        _write_ct_slice(out / f"CT.{uid(f'ct-{n}')}.dcm", spec, uid, n, z, stored)

    # the dose at its voxel centres, frames (k), rows (j), columns (i)
    i, j, k = (np.arange(n, dtype=np.float64) * spec.dose_spacing for n in spec.dose_size)
    points = np.stack(np.meshgrid(k, j, i, indexing="ij")[::-1], axis=-1) + np.asarray(spec.dose_origin)
    values = _dose_field(spec, points, (z_values[0], z_values[-1]))
    scaling = _write_dose(out / f"RD.{uid('dose')}.dcm", spec, uid, values)

    # the share of CT voxel centres inside the dose grid's box (between its first and last voxel centres)
    ct_axes = [axis.astype(np.float64), axis.astype(np.float64), np.asarray(z_values)]
    inside = [
        np.count_nonzero((c >= o - 1e-6) & (c <= o + (n - 1) * spec.dose_spacing + 1e-6))
        for c, o, n in zip(ct_axes, spec.dose_origin, spec.dose_size)
    ]
    summary = {
        "spec": asdict(spec),
        "files": slices + 1,
        "ct_stored_range": stored_range,
        "dose_max_gy": float(values.max()),
        "dose_grid_scaling": scaling,
        "ct_voxels_in_dose_box": float(np.prod(inside) / np.prod(spec.ct_size)),
        "output_bytes": int(np.prod(spec.ct_size)) * (2 + 4),
    }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = write_clinical_case(args.out, ClinicalSpec(patient_id=f"CLIN{args.seed:03d}", seed=args.seed))
    print(json.dumps({k: v for k, v in summary.items() if k != "spec"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
