"""Command-line values shared by the ``dosealign`` command and the Slicer batch script.

Both parse their arguments with argparse; these turn the text into numbers and the parsed
arguments into :class:`~DoseAlignLib.options.AlignOptions`, so the two accept the same values.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import AlignOptions
from .structures.names import load_roi_map


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


def options_from_args(args: argparse.Namespace) -> AlignOptions:
    """AlignOptions from parsed arguments (the CLI's, or the Slicer batch script's, which lacks some flags)."""
    roi_map = getattr(args, "roi_map", None)
    thresholds = getattr(args, "audit_thresholds", None)
    return AlignOptions(
        reference=args.reference,
        interpolator=args.interpolator,
        custom_spacing=args.spacing,
        custom_box=args.box,
        custom_size=args.size,
        ct_fill_hu=args.ct_fill,
        ct_dtype=args.ct_dtype,
        allow_relative=args.allow_relative,
        structures=not args.no_structures,
        roi_map=load_roi_map(roi_map) if roi_map else None,
        fractional_masks=getattr(args, "fractional_masks", 0),
        audit_thresholds=_read_json(thresholds) if thresholds else None,
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot be read as JSON ({error})") from None
