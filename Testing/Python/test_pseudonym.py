"""Pseudonymized export: not one output byte carries who the patient is.

Two phantom patients with distinctive PatientID, PatientName, birth date, study (and every other)
date and UIDs sit in folders named after them, beside a damaged file whose name holds the patient's
name. ``dosealign export --pseudonymize`` (with every output format this machine can write) must
leave none of these values anywhere under OUT: not in file or folder names, manifest.csv,
meta.json, report.html, qa.png, the other formats, nor inside pair.npz or any compressed member
(searched decompressed, names case-insensitively, dates in their common spellings). The key and
the mapping file stay outside OUT with mode 0600; the map links every pseudonym back; the same key
gives the same pseudonyms, another key other ones; ``--keep-uids`` keeps exactly the UIDs; no voxel
and no geometry changes.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import importlib.util
import io
import json
import os
import re
import stat
import zipfile
from pathlib import Path

import dicom_damage as dd
import numpy as np
import pydicom
import pytest
from DoseAlignLib.cli import main
from DoseAlignLib.phantom import PhantomSpec, write_phantom

SMALL = {
    "ct_size": (16, 14, 8),
    "dose_size": (8, 6, 5),
    "ct_slice_spacing": 2.5,
    "dose_pixel_spacing": (2.0, 2.0),
    "dose_frame_spacing": 2.5,
    "dose_center_offset_lps": (0.3, -0.2, 0.1),
}
PATIENTS = [
    # folder, PatientID, PatientName, birth date, other dates
    ("Quixote_Dulcinea_PID-7731-XQ", "PID-7731-XQ", "Quixote^Dulcinea", "19610315", "20230718"),
    ("Panza^Sancho 0042-ZZ", "0042-ZZ", "Panza^Sancho^Teresa", "19480229", "20221105"),
]


def _formats() -> list:
    """The extra output formats whose libraries this machine has."""
    wanted = {"nifti": "nibabel", "nrrd": "nrrd", "hdf5": "h5py", "openkbp": None}
    return [f for f, module in wanted.items() if module is None or importlib.util.find_spec(module)]


def _date_spellings(date: str) -> list:
    y, m, d = date[:4], date[4:6], date[6:8]
    return [date, f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{y}.{m}.{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """The input tree and every identifying value in it."""
    base = tmp_path_factory.mktemp("pseudo")
    root = base / "in"
    identity = {"ids": set(), "names": set(), "dates": set(), "uids": set(), "folders": set()}
    for n, (folder, pid, name, birth, date) in enumerate(PATIENTS):
        spec = PhantomSpec(patient_id=pid, patient_name=name, seed=20 + n, write_beam_doses=n == 1, **SMALL)
        truth = write_phantom(root / folder, spec)
        for path in sorted((root / folder).iterdir()):
            ds = dd.read(path)
            for element in ds.iterall():
                if element.VR == "DA":
                    element.value = birth if element.keyword == "PatientBirthDate" else date
            ds.StudyTime = "101112"
            dd.save(ds, path)
        if n == 0:  # a plan label with the name and a date, as planners write them
            dd.rewrite_tags(truth.plan_file, RTPlanLabel=f"{name.split('^')[1]} {date[6:]}.{date[4:6]}.{date[:4]}")
        else:  # the CT in a folder named with the date
            (root / folder / f"CT {date[:4]}-{date[4:6]}-{date[6:]}").mkdir()
            for path in truth.ct_files:
                path.rename(path.parent / f"CT {date[:4]}-{date[4:6]}-{date[6:]}" / path.name)
            truth.ct_files = [p.parent / f"CT {date[:4]}-{date[4:6]}-{date[6:]}" / p.name for p in truth.ct_files]
        identity["ids"].add(pid)
        identity["names"].update([name, *name.split("^")])
        identity["dates"].update([birth, date])
        identity["folders"].add(folder)
        for path in [*truth.ct_files, *truth.dose_files, truth.plan_file, truth.struct_file]:
            for element in dd.read(path).iterall():
                if element.VR == "UI" and not str(element.value).startswith("1.2.840.10008."):
                    identity["uids"].add(str(element.value))
    # a damaged file whose name holds the patient's name: its failed row must not show it
    first = root / PATIENTS[0][0]
    damaged = first / "Dulcinea_Quixote_dose.dcm"
    dose = next(p for p in sorted(first.iterdir()) if dd.read(p, header_only=True).Modality == "RTDOSE")
    damaged.write_bytes(dose.read_bytes()[:600])
    return {"root": root, "base": base, "identity": identity, "damaged": damaged.relative_to(root).as_posix()}


#: Array kinds whose bytes are numbers (bool, ints, floats, complex): no text is stored in them, and bytes that
#: happen to spell a short needle there are chance (a 3-byte character turns up in ~1 MiB of pixels).
NUMERIC_KINDS = "biufc"


def _masked(data: bytes, spans: list) -> bytes:
    """``data`` with each (start, stop) span cut out and a NUL left in its place, so text either side stays apart."""
    kept, position = [], 0
    for start, stop in sorted(spans):
        kept.append(data[position:start])
        position = max(position, stop)
    kept.append(data[position:])
    return b"\0".join(kept)


def _npy_text(name: str, data: bytes) -> list:
    """A .npy member: its header, and its values when they are text; numbers are left out."""
    from numpy.lib import format as npy_format

    handle = io.BytesIO(data)
    try:
        version = npy_format.read_magic(handle)
        read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}[version]
        _shape, _fortran_order, dtype = read_header(handle)
    except (ValueError, OSError, KeyError):
        return [(name, data)]
    if dtype.kind in NUMERIC_KINDS and dtype.fields is None:
        return [(name, data[: handle.tell()])]
    values = np.load(io.BytesIO(data), allow_pickle=False)
    return [(name, data), (f"{name}[text]", "\n".join(str(v) for v in values.ravel()).encode())]


def _png_text(name: str, data: bytes) -> list:
    """A picture's chunks without its pixels (IDAT), and its zTXt/iTXt text decompressed."""
    import zlib

    found, pixels, position = [], [], 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        if kind == b"IDAT":
            pixels.append((position + 8, position + 8 + length))
        if kind in (b"zTXt", b"iTXt") and b"\x00" in body:
            with contextlib.suppress(zlib.error):
                found.append((f"{name}:{kind.decode()}", zlib.decompress(body.split(b"\x00", 1)[1][1:])))
        position += 12 + length
    return [(name, _masked(data, pixels)), *found]


