"""A PyTorch-style dataset over a DoseAlign export folder or its ``dataset.h5``.

PyTorch is optional: this module does not import it. :class:`DoseAlignDataset` is a plain
map-style dataset (``len`` and indexing), which ``torch.utils.data.DataLoader`` takes as it is;
torch is imported on the first sample only when ``as_tensors=True`` (the default).

Each sample is a dict that ``torch.utils.data.default_collate`` takes as it is (no None, no
nested metadata)::

    case_id, patient_id       str
    ct                        (1, K, J, I) float32, HU
    dose                      (1, K, J, I) float32, Gy (also when stored as float16)
    masks                     (N, K, J, I) bool, one channel per ROI (N may be 0)
    roi_present               (N,) bool: False for a channel the case lacks (an all-zero mask)
    mask_names                list of N ROI names
    body                      (1, K, J, I) bool (only when the case has a body mask)
    ijk_to_lps, ijk_to_ras    (4, 4) float64: voxel (i, j, k) centre -> patient mm
    spacing                   (3,) float64, mm along i, j, k
    meta                      the case's meta.json as JSON text (``json.loads(sample["meta"])``)

``rois=[...]`` gives every sample exactly these mask channels, in this order (names matched in
any case; a ROI a case lacks is an all-zero channel with ``roi_present`` False), whatever the
export wrote; an export made with ``--rois`` has them already. With the default collate any batch
size works when the grids are equal too (``--reference custom --box cube``, e.g. ``--size 128
--spacing 2``); grids of their own (the CT's, a crop) batch one case at a time (``batch_size=1``).

Example::

    from torch.utils.data import DataLoader
    from DoseAlignLib.api import DoseAlignDataset

    train = DoseAlignDataset("OUT/dataset.h5", split="training", rois=["PTV", "SpinalCord"])
    for batch in DataLoader(train, batch_size=2, shuffle=True):
        ct, dose, masks = batch["ct"], batch["dose"], batch["masks"]   # (2, 1, K, J, I), ..., (2, 2, K, J, I)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import DoseAlignError
from .limits import read_back
from .options import roi_list
from .output.case_data import CaseData, require
from .output.case_folder import is_complete, load_meta
from .output.datalist import DATALIST_FILE, patients_of_cases, split_by_patient
from .output.hdf5 import DATASET_FILE
from .output.out_folder import read_manifest


class DoseAlignDataset:
    """Cases of an export folder (pair.npz + meta.json) or of a dataset.h5, one sample per case.

    Parameters
    ----------
    source : path
        An export folder (its ``manifest.csv`` lists the cases; status ok or skipped) or a
        ``dataset.h5`` file.
    split : "training", "validation" or None
        Only the cases of that split: from ``dataset.h5``'s attributes, the folder's
        ``dataset.json``, or else computed by :func:`~DoseAlignLib.output.datalist.split_by_patient` with
        ``seed`` and ``validation_fraction``.
    as_tensors : bool
        Return torch tensors (imports torch) instead of numpy arrays.
    transform : callable, optional
        Applied to each sample dict before it is returned.
    rois : list of str, optional
        The mask channels of every sample, in order (matched in any case); None: as exported.
    """

    def __init__(
        self,
        source,
        split: Optional[str] = None,
        *,
        as_tensors: bool = True,
        transform: Optional[Callable] = None,
        seed: int = 0,
        validation_fraction: float = 0.2,
        rois: Optional[Sequence[str]] = None,
    ) -> None:
        if split not in (None, "training", "validation"):
            raise ValueError(f"split must be 'training', 'validation' or None, got {split!r}")
        self.source = Path(source)
        self.as_tensors = as_tensors
        self.transform = transform
        self.rois = None if rois is None else list(roi_list(rois))
        self._h5 = None
        self._h5_pid = None
        if self.source.is_file():
            self.kind = "hdf5"
            h5py = require("h5py", "h5py", "hdf5")
            with h5py.File(self.source, "r") as handle:
                ids = [_text(v) for v in handle.attrs.get("case_ids", list(handle.keys()))]
                chosen = ids if split is None else [_text(v) for v in handle.attrs.get(split, [])]
        elif self.source.is_dir():
            self.kind = "folder"
            patients = _manifest_cases(self.source)
            ids = list(patients)
            chosen = ids if split is None else _folder_split(self.source, patients, split, seed, validation_fraction)
        else:
            raise FileNotFoundError(f"{self.source}: neither an export folder nor a {DATASET_FILE} file")
        self.case_ids = [c for c in ids if c in set(chosen)]

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict:
        case_id = self.case_ids[index]
        sample = self._read_h5(case_id) if self.kind == "hdf5" else self._read_folder(case_id)
        if self.rois is not None:
            sample = _with_channels(sample, self.rois)
        if self.as_tensors:
            torch = require("torch", "torch", "torch dataset")
            sample = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in sample.items()}
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    # ---- readers ----------------------------------------------------------------------------

    def _read_folder(self, case_id: str) -> dict:
        case = CaseData.from_folder(self.source / case_id)
        masks = np.stack([m for _n, m in case.masks]) if case.masks else np.zeros((0, *case.grid.shape), dtype=bool)
        meta = case.meta
        return _sample(
            case.case_id, case.patient_id, case.ct, case.dose, masks, case.mask_names, case.roi_present, case.body, meta
        )

    def _file(self):
        # h5py handles must not cross a fork: open once per process (DataLoader workers)
        if self._h5 is None or self._h5_pid != os.getpid():
            h5py = require("h5py", "h5py", "hdf5")
            self._h5 = h5py.File(self.source, "r")
            self._h5_pid = os.getpid()
        return self._h5

    def _read_h5(self, case_id: str) -> dict:
        group = self._file()[case_id]
        shape = tuple(int(n) for n in group.attrs["shape"])
        names = [_text(v) for v in group.attrs.get("mask_names", [])]
        masks = group["masks"][()].astype(bool) if "masks" in group else np.zeros((0, *shape), dtype=bool)
        body = group["body"][()].astype(bool) if "body" in group else None
        meta = json.loads(_text(group.attrs["meta_json"]))
        patient = _text(group.attrs.get("patient_id", ""))
        present = [bool(p) for p in group.attrs.get("roi_present", [1] * len(names))]
        return _sample(case_id, patient, group["ct"][()], group["dose"][()], masks, names, present, body, meta)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_h5"] = None  # reopened in the worker
        return state


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _sample(case_id, patient_id, ct, dose, masks, names, present, body, meta) -> dict:
    if len(present) != len(names):
        present = [True] * len(names)
    sample = {
        "case_id": str(case_id),
        "patient_id": str(patient_id or ""),
        "ct": np.ascontiguousarray(ct, dtype=np.float32)[np.newaxis],
        "dose": np.ascontiguousarray(dose, dtype=np.float32)[np.newaxis],
        "masks": np.ascontiguousarray(masks, dtype=bool),
        "roi_present": np.array(present, dtype=bool).reshape(len(names)),
        "mask_names": [str(n) for n in names],
        "ijk_to_lps": np.array(meta["ijk_to_lps"], dtype=np.float64),
        "ijk_to_ras": np.array(meta["ijk_to_ras"], dtype=np.float64),
        "spacing": np.array(meta["spacing"], dtype=np.float64),
        "meta": json.dumps(meta),  # text: collates as a list of strings whatever meta.json holds
    }
    if body is not None:
        sample["body"] = np.ascontiguousarray(body, dtype=bool)[np.newaxis]
    return sample


def _with_channels(sample: dict, rois: list) -> dict:
    """``sample`` with exactly the mask channels ``rois`` (any case; a missing one all zeros, not present)."""
    index = {name.lower(): n for n, name in enumerate(sample["mask_names"])}
    shape = sample["ct"].shape[1:]
    masks = np.zeros((len(rois), *shape), dtype=bool)
    present = np.zeros(len(rois), dtype=bool)
    for n, name in enumerate(rois):
        found = index.get(name.lower())
        if found is not None:
            masks[n] = sample["masks"][found]
            present[n] = bool(sample["roi_present"][found])
    return {**sample, "masks": masks, "roi_present": present, "mask_names": list(rois)}


def _manifest_cases(folder: Path) -> dict:
    """``{case_id: patient}`` of the ok cases in ``folder/manifest.csv`` (else every case folder)."""
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        rows, problem = read_manifest(manifest)  # a regular file of at most DOSEALIGN_MANIFEST_MB
        if problem:
            raise DoseAlignError(f"manifest.csv {problem}", path=manifest)
        rows = [r for r in rows if r.get("status") in ("ok", "skipped")]
        return {r["case_id"]: r.get("patient", "") for r in rows if is_complete(folder, r["case_id"])}
    out = {}
    for meta_path in sorted(folder.glob("*/meta.json")):
        if is_complete(folder, meta_path.parent.name) and not meta_path.parent.name.startswith("."):
            out[meta_path.parent.name] = load_meta(meta_path.parent).get("patient_id", "")
    return out


def _folder_split(folder: Path, patients: dict, split: str, seed: int, fraction: float) -> list:
    datalist = folder / DATALIST_FILE
    if datalist.is_file():
        entries = json.loads(read_back(datalist, "DOSEALIGN_META_MB").decode("utf-8")).get(split, [])
        return [Path(e["meta"]).parent.name for e in entries]
    return split_by_patient(patients_of_cases(folder, patients), seed, fraction)[split]
