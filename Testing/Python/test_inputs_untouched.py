"""Inputs are never written to: every file's bytes and mtime, and the tree's listing, after every command.

The input tree mixes good cases, a damaged dose and a RELATIVE dose, so that the failing paths run
too. After ``scan``, ``export``, ``export --resume``, an export again over a complete output,
``export --pseudonymize`` (whose key and map go beside OUT, never into the input), sharded exports
and ``merge``, and ``demo`` (run next to the input, then on a copy of the demo's own DICOM), the
snapshot of the input must be what it was. The real DICOM sets in ../shared/data are exported in
place, where they are, under the same check.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import dicom_damage as dd
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


def snapshot(folder: Path) -> dict:
    """Every entry below ``folder``: files by content hash and mtime, folders by mtime."""
    state = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        info = path.stat()
        if path.is_file():
            state[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns, info.st_mode)
        else:
            state[rel] = ("folder", info.st_mtime_ns, info.st_mode)
    return state


@pytest.fixture()
def inputs(tmp_path) -> Path:
    root = tmp_path / "work" / "in"
    write_phantom(root / "a", PhantomSpec(patient_id="IN-A", seed=1, **SMALL))
    write_phantom(root / "b", PhantomSpec(patient_id="IN-B", seed=2, write_beam_doses=True, **SMALL))
    truth = write_phantom(root / "c", PhantomSpec(patient_id="IN-C", seed=3, dose_units="RELATIVE", **SMALL))
    damaged = truth.out_dir / "damaged.dcm"
    damaged.write_bytes(truth.dose_files[0].read_bytes()[:900])
    dd.apply(truth.plan_file, dd.Mutation("PixelData", "append", b"\x00\x00", False))  # odd trailing bytes
    (root / "notes.txt").write_text("from the TPS\n")
    return root


def _run(args: list, capsys) -> int:
    code = main(args)
    capsys.readouterr()
    return code


def test_no_command_changes_an_input(inputs, tmp_path, capsys):
    before = snapshot(inputs)
    out = tmp_path / "work" / "out"
    commands = [
        ["scan", str(inputs)],
        ["export", str(inputs), str(out), "--quiet", "--workers", "1"],
        ["export", str(inputs), str(out), "--quiet", "--workers", "1", "--resume"],
        ["export", str(inputs), str(out), "--quiet", "--workers", "2"],  # again over a complete output
        ["export", str(inputs), str(tmp_path / "work" / "pseudo"), "--quiet", "--workers", "1", "--pseudonymize"],
        ["export", str(inputs), str(tmp_path / "work" / "shards"), "--quiet", "--workers", "1", "--shard", "1/2"],
        ["export", str(inputs), str(tmp_path / "work" / "shards"), "--quiet", "--workers", "1", "--shard", "2/2"],
        ["merge", str(tmp_path / "work" / "shards")],
        ["demo", str(tmp_path / "work" / "demo"), "--quiet"],
    ]
    for args in commands:
        code = _run(args, capsys)
        assert code in (0, 1), f"{args[0]}: exit {code}"
        assert snapshot(inputs) == before, f"`dosealign {' '.join(args[:1] + args[2:])}` changed the input"
    # the pseudonymized export put its key and map beside its output, not into the input
    assert (tmp_path / "work" / "dosealign-pseudonym.key").is_file()
    assert not list(inputs.rglob("*.key")) and not list(inputs.rglob("*pseudonym*"))


def test_demo_output_as_input_stays_untouched(tmp_path, capsys):
    demo = tmp_path / "demo"
    assert _run(["demo", str(demo), "--quiet"], capsys) == 0
    copy = tmp_path / "copy"
    shutil.copytree(demo / "dicom", copy)
    before = snapshot(copy)
    for args in (
        ["scan", str(copy)],
        ["export", str(copy), str(tmp_path / "out"), "--quiet", "--workers", "1"],
        ["export", str(copy), str(tmp_path / "out"), "--quiet", "--workers", "1", "--resume"],
    ):
        assert _run(args, capsys) == 0
        assert snapshot(copy) == before, args[0]


@pytest.mark.shared_data
def test_real_data_exported_where_it_lies(shared_data, tmp_path, capsys):
    for name in ("rtkit-phantom", "pydicom-rt-objects"):
        source = shared_data / name
        before = snapshot(source)
        _run(["scan", str(source)], capsys)
        _run(["export", str(source), str(tmp_path / name), "--quiet", "--workers", "1"], capsys)
        _run(["export", str(source), str(tmp_path / name), "--quiet", "--workers", "1", "--resume"], capsys)
        assert snapshot(source) == before, name


def _bind(source: Path, target: Path) -> bool:
    """``mount --bind source target`` when running as root where mounting works."""
    target.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True).returncode == 0


def test_out_inside_the_input_through_a_bind_mount(inputs, tmp_path, capsys):
    """Sixth hostile trial F15: OUT inside the input was seen only by resolved paths; through a bind mount the
    export, the pseudonym key and the identity map were written into the input. Each case now ends as when OUT
    is named inside the input by its own path."""
    mounted = tmp_path / "work" / "bm"
    if not _bind(inputs, mounted):
        pytest.skip("needs root and mount --bind")
    try:
        before = snapshot(inputs)
        # OUT is the input itself / the key and map would land in the input: refused, nothing written
        for direct, through in [
            (["export", str(inputs), str(inputs)], ["export", str(inputs), str(mounted)]),
            (
                ["export", str(inputs), str(inputs / "out"), "--pseudonymize"],
                ["export", str(inputs), str(mounted / "out"), "--pseudonymize"],
            ),
        ]:
            expected = main([*direct, "--quiet"])
            said = capsys.readouterr().err.replace(str(inputs), "IN")
            assert expected == 2, said
            assert main([*through, "--quiet"]) == expected
            err = capsys.readouterr().err.replace(str(mounted), "IN").replace(str(inputs), "IN")
            assert err == said
            assert snapshot(inputs) == before
        # OUT inside the input: allowed with a note and left out of the export's scan, as by its own path
        assert main(["export", str(inputs), str(mounted / "out"), "--workers", "1"]) == 1
        assert "is inside the input folder: it is left out of the scan" in capsys.readouterr().out
        first = (inputs / "out" / "manifest.csv").read_text(encoding="utf-8")
        assert main(["export", str(inputs), str(mounted / "out"), "--workers", "1", "--no-qa-png"]) == 1
        capsys.readouterr()
        assert (inputs / "out" / "manifest.csv").read_text(encoding="utf-8") == first  # no case of OUT's files
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


def test_within_decides_by_folder_identity(tmp_path, monkeypatch):
    """What a bind mount hides from resolved paths, folder identity shows: here a link stands in for the mount,
    with link resolving switched off (as a bind mount offers nothing to resolve)."""
    from DoseAlignLib.output import files

    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    os.symlink(tmp_path / "in", tmp_path / "alias")
    monkeypatch.setattr(files.os.path, "realpath", os.path.abspath)
    alias = tmp_path / "alias"
    assert files.within(alias / "out" / "dataset", tmp_path / "in") == alias  # not there yet: its ancestors
    assert files.within(alias / "sub", tmp_path / "in") == alias
    assert files.within(alias, tmp_path / "in") == alias
    assert files.within(tmp_path / "in" / "sub", alias) == tmp_path / "in"  # the part of the path that is it
    assert files.within(tmp_path / "other" / "out", tmp_path / "in") is None
    assert files.within(tmp_path / "in", alias / "sub") is None
