"""Export every case found below an input folder: one bad case never stops the batch."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import __version__
from .dicom.damage import damaged_file_rows
from .dicom.scan import scan_folder
from .errors import (
    THREAD_NOT_STARTED,
    Cancelled,
    DoseAlignError,
    Interrupted,
    NothingToExport,
    OutputFault,
    Terminated,
    note_cases_run,
    output_fault,
    raise_if_stopped,
    resume_advice,
    set_resume_options,
    thread_not_started,
    too_many_open_files,
)
from .limits import read_back
from .link.cases import form_cases
from .options import AlignOptions
from .output.around_out import leftover_conflict, nested_conflict
from .output.case_folder import (
    CaseOutput,
    OtherCase,
    archive_problem,
    case_dir,
    check_output_folder,
    clean_temp,
    is_complete,
    load_meta,
    not_replaceable,
    replacement_problem,
    uid_form,
    withdraw_case,
)
from .output.files import (
    RUN_PREFIX,
    DescriptorReserve,
    claim_for,
    given_within,
    json_text,
    live_runs,
    release_claims,
    remove_owned,
    within,
    write_text_atomic,
)
from .output.formats import remove_stale_datasets, retire_summaries
from .output.manifest import manifest_row, relative_reason, row_from_meta, write_manifest
from .output.out_folder import (
    DIGEST_SCHEME,
    check_unchanged_since_scan,
    dose_digest,
    foreign_file,
    input_files,
    inspect_output,
    keyed_stamps,
    pseudonymization_conflict,
    recorded_digest,
    recorded_key,
    request_differences,
)
from .output.qa_png import matplotlib_available, preload_matplotlib, qa_png_writer
from .output.report import write_report
from .parallel import in_shard, run_dask, run_pool, worker_stage
from .pipeline import run_case

logger = logging.getLogger(__name__)
Progress = Optional[Callable[[float, str], None]]


#: Exit code of an export stopped by an output fault (see :class:`~DoseAlignLib.errors.OutputFault`).
EXIT_FAULT = 4


@dataclass
class BatchReport:
    rows: list = field(default_factory=list)
    orphans: list = field(default_factory=list)
    skipped_files: list = field(default_factory=list)
    manifest: Optional[Path] = None  # the manifest this run wrote (manifest.csv, or a shard's)
    ignored: list = field(default_factory=list)  # (rel_path, reason) the scan did not read
    foreign: list = field(default_factory=list)  # names in OUT that are not cases of this run
    notes: list = field(default_factory=list)  # what the user should know (also given to ``notify``)
    exported_again: dict = field(default_factory=dict)  # case_id -> why its earlier outputs were not kept

    @property
    def failed(self) -> list:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def skipped(self) -> list:
        return [r for r in self.rows if r["status"] == "skipped"]

    #: Why the export stopped early: the output could not be written (disk full, I/O error); exit code 4.
    fault: Optional[str] = None

    @property
    def exit_code(self) -> int:
        return EXIT_FAULT if self.fault else 1 if self.failed else 0


def _owning_output(function: Callable) -> Callable:
    """The run's claim on its output folder (see :mod:`.output.files`) is released when it ends, however it ends."""

    @functools.wraps(function)
    def run(input_root, out_dir, *args, **kwargs):
        try:
            return function(input_root, out_dir, *args, **kwargs)
        finally:
            release_claims(Path(out_dir))

    return run