def _gzip_header_end(data: bytes) -> int:
    """Where a gzip member's deflated stream starts (RFC 1952: after FEXTRA, FNAME, FCOMMENT, FHCRC)."""
    flags, position = data[3], 10
    if flags & 4:
        position += 2 + int.from_bytes(data[10:12], "little")
    for bit in (8, 16):
        if flags & bit:
            position = data.index(b"\0", position) + 1
    return position + (2 if flags & 2 else 0)


def _nifti_header_end(data: bytes) -> int:
    """``vox_offset``: where a NIfTI-1 or NIfTI-2 file's voxels start (header and extensions before it)."""
    for order in ("<", ">"):
        size = int(np.frombuffer(data[:4], dtype=f"{order}i4")[0])
        if size == 348:
            return int(np.frombuffer(data[108:112], dtype=f"{order}f4")[0])
        if size == 540:
            return int(np.frombuffer(data[168:176], dtype=f"{order}i8")[0])
    return len(data)


def _expand(name: str, data: bytes) -> list:
    """(where, bytes) a reader can take text from: ``data`` and what is packed inside it, numbers left out.

    Zip members (pair.npz) are opened, and each .npy member keeps its header and any text values; a picture keeps
    every chunk but its pixels; a .nii.gz is searched decompressed up to its voxels, a .nrrd up to its data; an HDF5
    file's numeric dataset storage is cut out by :func:`_hdf5_text`'s caller. Voxels and pixels hold no text, and
    searching them for a short needle finds it by chance now and then.
    """
    if data[:4] == b"PK\x03\x04":
        found, members = [], []
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                found.append((f"{name}:{info.filename}", info.filename.encode()))
                found.extend(_expand(f"{name}:{info.filename}", archive.read(info)))
                local = info.header_offset  # PKZIP APPNOTE 4.3.7: 30 bytes, then the name and extra field
                start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little")
                start += int.from_bytes(data[local + 28 : local + 30], "little")
                members.append((start, start + info.compress_size))
        return [(name, _masked(data, members)), *found]  # the container's headers; members are searched above
    if data[:6] == b"\x93NUMPY":
        return _npy_text(name, data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_text(name, data)
    if name.endswith(".nii.gz") and data[:3] == b"\x1f\x8b\x08":
        inner = gzip.decompress(data)
        return [(name, data[: _gzip_header_end(data)]), (f"{name}@gzip", inner[: _nifti_header_end(inner)])]
    if name.endswith(".nrrd"):
        header, _blank, _payload = data.partition(b"\n\n")
        return [(name, header)]
    found = [(name, data)]
    for match in re.finditer(rb"\x1f\x8b\x08", data):
        try:
            found.append((f"{name}@gzip{match.start()}", gzip.decompress(data[match.start() :])))
        except (OSError, EOFError, zipfile.BadZipFile):
            continue
    return found


def _readable(value) -> bytes:
    """An HDF5 attribute or dataset value as the text it holds: strings as UTF-8, numbers as their repr."""
    array = np.asarray(value)
    if array.dtype.kind in NUMERIC_KINDS:
        return repr(value).encode()[:100000]
    texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    return repr(value).encode() + "\n".join(texts).encode()


def _hdf5_numeric_storage(path: Path) -> list:
    """(start, stop) byte spans of an HDF5 file that hold numeric datasets' (compressed) values."""
    import h5py

    spans = []

    def visit(_name, item):
        if not isinstance(item, h5py.Dataset) or item.dtype.kind not in NUMERIC_KINDS:
            return
        offset = item.id.get_offset()
        if offset is not None:
            spans.append((offset, offset + item.id.get_storage_size()))
        elif item.chunks is not None:
            for index in range(item.id.get_num_chunks()):
                chunk = item.id.get_chunk_info(index)
                spans.append((chunk.byte_offset, chunk.byte_offset + chunk.size))

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return spans


def _hdf5_text(path: Path) -> list:
    """Every attribute and dataset of an HDF5 file as text (compressed chunks come out decompressed)."""
    import h5py

    found = []

    def visit(name, item):
        found.append((f"{path.name}:{name}", name.encode()))
        for key, value in item.attrs.items():
            found.append((f"{path.name}:{name}@{key}", key.encode() + b"=" + _readable(value)))
        if isinstance(item, h5py.Dataset):
            found.append((f"{path.name}:{name}", _readable(item[()])))

    with h5py.File(path, "r") as handle:
        for key, value in handle.attrs.items():
            found.append((f"{path.name}@{key}", key.encode() + b"=" + _readable(value)))
        handle.visititems(visit)
    return found


def _all_output_bytes(out: Path) -> list:
    """(where, bytes) for every file under ``out``: its path, and every byte of it that can hold text (see _expand)."""
    found = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        found.append((f"name of {rel}", rel.encode()))
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".h5" and data[:8] == b"\x89HDF\r\n\x1a\n":
                found.append((rel, _masked(data, _hdf5_numeric_storage(path))))
                found.extend(_hdf5_text(path))
            else:
                found.extend(_expand(rel, data))
    return found


def _leaks(out: Path, identity: dict, keep_uids: bool = False, extra: tuple = ()) -> list:
    needles = []
    for value in identity["ids"] | identity["folders"] | set(extra):
        needles.append(("id/folder", value.encode(), False))
    for value in identity["names"]:
        needles.append(("name", value.encode(), True))
    for date in identity["dates"]:
        needles.extend(("date", spelling.encode(), False) for spelling in _date_spellings(date))
    if not keep_uids:
        needles.extend(("uid", uid.encode(), False) for uid in identity["uids"])
    leaks = []
    for where, data in _all_output_bytes(out):
        lowered = data.lower()
        for kind, needle, fold in needles:
            if (needle.lower() in lowered) if fold else (needle in data):
                leaks.append(f"{kind} {needle.decode()!r} in {where}")
    return leaks


def _export(study: dict, out: Path, *extra: str, capsys=None) -> int:
    args = ["export", str(study["root"]), str(out), "--quiet", "--workers", "1", "--pseudonymize"]
    formats = _formats()
    if formats:
        args += ["--format", ",".join(formats)]
    code = main([*args, *extra])
    if capsys is not None:
        capsys.readouterr()
    return code


def _map(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_no_output_byte_identifies_a_patient(study, tmp_path, capsys):
    out = tmp_path / "share" / "out"
    assert _export(study, out, capsys=capsys) == 1  # the damaged file fails; both patients export
    leaks = _leaks(out, study["identity"], extra=(str(study["root"]), "Dulcinea_Quixote_dose"))
    assert not leaks, "\n".join(leaks[:40])
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2 and all(re.fullmatch(r"P[0-9a-f]{12}_[a-z]+_[0-9a-f]{8}", r["case_id"]) for r in ok)
    assert len({r["patient"] for r in ok}) == 2
    (failed,) = [r for r in rows if r["status"] == "failed"]
    assert "(0002,0010)" in failed["reason"] or re.search(r"\([0-9A-F]{4},[0-9A-F]{4}\)", failed["reason"])

    # key and map: outside the shared folder, owner-only, and the map links everything back
    key, mapping = tmp_path / "share" / "dosealign-pseudonym.key", tmp_path / "share" / "out.pseudonym-map.csv"
    for path in (key, mapping):
        assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
    entries = {(e["kind"], e["pseudonym"]): e["original"] for e in _map(mapping)}
    for row in ok:
        assert entries[("patient", row["patient"])] in study["identity"]["ids"]
        assert ("case", row["case_id"]) in entries
        meta = json.loads((out / row["case_id"] / "meta.json").read_text(encoding="utf-8"))
        for token in meta["source"]["ct_files"] + meta["source"]["rtdose_files"]:
            original = entries[("path", token)]
            assert (study["root"] / original).is_file(), original
        assert entries[("uid", meta["source"]["ct_series_uid"])] in study["identity"]["uids"]
    assert entries[("path", failed["files"])] == study["damaged"]


def test_same_key_same_pseudonyms_other_key_others(study, tmp_path, capsys):
    key = tmp_path / "keys" / "site.key"
    first, second, third = tmp_path / "a" / "out", tmp_path / "b" / "out", tmp_path / "c" / "out"
    _export(study, first, "--key-file", str(key), capsys=capsys)
    _export(study, second, "--key-file", str(key), capsys=capsys)
    _export(study, third, "--key-file", str(tmp_path / "keys" / "other.key"), capsys=capsys)
    ids = [sorted(p.name for p in out.iterdir() if p.is_dir()) for out in (first, second, third)]
    assert ids[0] == ids[1] and not set(ids[0]) & set(ids[2])
    for case_id in ids[0]:
        for name in ("meta.json", "pair.npz"):
            assert (first / case_id / name).read_bytes() == (second / case_id / name).read_bytes(), name
    assert (first / "manifest.csv").read_bytes() == (second / "manifest.csv").read_bytes()


def test_keep_uids_keeps_the_uids_only(study, tmp_path, capsys):
    out = tmp_path / "out"
    _export(study, out, "--keep-uids", capsys=capsys)
    assert not _leaks(out, study["identity"], keep_uids=True)
    metas = [json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*/meta.json")]
    assert metas and all(m["source"]["ct_series_uid"] in study["identity"]["uids"] for m in metas)
    assert all(m["frame_of_reference_uid"] in study["identity"]["uids"] for m in metas)


def test_pseudonymizing_changes_no_voxel_and_no_geometry(study, tmp_path, capsys):
    plain, pseudo = tmp_path / "plain", tmp_path / "pseudo"
    formats = ["--format", ",".join(_formats())] if _formats() else []
    main(["export", str(study["root"]), str(plain), "--quiet", "--workers", "1", *formats])
    _export(study, pseudo, capsys=capsys)
    plain_metas = sorted(
        (json.loads(p.read_text(encoding="utf-8")) for p in plain.glob("*/meta.json")), key=_meta_order
    )
    pseudo_metas = sorted(
        (json.loads(p.read_text(encoding="utf-8")) for p in pseudo.glob("*/meta.json")), key=_meta_order
    )
    assert len(plain_metas) == len(pseudo_metas) == 2
    # the search sees these values where an export without --pseudonymize writes them
    found = {leak.split(" ")[0] for leak in _leaks(plain, study["identity"])}
    assert found == {"id/folder", "name", "date", "uid"}, found
    for a, b in zip(plain_metas, pseudo_metas):
        for key in ("shape", "spacing", "ijk_to_lps", "ijk_to_ras", "arrays", "resampling", "options"):
            assert a[key] == b[key], key
        # the input files' sizes and times are recorded as a keyed hash only (a time tells when the data were
        # made); their paths and UIDs are compared below
        for record in b["source"]["input_files"]:
            assert set(record) == {"file", "sop_instance_uid", "stamp"}, record
            del record["stamp"]
        for record in a["source"]["input_files"]:
            del record["size"], record["mtime_ns"]
        # the doses' digest is keyed too (a plain and a pseudonymized export of one patient are not linked by it)
        digests = a["source"].pop("rtdose_digest"), b["source"].pop("rtdose_digest")
        assert all(d.isdigit() for d in digests) and digests[0] != digests[1], digests
        # the files' SHA-256: of the same files (unless a name held identity), pair.npz's the same (the same arrays,
        # the same bytes); the others hold the case id
        hashes = a.pop("file_sha256"), b.pop("file_sha256")
        assert hashes[0]["pair.npz"] == hashes[1]["pair.npz"]
        _same_but_identity(sorted(hashes[0]), sorted(hashes[1]), study["identity"], "meta.file_sha256")
        # every other value is the same too, unless it held an identifying value
        assert set(b) - set(a) == {"pseudonymized"}
        _same_but_identity(a, b, study["identity"], "meta")
        with np.load(plain / a["case_id"] / "pair.npz") as x, np.load(pseudo / b["case_id"] / "pair.npz") as y:
            assert sorted(x.files) == sorted(y.files)
            for name in x.files:
                np.testing.assert_array_equal(x[name], y[name])


def _meta_order(meta: dict) -> tuple:
    return (len(meta["related_beam_doses"]), meta["dose"]["max_gy_output"])


def _same_but_identity(plain, pseudo, identity: dict, where: str) -> None:
    """``pseudo`` equals ``plain`` except in strings of ``plain`` that hold an identifying value."""
    if isinstance(plain, dict):
        assert set(plain) <= set(pseudo), where
        for key in plain:
            _same_but_identity(plain[key], pseudo[key], identity, f"{where}.{key}")
    elif isinstance(plain, list):
        assert len(plain) == len(pseudo), where
        for n, (x, y) in enumerate(zip(plain, pseudo)):
            _same_but_identity(x, y, identity, f"{where}[{n}]")
    elif plain != pseudo:
        needles = identity["ids"] | identity["folders"] | identity["uids"]
        needles |= {s for d in identity["dates"] for s in _date_spellings(d)}
        text = str(plain)
        held = any(n in text for n in needles) or any(n.lower() in text.lower() for n in identity["names"])
        assert held, f"{where}: {plain!r} became {pseudo!r} though it identifies nobody"


def test_a_pseudonymized_export_never_holds_its_input(study, tmp_path, capsys):
    """Ninth hostile trial I7: an input inside OUT was a note only ("left alone ... better: an output folder beside
    the input"), so the folder meant for sharing held every identifying DICOM file. Under --pseudonymize it is
    refused before anything is written, the key included; a plain export there keeps its note."""
    import shutil

    out = tmp_path / "share"
    shutil.copytree(study["root"], out / "in")
    key = tmp_path / "keys" / "new.key"
    key.parent.mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["export", str(out / "in"), str(out), "--quiet", "--pseudonymize", "--key-file", str(key)])
    err = capsys.readouterr().err
    assert code == 2 and "inside the output folder of a pseudonymized export" in err, err
    assert "nothing was written" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no key, no map, no case
    assert main(["export", str(out / "in"), str(out), "--quiet", "--no-qa-png"]) in (0, 1)  # a damaged file: 1
    printed = capsys.readouterr()
    assert "inside the output folder: it is left alone" in printed.out + printed.err
    assert (out / "manifest.csv").is_file()


@pytest.mark.parametrize("how", ["a link", "a bind mount"])
def test_a_pseudonymized_export_never_reaches_its_input(study, tmp_path, capsys, how):
    """Tenth hostile trial J1: the input reachable inside OUT through a bind mount of it or a link to it (OUT/in)
    was exported with a note only: the folder meant for sharing carried every identifying DICOM file (I7's fix
    looked at paths). Refused before anything is written, the key included."""
    import os
    import shutil
    import subprocess

    root = tmp_path / "input"
    shutil.copytree(study["root"], root)
    out = tmp_path / "share"
    out.mkdir()
    if how == "a link":
        (out / "in").symlink_to(root, target_is_directory=True)
    else:
        (out / "in").mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(root), str(out / "in")]).returncode != 0:
            pytest.skip("no bind mount here (not root)")
    try:
        key = tmp_path / "keys" / "new.key"
        key.parent.mkdir()
        code = main(["export", str(root), str(out), "--quiet", "--pseudonymize", "--key-file", str(key)])
        err = capsys.readouterr().err
        assert code == 2 and "reaches the input folder" in err and "nothing was written" in err, err
        assert not key.exists() and sorted(p.name for p in out.iterdir()) == ["in"]
    finally:
        if how == "a bind mount":
            subprocess.run(["umount", str(out / "in")])


