"""The options of one alignment, shared by the CLI, the batch runner and the Slicer module."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Optional

from .limits import check_spacing

#: The OpenKBP grid's default spacing (mm, along i, j, k): a 512 x 512 x 256 mm box, like OpenKBP's sample
#: patient pt_242 (4.688, 4.688, 2.0 mm). Here, not in output/openkbp.py: the command's parser needs it, and
#: importing that module (numpy) while the parser is built is where an early Ctrl-C was lost.
OPENKBP_SPACING = (4.0, 4.0, 2.0)
#: The gzip level of ``--format nrrd`` files (``--nrrd-compression``); here for the same reason.
DEFAULT_NRRD_COMPRESSION = 1


class ReferenceGrid(str, Enum):
    """Which grid the outputs share."""

    CT = "ct"  # dose resampled onto the CT grid (default)
    DOSE = "dose"  # CT resampled onto the dose grid
    CUSTOM = "custom"  # both resampled onto a grid of chosen spacing and box


class Interpolator(str, Enum):
    """Interpolators, named as Slicer's Resample Scalar/Vector/DWI Volume CLI names them."""

    LINEAR = "linear"
    NEAREST = "nn"
    BSPLINE = "bs"
    WINDOWED_SINC = "ws"


class CustomBox(str, Enum):
    """The box a custom grid covers."""

    DOSE = "dose"  # the dose grid's extent
    CT = "ct"  # the CT grid's extent
    CUBE = "cube"  # a fixed size (custom_size voxels) centred on ``centre``


#: What a custom cube is centred on (``AlignOptions.centre``); "roi:NAME" names one ROI.
CENTRES = ("auto", "dose", "dmax", "ptv", "body")
#: What the output grid may be cropped to (``AlignOptions.crop``).
CROPS = ("body", "dose")
#: Storage layouts of a case's arrays: one ``pair.npz``, or one memory-mappable ``.npy`` per array.
LAYOUTS = ("npz", "npy")
#: HU a CT outside its own grid may be filled with (--ct-fill), per CT type: finite, and stored as given.
CT_FILL_RANGE = {"int16": (-32768.0, 32767.0), "float32": (-1.0e6, 1.0e6)}