@_owning_output
def export_folder(
    input_root: Path,
    out_dir: Path,
    options: AlignOptions,
    *,
    resume: bool = False,
    append: bool = False,
    progress: Progress = None,
    stage: Optional[Callable[[str, str], None]] = None,
    notify: Optional[Callable[[str], None]] = None,
    case_filter: Optional[Callable] = None,
    workers: int = 1,
    shard: Optional[tuple] = None,
    scheduler: Optional[str] = None,
    qa_png: bool = True,
    report_html: bool = True,
    formats=None,
    pseudonymizer=None,
    resampler=None,
) -> BatchReport:
    """Scan ``input_root``, form cases, export each into ``out_dir`` and write ``manifest.csv``.

    Nothing is written when ``input_root`` is not a folder, is ``out_dir`` itself, or holds no case
    (:class:`NothingToExport`, saying what it holds), nor when ``out_dir`` holds pseudonymized
    outputs and this export is plain or the other way round. An ``out_dir`` inside ``input_root``
    is left out of the scan (with a note).

    With ``resume``, a case whose complete outputs record the same request (options, DoseAlign
    version, input files, pseudonymization, qa.png) is not computed again: its row says
    ``skipped``; one that records another request is exported again and ``exported_again`` says
    why. Folders in ``out_dir`` that are no case of this input are left alone and listed in
    ``foreign``; with ``append`` they are cases of other inputs made with the same options, kept in
    the one manifest (and dataset files) with this input's cases.

    ``workers`` > 1 runs cases in a process pool; ``scheduler`` (``tcp://host:port`` or ``local``) on
    a Dask cluster; ``shard`` ``(K, N)`` exports only the K-th of N deterministic parts and writes
    ``manifest.shard-K-of-N.csv`` (see :func:`merge_shards`). ``qa_png`` adds each case's qa.png,
    ``report_html`` the batch's report.html (not per shard). ``formats``
    (:class:`~DoseAlignLib.output.formats.ExportFormats`) adds NIfTI, NRRD, HDF5 or OpenKBP files per case
    and, at the end (not per shard), dataset.h5 and dataset.json. ``progress(fraction, message)``
    follows the cases, ``stage(case_id, message)`` the steps inside each case, ``notify(message)``
    gets what the user should know as it is found (also kept in ``notes``).

    ``resampler`` (:class:`~DoseAlignLib.geometry.resample.Resampler`, default the engine's) makes each
    case's output arrays, e.g. the Slicer module's Resample CLI; a resampler other than the engine's runs
    in this process only (``workers`` 1, no ``scheduler``).

    Returns the manifest rows in case order; ``exit_code`` is 1 when a case failed. Ctrl-C raises
    :class:`Interrupted` (after stopping the workers; the manifest lists the finished cases).
    """
    if resampler is not None and (workers > 1 or scheduler):
        raise ValueError(f"the {resampler.name} resampler runs in this process only: use one worker, no scheduler")
    input_root, out_dir = Path(input_root), Path(out_dir)
    if scheduler:  # a worker elsewhere (another working folder) reads and writes these paths: made absolute, else it
        # made OUT under its own folder and every case failed (twenty-third hostile trial W5)
        input_root, out_dir = input_root.absolute(), out_dir.absolute()
    report = BatchReport()

    def note(message: str) -> None:
        report.notes.append(message)
        if notify is not None:
            notify(message)

    set_resume_options(
        "--append --resume" if append else f"--shard {shard[0]}/{shard[1]} --resume" if shard else "--resume"
    )
    note_cases_run(None)
    exclude = _check_folders(input_root, out_dir, note, pseudonymized=pseudonymizer is not None)
    scan = scan_folder(input_root, workers=1 if scheduler else workers, exclude=exclude)
    raise_if_stopped()  # a Ctrl-C a library swallowed while the headers were read
    linked = form_cases(scan, sum_plans=options.sum_plans, ct=options.ct)
    report.orphans, report.skipped_files, report.ignored = linked.orphans, scan.skipped, scan.ignored
    chosen = [c for c in linked.cases if case_filter is None or case_filter(c)]
    # each case with the CT it pairs (before pseudonyms): shards whose --ct CSV paired other CTs were merged as one
    # export (thirty-seventh hostile trial AK7)
    found_ids = [f"{c.case_id}\t{c.ct.series_uid if c.ct else ''}\t{c.ct.folder if c.ct else ''}" for c in chosen]
    cases = [c for c in linked.cases if (case_filter is None or case_filter(c)) and in_shard(c.case_id, shard)]
    damaged = damaged_file_rows(scan)  # unreadable DICOM files: a failed row each
    extra_rows = damaged if shard is None or shard[0] == 1 else []
    if not linked.cases and not damaged:
        raise NothingToExport(what_was_found(scan, linked), path=input_root, hint="nothing was written")
    found = inspect_output(out_dir)
    _check_found(found, out_dir, pseudonymizer is not None, pseudonymizer.fingerprint if pseudonymizer else None)
    _check_targets(out_dir, _export_targets(shard, report_html, formats), "this export")
    if found.manifest_problem:
        note(f"{out_dir / 'manifest.csv'} {found.manifest_problem}: it is written anew")
    if shard is None:  # shards share OUT on purpose; any other run would overwrite the other's manifest
        _check_no_other_run(out_dir)
    map_rows = 0  # how many pseudonyms the map on disk lists (it is written again when the cases made more)
    if pseudonymizer is not None:  # pseudonymous case ids and rows from here on; the map is written now
        extra_rows = pseudonymizer.prepare(
            scan,
            cases,
            extra_rows,
            channels=options.rois or (),
            mapped=tuple(options.roi_map or ()),
            present_patients={case_id.split("_")[0] for case_id in found.cases},
        )
        map_rows = len(pseudonymizer.entries)
        from .output.pseudonym import MAX_RENAMED

        if len(pseudonymizer.identity.roi_names) >= MAX_RENAMED:  # (README says so; the run says it too: AB7)
            note(
                f"the input holds more than {MAX_RENAMED} distinct ROI names: beyond them, names that --pseudonymize "
                "rewrites alike are told apart by their order in each structure set (name_2), not by a keyed tag"
            )
    own = {c.case_id for c in cases} | {r["case_id"] for r in extra_rows}
    this_input = set(own)
    if shard is not None and pseudonymizer is not None:  # the other shards' cases are this input's too: not read as
        # another input's (its keyed hashes refused the shard, forty-fourth hostile trial AR1; its channels tagged this
        # shard's ROIs otherwise than the first shard's, AR5)
        in_this_shard = {id(c) for c in cases}  # (their ids are pseudonyms now)
        this_input |= {pseudonymizer.case_pseudonym(c) for c in chosen if id(c) not in in_this_shard}
    if pseudonymizer is not None:  # another input's channels that read as this input's rewritten names (with or
        # without --append: a --resume of one input, then an --append of the other, met them in one manifest: AC7)
        pseudonymizer.avoid_names(_rewritten_channels(found, this_input))
    # case folders not to be replaced: another input's case of this id; a user's files inside
    clashes, foreign = _not_replaced(cases, found, pseudonymizer, append)
    if not resume:
        again = sorted(
            c for c in own if c in found.cases and found.cases[c].complete and c not in clashes and c not in foreign
        )
        if again:
            note(
                f"{len(again)} case(s) already complete in the output folder are exported again "
                "(--resume keeps those made with this run's request)"
            )
    carried = _other_cases(
        found,
        this_input - set(clashes),
        options,
        append,
        shard,
        note,
        report,
        out_dir,
        input_root,
        set(clashes),
        pseudonymizer,
    )
    if append and shard is None:  # this input's doses another input's case in OUT holds already: kept once
        differing: list = []
        same = _same_doses(cases, found, own, set(clashes), pseudonymizer, differing)
        named = set()  # kept cases whose leak fails this input's case of the same dose
        for mine, theirs in sorted(same.items()) if pseudonymizer is not None else ():
            # the kept case, read against this input's identity (an MR naming the patient sent since: AB10)
            leak = pseudonymizer.leak_in_kept_case(found.cases[theirs].folder, found.cases[theirs].meta)
            if leak:
                named.add(theirs)
                del same[mine]
                case = next(c for c in cases if c.case_id == mine)
                case.error = case.error or (
                    f"the same RTDOSE on the same CT is kept in the output folder as case {theirs}, whose outputs "
                    f"hold what this input tells to be identity ({leak}): remove {theirs} from the output folder "
                    "and run again"
                )
        if differing:
            note(
                f"--append: {len(differing)} case(s) of this input share RTDOSE SOPInstanceUIDs with another input's "
                f"case in the output folder but not its file contents: exported as cases of their own: {_some(differing)}"
            )
        if same:
            cases = [c for c in cases if c.case_id not in same]
            note(
                f"--append: {len(same)} case(s) of this input not exported, the same RTDOSE (SOPInstanceUIDs) on the "
                "same CT series as another input's case kept in the output folder: "
                f"{_some([f'{mine} (= {theirs})' for mine, theirs in sorted(same.items())])}; manifest.csv and the "
                "dataset files list each dose once, under the kept case's id"
            )
        if pseudonymizer is not None:  # (thirty-sixth and thirty-seventh hostile trials AJ12, AK1: kept unread)
            _refuse_kept_leaks(found, carried, named, pseudonymizer, out_dir, "--append")
        twice = _held_twice(found, {r.get("case_id") for r in carried} | own, pseudonymizer)
        if twice:
            note(
                f"--append: the output folder already holds {len(twice)} RTDOSE(s) on one CT in more than one case "
                f"(made by runs without --append, or a copy of a dose added since): {_some(twice)}; they stay as "
                "they are and are each listed: remove all but one case folder of each"
            )
    # one row per case id: where the other input's case is kept (--append), its row is the id's row (it is what
    # the folder holds); this input's case of that id fails in the summary and a note, not as a second row
    taken = {r.get("case_id") for r in carried} & set(clashes)
    if taken:
        note(
            f"--append: {len(taken)} case(s) of this input not exported, their id taken by another input's case "
            f"kept in the output folder: {_some(sorted(taken))}; manifest.csv lists that case under the id"
        )

    def listed(rows_now: list) -> list:
        return carried + [r for r in rows_now if not (r["case_id"] in taken and r["status"] == "failed")]

    check_output_folder(out_dir)  # unwritable: stop now with the reason (exit 2), not once per case
    # this run's owner record, before workers start (they use it); it says whose pseudonyms the run writes
    pseudonyms = pseudonymizer.fingerprint if pseudonymizer is not None else "none"
    shard_name = f"{shard[0]}/{shard[1]}" if shard is not None else None
    claim = claim_for(out_dir, {"pseudonyms": pseudonyms, "shard": shard_name})
    out_identity = _folder_identity(out_dir)  # the folder OUT names now: checked before the run's last writes
    if shard is None:  # a run that started with this one and claimed OUT since (the claim is released on return)
        _check_no_other_run(out_dir, claimed=True)
    else:  # shards run side by side on purpose: other shards, all plain or all with one key
        _check_shard_siblings(out_dir, shard_name, pseudonyms)
    stuck: list = []
    clean_temp(out_dir, stuck)  # only dead runs' leftovers: a live shard's or another run's work stays
    for name, reason in stuck:  # (fifteenth hostile trial O13: such an entry stayed without a word)
        note(f"{name}, left by an earlier DoseAlign run, could not be removed ({reason}): tried again next run")
    left = leftover_conflict(out_dir, stuck, pseudonymizer is not None, pseudonyms if pseudonymizer else None)
    if left:
        raise DoseAlignError(
            f"the output folder cannot take this export: {left}",
            path=out_dir,
            hint="remove it (an immutable file: chattr -i), then run again; nothing was exported",
        )
    manifest_name = "manifest.csv" if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.csv"
    if shard is not None:  # what merge_shards needs to build dataset.json / dataset.h5 like a single run
        settings = _shard_settings(formats, {**_input_digest(found_ids, pseudonymizer), "rows": len(own)})
        settings_file = out_dir / manifest_name.replace(".csv", ".json")
        try:
            write_text_atomic(settings_file, json_text(settings))
        except OSError as error:  # a full disk (exit 4) or a file that cannot be replaced: named (forty-seventh AU2)
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise output_fault(error, out_dir, then="run the command again; nothing was exported") from None
            raise DoseAlignError(
                f"{settings_file.name} cannot be written: {error.strerror or error}",
                path=out_dir,
                hint="make it writable (an immutable file: chattr -i), then run again; nothing was exported",
            ) from None
    reserve = DescriptorReserve()  # for the manifest, should the run reach its open-file limit

    def write_rows(rows_now: list) -> Path:
        if _folder_identity(out_dir) != out_identity:  # another folder behind OUT's path: not this run's to write
            raise OSError(errno.ESTALE, REPLACED_OUT, str(out_dir))
        try:
            return write_manifest(out_dir, rows_now, manifest_name)
        except OSError as error:
            if not too_many_open_files(error) or not reserve.release():
                raise
            return write_manifest(out_dir, rows_now, manifest_name)

    rows: list = [None] * len(cases)
    done = [0]
    stopped_by = [""]  # the short cause of an output fault, for the rows of the cases not started

    def record(index: int, row: dict) -> None:
        fault = row.pop(FAULT_KEY, None)
        for kind, pseudonym, original in row.pop(PSEUDONYMS_KEY, ()):
            pseudonymizer.entries.setdefault((kind, pseudonym), original)  # the map is written again at the end
        row = relative_reason(row, input_root)  # files named relative to the input, as in meta.json
        if pseudonymizer is not None:
            row = pseudonymizer.row(row)
            try:
                pseudonymizer.check_row(row)
            except DoseAlignError as error:  # the row would leak: it says only that
                reason = str(error)
                # its folder goes too, written now or kept by --resume: no complete folder behind a failed row (AQ6)
                if row["status"] in ("ok", "skipped"):
                    kept = withdraw_case(out_dir, row["case_id"])
                    reason = f"{reason}; {kept}" if kept else reason
                row = {**{k: "" for k in row}, "case_id": row["case_id"], "status": "failed", "reason": reason}
        rows[index] = row
        done[0] += 1
        report.rows = [r for r in rows if r is not None]
        if fault and report.fault is None:
            report.fault = row["reason"]  # no further case is started
            stopped_by[0] = f"{fault}, at case {row['case_id']}"
        try:
            # (the manifest this run wrote last: the summary points to it should the last writing fail, forty-third
            # hostile trial AQ10)
            report.manifest = write_rows(listed(report.rows))
        except OSError as error:  # the previous manifest stays as it was; the batch stops
            report.fault = report.fault or f"manifest.csv: {output_fault(error, out_dir)}"
        if progress is not None:
            progress(done[0] / max(len(cases), 1), f"{done[0]}/{len(cases)} cases: {row['case_id']} {row['status']}")

    to_run = []
    for index, case in enumerate(cases):
        existing = found.cases.get(case.case_id)
        why: list = []
        if case.case_id in clashes:  # another input's case: left alone
            record(index, manifest_row(case, "failed", clashes[case.case_id]))
            continue
        # a case the input now fails (a conflicting CT slice or RTPLAN copy added since: sixteenth trial P6) is
        # not kept: it fails as it would without --resume
        if resume and existing is not None and existing.complete and case.error is None:
            why = request_differences(existing.meta, _request(case, options, pseudonymizer, qa_png, resampler))
            if qa_png and matplotlib_available() and not (existing.folder / "qa.png").is_file():
                why.append("no qa.png")
            # a case that would be kept: whole by its headers and lengths, but bytes changed inside? (each of its
            # files read once, streamed; not for a case exported again anyway)
            damaged = None if why else archive_problem(existing.folder, existing.meta)
            if damaged:
                why = [f"its outputs were damaged ({damaged})"]
            if not why and pseudonymizer is not None:  # identity the input holds now (a file added since: AA10)
                leak = pseudonymizer.leak_in_kept_case(existing.folder, existing.meta)
                if leak:
                    why = [f"its outputs hold what the input now tells to be identity ({leak})"]
            if not why and pseudonymizer is not None:  # its channel names as this run's cases write them (AR8)
                stale = pseudonymizer.names_written_otherwise(existing.meta, [s.rel_path for s in case.structs])
                if stale:
                    why = [
                        f"{len(stale)} of its ROI names are written otherwise now, with a keyed tag or without (the "
                        "input's ROI names that rewrite alike changed)"
                    ]
            if not why:
                record(index, manifest_row(case, "skipped", KEPT, existing.meta))
                continue
        elif resume and existing is not None and existing.problem:
            why = [f"its outputs were damaged ({existing.problem})"]
        folder = case_dir(out_dir, case.case_id)
        refusal = not_replaceable(folder) if os.path.lexists(folder) else None
        if refusal:  # it would not be replaced at the end: the case fails now, with what was found
            error = DoseAlignError(refusal, path=folder, hint="move it away, or export into another folder")
            record(index, manifest_row(case, "failed", str(error)))
            continue
        if case.case_id in foreign:  # a user's files in the case folder: never deleted by a new export
            record(index, manifest_row(case, "failed", foreign[case.case_id]))
            continue
        if why:
            report.exported_again[case.case_id] = why
        to_run.append((index, case))
    if report.exported_again:
        note(_exported_again_note(report.exported_again))
    # the summaries of cases about to be made again go first: written anew at the end, absent if the run stops (BD1-3)
    # (every case this run makes: one whose folder was removed is still in dataset.h5, sixtieth hostile trial BH1)
    replacing = [case.case_id for _i, case in to_run]
    made_as = formats.formats if formats is not None else ("npz",)
    stuck_summaries: list = []
    retired = retire_summaries(out_dir, replacing, made_as, shard is not None, stuck_summaries) if replacing else []
    if stuck_summaries:  # they would describe cases as they were, once this run made them again (BJ2)
        for _name, reason, code in stuck_summaries:  # a full disk, a file-size limit: exit 4, as later in a run (BN3)
            if code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
                raise output_fault(OSError(code, reason), out_dir, then="run the command again; nothing was exported")
        names = "; ".join(f"{name} ({reason})" for name, reason, _code in stuck_summaries)
        raise DoseAlignError(
            f"the output folder holds summaries of cases this run would make again that cannot be removed or read: "
            f"{names}",
            path=out_dir,
            hint="make them removable (or remove them), then run again; this run exported no case",
        )

    task = functools.partial(
        export_case if not scheduler else functools.partial(_export_case_on_a_dask_worker, os.getpid()),
        out_dir=out_dir,
        options=options,
        qa_png=qa_png,
        formats=formats,
        pseudonymizer=pseudonymizer,
        resampler=resampler,
    )
    indices = [index for index, _case in to_run]
    folders_before = {index: _folder_stamp(case_dir(out_dir, case.case_id)) for index, case in to_run}
    try:
        if scheduler:
            if scheduler != "local" and to_run:
                _note_limits_stay_here(scheduler, note)
            run_dask(
                task,
                [c for _i, c in to_run],
                scheduler,
                workers,
                lambda n, row: record(indices[n], row),
                on_lost=lambda case, reason: manifest_row(case, "failed", reason),
                stop=lambda: report.fault is not None,
                on_note=note,
            )
        elif workers > 1 and len(to_run) > 1:
            run_pool(
                functools.partial(task, stage=worker_stage if stage is not None else None),
                [c for _i, c in to_run],
                workers,
                lambda n, row: record(indices[n], row),
                on_stage=stage,
                on_lost=lambda case, reason: manifest_row(case, "failed", reason),  # a killed worker's case
                stop=lambda: report.fault is not None,
            )
        else:
            for index, case in to_run:
                raise_if_stopped()
                if report.fault is not None:
                    break
                case_stage = functools.partial(stage, case.case_id) if stage is not None else None
                record(index, task(case, stage=case_stage))
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
        remove_owned(out_dir, claim.token)  # what the stopped workers left (this run's temporary names only)
        if scheduler == "local":  # its Dask workers, killed: their own claims are now provably dead (W8)
            with contextlib.suppress(OSError):
                clean_temp(out_dir)
        # a case a worker put in place while the interrupt came, its row not yet counted: listed, as OUT holds it
        # (twenty-third hostile trial W8: a manifest of 2 cases beside 3 complete case folders)
        for index, case in to_run:
            folder = case_dir(out_dir, case.case_id)
            if rows[index] is None and _folder_stamp(folder) not in (None, folders_before[index]):
                with contextlib.suppress(OSError, ValueError, DoseAlignError):
                    if is_complete(out_dir, case.case_id):
                        record(index, manifest_row(case, "ok", "", load_meta(folder)))
        # the interrupt may have come between counting a case and writing the manifest that lists it
        with contextlib.suppress(OSError):
            write_rows(listed([r for r in rows if r is not None]))
        with contextlib.suppress(DoseAlignError):
            _write_map_again(pseudonymizer, map_rows)
        raise Interrupted(done[0], len(cases), isinstance(stop, Terminated)) from None
    note_cases_run(done[0], len(cases))  # a stop from here on comes as the summaries are written (BT1)
    try:
        _write_map_again(pseudonymizer, map_rows)  # with the pseudonyms the cases made
    except DoseAlignError as error:  # the cases are in place, their pseudonyms unmapped: exit 4, named
        report.fault = report.fault or str(error)
    if report.fault is not None:  # the cases not started: named, so that --resume exports them
        for index, case in to_run:
            if rows[index] is None:
                why = stopped_by[0] or report.fault
                record(index, manifest_row(case, "failed", f"not exported: the output could not be written ({why})"))
    report.rows = [r for r in rows if r is not None]
    report.rows.extend(extra_rows)
    stuck = []  # what this run made and could not remove: a replaced case folder's earlier export (a file in use)
    try:
        remove_owned(out_dir, claim.token, stuck, record_too=False)
    except OSError as error:  # the output folder itself is gone, moved or removed while the run wrote (AU3)
        report.fault = report.fault or f"{out_dir}: {error.strerror or error}"
    if scheduler:  # a Dask worker of this run killed while it ran a case left its own claim's entries, removed by the
        # next run only (the pool's workers write under this run's token: thirty-seventh trial AK10); a tcp:// worker
        # on this host as well (forty-third AQ7); only a provably dead owner's entries go, so not another host's
        with contextlib.suppress(OSError):
            clean_temp(out_dir)
    for name, reason in stuck:
        note(
            f"{name}, which this run made ({_made_as(name, claim.token)}), could not be removed ({reason}): remove it by hand"
        )
    if progress is not None:
        progress(1.0, f"{len(cases)} cases, {len(report.failed)} failed")
    all_rows = listed(report.rows)
    if report.fault is not None:  # write no more than the manifest (it may fail too: the old one stays)
        try:
            report.manifest = write_rows(all_rows)
        except OSError as error:
            report.fault += f"; manifest.csv could not be written either ({error.strerror or error})"
        else:
            if shard is None and _folder_identity(out_dir) == out_identity:
                _no_stale_summaries(out_dir, all_rows, report_html, pseudonymizer is not None, input_root, note)
        _say_retired(out_dir, retired, note, shard is not None)
        return report
    if _folder_identity(out_dir) != out_identity:  # nothing more is written there (forty-seventh trial AU4)
        report.fault = f"{out_dir}: {REPLACED_OUT}; manifest.csv, report.html and the dataset files were not written"
        return report
    if formats is not None and shard is None:
        try:
            finished = formats.finish(out_dir, all_rows)  # formats of resumed cases, dataset.h5, dataset.json
        except OSError as error:  # a full disk at dataset.h5 or a format added: named, exit 4, a manifest stays
            report.fault = f"formats and dataset files: {output_fault(error, out_dir)}"
            finished = {}
        for message in finished.get("notes", []):
            note(message)
    if shard is None and report.fault is None:  # dataset files no longer true of the cases: removed, said
        built = (
            [
                name
                for name, key in (("dataset.h5", "dataset_h5"), ("dataset.json", "dataset_json"))
                if finished.get(key)
            ]
            if formats is not None
            else []
        )
        for message in remove_stale_datasets(out_dir, all_rows, built):
            note(message)
    try:
        report.manifest = write_rows(all_rows)
    except OSError as error:  # the cases are in place; the previous manifest stays (--resume rebuilds it)
        report.fault = f"manifest.csv: {output_fault(error, out_dir)}"
        _say_retired(out_dir, retired, note, shard is not None)
        return report
    if report_html and shard is None:
        try:
            write_report(
                out_dir,
                all_rows,
                source="input: (pseudonymized)" if pseudonymizer is not None else f"input: {input_root}",
            )
        except OSError as error:  # a full disk, a report.html that cannot be replaced: named, exit 4 (AU2)
            fault = output_fault(error, out_dir, then=f"the cases and manifest.csv are in place; {resume_advice()}")
            report.fault = f"report.html: {fault}"
    _say_retired(out_dir, retired, note, shard is not None)
    return report


