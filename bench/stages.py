"""Where one ``dosealign export`` spends its time, stage by stage, as a whole process.

    python bench/stages.py CASE_DIR OUT_DIR JSON_OUT [export flags...]

Runs ``dosealign export CASE_DIR OUT_DIR --quiet [flags]`` in this process with every engine
function named in STAGES timed: as each DoseAlignLib module finishes loading, those of its
functions (and class methods) are replaced by timing wrappers, so every caller, also one that
imports the name later or inside a function, gets the wrapper. A stage's time is exclusive: the
time of a timed function nested in another goes to its own stage. Time on other threads (the CT
read beside the dose, the pair.npz writer) is kept apart, since it overlaps the main thread's.
Imports happen where the export does them and count to the stage that triggers them.

Functions are found by name, not by module, so the table survives the engine's reorganisation
(issue 11: the stage sub-packages dicom/, link/, geometry/, structures/, audit/, output/) as long as
the names do; names never called are listed in the JSON (``unseen``).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import functools  # noqa: E402
import importlib.abc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

#: function or Class.method name -> stage
STAGES = {
    "scan_folder": "scan",
    "form_cases": "link",
    "ct_geometry": "CT geometry (headers)",
    "read_ct": "CT read (pixels)",
    "read_rtdose": "dose read + resample",
    "_resample_dose": "dose read + resample",
    "read_structure_set": "structures",
    "read_case_contours": "structures",
    "rasterize_structures": "structures",
    "case_masks": "structures",
    "body_from_ct": "body mask",
    "add_structures_and_audit": "audit",
    "roi_dvhs": "ROI DVHs",
    "reference_dvhs_for": "reference DVHs",
    "render_case": "qa.png",
    "CaseOutput.finish": "write (pair.npz, meta.json)",
    "_write_member": "write (pair.npz, meta.json)",
    "write_manifest": "manifest + report.html",
    "write_report": "manifest + report.html",
    "run_case": "run_case rest (waiting for the CT thread, meta)",
}
#: name -> {stage of the caller: stage of this call}; elsewhere the call counts to its caller's stage
IN_CONTEXT = {"resample": {"structures": "body mask"}}  # the CT onto the dose grid for its body mask

_local = threading.local()
_lock = threading.Lock()
TOTALS: dict = {}  # (stage, "main" | "other threads") -> [seconds, calls]
SEEN: set = set()


def _stack() -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _timed(name: str, function, stage=None, context=None):
    """``function`` timed as ``stage``, or (``context``) as the stage its caller's stage maps to."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        stack = _stack()
        label = stage if context is None else context.get(stack[-1][0] if stack else None)
        if label is None:
            return function(*args, **kwargs)
        SEEN.add(name)
        frame = [label, time.perf_counter(), 0.0]
        stack.append(frame)
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - frame[1]
            stack.pop()
            if stack:
                stack[-1][2] += elapsed
            where = "main" if threading.current_thread() is threading.main_thread() else "other threads"
            with _lock:
                entry = TOTALS.setdefault((label, where), [0.0, 0])
                entry[0] += elapsed - frame[2]
                entry[1] += 1

    wrapper.__bench_timed__ = True
    return wrapper


def _patch(module) -> None:
    """Wrap the STAGES and IN_CONTEXT functions that ``module`` defines."""
    names = {**{n: (s, None) for n, s in STAGES.items()}, **{n: (None, c) for n, c in IN_CONTEXT.items()}}
    for name, (stage, context) in names.items():
        owner_name, _, attribute = name.rpartition(".")
        owner = module.__dict__.get(owner_name) if owner_name else module
        if owner is None or getattr(owner, "__module__", module.__name__) != module.__name__:
            continue
        function = owner.__dict__.get(attribute)
        if not callable(function) or getattr(function, "__bench_timed__", False):
            continue
        if getattr(function, "__module__", None) != module.__name__:
            continue  # imported from another module: that one's wrapper is already here
        setattr(owner, attribute, _timed(name, function, stage, context))


class _Patcher(importlib.abc.MetaPathFinder):
    """Patches each DoseAlignLib module right after it has been executed."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] != "DoseAlignLib":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def main(case_dir: str, out_dir: str, json_out: str, flags: list) -> int:
    sys.meta_path.insert(0, _Patcher())
    imported = time.perf_counter()
    from DoseAlignLib.cli import main as dosealign

    started = time.perf_counter()
    status = dosealign(["export", case_dir, out_dir, "--quiet", *flags])
    ended = time.perf_counter()
    stages: dict = {}
    for (stage, where), (seconds, calls) in sorted(TOTALS.items(), key=lambda item: -item[1][0]):
        stages.setdefault(where, {})[stage] = {"seconds": seconds, "calls": calls}
    main_stages = sum(v["seconds"] for v in stages.get("main", {}).values())
    report = {
        "status": status,
        "script start (site, this module)": imported - START,
        "import DoseAlignLib.cli": started - imported,
        "export call": ended - started,
        "main thread outside the stages": ended - started - main_stages,
        "in process": ended - START,
        "stages": stages,
        "unseen": sorted(n for n in (*STAGES, *IN_CONTEXT) if n not in SEEN),
    }
    with open(json_out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    return status


if __name__ == "__main__":
    from DoseAlignLib.cli import _exit  # the process ends as the dosealign command's does

    _exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
