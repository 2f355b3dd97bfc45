"""What linking makes: a case (the doses of one output pair, its CT, plan and structure sets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..dicom.scan import CtSeries, DicomObject


@dataclass
class Case:
    """One output pair: a dose (or a sum of beam doses) and the CT it belongs to."""

    case_id: str
    patient_id: str
    summation_type: str
    doses: list
    ct: Optional[CtSeries] = None
    plan: Optional[DicomObject] = None
    structs: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # how links were made and choices taken
    left_out: list = field(default_factory=list)  # (rel_path, reason) doses deliberately not summed
    related_beam_doses: list = field(default_factory=list)  # BEAM doses of a plan that has a PLAN dose
    error: Optional[str] = None  # why this case cannot be exported
    warnings: list = field(default_factory=list)  # what the user must know about its outputs (meta.json, manifest)
    plans: list = field(default_factory=list)  # a plan sum's plans (link.plans.merge_plans), else empty

    @property
    def dose_files(self) -> list:
        return [d.rel_path for d in self.doses]


@dataclass
class LinkResult:
    cases: list = field(default_factory=list)
    orphans: list = field(default_factory=list)  # (rel_path, kind, reason)