def _say_retired(out_dir: Path, retired: list, note, shard: bool = False) -> None:
    """Name the summaries this run removed before it made their cases again (:func:`retire_summaries`) and did not
    write anew, and how to build them (a shard run never does: merge does)."""
    for name, why in retired:
        build = (
            f"run dosealign merge {out_dir} once every shard has ended to build it"
            if shard
            else f"{resume_advice()} (with the --format that writes it) to build it"
        )
        if not os.path.lexists(out_dir / name):
            note(f"{name} of an earlier run removed: {why}, and did not write it anew; {build}")
        elif shard and name == "manifest.csv":  # (its rows of other cases kept: another input's, BL4)
            note(f"{name} of an earlier run: {why}; {build}")


def _no_stale_summaries(out_dir: Path, rows: list, report_html: bool, pseudonymized: bool, input_root, note) -> None:
    """After an output fault, the dataset files and report.html of an earlier run that no longer describe the cases
    are not left as if they did: the dataset files are removed where stale (as a run without a fault does), and
    report.html is written for the rows, or removed where it cannot be (a full disk). An earlier run's dataset.h5 held
    a case's dose from before a --resume exported it again, and its report.html said "2 ok" beside a manifest with a
    failed case (fifty-fourth hostile trial BB2)."""
    try:
        for message in remove_stale_datasets(out_dir, rows, []):
            note(message)
    except OSError as error:
        note(f"the dataset files could not be checked against the cases ({error.strerror or error})")
    path = out_dir / "report.html"
    if not report_html or path.is_symlink() or (os.path.lexists(path) and not path.is_file()):
        return
    try:
        write_report(out_dir, rows, source="input: (pseudonymized)" if pseudonymized else f"input: {input_root}")
    except OSError:
        try:
            path.unlink()
        except FileNotFoundError:  # (none was there: the earlier one went before its cases were made again)
            pass
        except OSError as error:
            note(f"report.html is an earlier run's and could not be removed ({error.strerror or error}): remove it")
        else:
            note("report.html, an earlier run's, was removed: it could not be written for this run's cases")


def check_export_target(input_root: Path, out_dir: Path, pseudonymized: bool, key_file: Optional[Path] = None) -> None:
    """The checks :func:`export_folder` makes before it reads the input, for callers that must prepare
    something first (e.g. a pseudonym key): a usable input and output folder, and an output folder
    whose pseudonymization agrees with this export; for a pseudonymized one, made with the key in ``key_file``
    (default beside OUT; a key file that does not exist yet is a new key). Raises :class:`DoseAlignError`;
    writes nothing."""
    input_root, out_dir = Path(input_root), Path(out_dir)
    _check_folders(input_root, out_dir, lambda _message: None, pseudonymized=pseudonymized)
    found = inspect_output(out_dir)
    key = None
    if pseudonymized and any(c.key for c in found.cases.values()):
        from .output.pseudonym import default_paths, key_fingerprint, load_or_create_key

        key_path = Path(key_file) if key_file else default_paths(out_dir)[0]
        key = key_fingerprint(load_or_create_key(key_path)[0]) if key_path.exists() else ""
    _check_found(found, out_dir, pseudonymized, key)


def _check_found(found, out_dir: Path, pseudonymized: bool, key: Optional[str] = None) -> None:
    """Refuse an output folder that holds DICOM files (INPUT and OUT swapped?) or the other kind of export."""
    if found.dicom_files:
        raise DoseAlignError(
            f"the output folder holds DICOM files ({', '.join(found.dicom_files)}): is it an input folder? "
            "The input comes first, then the output",
            path=out_dir,
            hint="choose an output folder without DICOM files; nothing was written",
        )
    conflict = pseudonymization_conflict(found, pseudonymized, key) or nested_conflict(out_dir, pseudonymized)
    if conflict:
        raise DoseAlignError(
            f"the output folder cannot take this export: {conflict}",
            path=out_dir,
            hint="choose another output folder, or remove what it holds; nothing was written",
        )


def _check_shard_siblings(out_dir: Path, shard_name: str, pseudonyms: str) -> None:
    """Refuse a shard run while another live run writes the same shard into OUT (a requeued job beside the
    first: each would replace the other's case folders and shard manifest, both saying ok), or writes with
    other pseudonyms (or none): the cases each exported before the other looked would mix one patient's real
    identity with pseudonymized cases (a run started later sees the other's cases and is refused by
    :func:`_check_found`; these start together). Both runs have claimed OUT when they look, so at least one
    sees the other."""
    for run in live_runs(out_dir):
        if (run.get("owner") or {}).get("merge") is True:  # (BL3)
            if run["undecided"]:  # another machine's, whose life cannot be told here (sixty-sixth trial BN8)
                raise DoseAlignError(
                    f"dosealign merge (process {run['pid']} on host {run['host']}, started {run['started']}) may be "
                    f"writing this output folder: its owner record {run['record']} is of another machine, and whether "
                    "it still lives cannot be told from here",
                    path=out_dir,
                    hint=f"wait until it has finished; if it is known to be gone, remove {out_dir / run['record']}, "
                    "then run again; this run exported no case",
                )
            raise DoseAlignError(
                f"dosealign merge (process {run['pid']}, started {run['started']}; owner record {run['record']}) is "
                "writing this output folder's manifest.csv and dataset files: cases made now would be listed as they "
                "were",
                path=out_dir,
                hint="wait until it has finished (then run this shard again with --resume); this run exported no case",
            )
        if (run.get("owner") or {}).get("shard") == shard_name:
            raise DoseAlignError(
                f"another DoseAlign run (process {run['pid']}, started {run['started']}; owner record "
                f"{run['record']}) is exporting shard {shard_name} into this output folder: the two runs would "
                "replace each other's cases",
                path=out_dir,
                hint="wait until it has finished (then --resume), or stop it; this run exported no case",
            )
        theirs = (run.get("owner") or {}).get("pseudonyms")
        if theirs is None or theirs == pseudonyms:
            continue  # the same kind, or a run that does not say (an earlier version's)
        kind = (
            "without pseudonyms"
            if theirs == "none"
            else "with pseudonyms"
            if pseudonyms == "none"
            else ("with pseudonyms of another key")
        )
        raise DoseAlignError(
            f"another DoseAlign run (process {run['pid']}, started {run['started']}; owner record {run['record']}) "
            f"is writing into this output folder {kind}: one output folder holds one kind of export",
            path=out_dir,
            hint="export every shard with the same --pseudonymize and key, or choose another output folder; this "
            "run exported no case",
        )


