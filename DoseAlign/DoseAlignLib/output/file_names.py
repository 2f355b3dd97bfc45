"""File names made from ROI names: safe on every file system and distinct, for every format's mask files (and the
check of what a kept case's meta.json records)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

#: Longest file-name stem made from a ROI name (file systems allow 255 bytes; room for an extension and `-N`).
MAX_NAME_CHARS = 96


def safe_name(name: str) -> str:
    """A file-name-safe form of a ROI name: letters, digits, '.', '_' and '-' only, at most
    :data:`MAX_NAME_CHARS` (a longer one is cut and ends in 8 hex of its hash, so two long names stay apart)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    if len(text) > MAX_NAME_CHARS:
        digest = hashlib.sha1(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        text = f"{text[: MAX_NAME_CHARS - 9].rstrip('._')}-{digest}"
    return text or "roi"


def unique_file_names(names: list, reserved: Sequence[str] = ()) -> list:
    """Safe, distinct file names for ``names`` (distinct also on case-insensitive file systems).

    A name that is file-safe as it is keeps it, whatever comes before it: a file named exactly after an
    ROI holds that ROI (``CTV_1`` stays ``CTV_1`` beside ``CTV 1``, which becomes ``CTV_1-2``). Names in
    ``reserved`` belong to the format's own files beside the masks (OpenKBP's ``dose``): an ROI of that name
    gets ``-2`` (``dose-2``), so that its mask never replaces them.
    """
    bases = [safe_name(name) for name in names]
    out: list = [None] * len(names)
    seen = {name.lower() for name in reserved}
    for index, (name, base) in enumerate(zip(names, bases)):
        if base == name and base.lower() not in seen:
            out[index] = base
            seen.add(base.lower())
    for index, base in enumerate(bases):
        if out[index] is not None:
            continue
        candidate, n = base, 2
        while candidate.lower() in seen:
            candidate = f"{base}-{n}"
            n += 1
        seen.add(candidate.lower())
        out[index] = candidate
    return out
