"""Enhanced (multi-frame) CT: one file holding the slices of a volume as frames.

The geometry of such a file is not in the top-level tags of a CT Image but in its functional groups
(PS3.3 C.7.6.16, the Multi-frame Functional Groups Module of the Enhanced CT Image IOD, A.38): each
frame's (0020,9113) PlanePositionSequence, (0020,9116) PlaneOrientationSequence, (0028,9110)
PixelMeasuresSequence and (0028,9145) PixelValueTransformationSequence sit in its item of (5200,9230)
PerFrameFunctionalGroupsSequence or, when every frame shares them, in the one item of (5200,9229)
SharedFunctionalGroupsSequence. The scan reads them per frame (:func:`frame_geometry`); the CT series
then holds one slice per frame (:func:`frame_slices`), so that the CT's grid is computed, checked and
read exactly as for a series of single-frame files.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from pydicom.dataset import Dataset

from . import headers

#: The SOP classes whose geometry is in functional groups, by name.
ENHANCED_CT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image",
}
TAG_FRAMES = "(0028,0008) NumberOfFrames"
TAG_PER_FRAME = "(5200,9230) PerFrameFunctionalGroupsSequence"
TAG_SHARED = "(5200,9229) SharedFunctionalGroupsSequence"
#: Where a frame's values are, for the messages naming what is missing or wrong.
FRAME_TAGS = {
    "image_position": "(0020,9113) PlanePositionSequence > (0020,0032) ImagePositionPatient",
    "image_orientation": "(0020,9116) PlaneOrientationSequence > (0020,0037) ImageOrientationPatient",
    "pixel_spacing": "(0028,9110) PixelMeasuresSequence > (0028,0030) PixelSpacing",
    "rescale_slope": "(0028,9145) PixelValueTransformationSequence > (0028,1053) RescaleSlope",
    "rescale_intercept": "(0028,9145) PixelValueTransformationSequence > (0028,1052) RescaleIntercept",
}


def is_multi_frame(ds: Dataset) -> bool:
    """Whether a CT image keeps its geometry per frame: an Enhanced CT class, frames, or functional groups without
    an ImagePositionPatient of its own."""
    if headers.quick_text(ds, "SOPClassUID") in ENHANCED_CT_CLASSES:
        return True
    frames = str(ds.get("NumberOfFrames", "") or "").strip()
    if frames:
        try:  # an IS of one frame written '01' or '+1' is one frame (forty-first hostile trial AO2)
            if int(frames) != 1:
                return True
        except ValueError:
            return True  # (frame_geometry names the value)
    # functional groups beside a single frame's own ImagePositionPatient: a classic slice that carries them (a
    # SharedFunctionalGroupsSequence of frame content) was refused as an Enhanced CT (thirty-sixth hostile trial AJ26)
    groups = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    return groups and "ImagePositionPatient" not in ds


def what_it_is(ds: Dataset) -> str:
    """The image's kind as a reader would name it, with its article."""
    name = ENHANCED_CT_CLASSES.get(headers.quick_text(ds, "SOPClassUID"), "multi-frame CT image")
    return ("an " if name[0] in "AEIOU" else "a ") + name