def _check_no_other_run(out_dir: Path, claimed: bool = False) -> None:
    """Refuse an output folder another live export is writing into (two runs, one manifest.csv: the last
    one written would drop the other run's cases), also one of another host or container whose lock is held,
    and one of another machine whose liveness cannot be told. Checked again once this run has claimed OUT
    (``claimed``): two runs that started together both see the other's record, and neither goes on."""
    runs = live_runs(out_dir) if out_dir.is_dir() else []
    if not runs:
        return
    run = runs[0]
    record = out_dir / run["record"]
    written = "this run exported no case" if claimed else "nothing was written"
    if run["undecided"]:
        raise DoseAlignError(
            f"another DoseAlign run (process {run['pid']} on host {run['host']}, started {run['started']}) may be "
            f"writing into this output folder: its owner record {run['record']} is of another machine, and whether "
            "that run still lives cannot be told from here (its lock is free here, or this file system has no locks)",
            path=out_dir,
            hint=f"wait until it has finished; if that run is known to be gone (its job ended or was killed, its "
            f"machine restarted), remove {record}, then run again; {written}",
        )
    where = "" if run["host"] == socket.gethostname() else f" on host {run['host']}"
    raise DoseAlignError(
        f"another DoseAlign run (process {run['pid']}{where}, started {run['started']}; owner record "
        f"{run['record']}) is writing into this output folder: the two runs' manifest.csv would overwrite each other",
        path=out_dir,
        hint=f"wait until it has finished (then --resume or --append), or choose another output folder; {written}",
    )


#: A row's mark (removed before it is recorded) that its case met an output fault.
FAULT_KEY = "_output_fault"
#: A row's key for the pseudonyms its case made (see :func:`export_case`), taken off before the row is listed.
PSEUDONYMS_KEY = "_pseudonyms"

#: The reason column of a case kept by ``--resume``.
KEPT = "complete from an earlier run with the same options: kept"


def _check_folders(input_root: Path, out_dir: Path, note: Callable[[str], None], pseudonymized: bool = False) -> list:
    """Refuse an input that is no folder or is the output folder (or lies inside a pseudonymized export's output
    folder); the folders the scan leaves out."""
    if not input_root.exists():
        raise DoseAlignError("the input folder does not exist", path=input_root, hint="nothing was written")
    if not input_root.is_dir():
        raise DoseAlignError(
            "the input is not a folder", path=input_root, hint="give the folder that holds the DICOM files"
        )
    real_out = Path(os.path.realpath(out_dir))
    # by resolved paths and by folder identity (a bind mount shows the input under another path)
    out_in_input, input_in_out = within(out_dir, input_root), within(input_root, out_dir)
    if out_in_input is None and given_within(out_dir, input_root):  # through a folder link inside the input (BO2)
        out_in_input = Path(os.path.realpath(input_root))
    if out_in_input is not None and out_in_input == real_out:
        raise DoseAlignError(
            "the output folder is the input folder",
            path=out_dir,
            hint="choose an output folder outside the input; nothing was written",
        )
    check_writable(out_dir)
    if out_in_input is not None:
        note(
            f"the output folder {out_dir} is inside the input folder: it is left out of the scan "
            "(better: an output folder outside the input)"
        )
        return [real_out]
    if input_in_out is None and pseudonymized:  # nor through a bind mount or a link inside it
        reached = _input_reached_from(out_dir, input_root)
        if reached is not None:
            raise DoseAlignError(
                f"the output folder of a pseudonymized export reaches the input folder {input_root} through "
                f"{reached} (a bind mount of it, or a link into it): what is shared would carry every identifying "
                "DICOM file",
                path=out_dir,
                hint="remove it from the output folder, or choose another output folder; nothing was written",
            )
    if input_in_out is not None and pseudonymized:  # the folder meant for sharing would hold the DICOM itself
        raise DoseAlignError(
            f"the input folder {input_root} is inside the output folder of a pseudonymized export, which would "
            "then be shared with every identifying DICOM file",
            path=out_dir,
            hint="choose an output folder outside the input's folders; nothing was written",
        )
    if input_in_out is not None:
        note(
            f"the input folder {input_root} is inside the output folder: it is left alone and not listed in "
            "manifest.csv (better: an output folder beside the input)"
        )
    # the scan leaves OUT out wherever it meets it, also through a folder link of the input to OUT or one of its
    # ancestors (the walk checks the folders below the input, never the input itself)
    return [real_out]


#: How deep below OUT, and through how many entries, :func:`_input_reached_from` looks.
_REACH_DEPTH, _REACH_ENTRIES = 3, 200_000


def _input_reached_from(out_dir: Path, input_root: Path) -> Optional[Path]:
    """An entry below ``out_dir`` (to :data:`_REACH_DEPTH` levels) that reaches the input: a folder that is the input
    or one of its ancestors by device and inode (a bind mount), or a symbolic link whose target is such a folder or
    lies inside the input. None when there is none (or OUT does not exist)."""
    real_input = Path(os.path.realpath(input_root))
    identities = set()
    for folder in (real_input, *real_input.parents):
        try:
            info = os.stat(folder)
        except OSError:
            continue
        identities.add((info.st_dev, info.st_ino))
    budget = [_REACH_ENTRIES]

    def look(folder: Path, depth: int) -> Optional[Path]:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return None
        for entry in entries:
            budget[0] -= 1
            if budget[0] < 0:
                return None
            path = Path(entry.path)
            if entry.is_symlink():
                target = Path(os.path.realpath(path))
                if target == real_input or target in real_input.parents or real_input in target.parents:
                    return path
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in identities:
                return path
            if depth < _REACH_DEPTH:
                found = look(path, depth + 1)
                if found is not None:
                    return found
        return None

    return look(Path(out_dir), 1) if Path(out_dir).is_dir() else None


def check_writable(out_dir: Path) -> None:
    """Before the scan, without creating anything: can ``out_dir`` be written (or created)? Raises
    :class:`DoseAlignError` naming the folder and why not."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DoseAlignError("the output path exists and is not a folder", path=out_dir, hint="choose a folder")
    existing = out_dir if out_dir.exists() else next((p for p in out_dir.absolute().parents if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        if existing == out_dir:
            raise DoseAlignError(
                "cannot write to the output folder",
                path=out_dir,
                hint="make it writable or choose another folder; nothing was exported",
            )
        raise DoseAlignError(
            f"cannot create the output folder ({existing} is not a folder you can write to)",
            path=out_dir,
            hint="choose a folder you can write to; nothing was exported",
        )


def what_was_found(scan, linked) -> str:
    """'no RTDOSE under INPUT: 152 CT slices, 0 RTDOSE, ...': what a scan holds when no case comes of it."""
    kinds: dict = {}
    for obj in scan.objects:
        kinds[obj.kind] = kinds.get(obj.kind, 0) + 1
    parts = [f"{kinds.pop('CT', 0)} CT slices", f"{kinds.pop('RTDOSE', 0)} RTDOSE"]
    parts += [f"{n} {kind}" for kind, n in sorted(kinds.items())]
    if scan.skipped:
        parts.append(f"{len(scan.skipped)} other files (not DICOM, or unreadable)")
    if scan.ignored:
        parts.append(
            f"{len(scan.ignored)} not read (hidden, DICOMDIR, links to what is read elsewhere, the output folder)"
        )
    has_dose = any(o.kind == "RTDOSE" for o in scan.objects)
    if not scan.objects and not scan.skipped and not scan.ignored:
        return "the input folder holds no files"
    head = (
        "no case under the input: every RTDOSE is left out (see dosealign scan)"
        if has_dose
        else "no RTDOSE under the input"
    )
    return f"{head}: {', '.join(parts)}"


#: The characters of a case's ROI names --pseudonymize rewrites, as a multiple of DOSEALIGN_IDENTITY_CHARS.
CASE_NAME_CHARS = 64


def _names_within_bound(rewrite: Callable[[str], str]) -> Callable[[str], str]:
    """``rewrite`` for one case's ROI names, refusing them once their characters together pass
    :data:`CASE_NAME_CHARS` x DOSEALIGN_IDENTITY_CHARS: the cost of each character grows with the input's names, and
    400 names of 1000 characters held a case 46 s, the other patients waiting (twenty-eighth hostile trial AB5)."""
    from .limits import limit
    from .output.pseudonym import PseudonymError

    most = CASE_NAME_CHARS * limit("DOSEALIGN_IDENTITY_CHARS")
    used = [0]

    def rewrite_within(name: str) -> str:
        used[0] += len(name)
        if used[0] > most:
            raise PseudonymError(
                f"the case's ROI names hold more than {most:g} characters together, more than --pseudonymize rewrites "
                f"of one case ({CASE_NAME_CHARS} x DOSEALIGN_IDENTITY_CHARS)",
                hint="shorten the names in the input, or raise the limit",
            )
        return rewrite(name)

    return rewrite_within


def _rewritten_channels(found, own: set) -> set:
    """The channel names of OUT's cases of other inputs that the pseudonymization rewrote (they hold ``[removed]``)."""
    names: set = set()
    for case in found.cases.values():
        if case.case_id in own or not isinstance(case.meta, dict):
            continue
        structures = case.meta.get("structures") if isinstance(case.meta.get("structures"), dict) else {}
        listed = structures.get("names") if isinstance(structures.get("names"), list) else []
        names.update(str(name) for name in listed if "[removed]" in str(name))  # (pseudonym.REMOVED)
    return names


def _write_map_again(pseudonymizer, written: int) -> None:
    """The pseudonym map once more when the cases made pseudonyms it does not list yet (:data:`PSEUDONYMS_KEY`)."""
    if pseudonymizer is not None and pseudonymizer.map_path and len(pseudonymizer.entries) > written:
        pseudonymizer.write_map(Path(pseudonymizer.map_path))


def _request(case, options: AlignOptions, pseudonymizer, qa_png: bool, resampler=None) -> dict:
    """What this run would record in the case's meta.json, for ``--resume`` to compare."""
    source = {"rtdose_files": [d.rel_path for d in case.doses]}
    if case.ct is not None:
        source["ct_files"] = [s.rel_path for s in case.ct.file_objects]
        source["rtstruct_files"] = [s.rel_path for s in case.structs]
        source["rtplan_file"] = case.plan.rel_path if case.plan is not None else None
    records = input_files(case)
    recorded = options.to_dict()
    if pseudonymizer is not None:
        records, stamps = keyed_stamps(records, pseudonymizer.key)
        pseudonymizer.add_own_digests(*stamps)  # (a kept case's stamps are read again for identity: no date, no ID)
        source = pseudonymizer.value({**source, "input_files": records})
        for record, stamp in zip(source["input_files"], stamps):
            record["stamp"] = stamp
        # as meta.json records them: --centre roi:PTV_Doe as roi:PTV_[removed] (else never the same request)
        recorded = pseudonymizer.value(pseudonymizer.options(recorded))
    else:
        source["input_files"] = records
    return {
        "options": recorded,
        "option_defaults": AlignOptions().to_dict(),
        "dosealign_version": __version__,
        "source": source,
        "pseudonymized": pseudonymizer is not None,
        "key": pseudonymizer.fingerprint if pseudonymizer is not None else None,
        "backend": resampler.name if resampler is not None else "engine",  # meta.json's resampling.backend
    }


def _recorded_source(case, pseudonymizer) -> dict:
    """The case's RTDOSE SOPInstanceUIDs and CT series as its meta.json ``source`` records them (pseudonymized when
    the export is)."""
    source = {
        "rtdose_sop_uids": [d.sop_instance_uid for d in case.doses],
        "ct_series_uid": case.ct.series_uid if case.ct is not None else None,
    }
    return pseudonymizer.value(source) if pseudonymizer is not None else source


