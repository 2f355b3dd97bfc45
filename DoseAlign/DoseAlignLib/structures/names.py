"""ROI names: the ``--roi-map`` file and names made unique within a case.

Matching is case-insensitive and ignores surrounding blanks; the map's keys are the names used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..dicom.rtstruct import RoiContours
from ..limits import read_option_json


def load_roi_map(path: Union[str, Path]) -> dict:
    """Read a ``--roi-map`` JSON file: ``{"PTV70": ["PTV_70", "ptv70"], ...}``.

    Each key is the name to use; its value is an alias or a list of aliases. Matching is
    case-insensitive and ignores surrounding blanks. Raises ``ValueError`` naming the problem.
    """
    path = Path(path)
    mapping = read_option_json(path, "--roi-map")
    roi_name_lookup(mapping, where=str(path))
    return {str(k): ([v] if isinstance(v, str) else [str(a) for a in v]) for k, v in mapping.items()}


def roi_name_lookup(mapping: dict, where: str = "roi map") -> dict:
    """``{lower-case alias or name: canonical name}`` of an ROI map; ``ValueError`` on conflicts."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{where}: expected a JSON object of name -> [aliases]")
    lookup: dict = {}
    for canonical, aliases in mapping.items():
        if not isinstance(canonical, str) or not canonical.strip() or not canonical.isprintable():  # "": N4
            raise ValueError(f"{where}: {canonical!r} is no channel name (blank, or a control character in it)")
        if isinstance(aliases, str):
            aliases = [aliases]
        if not isinstance(aliases, (list, tuple)) or not all(isinstance(a, str) for a in aliases):
            raise ValueError(f"{where}: the aliases of {canonical!r} must be a string or a list of strings")
        for alias in [canonical, *aliases]:
            key = alias.strip().lower()
            if key in lookup and lookup[key] != canonical:
                raise ValueError(f"{where}: {alias!r} maps to both {lookup[key]!r} and {canonical!r}")
            lookup[key] = canonical
    return lookup


def harmonise_names(
    rois: Sequence[RoiContours], mapping: Optional[dict] = None, rewrite: Optional[Callable[[str], str]] = None
) -> list:
    """Rename ROIs by ``mapping`` (see :func:`load_roi_map`), then by ``rewrite``, and make the names unique.

    ``rewrite`` is the pseudonymization of a name (identity removed: ``PTV_Doe`` -> ``PTV_[removed]``); names
    are made unique after it, here and only here, so that every output (meta.json, dvh.csv, mask files,
    labels) names each ROI the same way. A later ROI whose name is already taken (in any case) becomes
    ``name_2``, ``name_3``, ... (a note says so): two ROIs of one name in the structure set, or two names
    that read alike once rewritten. Only ROIs that give a mask take part in the uniqueness check.
    The names before ``rewrite``, made unique the same way, are kept apart (``mapped_name``,
    ``mapped_unique_name``): the user selects ROIs by them (:func:`selection_names`), as the input and the ROI
    map write them, not as the pseudonymization rewrote them. Returns notes for the caller.
    """
    lookup = roi_name_lookup(mapping) if mapping else {}
    mapped = [lookup.get(roi.original_name.strip().lower(), roi.original_name) for roi in rois]
    written = [rewrite(name) if rewrite is not None else name for name in mapped]
    # a renamed duplicate never takes a name another ROI of the set has (PTV twice and PTV_2: the second PTV was
    # PTV_2 and the real PTV_2 became PTV_2_2; thirty-third hostile trial AG7)
    live = [roi.skipped is None for roi in rois]
    reserved = {name.lower() for name, ok in zip(written, live) if ok}
    mapped_reserved = {name.lower() for name, ok in zip(mapped, live) if ok}
    taken: dict = {}
    mapped_taken: set = set()
    notes = []
    for roi, given, new in zip(rois, mapped, written):
        if given != roi.original_name:
            roi.notes.append(f"renamed from {roi.original_name!r} by the ROI map")
        roi.mapped_name = roi.mapped_unique_name = given
        if roi.skipped is None:
            roi.mapped_unique_name = _unique(given, mapped_taken, mapped_reserved)
            mapped_taken.add(roi.mapped_unique_name.lower())
        roi.harmonised_name = new
        if roi.skipped is None:
            key = new.lower()
            if key in taken:
                unique = _unique(new, set(taken), reserved)
                notes.append(f"{roi.source}: ROI {roi.number} {new!r} renamed {unique} (name already used)")
                roi.notes.append(f"name {new!r} already used by {taken[key]}; renamed {unique}")
                new = unique
                key = new.lower()
            taken[key] = f"{roi.source} ROI {roi.number}"
        roi.name = new
    return notes


def _unique(name: str, taken: set, reserved: frozenset = frozenset()) -> str:
    """``name``, or ``name_2``, ``name_3``, ... when it is taken (``taken`` holds lower-case names); a new name is
    none of ``reserved`` either (the names other ROIs of the set have)."""
    if name.lower() not in taken:
        return name
    n = 2
    while f"{name}_{n}".lower() in taken or f"{name}_{n}".lower() in reserved:
        n += 1
    return f"{name}_{n}"


def selection_names(roi) -> tuple:
    """The names the user selects ``roi`` by (``--rois``, ``--centre roi:``), first the one that picks this ROI
    alone: its name after ``--roi-map`` made unique (``PTV_2``), then that name before it was made unique (``PTV``).
    Both are the names before pseudonymization: an ROI ``PTV_Doe`` written as ``PTV_[removed]`` is still chosen by
    ``PTV_Doe`` (where it would be written rewritten is for the caller to refuse; see
    :meth:`~DoseAlignLib.output.pseudonym.Pseudonymizer.prepare`). ROIs not harmonised: their name."""
    unique = roi.mapped_unique_name or roi.name
    return (unique, roi.mapped_name or roi.harmonised_name or unique)


def is_target(name: str, interpreted_type: str = "") -> bool:
    """A planning target: RTROIInterpretedType PTV, or a name starting with PTV when the type is unknown."""
    if interpreted_type:
        return interpreted_type.upper() == "PTV"
    return name.upper().startswith("PTV")