def test_key_and_map_never_inside_the_output(study, tmp_path, capsys):
    out = tmp_path / "out"
    assert _export(study, out, "--map-file", str(out / "map.csv")) == 2
    assert "inside the output folder" in capsys.readouterr().err
    assert _export(study, out, "--key-file", str(out / "k.key")) == 2
    assert "inside the output folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["export", str(study["root"]), str(out), "--keep-uids"])
    assert usage.value.code == 2
    capsys.readouterr()


def test_existing_key_is_used_and_a_bad_one_refused(study, tmp_path, capsys):
    key = tmp_path / "k.key"
    key.write_text("ab" * 32 + "\n")
    os.chmod(key, 0o600)
    out = tmp_path / "out"
    _export(study, out, "--key-file", str(key), capsys=capsys)
    assert key.read_text() == "ab" * 32 + "\n", "an existing key is never rewritten"
    key.write_text("not hex")
    assert _export(study, tmp_path / "out2", "--key-file", str(key)) == 2
    assert "cannot read the key" in capsys.readouterr().err


def test_inputs_hold_what_the_test_looks_for(study):
    """The search above is only meaningful if the inputs really carry the values."""
    ds = pydicom.dcmread(next((study["root"] / PATIENTS[0][0]).glob("*.dcm")))
    assert ds.PatientID == "PID-7731-XQ" and str(ds.PatientName) == "Quixote^Dulcinea"
    assert ds.PatientBirthDate == "19610315" and ds.StudyDate == "20230718"