@dataclass(frozen=True)
class AlignOptions:
    """Everything that changes the arrays one case produces.

    ``custom_spacing`` (i, j, k in mm) and ``custom_box`` apply with ``reference=custom``;
    ``custom_size`` (voxels along i, j, k) with ``custom_box=cube``. ``ct_fill_hu`` is written
    where the CT has no data. ``allow_relative`` accepts DoseUnits RELATIVE (values are then not Gy).
    ``structures`` rasterizes the RTSTRUCT ROIs (masks and DVHs); ``roi_map`` renames ROIs
    (``{"PTV70": ["PTV_70", "ptv70"]}``, case-insensitive); ``fractional_masks`` F >= 2 adds
    partial-volume masks from F^3 sub-samples per voxel; ``audit_thresholds`` overrides the
    audit's flag thresholds by name (see ``audit.DEFAULT_THRESHOLDS``).

    Training sets: ``rois`` fixes the mask channels (names after ``roi_map``, case-insensitive, in
    this order; a ROI a case lacks is an all-zero channel). ``centre`` places a ``cube``: "auto"
    (the PTVs' box when there are PTVs, else the dose above 10 % of its maximum), "dose", "dmax",
    "ptv", "body" or "roi:NAME". ``crop`` ("body" or "dose") cuts the output grid to the body or to
    the dose above 5 % of its maximum, plus ``crop_margin_mm``. ``dose_dtype`` float16 stores the
    dose in half precision (its error bound goes to meta.json); ``compress`` deflates pair.npz;
    ``layout`` "npy" writes one memory-mappable ``.npy`` per array instead of pair.npz.
    ``sum_plans`` makes one case of the PLAN doses of several plans on one CT (see link/plans.py).
    ``ct`` chooses the CT where no reference decides: a CT folder (relative to the input) or
    SeriesInstanceUID for a single study, or a CSV of ``dose,ct`` pairings (see link/ct_choice.py).
    """

    reference: ReferenceGrid = ReferenceGrid.CT
    interpolator: Interpolator = Interpolator.LINEAR
    custom_spacing: Optional[tuple] = None
    custom_box: CustomBox = CustomBox.DOSE
    custom_size: tuple = (128, 128, 128)
    ct_fill_hu: float = -1000.0
    ct_dtype: str = "int16"
    allow_relative: bool = False
    structures: bool = True
    roi_map: Optional[dict] = None
    fractional_masks: int = 0
    audit_thresholds: Optional[dict] = None
    rois: Optional[tuple] = None
    centre: str = "auto"
    crop: Optional[str] = None
    crop_margin_mm: float = 5.0
    dose_dtype: str = "float32"
    compress: bool = False
    layout: str = "npz"
    sum_plans: bool = False
    ct: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reference", ReferenceGrid(self.reference))
        object.__setattr__(self, "interpolator", Interpolator(self.interpolator))
        object.__setattr__(self, "custom_box", CustomBox(self.custom_box))
        if self.ct_dtype not in ("int16", "float32"):
            raise ValueError(f"ct_dtype must be int16 or float32, got {self.ct_dtype!r}")
        if self.custom_spacing is not None:
            object.__setattr__(self, "custom_spacing", check_spacing(self.custom_spacing, "custom spacing"))
        fill = float(self.ct_fill_hu)
        low, high = CT_FILL_RANGE[self.ct_dtype]
        if not low <= fill <= high:  # NaN fails too; an int16 CT would wrap or zero a larger value
            raise ValueError(
                f"the CT fill must be a number of HU from {low:g} to {high:g} with --ct-dtype {self.ct_dtype}, got {fill:g}"
            )
        if self.ct_dtype == "int16":  # whole HU, as the CT's voxels: -2000.4 was recorded, -2000 written (84th CF6)
            fill = float(round(fill))
        object.__setattr__(self, "ct_fill_hu", fill)
        size = tuple(int(s) for s in self.custom_size)
        if len(size) == 1:
            size = size * 3
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"custom size needs one or three positive values, got {self.custom_size}")
        object.__setattr__(self, "custom_size", size)
        if int(self.fractional_masks) != 0 and not 2 <= int(self.fractional_masks) <= 16:  # 1 would do nothing
            raise ValueError(
                f"fractional masks need a supersampling factor from 2 to 16 (0: off), got {self.fractional_masks}"
            )
        object.__setattr__(self, "fractional_masks", int(self.fractional_masks))
        if self.audit_thresholds:
            from .audit.thresholds import thresholds_with  # raises ValueError on unknown names

            thresholds_with(self.audit_thresholds)
        if self.reference is ReferenceGrid.CUSTOM and self.custom_spacing is None:
            raise ValueError("reference 'custom' needs a spacing (e.g. --spacing 2 or --spacing 1,1,2.5)")
        if self.rois is not None:
            object.__setattr__(self, "rois", roi_list(self.rois))
            if not self.structures:
                raise ValueError("--rois chooses mask channels: it needs the structures (drop --no-structures)")
        centre = str(self.centre).strip()
        if centre.lower().startswith("roi:") and centre[4:].strip():
            centre = "roi:" + centre[4:].strip()
        elif centre.lower() in CENTRES:
            centre = centre.lower()
        else:
            raise ValueError(f"centre must be one of {', '.join(CENTRES)} or roi:NAME, got {self.centre!r}")
        object.__setattr__(self, "centre", centre)
        if self.crop is not None and self.crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if not 0.0 <= float(self.crop_margin_mm) <= 1000.0:
            raise ValueError(f"crop margin must be 0 to 1000 mm, got {self.crop_margin_mm}")
        object.__setattr__(self, "crop_margin_mm", float(self.crop_margin_mm))
        if self.crop is not None and self.reference is ReferenceGrid.CUSTOM and self.custom_box is CustomBox.CUBE:
            raise ValueError("crop and a cube cannot go together: a cube already has its fixed size")
        if self.dose_dtype not in ("float32", "float16"):
            raise ValueError(f"dose_dtype must be float32 or float16, got {self.dose_dtype!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.compress and self.layout == "npy":
            raise ValueError(
                "compress applies to pair.npz; the npy layout stays uncompressed so it can be memory-mapped"
            )

    @property
    def custom_cube(self) -> bool:
        """A custom grid of fixed size (``--box cube``)."""
        return self.reference is ReferenceGrid.CUSTOM and self.custom_box is CustomBox.CUBE

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                value.value if isinstance(value, Enum) else (list(value) if isinstance(value, tuple) else value)
            )
        return out


def roi_list(names) -> tuple:
    """ROI channel names from a list or a comma-separated text: stripped, in order, no duplicates (any case)."""
    if isinstance(names, str):
        names = names.split(",")
    out = tuple(str(n).strip() for n in names)
    if not out or any(not n for n in out):
        raise ValueError(f"ROI names must be non-empty, comma-separated (e.g. PTV,CTV,SpinalCord), got {names!r}")
    seen: dict = {}
    for name in out:
        if name.lower() in seen:
            raise ValueError(f"ROI {name!r} is listed twice (as {seen[name.lower()]!r}; names match in any case)")
        seen[name.lower()] = name
    return out
