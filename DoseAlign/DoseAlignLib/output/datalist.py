"""Training/validation splits by patient and the MONAI-style datalist ``OUT/dataset.json``.

Splits are by patient, never by case: every case of a patient lands in the same split. The
assignment is deterministic and depends only on the seed and the patient IDs (not on the order
of cases, the machine or the Python version): patients are ranked by SHA-256 of
``"<seed>:<patient_id>"`` and the first ``round(fraction x patients)`` go to validation (at least
one, and never all, when there are two patients or more).

``dataset.json`` follows the Medical Segmentation Decathlon layout that MONAI's
``load_decathlon_datalist`` reads; paths are relative to the file's folder (OUT)::

    {"name", "description", "reference", "tensorImageSize": "3D", "modality": {"0": "CT"},
     "labels": {"0": "<ROI>", ...},          # channel of "label" -> ROI name (ROIs every case has)
     "numTraining", "numValidation",
     "split": {"by": "patient", "seed", "validation_fraction", "training_patients", "validation_patients"},
     "training":   [{"image": "<case>/ct.nii.gz", "dose": "<case>/dose.nii.gz",
                     "label": ["<case>/masks/<ROI>.nii.gz", ...], "body": "<case>/body.nii.gz",
                     "meta": "<case>/meta.json", "patient_id": "..."}, ...],
     "validation": [...]}

``labels`` names the channels of every entry's ``label``, in order; ``label`` is in every entry
when ``labels`` is not empty and in none otherwise. With ``--rois`` the channels are the ROIs
given, in that order, in every case (a ROI a case lacks is an all-zero mask). Without it they are
the ROIs every case has; when no ROI is common to all cases, ``labels`` is empty, no entry has a
``label``, and ``label_note`` (also printed by the export) says so and how to fix it. ``body``
appears only when the cases have it. Every value of an entry is a string or a list of strings, as
MONAI's loader requires.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .. import __version__
from .files import json_text, temp_path
from .pseudonym import REMOVED

DATALIST_FILE = "dataset.json"


def patients_of_cases(out_dir: Path, case_patients: dict) -> dict:
    """``case_patients`` (``{case_id: patient_id}``) with each case without a patient ID given its CT's study,
    ``"(no PatientID) study <StudyInstanceUID>"`` (its meta.json's ``source.study_uid``): the cases of one CT (two
    plans on it) must land in one split, as a pseudonymized export groups them. A case whose meta.json says no
    study stays a patient of its own."""
    from .case_folder import load_meta

    out = {}
    for case_id, patient in case_patients.items():
        if not str(patient or "").strip():
            try:
                study = (load_meta(Path(out_dir) / case_id).get("source") or {}).get("study_uid")
            except Exception:  # an unreadable meta.json: the case stays on its own (the loaders say why)
                study = None
            patient = f"(no PatientID) study {study}" if isinstance(study, str) and study else ""
        out[case_id] = patient
    return out


def split_by_patient(case_patients: dict, seed: int = 0, validation_fraction: float = 0.2) -> dict:
    """``{"training": [case ids], "validation": [case ids], "split": {...}}`` for ``{case_id: patient_id}``.

    A case without a patient ID counts as a patient of its own (:func:`patients_of_cases` groups such cases
    by their CT's study first). IDs that differ only in case or surrounding
    blanks are one patient, as the pairing takes them (named by the first spelling in sorted order).
    """
    if not 0.0 <= float(validation_fraction) < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {validation_fraction}")
    spelling: dict = {}
    for patient in sorted({str(p).strip() for p in case_patients.values() if str(p or "").strip()}):
        spelling.setdefault(patient.casefold(), patient)
    patient_of = {
        case_id: (spelling[str(patient).strip().casefold()] if str(patient or "").strip() else f"case:{case_id}")
        for case_id, patient in case_patients.items()
    }
    patients = sorted(set(patient_of.values()))
    ranked = sorted(patients, key=lambda p: hashlib.sha256(f"{int(seed)}:{p}".encode()).hexdigest())
    n_validation = int(round(validation_fraction * len(patients)))
    if validation_fraction > 0 and len(patients) >= 2:
        n_validation = min(max(n_validation, 1), len(patients) - 1)
    elif len(patients) < 2:
        n_validation = 0
    validation_patients = set(ranked[:n_validation])
    cases = sorted(case_patients)
    return {
        "training": [c for c in cases if patient_of[c] not in validation_patients],
        "validation": [c for c in cases if patient_of[c] in validation_patients],
        "split": {
            "by": "patient",
            "seed": int(seed),
            "validation_fraction": float(validation_fraction),
            "rule": "patients ranked by sha256('<seed>:<patient_id>'); the first round(fraction x patients) validate",
            "training_patients": sorted(p for p in patients if p not in validation_patients),
            "validation_patients": sorted(validation_patients),
        },
    }


def write_datalist(out_dir: Path, cases: list, splits: dict) -> Path:
    """Write ``out_dir/dataset.json`` for ``cases``: ``(case_id, patient_id, nifti files dict)`` tuples.

    ``nifti files`` is the ``files`` entry of the NIfTI exporter (paths relative to the case folder).
    """
    out_dir = Path(out_dir)
    mask_sets = [list(files.get("masks", {})) for _cid, _pid, files in cases]
    common = common_labels(cases)
    note = label_note(mask_sets, common)
    entries = {}
    for case_id, patient_id, files in cases:
        entry = {
            "image": f"{case_id}/{files['ct']}",
            "dose": f"{case_id}/{files['dose']}",
        }
        if common:
            entry["label"] = [f"{case_id}/{files['masks'][n]}" for n in common]
        if files.get("body"):
            entry["body"] = f"{case_id}/{files['body']}"
        entry["meta"] = f"{case_id}/meta.json"
        entry["patient_id"] = str(patient_id or "")
        entries[case_id] = entry
    training = [entries[c] for c in splits["training"] if c in entries]
    validation = [entries[c] for c in splits["validation"] if c in entries]
    datalist = {
        "name": "DoseAlign export",
        "description": "CT (image), dose in Gy (dose) and ROI masks (label channels) on one grid per case, NIfTI",
        "reference": f"DoseAlign {__version__}",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(n): name for n, name in enumerate(common)},
        **({"label_note": note} if note else {}),
        "numTraining": len(training),
        "numValidation": len(validation),
        "split": splits["split"],
        "training": training,
        "validation": validation,
    }
    final = out_dir / DATALIST_FILE
    temp = temp_path(final)
    temp.write_text(json_text(datalist), encoding="utf-8")
    temp.replace(final)
    return final


def common_labels(cases: list) -> list:
    """The mask channels every case has, in the first case's order (with ``--rois``: all of them)."""
    mask_sets = [list(files.get("masks", {})) for _cid, _pid, files in cases]
    return [n for n in (mask_sets[0] if mask_sets else []) if all(n in s for s in mask_sets[1:])]


def label_note(mask_sets: list, common: list) -> str:
    """Why ``dataset.json`` has no ``label`` although cases have masks ("" when it has one or none is expected)."""
    if common or not any(mask_sets):
        return ""
    every = sorted({n for s in mask_sets for n in s}, key=str.lower)
    # names --pseudonymize rewrote are no names --rois can select (it matches the input's names): following the
    # advice gave all-zero channels, every case ok (forty-fourth hostile trial AR9)
    names = [n for n in every if REMOVED not in n]
    shown = ",".join(names[:6]) + ("..." if len(names) > 6 else "")
    advice = (
        f'export with --rois "{shown}" (the ROIs you train on, in channel order; add --roi-map to unify their names) '
        "to give every case the same mask channels"
        if names
        else "export with --rois naming the ROIs you train on, in channel order, to give every case the same mask channels"
    )
    rewritten = (
        "; the ROIs whose names were rewritten are chosen by their names as the input gives them, or by a channel "
        "name of your own with --roi-map"
        if len(names) < len(every)
        else ""
    )
    return f"no ROI is common to all {len(mask_sets)} cases, so dataset.json has no 'label' key; {advice}{rewritten}"
