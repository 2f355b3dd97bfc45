"""Writing ``pair.npz``: what ``numpy.savez`` writes, with reproducible bytes and without its costs.

The archive is made by :mod:`zipfile` and the members' headers by :mod:`numpy.lib.format`, so any
``numpy.load`` reads it. Three things differ from ``numpy.savez``, each measured to matter (issue 4):

* fixed zip timestamps, so a resumed or repeated export equals an uninterrupted one byte for byte;
* array bytes go to the file straight from the array (``savez`` copies them in 16 MiB pieces,
  each a fresh allocation the kernel must zero);
* runs of zero bytes (the dose outside its grid, usually most of the CT grid) are skipped with a
  seek instead of written, leaving holes in the file. They read back as zeros; the page cache
  then holds only the bytes that are not zero. On file systems without holes the seek writes zeros.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from numpy.lib import format as npy_format

from ..errors import start_thread

#: The zip timestamp of every member (the earliest a zip file can hold).
NPZ_DATE_TIME = (1980, 1, 1, 0, 0, 0)
#: zlib level of ``--compress``: level 1 keeps most of the gain at a fraction of the time (measured, README).
COMPRESS_LEVEL = 1
#: Zero runs are looked for in pieces of this size; smaller pieces find more holes but cost more calls.
_PIECE = 1 << 20


class _SparseWriter(io.RawIOBase):
    """A binary file that seeks over pieces of zero bytes instead of writing them."""

    def __init__(self, path: Path, sync: bool = False) -> None:
        super().__init__()
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._end = 0  # the logical end: a trailing hole must still count as written
        self._sync = sync

    def sync(self) -> None:
        """Flush and fsync what was written so far (when made with ``sync``)."""
        if self._sync:
            self._file.flush()
            os.fsync(self._file.fileno())

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _PIECE):
            piece = view[start : start + _PIECE]
            words = len(piece) // 8 * 8  # the tail (< 8 bytes) is compared bytewise
            zero = not np.frombuffer(piece[:words], dtype=np.uint64).any() and not any(piece[words:])
            if zero and len(piece) >= 4096:
                self._file.seek(len(piece), io.SEEK_CUR)
            else:
                self._file.write(piece)
            self._end = max(self._end, self._file.tell())
        return len(view)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self.closed:
            try:
                if self._file.seek(0, io.SEEK_END) < self._end:
                    self._file.truncate(self._end)  # the file ends in a hole: give it its length
                self.sync()
            finally:  # closed even when the disk is full (else a removed file keeps its space)
                try:
                    self._file.close()
                finally:
                    super().close()
            return
        super().close()


def save_npz(path: Path, arrays: dict) -> None:
    """Write ``arrays`` (name -> array) as an uncompressed ``.npz`` that ``numpy.load`` reads."""
    stream = NpzStream(path, leading=())
    for name, array in arrays.items():
        stream.add(name, array)
    stream.close()


class NpzStream:
    """An ``.npz`` written by a background thread while its arrays are still being computed.

    The members named in ``leading`` come first, in that order, each written as soon as it is
    given; the others follow in the order given, once :meth:`close` is called. The bytes equal
    :func:`save_npz`'s of the same arrays in that order. The arrays must not change once given.
    ``dtypes`` (name -> dtype) stores a member in another type (e.g. the dose as float16);
    ``compress`` deflates the members (``numpy.savez_compressed``'s layout; no file holes then).
    ``sync`` fsyncs the file after each member and at the end, in the writer thread: the data reach the
    disk while the case is still being computed, not all at once when its folder is completed.
    """

    def __init__(
        self,
        path: Path,
        leading: Sequence[str] = ("ct", "dose"),
        dtypes: Optional[dict] = None,
        compress: bool = False,
        sync: bool = False,
    ) -> None:
        self._path = Path(path)
        self._sync = bool(sync)
        self._dtypes = dict(dtypes or {})
        self._compress = bool(compress)
        self._leading = list(leading)
        self._given: dict = {}
        self._order: list = []
        self._closed = False
        self._aborted = False
        self._error: Optional[BaseException] = None
        self._written: set = set()  # by the writer thread only
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="dosealign-npz", daemon=True)
        # no thread to be had (memory, the thread limit): the file is written by close(), in the caller's thread
        self._inline = not start_thread(self._thread)

    def add(self, name: str, array) -> None:
        """Hand over a member (from any thread)."""
        with self._condition:
            if self._closed:
                raise ValueError(f"{self._path}: no member can be added after close()")
            if name in self._given:
                raise ValueError(f"{self._path}: member {name!r} given twice")
            self._given[name] = array
            self._order.append(name)
            self._condition.notify()

    def close(self) -> None:
        """Write the remaining members, finish the file and raise what went wrong in the writer."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._inline:
            self._run()
        else:
            self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop writing (the caller removes the unfinished file)."""
        with self._condition:
            self._closed = self._aborted = True
            self._condition.notify()
        if not self._inline:
            self._thread.join()

    def _next(self) -> Optional[str]:
        """The next member to write, waiting for it; None when the file is complete or abandoned."""
        with self._condition:
            while not self._aborted:
                pending = [n for n in self._leading if n not in self._written]
                if pending and pending[0] in self._given:
                    return pending[0]
                if not pending or self._closed:
                    # leading members given (a leading one never given is skipped), then the others as given
                    ready = [n for n in pending if n in self._given]
                    ready += [n for n in self._order if n not in self._leading and n not in self._written]
                    if ready:
                        return ready[0]
                    if self._closed:
                        return None
                self._condition.wait()
            return None

    def _stored(self, name: str):
        array = self._given[name]
        dtype = self._dtypes.get(name)
        return array if dtype is None else np.asarray(array).astype(dtype)

    def _run(self) -> None:
        try:
            compression = zipfile.ZIP_DEFLATED if self._compress else zipfile.ZIP_STORED
            with (
                _SparseWriter(self._path, sync=self._sync) as raw,
                zipfile.ZipFile(raw, "w", compression=compression, allowZip64=True) as archive,
            ):
                while True:
                    name = self._next()
                    if name is None:
                        break
                    if self._compress:
                        _write_member(archive, name, self._stored(name), compression)
                    else:
                        _write_member(archive, name, self._stored(name))
                    raw.sync()
                    self._written.add(name)
        except BaseException as error:  # given to the caller by close()
            self._error = error
            with self._condition:
                self._aborted = True


class NpyStream(NpzStream):
    """One ``<name>.npy`` per array in ``folder`` (the ``npy`` layout), written as :class:`NpzStream` writes.

    Each file is what ``numpy.save`` writes, so ``numpy.load(path, mmap_mode="r")`` maps it without
    reading it; runs of zeros are file holes.
    """

    def __init__(
        self, folder: Path, leading: Sequence[str] = ("ct", "dose"), dtypes: Optional[dict] = None, sync: bool = False
    ) -> None:
        self._folder = Path(folder)
        super().__init__(self._folder / "ct.npy", leading, dtypes, sync=sync)

    def _run(self) -> None:
        try:
            while True:
                name = self._next()
                if name is None:
                    break
                save_npy(self._folder / f"{name}.npy", self._stored(name), sync=self._sync)
                self._written.add(name)
        except BaseException as error:  # given to the caller by close()
            self._error = error
            with self._condition:
                self._aborted = True


def save_npy(path: Path, array, sync: bool = False) -> None:
    """What ``numpy.save`` writes (format 1.0), with runs of zeros left as holes; ``sync``: fsynced before closing."""
    array = np.asarray(array, order="C")
    if array.dtype.hasobject:
        raise ValueError(f"{path.name}: object arrays are not written")
    with _SparseWriter(Path(path), sync=sync) as raw:
        npy_format.write_array_header_1_0(raw, npy_format.header_data_from_array_1_0(array))
        if array.size:
            raw.write(memoryview(array.reshape(-1).view(np.uint8)))


def _write_member(archive: zipfile.ZipFile, name: str, array, compression: int = zipfile.ZIP_STORED) -> None:
    array = np.asarray(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    if array.dtype.hasobject:
        raise ValueError(f"{name}: object arrays are not written to pair.npz")
    info = zipfile.ZipInfo(f"{name}.npy", date_time=NPZ_DATE_TIME)
    info.external_attr = 0o600 << 16
    info.compress_type = compression
    if compression == zipfile.ZIP_DEFLATED:  # the level lives in a slot named by the Python version
        slots = getattr(zipfile.ZipInfo, "__slots__", ())
        setattr(info, "compress_level" if "compress_level" in slots else "_compresslevel", COMPRESS_LEVEL)
    with archive.open(info, "w", force_zip64=True) as member:
        # the header numpy.save would write (version 1.0 fits any shape we export)
        npy_format.write_array_header_1_0(member, npy_format.header_data_from_array_1_0(array))
        if array.size:
            member.write(memoryview(array.reshape(-1).view(np.uint8)))
