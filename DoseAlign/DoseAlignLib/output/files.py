"""Files as every DoseAlign output writes them: JSON text, atomic replacement, temporary names.

Everything DoseAlign writes goes first to a temporary name (``TEMP_PREFIX``) beside its final one
and is renamed into place when complete, so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

#: Temporary files and folders start with this, so that a later run can find a killed run's leftovers.
TEMP_PREFIX = ".tmp-"


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def json_text(data) -> str:
    """JSON as every DoseAlign file writes it (numpy scalars and arrays, paths as text), newline-ended."""
    return json.dumps(data, indent=1, default=_json_default) + "\n"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def temp_path(path: Path) -> Path:
    """A temporary sibling of ``path`` (removed by case_folder.clean_temp if a run dies)."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")


def replace_atomic(temp: Path, final: Path) -> None:
    """Move a finished temporary file into place in one step."""
    os.replace(temp, final)