def test_a_map_whose_values_hold_line_separators_reads_back(tmp_path):
    """Eighty-third hostile trial CE3: a name, ID or folder holding U+2028, U+2029, U+0085, a form feed, a vertical tab
    or U+001C was written into the map as it is, and read back by ``str.splitlines`` it broke the map: every later run
    (--resume, --append, another OUT sharing --map-file) was refused, exit 2. The map's lines end at CR and LF only."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer, read_map

    odd = "Doe\u2028John\u2029\x85\x0c\x0b\x1c^Line\nTwo"
    map_path = tmp_path / "map.csv"
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=Identity(), map_path=str(map_path))
    pseudonymizer.entries[("name", "P0123456789ab.01234567")] = odd
    pseudonymizer.patient("QX\u2028-77415")
    pseudonymizer.write_map(map_path)
    rows = read_map(map_path)
    assert rows[("name", "P0123456789ab.01234567")] == odd
    assert "QX\u2028-77415" in rows.values()
    pseudonymizer.write_map(map_path)  # (read, merged and written again: the same rows)
    assert read_map(map_path) == rows


def test_a_key_and_a_map_saved_with_a_byte_order_mark_are_read(tmp_path):
    """Eighty-first hostile trial CC5: a key file or map saved with a UTF-8 byte order mark (Notepad, Excel's "CSV
    UTF-8") refused --resume, exit 2: the key "'ascii' codec can't decode byte 0xef", the map "not DoseAlign's
    pseudonym map" though its first line after the mark is the header. Both are read; the map is written again
    without the mark, its rows kept."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer, load_or_create_key, read_map

    key_hex = "5a" * 32
    key = tmp_path / "site.key"
    key.write_bytes(b"\xef\xbb\xbf" + key_hex.encode() + b"\r\n")
    loaded, created = load_or_create_key(key)
    assert loaded == bytes.fromhex(key_hex) and not created
    map_path = tmp_path / "map.csv"
    map_path.write_bytes(b"\xef\xbb\xbfkind,pseudonym,original\r\npatient,P0123456789ab,QX-77415\r\n")
    assert read_map(map_path) == {("patient", "P0123456789ab"): "QX-77415"}
    pseudonymizer = Pseudonymizer(key=loaded, identity=Identity(), map_path=str(map_path))
    pseudonymizer.patient("ZY-1")
    pseudonymizer.write_map(map_path)
    written = map_path.read_bytes()
    assert written.startswith(b"kind,pseudonym,original") and b"QX-77415" in written and b"ZY-1" in written


@pytest.mark.parametrize("planted", ["fifo", "device", "dangling", "huge"])
def test_a_key_file_that_is_no_key_is_refused_at_once(tmp_path, planted):
    """A pipe, a device, a link to nothing or a huge file where the key should be: refused with the reason,
    never waited on, never read whole (a fourth hostile trial: a pipe blocked forever, /dev/zero filled memory,
    a dangling link recursed)."""
    import signal

    from DoseAlignLib.output.pseudonym import PseudonymError, load_or_create_key

    key = tmp_path / "key.txt"
    if planted == "fifo":
        os.mkfifo(key)
    elif planted == "device":
        key.symlink_to("/dev/zero")
    elif planted == "dangling":
        key.symlink_to(tmp_path / "nowhere")
    else:
        with open(key, "wb") as handle:
            handle.truncate(64 << 20)  # sparse: 64 MiB that cost no disk

    def blocked(*_args):
        raise TimeoutError("the key file blocked the export")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(10)  # a blocked open or read fails the test instead of hanging the run
    try:
        with pytest.raises(PseudonymError) as refused:
            load_or_create_key(key)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert str(key) in str(refused.value)
    expected = {"fifo": "not a regular file", "device": "not a regular file", "dangling": "link to nothing"}
    assert expected.get(planted, "bytes, a key file has") in str(refused.value)


@pytest.mark.parametrize(
    "planted, phrase",
    [
        ("important user text\n", "its first line is not kind,pseudonym,original"),
        ("line one\nline two\nline three\n", "its first line is not kind,pseudonym,original"),
        ("kind,pseudonym,original\npatient,abc\n", "line 2 has 2 fields, not 3"),
        (b"\xbe\xef binary \x00\xff", "UnicodeDecodeError"),
        ("kind,pseudonym,original\npatient,abc," + "x" * 200_000 + "\n", None),  # a long field is a map's right
        ("same-as-key", "the key file and the pseudonym map must be two files"),
    ],
)
def test_a_map_file_that_is_no_map_is_never_replaced(study, tmp_path, capsys, planted, phrase):
    # from the fifth hostile trial (E7, E8): a user's text file given as --map-file became the map, a key file given
    # as the map too was overwritten by it (the secret lost), a map of several lines ended in a KeyError traceback
    key = tmp_path / "k.key"
    map_file = tmp_path / "user.txt"
    out = tmp_path / "out"
    if planted == "same-as-key":
        code = _export(study, out, "--key-file", str(key), "--map-file", str(key))
        assert code == 2 and phrase in capsys.readouterr().err
        assert not key.exists() and not out.exists()
        return
    if isinstance(planted, bytes):
        map_file.write_bytes(planted)
    else:
        map_file.write_text(planted, encoding="utf-8")
    before = map_file.read_bytes()
    code = _export(study, out, "--key-file", str(key), "--map-file", str(map_file))
    err = capsys.readouterr().err
    if phrase is None:  # a real map: merged, its rows kept
        assert code == 1  # the study's damaged file fails its case, the others are ok
        from DoseAlignLib.output.pseudonym import read_map

        rows = read_map(map_file)
        assert rows[("patient", "abc")] == "x" * 200_000 and len(rows) > 1
        return
    assert code == 2 and phrase in err and str(map_file) in err and "Traceback" not in err, err
    assert map_file.read_bytes() == before, "a file that is no map is never replaced"
    assert not out.exists() and not key.exists(), "refused before anything is written"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    import zlib

    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def test_the_leak_search_reads_text_and_not_pixels(tmp_path):
    """The search above must find a name wherever an output can hold text, and must not report one that only
    turns up by chance among pixel or voxel bytes: a CI run once failed on ``伟`` (3 bytes) in qa.png's IDAT."""
    import zlib

    needle = "伟".encode()
    hidden = np.frombuffer(b"\x01\x02" + needle + b"\x03", dtype=np.uint8)  # a name's bytes as mere numbers
    out = tmp_path / "out"
    out.mkdir()
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", bytes(13)) + _png_chunk(b"IDAT", hidden.tobytes())
    (out / "pixels.png").write_bytes(png + _png_chunk(b"IEND", b""))
    (out / "text.png").write_bytes(png + _png_chunk(b"tEXt", b"Title\0" + needle) + _png_chunk(b"IEND", b""))
    packed = _png_chunk(b"zTXt", b"Title\0\0" + zlib.compress(needle))
    (out / "packed.png").write_bytes(png + packed + _png_chunk(b"IEND", b""))
    np.savez(out / "numbers.npz", masks=hidden, dose=np.frombuffer(needle + b"\0", dtype="<f4"))
    np.savez_compressed(out / "names.npz", names=np.array(["PTV_伟"]))
    (out / "header.nrrd").write_bytes(b"NRRD0004\ncontent: \xe4\xbc\x9f\n\n" + hidden.tobytes())
    (out / "payload.nrrd").write_bytes(b"NRRD0004\ntype: uint8\n\n" + hidden.tobytes())
    expected = {"text.png", "packed.png", "names.npz", "header.nrrd"}
    if importlib.util.find_spec("nibabel"):
        import nibabel

        image = nibabel.Nifti1Image(hidden.reshape(-1, 1, 1), np.eye(4))  # the first axis runs fastest on disk
        nibabel.save(image, out / "voxels.nii.gz")
        image.header["descrip"] = needle
        nibabel.save(image, out / "described.nii.gz")
        expected.add("described.nii.gz")
    if importlib.util.find_spec("h5py"):
        import h5py

        with h5py.File(out / "numbers.h5", "w") as handle:
            handle.create_dataset("plain", data=np.tile(hidden, 64))
            handle.create_dataset("chunked", data=np.tile(hidden, (64, 8)), chunks=(8, 8), compression="gzip")
            handle.create_dataset("stored", data=np.tile(hidden, (64, 8)), chunks=(8, 8))
        for where in ("attribute", "group"):
            with h5py.File(out / f"{where}.h5", "w") as handle:
                group = handle.create_group("伟" if where == "group" else "case")
                group.create_dataset("masks", data=hidden)
                if where == "attribute":
                    group.attrs["mask_names"] = np.array(["PTV_伟"], dtype=h5py.string_dtype())
            expected.add(f"{where}.h5")
    found = {where.split(":")[0].split("@")[0] for where, data in _all_output_bytes(out) if needle in data}
    assert found == expected


def test_another_exports_pseudonyms_hold_no_id_of_this_input(tmp_path):
    """Fortieth hostile trial AN1 and its neighbours: a kept case of another input (--append, --shard) was read for this
    input's identity with its own pseudonyms taken for text: its input files' stamps, and as well its path tokens and
    case id, whose hex digits may hold a 4-digit PatientID (``d3808abcde1``). They are DoseAlign's; the same ID in
    its free text (an ROI name) is still found."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=Identity(patient_ids={"3808"}))
    meta = {
        "case_id": "P3808ab12cd34_plan_1ac1fea3",
        "patient_id": "P3808ab12cd34",
        "source": {
            "ct_files": ["d3808abcde1/f0123456789.dcm"],
            "input_files": [{"file": "f3808000aaa.dcm", "stamp": "ab3808cd12ef3456"}],
        },
        "links": ["CT 'd3808abcde1 + d0a1b2c3d4e' (12 slices)"],
    }
    assert pseudonymizer.leak_in_kept_case(tmp_path, meta) == ""
    assert pseudonymizer.guard.find("d3808abcde1"), "outside that case the token's digits are read as before"
    named = {**meta, "structures": {"names": ["PTV_3808"]}}
    assert pseudonymizer.leak_in_kept_case(tmp_path, named) == "a patient ID in meta.json"
    # a rewritten ROI name's keyed tag is DoseAlign's too (forty-second hostile trial AP9)
    tagged = {**meta, "structures": {"names": ["[removed]_ab3808cd"]}, "case_files": ["masks/removed_ab3808cd.nii.gz"]}
    assert pseudonymizer.leak_in_kept_case(tmp_path, tagged) == ""
    # an ROI name of a token's shape is the input's text, not a pseudonym (forty-second hostile trial AP1)
    shaped = {**meta, "structures": {"names": ["d3808a0b1c2"]}}
    assert pseudonymizer.leak_in_kept_case(tmp_path, shaped) == "a patient ID in meta.json"
    row = {"case_id": meta["case_id"], "files": "d3808abcde1/f0123456789.dcm", "ct_folder": "d3808abcde1"}
    with pseudonymizer.pseudonyms_of(row):
        assert not any(pseudonymizer.guard.find(value) for value in row.values())


def test_the_rows_of_many_damaged_files_are_pseudonymized_in_linear_time(monkeypatch):
    """Sixty-seventh hostile trial BO1: each row of a damaged file (no case) added its path tokens to the pseudonyms,
    and every token of every pseudonym was read again for the next row, and every input path looked for in each value:
    20 000 damaged files held a pseudonymized export for half an hour before any case. Each pseudonym is read once,
    and a value is searched for the paths it holds in one reading."""
    from DoseAlignLib.output import pseudonym
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    count = 300
    identity = Identity(patient_ids={"PX-1"})
    for n in range(count):
        identity.add_path(f"damaged/bad{n:05d}.dcm")
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=identity)
    pseudonymizer.input_root = "/data/in"
    read, real = [], pseudonym.own_tokens

    def counted(pseudonyms):
        pseudonyms = list(pseudonyms)
        read.append(len(pseudonyms))
        return real(pseudonyms)

    monkeypatch.setattr(pseudonym, "own_tokens", counted)
    rows = [
        pseudonymizer.row(
            {"case_id": f"bad{n:05d}", "status": "failed", "reason": f"damaged/bad{n:05d}.dcm: not DICOM", "files": "1"}
        )
        for n in range(count)
    ]
    assert not [r for n, r in enumerate(rows) if f"bad{n:05d}" in r["reason"]], rows[:2]
    assert sum(read) < 10 * count, f"{sum(read)} pseudonyms read for {count} rows"


def test_dosealigns_tag_numbers_and_counts_in_another_inputs_row_are_no_identity_of_this_input():
    """Seventy-fifth hostile trial BW2 and BW3: --append was refused (exit 2) because another input's kept failed row
    said where its damaged file ended: the tag (0029,1ADA) was read as a patient Ada beside a digit, and its size
    "(1650000 bytes)" as a Unix time of a birth date 1970-01-20 (150423 bytes: 15.04.23). In DoseAlign's prose of a
    kept case its tag numbers and counts are no identity; this input's names and dates written there are still found,
    and in its own outputs the check reads them as before."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    identity = Identity(dates={"19700120", "20230415"})
    identity.add_name("Lovelace^Ada")
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=identity)
    for reason in (
        "f9915a0a5b0.dcm: (0029,1ADA) private tag: the file ends inside this element (1650000 bytes): it is truncated",
        "fd242c3173f.dcm: (ADA1,0D3E) private tag: the file is 150423 bytes long",
    ):
        row = {"case_id": "damaged-file_dd513f2914", "status": "failed", "reason": reason}
        assert pseudonymizer.leak_in_kept_row(row) == "", reason
    for reason, leak in (
        ("f99.dcm: ROI 'PTV_Ada1' is empty", "a patient name"),
        ("f99.dcm: StudyDate 2023-04-15 is not the plan's", "a date"),
        ("f99.dcm: written 20.01.1970", "a date"),
    ):
        row = {"case_id": "damaged-file_dd513f2914", "status": "failed", "reason": reason}
        assert pseudonymizer.leak_in_kept_row(row) == f"{leak} in manifest.csv", reason
    assert pseudonymizer.guard.find("(1650000 bytes)") == "a date", "in this input's own outputs, as before"


