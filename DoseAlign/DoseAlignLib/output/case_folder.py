"""Case folders written atomically: a case folder appears whole or not at all.

Layout (the output contract, see README): ``OUT/<case_id>/pair.npz`` (ct, dose and further arrays,
axes k, j, i) and ``OUT/<case_id>/meta.json``; ``OUT/manifest.csv`` (:mod:`.manifest`) one row per case.
With the ``npy`` layout each array is its own ``OUT/<case_id>/<name>.npy`` instead of a pair.npz member.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import DoseAlignError, output_fault
from ..limits import open_regular
from .dvh_csv import write_dvh_csv
from .files import RunClaim, claim_for, dead_claims, fsync_path, fsync_tree, json_text, remove_owned
from .npz import NpyStream, NpzStream


def case_dir(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / case_id


def is_complete(out_dir: Path, case_id: str) -> bool:
    """True when the case's folder holds its outputs whole (see :func:`case_problem`)."""
    return case_problem(case_dir(out_dir, case_id)) is None


def read_meta(path: Path):
    """A case folder's meta.json, parsed; read only when it is a regular file (a named pipe or a device
    planted in OUT would block or never end): :class:`OSError` otherwise, ``ValueError`` when it does not parse
    (also when nested too deeply to parse)."""
    with open_regular(path, "file") as handle:
        text = handle.read().decode("utf-8")
    try:
        return json.loads(text)
    except RecursionError:  # nested deeper than Python's parser goes: not one of ours
        raise ValueError("meta.json is nested too deeply") from None


def case_problem(folder: Path) -> Optional[str]:
    """Why a case folder is not a complete output (None when it is).

    meta.json must be DoseAlign's and readable; ``pair.npz`` must be a whole zip archive (its
    directory at the end, every member inside the file) whose ``ct`` and ``dose`` headers read and
    whose sizes agree with them; in the ``npy`` layout each ``.npy`` file must be as long as its
    header says. Data bytes are not read: a file cut short, or a folder a killed or failing run left,
    is found; bit rot inside an array is not.
    """
    folder = Path(folder)
    try:
        meta = read_meta(folder / "meta.json")
    except FileNotFoundError:
        return "meta.json is missing"
    except (OSError, ValueError) as error:
        return f"meta.json cannot be read ({type(error).__name__})"
    if not isinstance(meta, dict) or "dosealign_version" not in meta:
        return "meta.json is not DoseAlign's"
    damaged = _meta_problem(meta)
    if damaged:
        return f"meta.json is damaged ({damaged})"
    if (folder / "pair.npz").is_file():
        return _npz_problem(folder / "pair.npz")
    if (folder / "ct.npy").is_file():
        for path in sorted(folder.glob("*.npy")):
            problem = _npy_problem(path)
            if problem:
                return problem
        return None if (folder / "dose.npy").is_file() else "dose.npy is missing"
    return "pair.npz is missing"


def _meta_problem(meta: dict) -> Optional[str]:
    """What in a DoseAlign meta.json is not of the kind the manifest and ``--resume`` read (an edited or
    damaged file), or None."""

    def numbers(value, kind) -> bool:
        return (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
        )

    if not numbers(meta.get("shape"), int):
        return "shape"
    if not numbers(meta.get("spacing"), (int, float)):
        return "spacing"
    for key in ("options", "source", "resampling", "dose", "manifest_extra"):
        if not isinstance(meta.get(key, {}), dict):
            return key
    resampling, dose = meta.get("resampling", {}), meta.get("dose", {})
    if not all(isinstance(resampling.get(k), str) for k in ("reference", "interpolator")):
        return "resampling"
    if not isinstance(dose.get("max_gy_output"), (int, float)) or isinstance(dose.get("max_gy_output"), bool):
        return "dose.max_gy_output"
    warnings = meta.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        return "warnings"
    return None


def _npz_problem(path: Path) -> Optional[str]:
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            for name in ("ct.npy", "dose.npy"):
                if name not in members:
                    return f"pair.npz has no {name[:-4]}"
            for info in members.values():
                if info.header_offset + info.compress_size > size:
                    return f"pair.npz is cut short inside {info.filename}"
            for name in ("ct.npy", "dose.npy"):
                with archive.open(name) as member:
                    expected = _npy_length(member)
                if expected is not None and expected != members[name].file_size:
                    return f"pair.npz: {name} holds {members[name].file_size} bytes, its header says {expected}"
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as error:
        return f"pair.npz is damaged or cut short ({type(error).__name__})"
    return None