def _not_replaced(cases: list, found, pseudonymizer, append: bool = False) -> tuple:
    """``(clashes, foreign)``: case_id -> the failed row's reason, for each case whose folder in OUT must not be
    replaced. ``clashes``: it holds another input's case (another patient, or other RTDOSEs on another CT; two
    inputs' cases may get one id: the same PatientID, or IDs that read alike in a folder name, and the same
    relative dose path). ``foreign``: it holds entries DoseAlign did not write (a user's files)."""
    clashes, foreign = {}, {}
    for case in cases:
        existing = found.cases.get(case.case_id)
        if existing is None:
            continue
        if append and existing.meta is None and os.path.isfile(existing.folder / "pair.npz"):
            # whose case a folder holds is told by its meta.json: with it cut short, under --append (several inputs
            # share OUT) it may be another input's, and it was replaced (thirty-seventh hostile trial AK6)
            clashes[case.case_id] = (
                f"{existing.folder}: its meta.json cannot be read ({existing.problem or 'damaged'}): under --append "
                "whose case it holds cannot be told; it is left alone and this case is not exported (remove it if "
                "it is this input's, or export its own input again with --resume)"
            )
            continue
        source = _recorded_source(case, pseudonymizer)
        meta = {"patient_id": case.patient_id, "source": source}
        if pseudonymizer is not None:  # how its UIDs are recorded (kept, or keyed hashes): compared as such
            meta["pseudonymized"] = {"uids": "kept" if pseudonymizer.keep_uids else "keyed hashes"}
            recorded = uid_form(existing.meta) if isinstance(existing.meta, dict) else None
            if recorded in ("kept", "keyed hashes") and recorded != meta["pseudonymized"]["uids"]:
                # --keep-uids toggled: this case's UIDs in the folder's form, so that another input's case is
                # still told apart (sixteenth hostile trial P8: the check was skipped and it was replaced)
                real = [d.sop_instance_uid for d in case.doses], case.ct.series_uid if case.ct is not None else None
                keyed = recorded == "keyed hashes"
                meta["source"] = {
                    "rtdose_sop_uids": [pseudonymizer.hashed_uid(u) if keyed else u for u in real[0]],
                    "ct_series_uid": pseudonymizer.hashed_uid(real[1]) if keyed and real[1] else real[1],
                }
                meta["pseudonymized"] = {"uids": recorded}
        problem = replacement_problem(existing.folder, meta)
        if problem is not None:
            (clashes if isinstance(problem, OtherCase) else foreign)[case.case_id] = str(problem)
    return clashes, foreign


def _dose_identity(source) -> Optional[tuple]:
    """What identifies a case's dose: its RTDOSE SOPInstanceUIDs (as a set) and CT series, as meta.json's
    ``source`` records them (None when it records no RTDOSE UID)."""
    if not isinstance(source, dict) or not isinstance(source.get("rtdose_sop_uids"), list):
        return None
    uids = tuple(sorted(str(u) for u in source["rtdose_sop_uids"]))
    return (uids, str(source.get("ct_series_uid"))) if uids else None


def _keyed(identity: Optional[tuple], form: str, pseudonymizer) -> Optional[tuple]:
    """A dose identity (:func:`_dose_identity`) with real UIDs made keyed hashes when the export is pseudonymized,
    so that a case recorded with --keep-uids and one without compare (sixteenth hostile trial P4)."""
    if identity is None or pseudonymizer is None or form != "kept":
        return identity
    uids, series = identity
    return tuple(sorted(pseudonymizer.hashed_uid(u) for u in uids)), pseudonymizer.hashed_uid(series)


def _held_twice(found, listed: set, pseudonymizer) -> list:
    """The complete cases of ``listed`` that OUT already holds twice or more: one dose (the same RTDOSE
    SOPInstanceUIDs, CT series and recorded digest) in several cases, as ``A = B``. ``--append`` keeps a dose once
    among the cases it adds; cases made before (a run without ``--append``, or a case id changed by a copy of the
    dose added to the input) were listed twice without a word (seventeenth hostile trial Q7)."""
    groups: dict = {}
    for case_id in sorted(listed):
        case = found.cases.get(case_id)
        if case is None or not case.complete or not isinstance(case.meta, dict):
            continue
        source = case.meta.get("source") or {}
        identity = _keyed(_dose_identity(source), uid_form(case.meta), pseudonymizer)
        digest = recorded_digest(source)
        if identity is not None and digest:
            groups.setdefault((identity, digest), []).append(case_id)
    return sorted(" = ".join(ids) for ids in groups.values() if len(ids) > 1)


def _same_doses(cases: list, found, own: set, clashed: set, pseudonymizer, differing: Optional[list] = None) -> dict:
    """``{case_id: other_id}`` for each case of this input (not yet in OUT under its own id) whose RTDOSE
    SOPInstanceUIDs and CT series are those of the complete case ``other_id`` of another input in OUT: the same dose
    on the same CT (a patient's folder exported again on its own), which would otherwise be a second case of one
    dose under another id (ids hash the dose paths relative to the input). Pseudonymized UIDs are compared as
    meta.json records them."""
    held: dict = {}  # identity -> every kept case of it (one UID may hold two doses: AntPost and SupInf, P7)
    for case in found.cases.values():
        if case.case_id in own or not case.complete or not isinstance(case.meta, dict):
            continue
        identity = _keyed(_dose_identity(case.meta.get("source")), uid_form(case.meta), pseudonymizer)
        if identity is not None:
            held.setdefault(identity, []).append(case.case_id)
    this_form = "plain" if pseudonymizer is None else "kept" if pseudonymizer.keep_uids else "keyed hashes"
    same = {}
    for case in cases if held else ():
        if case.case_id in found.cases or case.case_id in clashed:
            continue
        source = _recorded_source(case, pseudonymizer)
        others = held.get(_keyed(_dose_identity(source), this_form, pseudonymizer))
        if not others:
            continue
        mine: list = []  # this case's digest, made once when a kept case records one
        match = None
        for other in sorted(others):
            recorded = recorded_digest(found.cases[other].meta.get("source"))
            if recorded and not mine:
                mine.append(dose_digest(case, pseudonymizer.key if pseudonymizer is not None else None))
            if not recorded or recorded == mine[0]:  # (a case of an older version records none: the UIDs decide)
                match = other
                break
        if match is None:
            if differing is not None:  # one SOPInstanceUID, other doses: another dose (O14), exported as its own
                differing.append(f"{case.case_id} (RTDOSE of {others[0]}'s SOPInstanceUIDs, other contents)")
            continue
        same[case.case_id] = match
    return same


def _other_cases(
    found,
    own: set,
    options,
    append: bool,
    shard,
    note,
    report,
    out_dir: Path,
    input_root: Path,
    clashed=frozenset(),
    pseudonymizer=None,
) -> list:
    """Rows of the cases in OUT that are not this run's (kept with ``append``); notes about the rest.
    ``clashed``: ids of this run's cases whose folder holds another input's case (kept as the other input's).
    With ``pseudonymizer``, the other cases must be pseudonymized with its key (their options compared as their
    meta.json records them, rewritten)."""
    if shard is not None:  # shards share OUT by design: the other shards' cases are theirs
        if pseudonymizer is not None:  # but another input's kept there is read as --append reads it (AK1's variant)
            kept = [row_from_meta(c.case_id, "skipped", c.meta, KEPT) for c in found.cases.values()
                    if c.case_id not in own and c.complete and isinstance(c.meta, dict)]  # fmt: skip
            _refuse_kept_leaks(found, kept, set(), pseudonymizer, out_dir, "--shard")
        return []
    others = [c for c in found.cases.values() if c.case_id not in own]
    inputs = _input_inside(out_dir, input_root)
    report.foreign = [c.case_id + "/" for c in others] + [n for n in found.other if n not in inputs]
    if not append:
        if report.foreign:
            note(
                f"{out_dir} holds {len(report.foreign)} folder(s) or file(s) that are not cases of this input: "
                f"{_some(report.foreign)}. They are left alone and are not in manifest.csv; use --append to "
                "keep cases of several inputs in one output folder, or remove them"
            )
        return []
    recorded = options.to_dict()
    if pseudonymizer is not None:  # as meta.json records them (see _request)
        recorded = pseudonymizer.value(pseudonymizer.options(recorded))
    request = {
        "options": recorded,
        "option_defaults": AlignOptions().to_dict(),
        "dosealign_version": __version__,
        "pseudonymized": pseudonymizer is not None,
        "key": pseudonymizer.fingerprint if pseudonymizer is not None else None,
    }
    mixing = []
    for case in others:
        if case.complete:
            why = request_differences(case.meta, request)
            if why:
                mixing.append(f"{case.case_id} ({'; '.join(why)})")
    if mixing:
        raise DoseAlignError(
            f"--append would mix cases made with other options: {_some(mixing, 2)}",
            path=out_dir,
            hint="use the options those cases were made with, or another output folder; nothing was written",
        )
    old_rows = {r.get("case_id"): r for r in found.manifest_rows}
    carried, incomplete = [], []
    kept = {c.case_id for c in others}
    for row in found.manifest_rows:  # the other inputs' rows, in their order
        if row.get("case_id") in clashed and row.get("status") == "failed":
            continue  # this input's earlier failure of that id: its new row follows
        if row.get("case_id") not in own and (row.get("case_id") in kept or row.get("status") == "failed"):
            why = _incomplete(found, row) if row.get("status") in ("ok", "skipped") else None
            if why:  # an "ok" row of a folder that lost its pair.npz stayed ok (twentieth hostile trial T6)
                incomplete.append(f"{row['case_id']} ({why})")
                continue
            carried.append(dict(row))
    if incomplete:
        note(
            f"--append: {len(incomplete)} row(s) of other inputs left out of manifest.csv, their case folders not "
            f"complete: {_some(incomplete, 3)}; export their input again (--resume) to make them"
        )
    listed = {r.get("case_id") for r in carried}
    left_out = {entry.split(" (", 1)[0] for entry in incomplete}
    for case in others:  # complete cases the old manifest does not list
        if case.case_id in left_out:  # (its row left out as damaged is not kept as "skipped": thirty-seventh AK5)
            continue
        if case.case_id not in (listed if case.case_id in clashed else old_rows) and case.complete and case.meta:
            carried.append(row_from_meta(case.case_id, "skipped", case.meta, KEPT))
    if carried:
        note(f"--append: {len(carried)} row(s) of other inputs kept in manifest.csv")
    if found.other:
        note(f"{out_dir} also holds {_some(found.other)}: left alone")
    return carried


def _note_limits_stay_here(scheduler: str, note: Callable[[str], None]) -> None:
    """Say that the ``DOSEALIGN_*`` limits set for this command do not reach a ``--scheduler tcp://`` cluster's
    workers, whose own environment decides them (thirty-seventh hostile trial AK3: a lowered case time limit was
    silently not applied there)."""
    from .limits import DEFAULTS

    given = sorted(name for name in DEFAULTS if os.environ.get(name, "").strip())
    if given:
        note(
            f"--scheduler {scheduler}: {', '.join(given)} set here apply to the scan and to this process only; the "
            "cases run on the cluster's workers, whose own environment decides the limits (start `dask worker` "
            "with the same variables)"
        )