def test_dosealigns_own_words_are_no_surname_in_its_own_text():
    """Seventy-seventh hostile trial BY2, BY3, BY8: patients Frame and Neighbour. --append was refused beside another
    input's row saying "NumberOfFrames 50", and beside any ok case, whose meta.json describes the DVH method ("its
    neighbour's section"); in the patient's own run the rewriting cut "NumberOf[removed]s" and "[removed]'s". Those
    are DoseAlign's words (a DICOM keyword, a plural); the same names in an ROI name are removed."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    prose = [
        "f4e.dcm: (7FE0,0010) PixelData: PixelData holds 503343 bytes, but Rows 84 x Columns 120 x NumberOfFrames 50",
        "each contour encloses under 1 % of its neighbour's) the neighbour's section scaled",
    ]
    for name, roi in (("Frame^Janet", "Frame_ring"), ("Neighbour^Tom", "Neighbour_PTV")):
        identity = Identity()
        identity.add_name(name)
        pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=identity)
        for text in prose:
            row = {"case_id": "damaged-file_02896bef92", "status": "failed", "reason": text}
            assert pseudonymizer.leak_in_kept_row(row) == "", (name, text)
            assert pseudonymizer.text(text) == text, (name, text)
        surname = name.split("^")[0].casefold()
        assert surname not in pseudonymizer.name(roi).casefold(), (name, pseudonymizer.name(roi))
        assert pseudonymizer.guard.find(roi, own=False) == "a patient name", roi


def test_dosealigns_wording_in_another_inputs_row_is_no_surname_a_quoted_roi_is():
    """Seventy-seventh hostile trial BY2: a patient Long beside another input's kept row "the file is 100 bytes long"
    refused --append (exit 2). Taking every word of DoseAlign's messages as its own let the surname stand in clear in
    prose quoting an ROI 'Long' (seventy-ninth CA1, CA4), so only a word that forms a pair of DoseAlign's wording with
    its neighbour is no name there, and never inside quotes."""
    from DoseAlignLib.output.message_pairs import message_pairs
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    assert ("bytes", "long") in message_pairs() and ("roi", "long") not in message_pairs()
    identity = Identity()
    identity.add_name("Long^Wei")
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=identity)
    row = {"case_id": "damaged-file_02896bef92", "status": "failed"}
    for reason in (
        "f9a.dcm: the file is 100 bytes long: it ends before the DICOM header and its (0002,0010) TransferSyntaxUID",
        "f9a.dcm: the data set ends after (0018,0050) SliceThickness (the file is 600 bytes long)",
    ):
        assert pseudonymizer.leak_in_kept_row({**row, "reason": reason}) == "", reason
    for reason in (
        "f9a.dcm: ROI 'Long' is empty",
        'f9a.dcm: ROI "PTV Long" is empty',
        "f9a.dcm: the file is 100 bytes 'long'",
        "f9a.dcm: StudyDescription Long Wei",
    ):
        assert pseudonymizer.leak_in_kept_row({**row, "reason": reason}) == "a patient name in manifest.csv", reason
    assert pseudonymizer.guard.find("the file is 100 bytes long") == "a patient name", (
        "this input's own text: as before"
    )


def test_uids_in_other_scripts_wrapped_lines_and_as_uuids_are_removed_and_found():
    """Seventy-seventh hostile trial BY1, BY6, BY7: a vendor UID (no component of 16 digits) written with ``^`` between
    its parts, in fullwidth digits or with fullwidth stops was found by the check but not removed (the case failed,
    "please report it"); one wrapped across lines with an indent, and a 2.25 UID written as the UUID it holds, stood
    in clear, ok. Each is removed, and the check finds each on its own."""
    import uuid

    from DoseAlignLib.output.pseudonym import REMOVED, Identity, Pseudonymizer

    vendor = "1.3.12.2.1107.5.1.4.95999.300000230415071212345"
    held = uuid.UUID("059f5878-b7b2-993a-b523-76e012f90ae2")
    uuid_uid = f"2.25.{held.int}"
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=Identity(uids={vendor, uuid_uid}))
    fullwidth = vendor.translate(
        str.maketrans("0123456789.", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19\uff0e")
    )
    for text in (
        "PTV_" + vendor.replace(".", "^"),
        "PTV " + fullwidth,
        "CT " + vendor.replace(".", "\uff0e"),
        "series " + vendor[:20] + "\n        " + vendor[20:],
        f"study {held}",
        f"study {held.hex.upper()}",
    ):
        assert pseudonymizer.guard.find(text, own=False) == "a UID", text
        rewritten = pseudonymizer.name(text)
        assert REMOVED in rewritten and not pseudonymizer.guard.find(rewritten, own=False), (text, rewritten)
    assert pseudonymizer.name("PTV 1.3.12 dose 45 Gy") == "PTV 1.3.12 dose 45 Gy"


def test_a_date_of_this_input_quoted_in_another_inputs_prose_is_found_a_count_is_not():
    """Seventy-seventh hostile trial BY4, BW3's fix too wide: every run of six digits or more in another input's
    kept prose was taken for a count, and this input's birth date quoted there ("DoseType 19720304 is not
    PHYSICAL") passed --append. Only a count of what it counts (bytes, voxels, ...) is no date there."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=Identity(dates={"19720304", "19700120"}))
    row = {"case_id": "P0123456789ab_plan_01234567", "status": "failed"}
    quoted = {**row, "reason": "f.dcm: (3004,0004) DoseType: DoseType 19720304 is not PHYSICAL or EFFECTIVE"}
    assert pseudonymizer.leak_in_kept_row(quoted) == "a date in manifest.csv"
    counted = {**row, "reason": "f.dcm: the file ends inside this element (1650000 bytes): it is truncated"}
    assert pseudonymizer.leak_in_kept_row(counted) == ""