def frame_geometry(ds: Dataset) -> dict:
    """What the scan records of a multi-frame CT image: ``frames`` (NumberOfFrames), ``frame_list`` (per frame a
    dict of ``image_position``, ``image_orientation``, ``pixel_spacing``, ``rescale``, ``slice_thickness``,
    ``spacing_between_slices``; None where a value is absent or not numeric; ``rescale_missing`` on a frame without
    the rescale other frames have) and, when the frames cannot be told apart at all,
    ``frames_problem`` (why, and ``frames_tag``: where) instead of the list."""
    kind = what_it_is(ds)
    try:
        frames = int(str(ds.get("NumberOfFrames", 1) or 1).strip())
    except (TypeError, ValueError):
        return _problem(f"{kind} whose NumberOfFrames {ds.get('NumberOfFrames')!r} is not a number", TAG_FRAMES, 1)
    if not 1 <= frames <= headers.MAX_FRAMES:
        return _problem(f"{kind} of {frames} frames (1..{headers.MAX_FRAMES} are possible)", TAG_FRAMES, 1)
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", None) or [])
    shared_items = list(ds.get("SharedFunctionalGroupsSequence", None) or [])
    shared = shared_items[0] if shared_items else None
    if not per_frame and shared is None:
        return _problem(
            f"{kind} of {frames} frames without functional groups: no frame says where it lies",
            TAG_PER_FRAME,
            frames,
        )
    if per_frame and len(per_frame) != frames:
        return _problem(
            f"{kind} whose PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {frames} frames",
            TAG_PER_FRAME,
            frames,
        )
    top_spacing = headers.quick_floats(ds, "PixelSpacing")
    top_rescale = (ds.get("RescaleSlope"), ds.get("RescaleIntercept"))
    top_type = headers.text(ds, "RescaleType").upper()
    frame_list: list = []
    without: list = []  # frames without a (0028,9145) PixelValueTransformationSequence, their own or shared
    for n in range(frames):
        own = per_frame[n] if per_frame else None
        position = _macro(own, shared, "PlanePositionSequence")
        orientation = _macro(own, shared, "PlaneOrientationSequence")
        measures = _macro(own, shared, "PixelMeasuresSequence")
        transformation = _macro(own, shared, "PixelValueTransformationSequence")
        for item in (position, orientation, measures, transformation):  # (as a header's own: BV2)
            overlong = headers.overlong_value(item) if item is not None else None
            if overlong is not None:
                return _problem(f"{kind} whose frame {n + 1} gives {overlong[0]} {overlong[1]}", overlong[0], frames)
        spacing = _floats(measures, "PixelSpacing")
        frame_list.append(
            {
                "image_position": _floats(position, "ImagePositionPatient"),
                "image_orientation": _floats(orientation, "ImageOrientationPatient"),
                "pixel_spacing": spacing if spacing is not None else top_spacing,
                "rescale": (
                    (transformation.get("RescaleSlope"), transformation.get("RescaleIntercept"))
                    if transformation is not None
                    else top_rescale
                ),
                # (0028,1054) in the frame's transformation: US, say, is no HU (seventy-second hostile trial BT11)
                "rescale_type": headers.text(transformation, "RescaleType").upper()
                if transformation is not None
                else top_type,
                "slice_thickness": _one_float(measures, "SliceThickness"),
                "spacing_between_slices": _one_float(measures, "SpacingBetweenSlices"),
            }
        )
        if transformation is None:
            without.append(n)
    if len(without) < frames:  # some frames have their own rescale, these not: their HU are unknown
        for n in without:
            frame_list[n]["rescale_missing"] = True
    return {"frames": frames, "frame_list": frame_list}


def _problem(reason: str, tag: str, frames: int) -> dict:
    return {"frames": frames, "frames_problem": reason, "frames_tag": tag}


def _macro(own: Optional[Dataset], shared: Optional[Dataset], keyword: str) -> Optional[Dataset]:
    """The one item of a functional group macro: the frame's own, else the shared one (PS3.3 C.7.6.16: a macro is
    in one of the two)."""
    for item in (own, shared):
        if item is not None and keyword in item:
            values = item.get(keyword)
            if values:
                return values[0]
    return None


def _floats(item: Optional[Dataset], keyword: str) -> Optional[list]:
    return None if item is None else headers.quick_floats(item, keyword)


def _one_float(item: Optional[Dataset], keyword: str) -> Optional[float]:
    values = _floats(item, keyword)
    return values[0] if values and len(values) == 1 else None


def frame_slices(obj) -> list:
    """The slices of a scanned multi-frame CT image: one object per frame, each with its frame's geometry in its
    ``info`` (``frame``: its index from 0, ``frames``: how many) and its file, UIDs and identity the file's.
    A file whose frames cannot be told apart (``frames_problem``) stays one object: the CT checks refuse it."""
    frame_list = obj.info.get("frame_list")
    if not frame_list:
        return [obj]
    base = {k: v for k, v in obj.info.items() if k != "frame_list"}
    position = base.pop("pixel_position", None)
    slices = []
    for n, values in enumerate(frame_list):
        info = dict(base)
        info.update(values)
        info["frame"] = n
        if position is not None:  # plain frames are read from the file in place, frame after frame
            info["pixel_position"] = dict(position, frame=n, frames=len(frame_list))
        slices.append(dataclasses.replace(obj, info=info))
    return slices


def frame_name(obj) -> str:
    """A slice as messages name it: its file, and its frame when the file holds several."""
    if "frame" in obj.info:
        return f"{obj.rel_path} (frame {obj.info['frame'] + 1} of {obj.info.get('frames')})"
    return obj.rel_path