def _npy_problem(path: Path) -> Optional[str]:
    try:
        with open_regular(path) as handle:
            expected = _npy_length(handle)
        if expected is not None and expected != path.stat().st_size:
            return f"{path.name} holds {path.stat().st_size} bytes, its header says {expected}"
    except (OSError, ValueError) as error:
        return f"{path.name} is damaged ({type(error).__name__})"
    return None


def _npy_length(handle) -> Optional[int]:
    """The length an .npy stream must have, from its header (None for object arrays)."""
    version = np.lib.format.read_magic(handle)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = reader(handle)
    if dtype.hasobject:
        return None
    return handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


#: The file that holds (the first of) a case's arrays, per layout.
ARRAY_FILES = {"npz": "pair.npz", "npy": "ct.npy"}


def storage_of(options) -> dict:
    """How a case's arrays are stored: ``{"layout", "compress", "dtypes"}`` from :class:`AlignOptions` (or None)."""
    layout = getattr(options, "layout", "npz") or "npz"
    dtypes = {"dose": np.float16} if getattr(options, "dose_dtype", "float32") == "float16" else {}
    return {"layout": layout, "compress": bool(getattr(options, "compress", False)), "dtypes": dtypes}


def write_case_output(result, out_dir: Path, extra_files: Sequence[Callable[[Path], None]] = (), options=None) -> Path:
    """Write ``pair.npz`` and ``meta.json`` of a :class:`CaseResult` into ``out_dir/<case_id>``.

    The files go into a temporary folder that is renamed into place at the end; an existing
    output of the same case is replaced only then. Each of ``extra_files`` is called with the
    temporary folder to add its files there (e.g. qa.png), while pair.npz is written; it may
    still update ``result.meta`` but must not change the arrays. ``options`` (:class:`AlignOptions`)
    chooses the storage (layout, compression, dose type).
    """
    return CaseOutput(out_dir, options).finish(result, extra_files)


class CaseOutput:
    """One case's output folder in the making: ``pair.npz`` is written while the case is computed.

    Give :func:`~DoseAlignLib.pipeline.run_case` :meth:`add_array` as its ``sink``: the CT and the dose are
    written as soon as each is final. :meth:`finish` adds the rest and renames the temporary
    folder into place; :meth:`discard` (or a failing ``finish``) removes it.
    """

    def __init__(self, out_dir: Path, options=None) -> None:
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # no case id in the name (it may still be pseudonymized); the run's own temporary name
            self.temp = claim_for(self.out_dir).temp("case")
            self.temp.mkdir()
        except OSError as error:
            raise output_fault(error, self.out_dir) from None
        self.storage = storage_of(options)
        dtypes = self.storage["dtypes"]
        # the arrays are fsynced by the writer thread as they are written (fsync_tree then finds them on disk)
        if self.storage["layout"] == "npy":
            self._npz = NpyStream(self.temp, leading=("ct", "dose"), dtypes=dtypes, sync=True)
        else:  # reproducible bytes, see npz.py
            self._npz = NpzStream(
                self.temp / "pair.npz",
                leading=("ct", "dose"),
                dtypes=dtypes,
                compress=self.storage["compress"],
                sync=True,
            )
        self._added: dict = {}

    def add_array(self, name: str, array: np.ndarray) -> None:
        self._added[name] = array
        self._npz.add(name, array)

    def finish(self, result, extra_files: Sequence[Callable[[Path], None]] = ()) -> Path:
        try:
            arrays = {"ct": result.ct.array, "dose": result.dose.array, **result.extra_arrays}
            for name, array in arrays.items():
                if name not in self._added:
                    self.add_array(name, array)
                elif self._added[name] is not array:
                    raise ValueError(f"{name}: the array written early is not the result's")
            try:
                for write_extra in extra_files:  # beside the pair.npz writer (mostly I/O, outside the GIL)
                    write_extra(self.temp)
            finally:
                self._npz.close()
            if self.storage["layout"] != "npz" or self.storage["compress"] or self.storage["dtypes"]:
                result.meta["storage"] = self._storage_meta(arrays)
            write_dvh_csv(self.temp, result)  # the reference DVHs (audit), when the case has them
            (self.temp / "meta.json").write_text(json_text(result.meta), encoding="utf-8")
            fsync_tree(self.temp)  # the data are on the disk before the folder appears complete
            final = case_dir(self.out_dir, result.case_id)
            _replace_dir(self.temp, final)
            fsync_path(self.out_dir)
        except BaseException as error:
            self.discard()  # frees what the case took (on a full disk: room for the manifest)
            if isinstance(error, OSError):
                raise output_fault(error, self.out_dir) from None
            raise
        return final

    def _storage_meta(self, arrays: dict) -> dict:
        npy = self.storage["layout"] == "npy"
        dtypes = self.storage["dtypes"]
        return {
            "layout": self.storage["layout"],
            "files": {n: f"{n}.npy" for n in arrays} if npy else {n: f"pair.npz:{n}" for n in arrays},
            "compressed": self.storage["compress"],
            "dtypes": {n: np.dtype(dtypes.get(n, np.asarray(a).dtype)).name for n, a in arrays.items()},
            "read": "np.load(f'{case}/<name>.npy', mmap_mode='r') maps an array without reading it"
            if npy
            else "np.load(f'{case}/pair.npz')[name]",
        }

    def discard(self) -> None:
        self._npz.abort()
        shutil.rmtree(self.temp, ignore_errors=True)


