"""Command-line values shared by the ``dosealign`` command and the Slicer batch script.

Both parse their arguments with argparse; these turn the text into numbers and the parsed
arguments into :class:`~DoseAlignLib.options.AlignOptions`, so the two accept the same values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .limits import read_option_json
from .options import CROPS, AlignOptions, roi_list


def parse_floats(text: str) -> tuple:
    """argparse type: "2" or "1,1,2.5" -> floats (also used by the Slicer batch script)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 2 or 1,1,2.5, got {text!r}") from None


def parse_ints(text: str) -> tuple:
    """argparse type: "128" or "128,128,96" -> ints."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers like 128 or 128,128,96, got {text!r}") from None


def parse_crop(text: str) -> tuple:
    """argparse type: "body", "dose", "body:10" or "dose:15.5" -> (what, margin in mm or None)."""
    what, _sep, margin = str(text).partition(":")
    what = what.strip().lower()
    if what not in CROPS:
        raise argparse.ArgumentTypeError(f"expected body or dose, optionally :MARGIN_MM (e.g. dose:10), got {text!r}")
    if not margin.strip():
        return what, None
    try:
        return what, float(margin)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the crop margin must be a number of mm (e.g. dose:10), got {text!r}"
        ) from None


def custom_grid_choice(args: argparse.Namespace) -> tuple:
    """``(reference, box, size, centre)`` from the grid options, defaults filled in.

    Custom-grid options (``--spacing``, ``--box``, ``--size``, ``--centre``) imply ``--reference
    custom`` when ``--reference`` is not given and conflict with ``--reference ct|dose``;
    ``--size`` and ``--centre`` imply ``--box cube`` and conflict with ``--box dose|ct``.
    Raises ``ValueError`` naming the conflict (a usage error).
    """
    size, centre, box = getattr(args, "size", None), getattr(args, "centre", None), getattr(args, "box", None)
    given = [
        flag
        for flag, value in (
            ("--spacing", getattr(args, "spacing", None)),
            ("--box", box),
            ("--size", size),
            ("--centre", centre),
        )
        if value is not None
    ]
    reference = getattr(args, "reference", None)
    if reference is None:
        reference = "custom" if given else "ct"
    elif reference != "custom" and given:
        raise ValueError(
            f"{', '.join(given)} describe{'s' if len(given) == 1 else ''} a custom grid and conflict"
            f"{'s' if len(given) == 1 else ''} with --reference {reference}: drop "
            f"{'it' if len(given) == 1 else 'them'} or use --reference custom (implied when --reference is not given)"
        )
    if reference == "custom" and getattr(args, "spacing", None) is None:
        implied = [flag for flag in given if flag != "--spacing"]
        asked = (
            f"{', '.join(implied)} impl{'ies' if len(implied) == 1 else 'y'} a custom grid"
            if implied and getattr(args, "reference", None) is None
            else "--reference custom asks for a custom grid"
        )
        raise ValueError(f"{asked}, which needs --spacing (mm: e.g. --spacing 2 or --spacing 1,1,2.5)")
    cube_only = [flag for flag, value in (("--size", size), ("--centre", centre)) if value is not None]
    if box is None:
        box = "cube" if cube_only else "dose"
    elif box != "cube" and cube_only:
        raise ValueError(f"{' and '.join(cube_only)} apply to a cube (--box cube), not to --box {box}")
    return reference, box, size if size is not None else (128, 128, 128), centre if centre is not None else "auto"


def options_from_args(args: argparse.Namespace) -> AlignOptions:
    """AlignOptions from parsed arguments (the CLI's, or the Slicer batch script's, which lacks some flags)."""
    from .structures.names import load_roi_map  # numpy and pydicom: imported when used, not by --help

    roi_map = getattr(args, "roi_map", None)
    thresholds = getattr(args, "audit_thresholds", None)
    reference, box, size, centre = custom_grid_choice(args)
    crop, margin = getattr(args, "crop", None) or (None, None)
    rois = getattr(args, "rois", None)
    return AlignOptions(
        reference=reference,
        interpolator=args.interpolator,
        custom_spacing=args.spacing,
        custom_box=box,
        custom_size=size,
        centre=centre,
        rois=roi_list(rois) if rois else None,
        crop=crop,
        crop_margin_mm=AlignOptions.crop_margin_mm if margin is None else margin,
        dose_dtype=getattr(args, "dose_dtype", None) or "float32",
        compress=bool(getattr(args, "compress", False)),
        layout=getattr(args, "layout", None) or "npz",
        sum_plans=bool(getattr(args, "sum_plans", False)),
        ct=getattr(args, "ct", None) or None,
        ct_fill_hu=args.ct_fill,
        ct_dtype=args.ct_dtype,
        allow_relative=args.allow_relative,
        structures=not args.no_structures,
        roi_map=load_roi_map(roi_map) if roi_map else None,
        fractional_masks=getattr(args, "fractional_masks", 0),
        audit_thresholds=_read_json(thresholds) if thresholds else None,
    )


def _read_json(path: Path) -> dict:
    from .audit.thresholds import thresholds_with

    value = read_option_json(path, "--audit-thresholds")
    try:
        thresholds_with(value)  # checked here, where the file can be named
    except ValueError as error:
        raise ValueError(f"--audit-thresholds {path}: {error}") from None
    return value
