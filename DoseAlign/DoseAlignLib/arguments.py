"""Command-line values shared by the ``dosealign`` command and the Slicer batch script.

Both parse their arguments with argparse; these turn the text into numbers and the parsed
arguments into :class:`~DoseAlignLib.options.AlignOptions`, so the two accept the same values.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import AlignOptions, roi_list


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


def custom_grid_choice(args: argparse.Namespace) -> tuple:
    """``(reference, box, size)`` from the grid options, defaults filled in.

    Custom-grid options (``--spacing``, ``--box``, ``--size``) imply ``--reference custom`` when
    ``--reference`` is not given and conflict with ``--reference ct|dose``; ``--size`` implies
    ``--box cube`` and conflicts with ``--box dose|ct``.
    Raises ``ValueError`` naming the conflict (a usage error).
    """
    size, box = getattr(args, "size", None), getattr(args, "box", None)
    given = [
        flag
        for flag, value in (("--spacing", getattr(args, "spacing", None)), ("--box", box), ("--size", size))
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
    cube_only = ["--size"] if size is not None else []
    if box is None:
        box = "cube" if cube_only else "dose"
    elif box != "cube" and cube_only:
        raise ValueError(f"{' and '.join(cube_only)} apply to a cube (--box cube), not to --box {box}")
    return reference, box, size if size is not None else (128, 128, 128)


def options_from_args(args: argparse.Namespace) -> AlignOptions:
    """AlignOptions from parsed arguments (the CLI's, or the Slicer batch script's, which lacks some flags)."""
    from .structures.names import load_roi_map  # numpy and pydicom: imported when used, not by --help

    roi_map = getattr(args, "roi_map", None)
    thresholds = getattr(args, "audit_thresholds", None)
    reference, box, size = custom_grid_choice(args)
    rois = getattr(args, "rois", None)
    return AlignOptions(
        reference=reference,
        interpolator=args.interpolator,
        custom_spacing=args.spacing,
        custom_box=box,
        custom_size=size,
        rois=roi_list(rois) if rois else None,
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