def _refuse_kept_leaks(found, rows: list, named: set, pseudonymizer, out_dir: Path, option: str) -> None:
    """Refuse the run when OUT's cases of other inputs (``rows``) hold what this input tells to be identity."""
    leaking = _kept_leaks(found, rows, named, pseudonymizer)
    if leaking:
        raise DoseAlignError(
            f"{option}: the output folder holds {len(leaking)} case(s) of other inputs whose outputs hold what "
            f"this input tells to be identity: {_some(leaking, 3)}; they would be shared with this input's "
            "pseudonymized cases, and they cannot be rewritten without their input",
            path=out_dir,
            hint="export the inputs together into a new output folder (each input's identity is then removed from "
            "every case), or remove those cases; nothing was exported",
        )


def _kept_leaks(found, carried: list, named: set, pseudonymizer) -> list:
    """The other inputs' rows ``carried`` by --append (``case_id (where)``) whose case folder or manifest row holds what
    this input tells to be identity (a surname that is an ROI name there); ``named``: kept cases whose leak fails a
    case of this input already (the same dose, AB10)."""
    leaking = []
    for row in carried:
        case_id = row.get("case_id")
        case = found.cases.get(case_id)
        if case_id in named:
            continue
        leak = pseudonymizer.leak_in_kept_row(row)
        if not leak and case is not None and case.complete and isinstance(case.meta, dict):
            leak = pseudonymizer.leak_in_kept_case(case.folder, case.meta)
        if leak:
            leaking.append(f"{case_id} ({leak})")
    return leaking


def _incomplete(found, row: dict) -> Optional[str]:
    """Why the case folder of another input's ok row is not complete, as ``--resume`` decides (None when it is)."""
    case = found.cases.get(row.get("case_id"))
    if case is None or not case.complete:
        return (case.problem if case is not None else None) or "no case folder"
    damaged = archive_problem(case.folder, case.meta)
    return f"its outputs were damaged ({damaged})" if damaged else None


def _input_inside(out_dir: Path, input_root: Path) -> set:
    """The name of the entry of OUT that holds the input, if the input is inside OUT."""
    holder, real_in = within(input_root, out_dir), Path(os.path.realpath(input_root))
    if holder is not None and holder != real_in:
        return {real_in.relative_to(holder).parts[0] + "/"}
    return set()


def _ranges(numbers: list, limit: int = 10) -> str:
    """Sorted numbers as runs (``2-998, 1000``), at most ``limit`` runs and how many more: the shards missing from
    a split into 999999 were named one by one, 7.9 MB on one line (nineteenth hostile trial S7)."""
    runs: list = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    shown = [f"{a}-{b}" if b > a else str(a) for a, b in runs[:limit]]
    return ", ".join(shown) + (f" and {len(runs) - limit} more runs" if len(runs) > limit else "")