def test_another_inputs_stamps_in_its_openkbp_geometry_are_its_own(tmp_path):
    """Seventy-seventh hostile trial BY5: another input's keyed file stamp, read as DoseAlign's in its meta.json, was
    read as text in its openkbp/geometry.json, where ``323660d9458abebe`` spelt a patient Abebe: --append refused."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    identity = Identity()
    identity.add_name("Bikila^Abebe")
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=identity)
    meta = {
        "case_id": "Pe7424a89076a_plan_db19d423",
        "patient_id": "Pe7424a89076a",
        "source": {"input_files": [{"file": "f0123456789.dcm", "stamp": "323660d9458abebe"}]},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (tmp_path / "openkbp").mkdir()
    geometry = {"input_files": [{"file": "f0123456789.dcm", "stamp": "323660d9458abebe"}]}
    (tmp_path / "openkbp" / "geometry.json").write_text(json.dumps(geometry), encoding="utf-8")
    assert pseudonymizer.leak_in_kept_case(tmp_path, meta) == ""
    geometry["note"] = "Abebe"
    (tmp_path / "openkbp" / "geometry.json").write_text(json.dumps(geometry), encoding="utf-8")
    assert pseudonymizer.leak_in_kept_case(tmp_path, meta) == "a patient name in openkbp/geometry.json"


def test_a_surname_that_is_a_common_word_is_removed_from_prose_quoting_the_roi():
    """Seventy-ninth hostile trial CA1, CA4: with every word of DoseAlign's messages taken for its own, a patient Long
    whose ROIs ``Long`` and ``PTV Long`` one --roi-map channel joins stood in clear in the warning quoting them, and
    ``--centre roi:Long`` in options.centre. Such a word is no word of DoseAlign's text: it is removed there, and the
    check finds it."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    identity = Identity()
    identity.add_name("Long^Mei")
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=identity)
    warning = "mask channel 'Target' (--rois) is the union of 3 ROIs that map to it: 'Long', 'PTV Long'"
    assert "Long" not in pseudonymizer.text(warning)
    assert pseudonymizer.guard.find(warning) == "a patient name"
    assert "Long" not in pseudonymizer.text("roi:Long")