def _replace_dir(temp: Path, final: Path) -> None:
    if os.path.lexists(final):
        if not is_case_folder(final):
            raise DoseAlignError(
                "exists and is not a DoseAlign case folder (no meta.json or pair.npz of DoseAlign, or it holds "
                "DICOM files): it is not replaced",
                path=final,
                hint="move it away, or export into another folder",
            )
        old = claim_for(final.parent).temp("old")
        os.replace(final, old)
        os.replace(temp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, final)


#: File names a DICOM file may carry (besides the 'DICM' preamble, checked too).
_DICOM_NAMES = (".dcm", ".dicom", ".ima")


def is_case_folder(folder: Path) -> bool:
    """Whether ``folder`` is a case folder DoseAlign wrote, which a new export of the case may replace.

    It must be a real folder (not a symlink) with DoseAlign's meta.json (``dosealign_version``) or a
    pair.npz, and hold no DICOM file: an input folder that happens to carry a case's name is never replaced.
    """
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    ours = False
    try:
        meta = read_meta(folder / "meta.json")
        ours = isinstance(meta, dict) and "dosealign_version" in meta
    except (OSError, ValueError):
        pass
    ours = ours or (folder / "pair.npz").is_file()
    if not ours:
        return False
    for base, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            if name.lower().endswith(_DICOM_NAMES):
                return False
            try:
                with open_regular(path) as handle:
                    handle.seek(128)
                    if handle.read(4) == b"DICM":
                        return False
            except OSError:  # unreadable, or a pipe or device: not something DoseAlign wrote
                return False
    return True


def clean_temp(out_dir: Path) -> list:
    """Remove what killed DoseAlign runs left in ``out_dir``; return the names removed.

    Only entries of runs whose owner is provably dead go (see :mod:`.files`): a live run's
    temporary folders, another machine's, and any other ``.tmp-*`` entry (a user's) stay.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    removed = []
    for token in dead_claims(out_dir):
        removed.extend(remove_owned(out_dir, token))
    return removed


def check_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and prove it writable; raise a :class:`DoseAlignError` otherwise."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DoseAlignError("the output path exists and is not a folder", path=out_dir, hint="choose a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DoseAlignError(
            f"cannot create the output folder: {error.strerror or error}",
            path=out_dir,
            hint="choose a folder you can write to",
        ) from None
    try:  # the probe is an owner record: if this process is killed now, the next run removes it
        RunClaim(out_dir).release()
    except OSError as error:
        raise DoseAlignError(
            f"cannot write to the output folder: {error.strerror or error}",
            path=out_dir,
            hint="make it writable or choose another folder; nothing was exported",
        ) from None
