"""pair.npz writer: every member holds what numpy.save writes (in C order), zero runs become holes."""

from __future__ import annotations

import io
import os
import threading
import zipfile

import numpy as np
import pytest
from DoseAlignLib.output.npz import save_npz


def _arrays() -> dict:
    rng = np.random.default_rng(7)
    dose = np.zeros((24, 256, 256), np.float32)  # 6 MiB, mostly zero: the usual dose on a CT grid
    dose[8:12, 40:200, 100:120] = rng.random((4, 160, 20), dtype=np.float32)
    return {
        "ct": rng.integers(-1000, 3000, (24, 256, 256)).astype(np.int16),
        "dose": dose,
        "mask": rng.random((3, 5, 7)) > 0.5,
        "names": np.array(["PTV", "Lung L"]),
        "big_endian": np.arange(5, dtype=">f8"),
        "fortran": np.asfortranarray(rng.random((3, 4))),
        "empty": np.zeros((0, 3)),
        "scalar": np.float32(3.5),
    }


def test_members_are_numpy_save_bytes(tmp_path) -> None:
    arrays = _arrays()
    save_npz(tmp_path / "pair.npz", arrays)
    with zipfile.ZipFile(tmp_path / "pair.npz") as archive:
        assert archive.testzip() is None  # every CRC checks
        assert archive.namelist() == [f"{name}.npy" for name in arrays]
        for name, array in arrays.items():
            expected = io.BytesIO()
            np.save(expected, np.asarray(array, order="C"))  # always stored in C order
            assert archive.read(f"{name}.npy") == expected.getvalue(), name
    with np.load(tmp_path / "pair.npz") as loaded:
        for name, array in arrays.items():
            assert loaded[name].dtype == np.asarray(array).dtype
            assert np.array_equal(loaded[name], array), name


def test_bytes_are_reproducible_and_zero_runs_are_holes(tmp_path) -> None:
    arrays = _arrays()
    save_npz(tmp_path / "a.npz", arrays)
    save_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    stat = os.stat(tmp_path / "a.npz")
    if stat.st_blocks * 512 >= stat.st_size:
        probe = tmp_path / "probe"
        with open(probe, "wb") as handle:
            handle.seek(1 << 22)
            handle.write(b"x")
        if os.stat(probe).st_blocks * 512 >= 1 << 22:
            pytest.skip("this file system has no holes")
    # the dose's zeros take no space: of its 6 MiB, the 1 MiB pieces touching non-zero slices are written
    assert stat.st_blocks * 512 < stat.st_size - 3 * 2**20


def test_object_arrays_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="object arrays"):
        save_npz(tmp_path / "x.npz", {"bad": np.array([{"a": 1}], dtype=object)})


def test_stream_writes_leading_members_first_whatever_the_order_given(tmp_path) -> None:
    import threading

    from DoseAlignLib.output.npz import NpzStream

    arrays = _arrays()
    save_npz(tmp_path / "reference.npz", arrays)  # ct, dose, then the rest
    stream = NpzStream(tmp_path / "streamed.npz", leading=("ct", "dose"))
    rest = [name for name in arrays if name not in ("ct", "dose")]
    stream.add(rest[0], arrays[rest[0]])  # an extra first: it must wait for ct and dose
    stream.add("dose", arrays["dose"])  # before ct: written after it
    late = threading.Thread(target=stream.add, args=("ct", arrays["ct"]))  # ct from another thread
    late.start()
    late.join()
    for name in rest[1:]:
        stream.add(name, arrays[name])
    stream.close()
    assert (tmp_path / "streamed.npz").read_bytes() == (tmp_path / "reference.npz").read_bytes()


def test_stream_skips_a_leading_member_never_given_and_reports_writer_errors(tmp_path) -> None:
    from DoseAlignLib.output.npz import NpzStream

    stream = NpzStream(tmp_path / "a.npz", leading=("ct", "dose"))
    stream.add("dose", np.arange(3.0))
    stream.close()
    with np.load(tmp_path / "a.npz") as loaded:
        assert loaded.files == ["dose"]
    broken = NpzStream(tmp_path / "b.npz", leading=())
    broken.add("bad", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="object arrays"):
        broken.close()
    aborted = NpzStream(tmp_path / "c.npz", leading=("ct",))
    aborted.add("dose", np.arange(3.0))  # waits for ct, which never comes
    aborted.abort()  # returns (the caller removes the unfinished file)
    with pytest.raises(ValueError, match="after close"):
        aborted.add("ct", np.arange(3.0))


@pytest.mark.parametrize("layout", ["npz", "npy"])
def test_arrays_reach_the_disk_in_the_writer_thread_as_they_are_written(tmp_path, monkeypatch, layout):
    # the case folder's fsync_tree then finds them clean: the main thread no longer waits for them all at once
    from DoseAlignLib.output import npz as npz_module

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append((threading.current_thread().name, os.path.getsize(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(npz_module.os, "fsync", fsync)
    arrays = {"ct": np.arange(4096, dtype=np.int16).reshape(4, 32, 32), "dose": np.ones((4, 32, 32), np.float32)}
    if layout == "npz":
        stream = npz_module.NpzStream(tmp_path / "pair.npz", sync=True)
    else:
        stream = npz_module.NpyStream(tmp_path, sync=True)
    for name, array in arrays.items():
        stream.add(name, array)
    stream.close()
    assert synced and {name for name, _size in synced} == {"dosealign-npz"}
    if layout == "npz":
        sizes = [size for _name, size in synced]
        # after the CT member, after the dose member, and the finished file (with its central directory)
        assert len(synced) == 3 and sizes[0] < sizes[1] < sizes[2] == (tmp_path / "pair.npz").stat().st_size
        with np.load(tmp_path / "pair.npz") as loaded:
            assert all(np.array_equal(loaded[n], a) for n, a in arrays.items())
    else:
        assert len(synced) == 2
        assert all(np.array_equal(np.load(tmp_path / f"{n}.npy"), a) for n, a in arrays.items())
    synced.clear()
    npz_module.save_npz(tmp_path / "plain.npz", arrays)
    assert synced == [], "a plain save_npz does not fsync"