def _some(names: list, limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _exported_again_note(why: dict) -> str:
    reasons: dict = {}
    for case_id, lines in why.items():
        for line in lines:
            reasons.setdefault(line, []).append(case_id)
    listed = "; ".join(f"{line} ({len(ids)} case{'s' if len(ids) > 1 else ''})" for line, ids in reasons.items())
    return f"--resume: {len(why)} case(s) exported earlier are exported again: {listed}"


def _shard_settings(formats, found: dict) -> dict:
    return {"formats": formats.to_dict() if formats is not None else None, "input": found}


def _input_digest(case_ids: list, pseudonymizer) -> dict:
    """What a shard's scan found, for merge to compare: how many cases and a hash of their ids (keyed under
    ``--pseudonymize``: the ids hold patient IDs). Shards of other inputs, or of an input that changed between
    them, found other cases: merged, cases would be in no shard and nothing would say so (eleventh trial K9)."""
    text = "\n".join(sorted(case_ids))
    if pseudonymizer is not None:
        digest = pseudonymizer.keyed_digest("shard input", text)
    else:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return {"cases": len(case_ids), "sha256": digest}


def _settings_of_shards(parts: list) -> list:
    """``(file name, settings)`` of each shard's ``manifest.shard-K-of-N.json`` present (read back, checked)."""
    settings = []
    for part in parts:
        path = part.with_suffix(".json")
        if os.path.lexists(path):
            try:  # a regular file of at most DOSEALIGN_META_MB, holding an object
                value = json.loads(read_back(path, "DOSEALIGN_META_MB").decode("utf-8"))
            except (OSError, ValueError, RecursionError, DoseAlignError) as error:
                raise DoseAlignError(f"the shard settings cannot be read ({error})", path=path) from None
            if not isinstance(value, dict) or not isinstance(value.get("formats"), (dict, type(None))):
                raise DoseAlignError("the shard settings are not DoseAlign's (damaged or edited)", path=path)
            settings.append((path.name, value))
    return settings


def _check_same_input(out_dir: Path, parts: list) -> None:
    """Refuse shards whose scans found different cases (see :func:`_input_digest`); shards of an earlier version,
    which did not record it, are not compared."""
    found = [(name, value.get("input")) for name, value in _settings_of_shards(parts)]
    if len(found) < 2 or any(not isinstance(value, dict) for _name, value in found):
        return
    scanned = [(name, {k: v for k, v in value.items() if k != "rows"}) for name, value in found]
    if any(value != scanned[0][1] for _name, value in scanned[1:]):
        counts = ", ".join(f"{name} found {value.get('cases')} cases" for name, value in found)
        raise DoseAlignError(
            f"the shards were exported from different inputs, or the input or its CT choice (--ct) changed between "
            f"them ({counts}, not the same ones, or on other CTs): merged, some cases would be in no shard or on "
            "another CT than the others'",
            path=out_dir,
            hint="export every shard from the same, unchanged input (--resume keeps their cases); nothing was written",
        )


def _check_finished(out_dir: Path, parts: list, rows_of: dict) -> None:
    """Refuse a shard whose manifest lists fewer rows than its export had cases: the export still runs, or was
    killed (twelfth hostile trial L8: merged, its other cases were in no row, "0 failed", exit 0)."""
    for name, value in _settings_of_shards(parts):
        expected = value.get("input", {}).get("rows") if isinstance(value.get("input"), dict) else None
        listed = rows_of.get(name.replace(".json", ".csv"), 0)
        if isinstance(expected, int) and not isinstance(expected, bool) and listed < expected:
            raise DoseAlignError(
                f"{name.replace('.json', '.csv')} lists {listed} of the {expected} cases its export had: that export "
                "is still running, or it was stopped before its end",
                path=out_dir,
                hint="wait for it, or run that shard again with --resume, then merge; nothing was written",
            )


def _formats_of_shards(out_dir: Path, parts: list):
    """The :class:`ExportFormats` the shard runs used (from their ``manifest.shard-K-of-N.json``), or None."""
    from .output.formats import ExportFormats
    from .output.openkbp import OpenKBPSettings

    settings = [(name, value.get("formats")) for name, value in _settings_of_shards(parts)]
    if not settings:
        return None  # shards of an earlier version: the manifest only
    if any(value != settings[0][1] for _name, value in settings[1:]):
        raise DoseAlignError(
            f"the shards were exported with different formats or splits: {', '.join(n for n, _v in settings)}",
            path=out_dir,
            hint="export every shard with the same --format, --split-seed and --validation-fraction",
        )
    value = settings[0][1]
    if not value:
        return None
    try:  # what DoseAlign wrote holds these types; an edited file may hold anything
        openkbp = value.get("openkbp") or {}
        return ExportFormats(
            formats=tuple(value.get("formats") or ("npz",)),
            openkbp=OpenKBPSettings(
                spacing=tuple(openkbp.get("spacing") or OpenKBPSettings().spacing),
                size=int(openkbp.get("size") or OpenKBPSettings().size),
                centre=str(openkbp.get("centre") or "auto"),
            ),
            split_seed=int(value.get("split_seed", 0)),
            validation_fraction=float(value.get("validation_fraction", 0.2)),
        )
    except (AttributeError, TypeError, ValueError, OverflowError) as error:
        raise DoseAlignError(
            f"the shard settings are not DoseAlign's (damaged or edited: {type(error).__name__}: {error})",
            path=out_dir / settings[0][0],
            hint="export the shards again (--resume keeps their cases); nothing was written",
        ) from None


#: A shard manifest's name: its shard K and the split's N.
_SHARD_NAME = re.compile(r"manifest\.shard-(\d{1,6})-of-(\d{1,6})\.csv")


def merge_shards(out_dir: Path, notes: Optional[list] = None) -> Path:
    """Combine every ``manifest.shard-K-of-N.csv`` in ``out_dir`` into ``manifest.csv`` (sorted by case id).

    As a single run would, it then builds ``dataset.json`` and ``dataset.h5`` for the formats the
    shards wrote (``manifest.shard-K-of-N.json`` records them) and ``report.html``. What the user
    should know (e.g. why dataset.json has no label) is added to ``notes``.

    The shard manifests are read back from OUT and not trusted: nothing is written, and a
    :class:`DoseAlignError` names the file and the reason, when one cannot be read (no regular file,
    larger than ``DOSEALIGN_MANIFEST_MB``, not CSV of UTF-8) or is not a DoseAlign manifest (its header,
    a row without a case id, a case id that is no folder name, a status other than ok, failed or
    skipped, a case listed twice), when a case an ok or skipped row lists is not complete in OUT (as
    ``--resume`` decides: its folder, a meta.json of that case, whole arrays, every file's checksums), when the shards' cases
    were made with other alignment options (as ``--append`` compares them) or formats, or when a file
    merge writes (manifest.csv, report.html, the dataset files) is a folder.
    """
    try:
        return _merge_shards(Path(out_dir), notes)
    finally:  # its claim on OUT ends with it, as an export's (a long-lived process goes on)
        release_claims(Path(out_dir))


def _merge_shards(out_dir: Path, notes: Optional[list]) -> Path:
    out_dir = Path(out_dir)
    parts = sorted(out_dir.glob("manifest.shard-*-of-*.csv"))
    if not parts:
        raise DoseAlignError("no shard manifests (manifest.shard-K-of-N.csv) to merge", path=out_dir)
    split = {p.name: _SHARD_NAME.fullmatch(p.name) for p in parts}
    unnamed = sorted(name for name, match in split.items() if match is None)
    if unnamed:  # manifest.shard-x-of-2.csv: no K and N to read (int() of them was a traceback)
        raise DoseAlignError(
            f"{', '.join(unnamed)}: not a shard manifest's name (manifest.shard-K-of-N.csv)", path=out_dir
        )
    numbers = {name: (int(match.group(1)), int(match.group(2))) for name, match in split.items()}
    totals = {n for _k, n in numbers.values()}
    if len(totals) != 1:
        raise DoseAlignError(f"shard manifests of different splits: {sorted(p.name for p in parts)}", path=out_dir)
    expected = totals.pop()
    check_output_folder(out_dir)  # where nothing can be removed or renamed, merge writes nothing (AQ5)
    stray = sorted(name for name, (k, _n) in numbers.items() if not 1 <= k <= expected)
    if stray:  # (a shard 3 of 2 is none of this split's: counted, it said "3 of 2 present")
        raise DoseAlignError(f"{', '.join(stray)}: no shard of a split into {expected} (a stray file?)", path=out_dir)
    if len(parts) != expected:
        missing = sorted(set(range(1, expected + 1)) - {k for k, _n in numbers.values()})
        raise DoseAlignError(
            f"{len(parts)} of {expected} shard manifests present: shard(s) {_ranges(missing)} missing", path=out_dir
        )
    # merge's owner record from here on: an export or a shard run started while it reads and writes sees it and stops
    # (one that made cases again meanwhile was listed ok with its old values: sixty-fourth hostile trial BL3)
    claim_for(out_dir, {"merge": True})
    _check_no_other_run(out_dir)  # a shard export still writing into OUT
    rows, listed_in, rows_of = [], {}, {}
    for part in parts:
        rows_of[part.name] = 0
        for row in _shard_rows(part):
            rows_of[part.name] += 1
            if row["case_id"] in listed_in:
                raise DoseAlignError(
                    f"case {row['case_id']} is listed in {listed_in[row['case_id']]} too: the shards overlap",
                    path=part,
                    hint=_SHARD_HINT,
                )
            listed_in[row["case_id"]] = part.name
            rows.append(row)
    metas = _cases_in_out(out_dir, rows, listed_in)
    _check_one_request(out_dir, metas, listed_in)
    found = inspect_output(out_dir)  # what OUT holds beside the shards' rows (read once for both steps)
    rows = _rows_of_folders(found, rows, metas, notes if notes is not None else [])
    rows.extend(_rows_merge_keeps(found, listed_in, metas, notes if notes is not None else []))
    _check_same_input(out_dir, parts)  # (after the key's check: shards of two keys hash their inputs apart)
    _check_finished(out_dir, parts, rows_of)
    formats = _formats_of_shards(out_dir, parts)
    _check_merge_targets(out_dir)
    # what a killed run (a merge, a shard export) left: only provably dead runs' entries (fifteenth trial O7: a
    # SIGKILLed merge's partial dataset.h5 stayed through every later merge)
    removed = clean_temp(out_dir)
    if removed and notes is not None:
        notes.append(f"removed {len(removed)} temporary file(s) of a DoseAlign run that was killed: {_some(removed)}")
    rows.sort(key=lambda r: r["case_id"])
    try:
        finished = formats.finish(out_dir, rows) if formats is not None else {}  # dataset.h5, dataset.json
        if notes is not None:
            notes.extend(finished.get("notes", []))
        built = [
            name for name, key in (("dataset.h5", "dataset_h5"), ("dataset.json", "dataset_json")) if finished.get(key)
        ]
        stale = remove_stale_datasets(out_dir, rows, built)
        if notes is not None:
            notes.extend(stale)
        path = write_manifest(out_dir, rows)
        write_report(out_dir, rows, source="merged shards")
    except OSError as error:  # a full disk: named, no traceback (the shards' files are as they were)
        raise output_fault(error, out_dir, then="run merge again (the shards' files are as they were)") from None
    return path


_SHARD_HINT = "export that shard again (dosealign export IN OUT --shard K/N), then merge; nothing was written"
#: What a manifest row may say of its case.
_STATUSES = ("ok", "failed", "skipped")


def _shard_rows(part: Path) -> list:
    """The rows of one shard manifest, read back bounded (a regular file of at most DOSEALIGN_MANIFEST_MB)
    and checked: :class:`DoseAlignError` naming the file and what is wrong with it."""
    import csv

    from .output.manifest import MANIFEST_COLUMNS, parse_manifest

    def refuse(why: str) -> DoseAlignError:
        return DoseAlignError(f"this shard manifest {why}", path=part, hint=_SHARD_HINT)

    try:
        text = read_back(part, "DOSEALIGN_MANIFEST_MB").decode("utf-8")
        columns, rows = parse_manifest(text)  # fields as long as export writes them
    except OSError as error:  # a named pipe, a device, a folder: never opened
        raise refuse(f"cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise refuse(f"is not UTF-8 text (byte {error.start})") from None
    except (ValueError, csv.Error) as error:  # a NUL byte, a quote left open at the end and the like
        raise refuse(f"is not a manifest CSV ({error})") from None
    head = MANIFEST_COLUMNS[:3]
    if list(columns[: len(head)]) != head:
        raise refuse(f"is not a DoseAlign manifest: its first line is not {','.join(head)},... (damaged or edited)")
    for line, row in rows:
        case_id, status = row.get("case_id"), row.get("status")
        if None in row or None in row.values():
            raise refuse(f"line {line} has {'more' if None in row else 'fewer'} fields than its header")
        if not case_id:
            raise refuse(f"line {line} has no case id")
        if not _is_folder_name(case_id):
            raise refuse(f"line {line}: the case id {case_id!r} is not a folder name")
        if status not in _STATUSES:
            raise refuse(f"line {line}: status {status!r} is none of {', '.join(_STATUSES)} (damaged or edited)")
    return [row for _line, row in rows]


def _is_folder_name(name: str) -> bool:
    """A case id names one folder in OUT: no path, no control character."""
    return name not in (".", "..") and not any(c in name for c in "/\\") and name.isprintable()


def _cases_in_out(out_dir: Path, rows: list, listed_in: dict) -> dict:
    """``{case_id: meta}`` of the rows that say their case is in OUT (ok, skipped); each must be a complete
    case folder of that case, as ``--resume`` decides (its files read once: CRCs, inflated lengths), else
    :class:`DoseAlignError` saying what was found."""
    from .output.case_folder import case_problem

    metas, missing = {}, []
    for row in rows:
        if row["status"] == "failed":
            continue
        folder = case_dir(out_dir, row["case_id"])
        problem = "there is no case folder" if not os.path.lexists(folder) else case_problem(folder)
        if problem is None:
            try:
                metas[row["case_id"]] = load_meta(folder)
            except DoseAlignError as error:
                problem = error.message
        if problem is None:  # bytes changed inside a file of the right length: read once, as --resume does
            damaged = archive_problem(folder, metas[row["case_id"]])
            problem = f"its outputs were damaged ({damaged})" if damaged else None
        if problem is not None:
            problem += _held_case(folder, row["case_id"])
            missing.append(f"{row['case_id']} ({row['status']} in {listed_in[row['case_id']]}: {problem})")
    if missing:
        raise DoseAlignError(
            f"{len(missing)} case(s) the shard manifests list as exported are not complete in the output folder: "
            + _some(missing, 3),
            path=out_dir,
            hint="run those shards' exports again with --resume (they export what is missing or damaged), then "
            "merge; nothing was written",
        )
    return metas


def _held_case(folder: Path, case_id: str) -> str:
    """``"; it holds CASE"`` when the folder's meta.json names another case than ``case_id`` (else "")."""
    from .output.case_folder import read_meta

    try:
        meta = read_meta(folder / "meta.json")
    except (OSError, ValueError, DoseAlignError):
        return ""
    held = meta.get("case_id") if isinstance(meta, dict) else None
    return f"; it holds {held}" if isinstance(held, str) and held != case_id else ""


def _check_one_request(out_dir: Path, metas: dict, listed_in: dict) -> None:
    """The shards' cases were made with the same alignment options, DoseAlign version, pseudonymization and
    resampler (compared as ``--append`` compares them): grids made otherwise must not sit side by side."""
    if not metas:
        return
    first = min(metas, key=lambda case_id: (listed_in[case_id], case_id))
    reference = metas[first]
    differing: dict = {}
    for case_id in sorted(metas, key=lambda case_id: (listed_in[case_id], case_id)):
        why = request_differences(reference, _request_of(metas[case_id]))
        if why and listed_in[case_id] not in differing:
            differing[listed_in[case_id]] = f"{case_id} of {listed_in[case_id]}: {'; '.join(why)}"
    if differing:
        raise DoseAlignError(
            f"the shards were exported with different options (against {first} of {listed_in[first]}): "
            + " | ".join(differing.values()),
            path=out_dir,
            hint="export every shard with the same options (a shard made otherwise: remove its case folders and "
            "manifest, export it again), then merge; nothing was written",
        )


def _request_of(meta: dict) -> dict:
    """What a case's meta.json says it was made with, in the form :func:`request_differences` compares."""
    return {
        "options": meta.get("options") or {},
        "option_defaults": AlignOptions().to_dict(),
        "dosealign_version": meta.get("dosealign_version"),
        "pseudonymized": bool(meta.get("pseudonymized")),
        "key": recorded_key(meta),
        "backend": (meta.get("resampling") or {}).get("backend", "engine"),
    }


def _rows_of_folders(found, rows: list, metas: dict, notes: list) -> list:
    """The shards' rows, each as its case folder now holds it: a case exported again after its shard (``export
    --append`` of a corrected input) keeps the row of OUT's manifest.csv that describes its folder, else a row made
    from its meta.json, and ``notes`` names it. Merge used to write the shard's older row beside the newer case
    (another dmax, a hidden flag; fourteenth hostile trial N2). ``found``: what OUT holds (inspect_output)."""
    from .output.manifest import differs_from_meta

    current = {r.get("case_id"): r for r in found.manifest_rows}
    out, renewed = [], []
    for row in rows:
        meta = metas.get(row["case_id"])
        if meta is None or not differs_from_meta(row, meta):
            out.append(row)
            continue
        later = current.get(row["case_id"])
        if later is not None and later.get("status") in ("ok", "skipped") and not differs_from_meta(later, meta):
            out.append(dict(later))
        else:
            out.append(row_from_meta(row["case_id"], row["status"], meta, row.get("reason", "")))
        renewed.append(row["case_id"])
    if renewed:
        notes.append(
            f"{len(renewed)} case(s) were exported again after their shard (their folder differs from the shard "
            f"manifest's row): their rows follow the folders: {_some(renewed, 3)}"
        )
    return out


def _rows_merge_keeps(found, listed_in: dict, metas: dict, notes: list) -> list:
    """The rows of OUT's manifest.csv that no shard lists and that stay: cases of other inputs an ``export
    --append`` added beside the shards' (complete, made as the shards' cases were; failed rows as they were).
    Merging again used to drop them without a word. Case folders that stay out of manifest.csv are named in
    ``notes``, as a plain export names them. ``found``: what OUT holds (inspect_output)."""
    from .output.case_folder import case_problem

    out_dir = found.path
    reference = next(iter(metas.values()), None)
    kept, left = [], []
    for row in found.manifest_rows:
        case_id = row.get("case_id")
        if not case_id or case_id in listed_in or not _is_folder_name(case_id) or row.get("status") not in _STATUSES:
            continue
        if any(value is None for value in row.values()) or None in row:
            continue  # a row of a damaged manifest.csv: not carried
        if row["status"] == "failed":
            kept.append(dict(row))
            continue
        folder = case_dir(out_dir, case_id)
        why = "there is no case folder" if not os.path.lexists(folder) else case_problem(folder)
        meta = None
        if why is None:
            try:
                meta = load_meta(folder)
            except DoseAlignError as error:
                why = error.message
        if why is None:
            damaged = archive_problem(folder, meta)
            why = f"its outputs were damaged ({damaged})" if damaged else None
        if why is None and reference is not None:
            differences = request_differences(reference, _request_of(meta))
            why = f"made otherwise than the shards' cases ({'; '.join(differences)})" if differences else None
        if why is None:
            kept.append(dict(row))
        else:
            left.append(f"{case_id} ({why})")
    if kept:
        notes.append(
            f"{len(kept)} row(s) of manifest.csv that no shard lists kept (cases of other inputs, added with --append): "
            + _some([r["case_id"] for r in kept], 3)
        )
    if left:
        notes.append(f"{len(left)} row(s) of manifest.csv that no shard lists left out: " + _some(left, 3))
    listed = set(listed_in) | {r["case_id"] for r in kept}
    twice = _held_twice(found, listed, None)
    if twice:
        notes.append(
            f"the output folder holds {len(twice)} RTDOSE(s) on one CT in more than one case: {_some(twice, 3)}; each "
            "is listed: remove all but one case folder of each"
        )
    unlisted = sorted(case_id + "/" for case_id in found.cases if case_id not in listed)
    if unlisted:
        notes.append(
            f"{out_dir} holds {len(unlisted)} case folder(s) that no shard lists: {_some(unlisted)}. They are left "
            "alone and are not in manifest.csv (export their input with --append to list them)"
        )
    return kept


def _check_merge_targets(out_dir: Path) -> None:
    """merge replaces manifest.csv, report.html and the dataset files: a folder of one of those names is not
    replaced (refused before anything is written)."""
    from .output.out_folder import OWN_FILES

    _check_targets(out_dir, OWN_FILES, "merge")


def _export_targets(shard: Optional[tuple], report_html: bool, formats) -> list:
    """The names an export writes at the top of OUT (beside the case folders)."""
    if shard is not None:
        stem = f"manifest.shard-{shard[0]}-of-{shard[1]}"
        return [stem + ".csv", stem + ".json"]
    from .output.datalist import DATALIST_FILE
    from .output.hdf5 import DATASET_FILE

    chosen = set(getattr(formats, "formats", None) or ())
    return (
        ["manifest.csv"]
        + (["report.html"] if report_html else [])
        + ([DATASET_FILE] if "hdf5" in chosen else [])
        + ([DATALIST_FILE] if "nifti" in chosen else [])
    )


def _check_targets(out_dir: Path, names, who: str) -> None:
    """A folder, named pipe, socket, device or symbolic link where a run writes one of its files at the top of OUT,
    or a file DoseAlign did not write (:func:`~DoseAlignLib.output.out_folder.foreign_file`), is a user's: it is not
    replaced, and the run is refused before anything is written (a finished temporary renamed over it would
    remove it)."""
    for name in names:
        path = out_dir / name
        try:
            mode = path.lstat().st_mode
        except OSError:
            continue  # absent (or unreadable: the write says why)
        foreign = foreign_file(path) if stat.S_ISREG(mode) else None
        kind = (
            f"a file ({foreign})"
            if foreign
            else "a folder"
            if stat.S_ISDIR(mode)
            else "a named pipe"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else f"a symbolic link (to {os.readlink(path)})"  # DoseAlign writes none (thirteenth hostile trial M10)
            if stat.S_ISLNK(mode)
            else None
        )
        if kind is not None:  # none of these is a file DoseAlign wrote; renaming over it would remove it (a user's
            # file of such a name, in an OUT that held no export, was replaced without a word)
            raise DoseAlignError(
                f"is {kind} that is not DoseAlign's: {who} writes a file of that name and does not replace it",
                path=path,
                hint=f"move it away, then run {'merge' if who == 'merge' else 'the export'} again; nothing was written",
            )


def _folder_stamp(folder: Path) -> Optional[tuple]:
    """What tells a case folder put in place by this run from the one there before it: its inode and time."""
    try:
        info = os.lstat(folder)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_mtime_ns)


#: The cases running in this Dask worker process, by the real path of their OUT.
_DASK_CASES: dict = {}
_DASK_CASES_LOCK = threading.Lock()


def _export_case_on_a_dask_worker(client_pid: int, case, out_dir: Path, **kwargs) -> dict:
    """:func:`export_case` on a Dask worker: the claim on OUT that its first case makes in the worker's process is
    released once no case of it runs there. A worker of a standing cluster outlives the export, and its claim
    refused every later run into OUT as "another DoseAlign run is writing" (twenty-third hostile trial W7). The
    cases are counted for each OUT apart: a worker with two threads ran cases of two exports, and only the OUT
    whose case ended last was released (twenty-fourth trial X1)."""
    key = os.path.realpath(out_dir)
    with _DASK_CASES_LOCK:
        _DASK_CASES[key] = _DASK_CASES.get(key, 0) + 1
    try:
        return export_case(case, out_dir, **kwargs)
    finally:
        with _DASK_CASES_LOCK:
            _DASK_CASES[key] -= 1
            if _DASK_CASES[key] == 0:
                del _DASK_CASES[key]
                if os.getpid() != client_pid:
                    release_claims(Path(out_dir))


def export_case(
    case,
    out_dir: Path,
    options: AlignOptions,
    resume: bool = False,
    qa_png: bool = True,
    formats=None,
    pseudonymizer=None,
    stage: Optional[Callable] = None,
    resampler=None,
) -> dict:
    """Export one case; return its manifest row (never raises for a bad case). ``qa_png`` adds its picture,
    ``formats`` (:class:`~DoseAlignLib.output.formats.ExportFormats`) its other formats. ``stage(message)``
    (or, in a pool worker, :func:`~DoseAlignLib.parallel.worker_stage` as ``stage(case_id, message)``)
    hears each step (a :class:`Cancelled` it raises stops the case). ``resampler`` goes to
    :func:`~DoseAlignLib.pipeline.run_case`. With ``resume`` a complete case folder is kept as it is
    (``skipped``) without comparing what it records: :func:`export_folder` compares.

    Under pseudonymization the row carries the pseudonyms this case made (a UID found in an ROI name, say) under
    :data:`PSEUDONYMS_KEY`: a pool worker's pseudonymizer is a copy, and the map must list them too."""
    made_before = len(pseudonymizer.entries) if pseudonymizer is not None else 0
    row = _export_case(case, out_dir, options, resume, qa_png, formats, pseudonymizer, stage, resampler)
    if pseudonymizer is not None and len(pseudonymizer.entries) > made_before:  # entries only grow, in order
        made = itertools.islice(pseudonymizer.entries.items(), made_before, None)
        row[PSEUDONYMS_KEY] = [(kind, pseudonym, original) for (kind, pseudonym), original in made]
    return row


def _export_case(case, out_dir, options, resume, qa_png, formats, pseudonymizer, stage, resampler) -> dict:
    if resume and is_complete(out_dir, case.case_id):
        damaged = archive_problem(case_dir(out_dir, case.case_id))  # a full read: bytes changed in place
        if damaged is None:
            return manifest_row(case, "skipped", KEPT, load_meta(case_dir(out_dir, case.case_id)))
        logger.warning("case %s: %s: exported again", case.case_id, damaged)
    say = _stage_for(stage, case.case_id)
    if qa_png:
        preload_matplotlib()  # imported while the case is computed
    output = None
    try:
        # a worker process's claim on OUT says whose pseudonyms it writes, as the run's does: what a killed worker
        # leaves is told by it (thirty-eighth hostile trial AL10); in the run's own process its claim is found
        claim_for(out_dir, {"pseudonyms": pseudonymizer.fingerprint if pseudonymizer is not None else "none"})
        output = CaseOutput(out_dir, options)  # pair.npz gets the CT and the dose while the rest is computed
        more = {"resampler": resampler} if resampler is not None else {}  # the default call stays as it was
        if pseudonymizer is not None:  # ROI names rewritten before they are made unique (one name per ROI everywhere)
            more["rewrite_names"] = _names_within_bound(pseudonymizer.name)
        steps = (lambda _f, message: message != "done" and say(message)) if stage else None
        result = run_case(case, options, progress=steps, sink=output.add_array, **more)
        records = input_files(case)  # what --resume compares with the input files of a later run
        if pseudonymizer is not None:
            say("pseudonymizing")  # the progress line names this step, not the one before it (T10)
            records, stamps = keyed_stamps(records, pseudonymizer.key)
            # their hex digits, in geometry.json too, are no date nor ID: a stamp a100f... failed a patient 100 (the
            # twenty-fifth hostile trial's Y6, seen in a test on the 3.9 stack)
            pseudonymizer.add_own_digests(*stamps)
            result.meta["source"]["input_files"] = records
            pseudonymizer.result(result)  # before meta.json and the extra files: meta, case id, text arrays
            for record, stamp in zip(result.meta["source"]["input_files"], stamps):
                record["stamp"] = stamp  # after the rewriting: a keyed hash is no text to rewrite
        else:
            result.meta["source"]["input_files"] = records
        result.meta["source"]["rtdose_digest"] = dose_digest(case, pseudonymizer.key if pseudonymizer else None)
        result.meta["source"]["rtdose_digest_scheme"] = DIGEST_SCHEME
        check_unchanged_since_scan(case)  # after the last read of the input (AS1)
        extra = [_announced(qa_png_writer(result), say, "writing qa.png")] if qa_png else []
        if formats is not None and formats.extra:
            extra.append(formats.case_writer(result, say))
        if pseudonymizer is not None:  # last: every file name and clear text of the case, checked for identity
            structures = result.meta.get("structures") or {}
            checked = functools.partial(pseudonymizer.check_folder, roi_names=list(structures.get("names") or []))
            extra.append(_announced(checked, say, "checking the files for identity"))
        extra.append(lambda _folder: say("finishing pair.npz and meta.json"))  # after the others, before these
        output.finish(result, extra)
        output = None
        return manifest_row(case, "ok", "", result.meta)
    except Cancelled:
        raise
    except OutputFault as error:  # the output cannot be written: this case fails and the batch stops
        logger.error("case %s: %s", case.case_id, error)
        return {**manifest_row(case, "failed", str(error)), FAULT_KEY: getattr(error, "cause", "") or str(error)}
    except DoseAlignError as error:
        logger.info("case %s failed: %s", case.case_id, error)
        named = error.path or any(f in str(error) for f in case.dose_files)  # else say which dose it was
        return manifest_row(case, "failed", str(error) if named else f"{';'.join(case.dose_files)}: {error}")
    except MemoryError:
        return manifest_row(case, "failed", "out of memory")
    except Exception as error:  # an engine bug must not stop the batch; the row says what happened
        if thread_not_started(error):  # memory or the thread limit of this process, not a bug nor the input
            logger.info("case %s: %s (%s)", case.case_id, THREAD_NOT_STARTED, error)
            return manifest_row(case, "failed", THREAD_NOT_STARTED)
        limit_reached = too_many_open_files(error)
        if limit_reached:  # the process's open-file limit (ulimit -n), not the case nor a bug
            where = f"{error.filename}: " if getattr(error, "filename", None) else ""  # the input root is cut later
            return manifest_row(
                case, "failed", f"{where}cannot be opened now: {limit_reached}; not a fault of the input"
            )
        logger.exception("case %s: unexpected error", case.case_id)
        return manifest_row(case, "failed", f"internal error ({type(error).__name__}: {error}); please report it")
    finally:
        if output is not None:  # the case failed: its unfinished folder goes
            output.discard()


#: Why a run writes no more into OUT: the folder its path names is not the one the run started in.
REPLACED_OUT = "the output folder was replaced while the export ran (moved, removed, or a link put in its place)"


def _folder_identity(folder: Path) -> Optional[tuple]:
    """``(device, inode)`` of the folder ``folder`` names now (a link followed), None where there is none: a user who
    moved OUT away and put a link to a folder of theirs in its place had its manifest.csv replaced by the run's
    (forty-seventh hostile trial AU4)."""
    try:
        status = os.stat(folder)
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def _made_as(name: str, token: str) -> str:
    """What a run's temporary entry ``name`` was for, from its name (:meth:`RunClaim.temp`): a stuck temporary
    manifest was called "a case folder it replaced" (forty-first hostile trial)."""
    role = name[len(f"{RUN_PREFIX}{token}-") :].rsplit("-", 1)[0]
    if role == "old":
        return "a case folder it replaced"
    if role == "case":
        return "a case folder it was writing"
    return f"its temporary {role}"


def _stage_for(stage: Optional[Callable], case_id: str) -> Callable[[str], None]:
    """``say(message)`` for one case: to ``stage(message)``, or to a pool's ``worker_stage(case_id, message)``."""
    if stage is None:
        return lambda _message: None
    if stage is worker_stage:
        return functools.partial(worker_stage, case_id)
    return stage


def _announced(writer: Callable[[Path], None], say: Callable[[str], None], message: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        say(message)
        writer(folder)

    return write