def test_a_uuid_of_a_uid_with_other_separators_is_removed_and_found():
    """Seventy-ninth hostile trial CA2: a 2.25 UID written as its UUID with ``_``, blanks or ``:`` between the groups
    stood in clear, ok (only ``-`` was read)."""
    import uuid

    from DoseAlignLib.output.pseudonym import REMOVED, Identity, Pseudonymizer

    held = uuid.UUID("059f5878-b7b2-993a-b523-76e012f90ae2")
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=Identity(uids={f"2.25.{held.int}"}))
    for separator in ("_", " ", ":"):
        text = "PTV " + str(held).replace("-", separator)
        assert pseudonymizer.guard.find(text, own=False) == "a UID", text
        assert pseudonymizer.name(text) == f"PTV {REMOVED}", text


def test_a_day_of_three_digits_is_no_date_on_either_side():
    """A fuzz of the rewriting against the check (the eighty-first trial's, run again): ``006.06.2024`` was kept by
    the rewriting (a day is one or two digits) and read as 2024-06-06 by the check, so the case failed "please report
    it". Neither side reads a day or month of three digits; ``06.06.2024`` is the date on both."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=Identity(dates={"20240606"}))
    for text in ("006.06.2024", "PTV_006.06.2024_b"):
        assert pseudonymizer.name(text) == text and pseudonymizer.guard.find(text, own=False) == "", text
    assert pseudonymizer.guard.find("PTV 06.06.2024") == "a date" and "[removed]" in pseudonymizer.name(
        "PTV 06.06.2024"
    )


def test_an_id_glued_to_a_removed_name_is_removed_too():
    """A fuzz of the rewriting against the check (the eighty-first trial's, run again): ``Lung2024001`` for a patient
    Lung^Wai Man with PatientID LW-2024-001 was rewritten ``[removed]2024001``: the ID's digits, glued to the surname,
    were no word of their own, but after the surname's removal the check read them alone, and the case failed "please
    report it". What a removal leaves standing alone is read again."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    identity = Identity(patient_ids={"LW-2024-001"})
    identity.add_name("Lung^Wai Man")
    pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=identity)
    for text in ("Lung2024001", "PTV_Lung2024001", "CTV Lung2024001 boost"):
        for rewritten in (pseudonymizer.name(text), pseudonymizer.text(text)):
            assert "2024001" not in rewritten and not pseudonymizer.guard.find(rewritten, own=False), rewritten
    assert pseudonymizer.name("PTV_Lung2024001") == "PTV_[removed]"
    assert pseudonymizer.name("PTV_70_Lung") == "PTV_70_[removed]"


