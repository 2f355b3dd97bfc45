"""Full reads of a kept case's format files, for ``--resume``: is each one whole, byte for byte?

:func:`~DoseAlignLib.output.case_folder.case_problem` reads headers and lengths only; a byte changed inside a
file of the right length (bit rot, a bad copy) is found only by reading the data. Each file is read once,
streamed, and its data thrown away:

- gzip data (``.nii.gz``, NRRD ``encoding: gzip``): inflated in pieces, so that zlib checks each member's
  CRC-32 and length; the inflated length must be what the header says (NIfTI: ``vox_offset`` plus the
  voxels' bytes; NRRD: the product of ``sizes`` times the size of ``type``);
- raw data (``.nii``, NRRD ``encoding: raw``): only the length can be checked (there is no checksum);
- ``case.h5``: every dataset read whole, a slab of chunks at a time, so that HDF5 inflates each chunk
  (a changed byte in deflate data fails zlib's Adler-32 or the stream itself); HDF5 keeps no checksum of
  its text attributes, so ``meta_json``, ``case_id``, ``patient_id`` and ``mask_names`` are compared with
  meta.json (the numbers: the grid's, with :meth:`~DoseAlignLib.output.formats.ExportFormats.missing`).

:func:`format_file_problem` says why a file fails (None when it passes, or when its kind is not checked).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import hdf5_text
from ..limits import limit, megabytes, open_regular

#: Bytes read at a time, and the most inflated at a time (a piece of zeros inflates ~1000-fold).
_READ = 1 << 20
_INFLATE = 1 << 22
#: The longest NRRD header read (DoseAlign's are under 1 KiB).
_NRRD_HEADER_MAX = 1 << 16
#: Bytes per value of each NRRD ``type`` (the spec's names and their synonyms).
_NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int"), 8),
    **dict.fromkeys(("int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int"), 8),
    **dict.fromkeys(("uint64", "uint64_t", "double"), 8),
    "float": 4,
}


class _Damaged(Exception):
    """Why a file fails its check (the text of the note)."""


def format_file_problem(path: Path, name: str, meta: Optional[dict] = None) -> Optional[str]:
    """Why the format file ``path`` (called ``name`` in the note) is not whole: a gzip stream that fails its
    CRC-32 or ends early, data of another length than its header says, an HDF5 chunk that does not inflate;
    None when it passes, or for a kind of file not checked here (no checksum and no length to compare). With
    ``meta`` (the case's meta.json) a case.h5's text attributes must be what it says."""
    try:
        if name.endswith(".nii.gz"):
            _nifti_gz(path)
        elif name.endswith(".nii"):
            _nifti_raw(path)
        elif name.endswith(".nrrd"):
            _nrrd(path)
        elif name.endswith(".h5"):
            _hdf5(path, meta)
        else:
            return None
    except _Damaged as error:
        return f"{name} fails its check: {error}"
    except (OSError, EOFError, ValueError, struct.error) as error:
        return f"{name} fails its check: {type(error).__name__}: {error}"
    return None


def _inflate(handle, first: bytes = b"", most=None) -> tuple:
    """Inflate the gzip data read from ``handle`` (after ``first``, bytes already read) to their end, checking
    every member's CRC-32 and length (zlib does), at most :data:`_INFLATE` bytes at a time, thrown away; return
    ``(inflated length, its first 352 bytes)``. Zeros after the last member are allowed (as gzip allows them).
    ``most``: the length the header says (an int, or a function of the first 352 bytes): inflating stops once it
    is passed (a planted tail of 4 GiB of zeros took 10.8 s to be found: eighteenth hostile trial R11)."""
    length, head = 0, b""
    stream = None
    data = first
    try:
        while True:
            if not data:
                data = handle.read(_READ)
                if not data:
                    break
            if stream is not None and stream.eof:  # after a member: another one, or zeros, or damage
                if len(data) < 2:  # a gzip magic number may straddle two reads
                    data += handle.read(1)
                if not data.startswith(b"\x1f\x8b"):
                    if data.strip(b"\0"):
                        raise _Damaged("it holds bytes after the end of its gzip data")
                    data = b""
                    continue
                stream = None
            if stream is None:
                stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = stream.decompress(data, _INFLATE)
            while True:
                if len(head) < 352:
                    head += out[: 352 - len(head)]
                length += len(out)
                if callable(most) and len(head) >= 352:
                    most = most(head)
                if isinstance(most, int) and length > most:
                    raise _Damaged(f"its data inflate to more than the {most} bytes its header says")
                # input left over, or output held back (a full piece): inflate on
                if stream.eof or not (stream.unconsumed_tail or len(out) == _INFLATE):
                    break
                out = stream.decompress(stream.unconsumed_tail, _INFLATE)
            data = stream.unused_data if stream.eof else b""
    except zlib.error as error:
        raise _Damaged(f"its gzip data are damaged ({error})") from None
    if stream is None:
        raise _Damaged("it holds no gzip data")
    if not stream.eof:
        raise _Damaged("its gzip data are cut short")
    return length, head


def _nifti_voxel_end(header: bytes) -> int:
    """Where a NIfTI-1 file's voxels end, from its header: ``vox_offset`` plus the voxels' bytes."""
    if len(header) < 348:
        raise _Damaged("its NIfTI header is cut short")
    order = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    if struct.unpack(order + "i", header[:4])[0] != 348:
        raise _Damaged("it holds no NIfTI-1 header")
    dims = struct.unpack(order + "8h", header[40:56])
    bits = struct.unpack(order + "h", header[72:74])[0]
    offset = struct.unpack(order + "f", header[108:112])[0]
    voxels = 1
    for size in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
        voxels *= max(int(size), 1)
    return int(offset) + voxels * max(int(bits), 0) // 8


def _nifti_gz(path: Path) -> None:
    with open_regular(path) as handle:
        length, head = _inflate(handle, most=_nifti_voxel_end)
    expected = _nifti_voxel_end(head)
    if length != expected:
        raise _Damaged(f"it inflates to {length} bytes, its NIfTI header says {expected}")


def _nifti_raw(path: Path) -> None:
    with open_regular(path) as handle:
        head = handle.read(352)
        handle.seek(0, 2)
        length = handle.tell()
    expected = _nifti_voxel_end(head)
    if length != expected:
        raise _Damaged(f"it holds {length} bytes, its NIfTI header says {expected}")


def _nrrd(path: Path) -> None:
    with open_regular(path) as handle:
        head = handle.read(_NRRD_HEADER_MAX)
        end = head.find(b"\n\n")
        if not head.startswith(b"NRRD") or end < 0:
            raise _Damaged("it holds no NRRD header (or no blank line after it)")
        fields = {}  # "field: value" lines; comments (#) and key/value pairs (key:=value) left out
        for line in head[:end].decode("latin-1").splitlines()[1:]:
            field, pair = line.find(": "), line.find(":=")
            if not line.startswith("#") and field > 0 and not 0 <= pair < field:
                fields[line[:field].strip().lower()] = line[field + 2 :].strip()
        try:
            sizes = [int(n) for n in fields["sizes"].split()]
            size = _NRRD_TYPES[fields["type"].lower()]
            encoding = fields.get("encoding", "").lower()
        except (KeyError, ValueError):
            raise _Damaged("its NRRD header has no readable type or sizes") from None
        detached = [key for key in ("data file", "datafile", "line skip", "byte skip") if key in fields]
        if detached:  # DoseAlign writes attached data: a reader would take other bytes than the check (R10)
            raise _Damaged(f"its NRRD header has '{detached[0]}': the data are not the ones DoseAlign wrote")
        expected = size
        for n in sizes:
            expected *= n
        if encoding == "raw":
            handle.seek(0, 2)
            length = handle.tell() - (end + 2)
            if length != expected:
                raise _Damaged(f"its data hold {length} bytes, its NRRD header says {expected}")
        elif encoding in ("gzip", "gz"):
            length, _head = _inflate(handle, head[end + 2 :], most=expected)
            if length != expected:
                raise _Damaged(f"its data inflate to {length} bytes, its NRRD header says {expected}")


#: The most objects :func:`outside_links` looks at in one file (a file DoseAlign writes holds a few per case).
MAX_CHECKED_OBJECTS = 1_000_000


def outside_links(h5py, handle) -> Optional[str]:
    """Where an HDF5 file read back from OUT reaches outside itself (None when it does not): an external link, a
    dataset stored in other files or a virtual dataset. DoseAlign writes none; libhdf5 opens such a target when the
    link or dataset is read, and a named pipe there blocked the export for good, SIGTERM included (eighteenth
    hostile trial R9). Links are looked at without being followed."""
    pending, seen = [handle], 0
    while pending:
        group = pending.pop()
        for name in group:
            seen += 1
            if seen > MAX_CHECKED_OBJECTS:
                return f"it holds more than {MAX_CHECKED_OBJECTS:,} objects"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                return f"{group.name.rstrip('/')}/{name} is a link to another file ({link.filename})"
            if isinstance(link, h5py.SoftLink):
                continue  # a path inside this file: what it names is reached by its own hard link
            item = group.get(name)
            if isinstance(item, h5py.Group):
                pending.append(item)
            elif isinstance(item, h5py.Dataset) and (item.external or item.is_virtual):
                return f"{item.name} is stored in other files"
    return None


def besides_arrays(h5py, handle, path: Path, datasets: Optional[list] = None) -> int:
    """The bytes an HDF5 file holds besides its datasets' stored data (its attributes, meta_json above all), known
    before any attribute is read."""
    if datasets is None:
        datasets = []
        handle.visititems(lambda _name, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
    return Path(path).stat().st_size - sum(int(d.id.get_storage_size()) for d in datasets)


def _hdf5(path: Path, meta: Optional[dict]) -> None:
    try:
        import h5py
    except ImportError:  # not installed: nothing can read the file, nothing checks it
        return
    import numpy as np

    datasets: list = []
    try:
        with h5py.File(path, "r") as handle:
            outside = outside_links(h5py, handle)
            if outside is not None:
                raise _Damaged(f"{outside}: not a file DoseAlign writes")
            handle.visititems(lambda _name, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
            if meta is not None:  # before any chunk is read: only DoseAlign's datasets, of the case's shape (R12)
                _h5_datasets_agree(datasets, meta)
            # what the file holds besides its datasets' chunks (its attributes, meta_json above all) is read back as
            # meta.json is, within DOSEALIGN_META_MB: a planted meta_json of 400 MB took 2.75 GB (nineteenth trial S8)
            besides = besides_arrays(h5py, handle, path, datasets)
            most = 2 * megabytes(limit("DOSEALIGN_META_MB")) + (1 << 20)
            if besides > most:
                raise _Damaged(f"it holds {besides:,} bytes besides its arrays, more than {most:,} (DOSEALIGN_META_MB)")
            for dataset in datasets:
                shape = dataset.shape or ()
                if len(shape) < 3 or dataset.chunks is None:  # small, or one block: read whole
                    dataset[()]
                    continue
                steps = dataset.chunks[:-2]  # a slab: one chunk deep on each leading axis, whole planes
                for index in np.ndindex(*[-(-n // s) for n, s in zip(shape[:-2], steps)]):
                    dataset[tuple(slice(i * s, (i + 1) * s) for i, s in zip(index, steps))]
            if meta is not None:
                _h5_text_agrees(handle.attrs, meta)
    except (OSError, RuntimeError, KeyError) as error:
        raise _Damaged(f"HDF5 cannot read it ({error})") from None


#: The datasets a case.h5 holds, by name: whether one leading axis (the ROIs) comes before the case's shape.
_H5_DATASETS = {"ct": False, "dose": False, "body": False, "masks": True}


def _h5_datasets_agree(datasets: list, meta: dict) -> None:
    """A case.h5 holds only the datasets DoseAlign writes, each of the case's shape (meta.json's ``shape``; masks one
    per ROI of ``structures.names``): a planted dataset declared 100000 x 100000 x 100 (no bytes in the file) held
    --resume for minutes while its empty chunks were read (eighteenth hostile trial R12)."""
    shape = meta.get("shape")
    names = meta["structures"].get("names") if isinstance(meta.get("structures"), dict) else None
    if not isinstance(shape, list):
        return  # case_problem says what meta.json lacks
    for dataset in datasets:
        name = dataset.name.rsplit("/", 1)[-1]
        leading = _H5_DATASETS.get(name)
        if leading is None:
            raise _Damaged(f"it holds the dataset {dataset.name}, which DoseAlign does not write")
        wanted = ((len(names) if isinstance(names, list) else dataset.shape[0],) if leading else ()) + tuple(shape)
        if tuple(dataset.shape or ()) != wanted:
            raise _Damaged(f"its dataset {name} has the shape {dataset.shape}, meta.json says {wanted}")


#: What meta.json gains after a case.h5 is written: its formats and files, and the storage of a layout or dtype other
#: than the default (nineteenth hostile trial S3: every --resume called such a fresh case.h5 damaged).
_ADDED_AFTER_H5 = ("exports", "case_files", "storage", "file_sha256")


def _h5_text_agrees(attrs, meta: dict) -> None:
    """HDF5 keeps no checksum of attributes (variable-length strings, a large ``meta_json``): those a case.h5
    holds of its case must be what meta.json says (``meta_json`` is meta.json less ``exports`` and ``case_files``)."""

    def text(value) -> str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def plain(value) -> str:
        kept = {k: v for k, v in value.items() if k not in _ADDED_AFTER_H5} if isinstance(value, dict) else value
        return json.dumps(kept, sort_keys=True)

    if "meta_json" in attrs:
        try:
            recorded = json.loads(text(attrs["meta_json"]))
        except (ValueError, RecursionError):
            raise _Damaged("its meta_json attribute is no JSON text") from None
        if plain(recorded) != plain(meta):
            raise _Damaged("its meta_json attribute is not what meta.json says")
    for key, wanted in (("case_id", meta.get("case_id")), ("patient_id", meta.get("patient_id"))):
        if key in attrs and wanted is not None and text(attrs[key]) != hdf5_text(wanted):
            raise _Damaged(f"its {key} attribute is not what meta.json says")
    names = meta["structures"].get("names") if isinstance(meta.get("structures"), dict) else None
    if (
        "mask_names" in attrs
        and isinstance(names, list)
        and [text(n) for n in attrs["mask_names"]] != [hdf5_text(n) for n in names]
    ):
        raise _Damaged("its mask_names attribute is not what meta.json says (structures.names)")


def values_digest(path: Path) -> str:
    """SHA-256 of an HDF5 file's attributes and datasets as they read (each top-level one in name order: its name,
    dtype, shape, attributes and values, read a slice at a time), not of its bytes: HDF5 1.14 writes the time into each file, so its bytes differ
    from run to run while what it holds does not. meta.json records it for case.h5 (``file_sha256``): a case.h5 whose
    dose was changed in place, attributes kept, was kept by --resume (twenty-sixth hostile trial Z4). An object that
    is not a dataset of this file (a link, a group, data stored elsewhere) raises OSError: not the file written."""
    import hashlib

    import h5py  # (only an HDF5 format's files are digested so: h5py is there)

    digest = hashlib.sha256()
    with h5py.File(path, "r") as handle:
        if outside_links(h5py, handle):
            raise OSError(f"{Path(path).name} reaches outside itself")
        # the attributes too: spacing, origin or a dataset's units changed in place were kept (twenty-seventh
        # hostile trial AA7)
        digest.update(_attributes_text(handle.attrs).encode("utf-8"))
        for name in sorted(handle):
            item = handle.get(name, getlink=True)
            dataset = handle[name] if isinstance(item, h5py.HardLink) else None
            if not isinstance(dataset, h5py.Dataset):
                raise OSError(f"{Path(path).name}: {name} is no dataset DoseAlign writes")
            digest.update(json.dumps([name, dataset.dtype.str, list(dataset.shape)]).encode("utf-8"))
            digest.update(_attributes_text(dataset.attrs).encode("utf-8"))
            if not dataset.shape:
                digest.update(np.ascontiguousarray(dataset[()]).tobytes())
                continue
            for index in range(dataset.shape[0]):
                digest.update(np.ascontiguousarray(dataset[index]).tobytes())
    return digest.hexdigest()


def _attributes_text(attrs) -> str:
    """An HDF5 object's attributes as one text, in name order (strings as text, whether h5py reads them as str or
    bytes; arrays as lists)."""

    def plain(value):
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, np.ndarray):
            return [plain(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    return json.dumps([[name, plain(attrs[name])] for name in sorted(attrs)], default=str)