def test_a_date_whose_month_name_carries_a_mark_is_removed():
    """Eighty-seventh hostile trial CI2: a birth date written with a month's abbreviation that carries a mark (German
    ``14. Mär 1958``, French ``24 déc. 1958``, ``24-DÉC-1958``) was read by the check, which reads dates folded, and
    kept by the rewriting: the case failed "please report it". The rewriting reads them folded too."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    for date, text in (
        ("19580314", "GTV 14. Mär 1958"),
        ("19581224", "PTV 24 déc. 1958"),
        ("19581224", "PTV_24-DÉC-1958"),
        ("19580314", "GTV 14. Ma\u0308r 1958"),  # (decomposed, as macOS writes it: eighty-eighth trial CJ1)
    ):
        pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=Identity(dates={date}))
        for rewritten in (pseudonymizer.name(text), pseudonymizer.text(text)):
            assert "1958" not in rewritten and not pseudonymizer.guard.find(rewritten, own=False), rewritten
    innocent = Pseudonymizer(key=b"k" * 32, identity=Identity(dates={"19581224"}))
    assert innocent.name("Cœur déc 1957") == "Cœur déc 1957"  # (another year: no date of the input, marks kept)


def test_an_id_of_digits_in_groups_with_a_version_after_it_is_removed_and_found():
    """Eighty-seventh hostile trial CI3: a PatientID ``1234-5678`` in an ROI name ``PTV_1234-5678.1`` (a version after
    it) stood in clear in every output and file name, ok: ``5678.1`` was read as a number by both sides; with a blank
    before it the check found it and the case failed "please report it". A separator among an ID's last digits makes
    the point after them no decimal point."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    for patient_id, texts in (
        ("1234-5678", ("PTV_1234-5678.1", "PTV 1234-5678.1", "PTV_1234-5678.2_Boost")),
        ("12345678", ("PTV 1234/5678.1", "PTV_1234/5678.1")),
    ):
        pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=Identity(patient_ids={patient_id}))
        for text in texts:
            assert pseudonymizer.guard.find(text, own=False) == "a patient ID", text
            rewritten = pseudonymizer.name(text)
            assert "[removed]" in rewritten and not pseudonymizer.guard.find(rewritten, own=False), rewritten
        assert pseudonymizer.name("d 5678.1") == "d 5678.1" and pseudonymizer.name("v 1234.5678") == "v 1234.5678"
    # a blank of any kind before the last digits is no separator of the ID's groups there, on both sides (a no-break
    # space failed the case "please report it": eighty-eighth trial CJ2)
    grouped = Pseudonymizer(key=b"k" * 32, identity=Identity(patient_ids={"1234-5678"}))
    for text in ("PTV 1234\u00a05678.1", "PTV 1234\u20095678.1"):
        assert not grouped.guard.find(grouped.name(text), own=False), text


def test_an_id_of_digit_groups_written_with_points_is_removed_and_found():
    """Eighty-eighth hostile trial CJ7: a PatientID stored with dashes (``123-456-789``) and written with points in an
    ROI name (``PTV 123.456.789``) stood in clear in every output and file name, ok: only IDs of digits alone were
    looked for as numbers grouped by points. An ID of digit groups is one too."""
    from DoseAlignLib.output.pseudonym import Identity, Pseudonymizer

    for patient_id, text in (("123-456-789", "PTV 123.456.789"), ("1234-5678", "PTV 12.345.678")):
        pseudonymizer = Pseudonymizer(key=b"k" * 32, identity=Identity(patient_ids={patient_id}))
        assert pseudonymizer.guard.find(text, own=False) == "a patient ID", text
        rewritten = pseudonymizer.name(text)
        assert rewritten == "PTV [removed]" and not pseudonymizer.guard.find(rewritten, own=False), rewritten
        assert pseudonymizer.name("x 1.234.567") == "x 1.234.567"
