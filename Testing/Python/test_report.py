"""Pictures and the batch report: qa.png written with the case (atomically, skipped with a note
without matplotlib), view orientation, report.html (escaped, relative links) and how it renders
in headless Chromium; the CLI options of the structures and audit step."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_case
from DoseAlignLib.batch import export_folder
from DoseAlignLib.cli import main
from DoseAlignLib.geometry.grid import Grid, Volume
from DoseAlignLib.options import AlignOptions
from DoseAlignLib.output import qa_png as qa_plot
from DoseAlignLib.output.report import report_html
from DoseAlignLib.phantom import PhantomSpec, write_phantom

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _png_size(path: Path) -> tuple:
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phantom")
    write_phantom(folder / "in", PhantomSpec(ct_size=(48, 48, 24), dose_size=(24, 24, 12), seed=5))
    # a second, broken study: its dose is RELATIVE, so its case fails (a failed row in the report)
    write_phantom(folder / "in" / "broken", PhantomSpec(patient_id="BROKEN<&>", dose_units="RELATIVE", seed=6))
    return folder / "in"


@pytest.fixture(scope="module")
def exported(phantom_dir, tmp_path_factory) -> Path:
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("out")
    report = export_folder(phantom_dir, out, AlignOptions())
    assert [r["status"] for r in report.rows].count("ok") == 1 and len(report.failed) == 1
    return out


def test_qa_png_is_written_with_the_case(exported):
    folders = [p for p in exported.iterdir() if p.is_dir()]
    assert len(folders) == 1 and not any(p.name.startswith(".tmp-") for p in exported.iterdir())
    folder = folders[0]
    assert _png_size(folder / "qa.png") == (1700, 640)
    arrays, meta = load_case(folder)
    assert meta["qa_png"] == {"written": True, "file": "qa.png"}
    assert {"masks", "body", "dvh_dose_gy", "dvh_output", "dvh_native"} <= set(arrays)
    manifest = (exported / "manifest.csv").read_text(encoding="utf-8")
    header = manifest.splitlines()[0].split(",")
    for column in ("audit_flags", "dmax_native_gy", "dmax_output_gy", "worst_dvh_delta_gy"):
        assert column in header


def test_report_lists_every_case_with_thumbnails(exported):
    text = (exported / "report.html").read_text(encoding="utf-8")
    assert text.count("<tr class=") == 2
    ok_id = next(p.name for p in exported.iterdir() if p.is_dir())
    assert f'src="{ok_id}/qa.png"' in text and f'href="{ok_id}/qa.png"' in text
    assert '<tr class="failed">' in text and "RELATIVE" in text  # the failed case and its reason


def test_report_escapes_everything():
    rows = [
        {
            "case_id": "<script>alert(1)</script>",
            "status": "failed",
            "reason": 'a & b "quoted" <b>',
            "audit_flags": "dmax_changed;<img src=x>",
            "worst_dvh_roi": "<i>PTV</i>",
        }
    ]
    text = report_html(rows, Path("/nonexistent"))
    assert "<script>alert" not in text and "<img src=x>" not in text and "<i>PTV" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a &amp; b &quot;quoted&quot; &lt;b&gt;" in text


def test_without_matplotlib_the_case_is_written_with_a_note(phantom_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(qa_plot, "matplotlib_available", lambda: False)
    report = export_folder(phantom_dir, tmp_path, AlignOptions(), case_filter=lambda c: "BROKEN" not in c.case_id)
    folder = tmp_path / report.rows[0]["case_id"]
    assert report.rows[0]["status"] == "ok" and not (folder / "qa.png").exists()
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["qa_png"]["written"] is False and "matplotlib" in meta["qa_png"]["reason"]
    assert "(no picture)" in (tmp_path / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "direction, expected",
    [
        # HFS: rows run posterior, slices superior: coronal and sagittal are turned so S is up
        (np.eye(3), {"axial": (0, (1, False), (2, False)), "coronal": (1, (0, True), (2, False)), "sagittal": (2, (0, True), (1, False))}),
        # FFS: columns run to the patient's right, slices inferior
        (np.diag([-1.0, 1.0, -1.0]), {"axial": (0, (1, False), (2, True)), "coronal": (1, (0, False), (2, True)), "sagittal": (2, (0, False), (1, False))}),
        # HFP: rows run anterior
        (np.diag([-1.0, -1.0, 1.0]), {"axial": (0, (1, True), (2, True)), "coronal": (1, (0, True), (2, True)), "sagittal": (2, (0, True), (1, True))}),
    ],
)  # fmt: skip
def test_views_put_anterior_and_superior_up(direction, expected):
    grid = Grid.from_spacing((4, 5, 6), (1, 1, 1), (0, 0, 0), direction)
    views = {name: (fixed, v[:2], h[:2]) for name, fixed, v, h in qa_plot._views(Volume(np.zeros(grid.shape), grid))}
    assert views == expected


def test_qa_png_marks_dmax_in_every_view(tmp_path):
    pytest.importorskip("matplotlib")
    grid = Grid.from_spacing((20, 30, 40), (1.0, 1.0, 2.0), (0, 0, 0))
    dose = np.zeros(grid.shape, np.float32)
    dose[12, 7, 30] = 50.0  # one hot voxel
    ct = np.zeros(grid.shape, np.int16)
    masks = np.zeros((1, *grid.shape), bool)
    masks[0, 10:15, 5:10, 28:33] = True
    path = qa_plot.render_qa_png(
        tmp_path / "qa.png",
        Volume(ct, grid),
        Volume(dose, grid),
        masks_packed=np.packbits(masks, axis=-1),
        roi_names=["Box"],
        roi_colors=[(255, 0, 0)],
        title="case <1>",
        flags=["dmax_changed"],
    )
    assert _png_size(path) == (1700, 640)
    assert qa_plot.dmax_index(dose) == (12, 7, 30)


def test_qa_crop_box_and_dmax_from_the_audit(tmp_path):
    """The crop box found from slice maxima equals the one from a bool copy of the whole dose, and
    passing the audit's Dmax index draws the same picture."""
    rng = np.random.default_rng(3)
    grid = Grid.from_spacing((26, 30, 34), (1.5, 1.5, 2.5), (0, 0, 0))
    dose = np.zeros(grid.shape, np.float32)
    dose[6:20, 5:25, 9:30] = rng.uniform(0, 40, (14, 20, 21)).astype(np.float32)
    spacing = {0: 2.5, 1: 1.5, 2: 1.5}
    for threshold in (0.0, 3.9, 20.0, 39.5, 99.0):
        index = qa_plot.dmax_index(dose)
        above = dose >= threshold  # the straightforward way
        expected = []
        for axis in range(3):
            hit = np.flatnonzero(above.any(axis=tuple(a for a in range(3) if a != axis)))
            lo = min(int(hit[0]), index[axis]) if hit.size else 0
            hi = max(int(hit[-1]), index[axis]) if hit.size else dose.shape[axis] - 1
            margin = int(np.ceil(qa_plot.CROP_MARGIN_MM / spacing[axis]))
            expected.append(slice(max(lo - margin, 0), min(hi + margin, dose.shape[axis] - 1) + 1))
        assert qa_plot._crop_box(dose, index, threshold, spacing) == tuple(expected), threshold
    pytest.importorskip("matplotlib")
    image = pytest.importorskip("matplotlib.image")
    ct = Volume(np.zeros(grid.shape, np.int16), grid)
    plain = qa_plot.render_qa_png(tmp_path / "a.png", ct, Volume(dose, grid))
    hinted = qa_plot.render_qa_png(tmp_path / "b.png", ct, Volume(dose, grid), dmax_at=qa_plot.dmax_index(dose))
    np.testing.assert_array_equal(image.imread(str(plain)), image.imread(str(hinted)))
    stale = qa_plot.render_qa_png(tmp_path / "c.png", ct, Volume(dose, grid), dmax_at=(0, 0, 0))  # not at Dmax
    np.testing.assert_array_equal(image.imread(str(plain)), image.imread(str(stale)))


# ---- the CLI options -------------------------------------------------------------------------


def test_cli_no_structures_no_qa_png(phantom_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["export", str(phantom_dir), str(out), "--no-structures", "--no-qa-png", "--quiet", "--workers", "1"])
    assert code == 1  # the broken study fails
    folder = next(p for p in out.iterdir() if p.is_dir())
    arrays, meta = load_case(folder)
    assert "masks" not in arrays and not (folder / "qa.png").exists()
    assert meta["structures"] == {"enabled": False, "names": []} and "audit" in meta
    assert (out / "report.html").is_file()


def test_cli_roi_map_and_fractional_masks(phantom_dir, tmp_path):
    roi_map = tmp_path / "map.json"
    roi_map.write_text(json.dumps({"Target": ["ptv"], "SpinalCord": ["CORD"]}), encoding="utf-8")
    out = tmp_path / "out"
    args = ["export", str(phantom_dir), str(out), "--roi-map", str(roi_map), "--fractional-masks", "2"]
    assert main([*args, "--no-qa-png", "--quiet", "--workers", "1"]) == 1
    folder = next(p for p in out.iterdir() if p.is_dir())
    arrays, meta = load_case(folder)
    assert meta["structures"]["names"] == ["External", "Target", "SpinalCord", "Ring"]
    assert meta["structures"]["fractional_supersampling"] == 2
    n, k, j, i = arrays["masks_fraction"].shape
    assert (n, k, j) == arrays["masks"].shape[:3] and i == arrays["ct"].shape[2]
    bad = tmp_path / "thresholds.json"
    bad.write_text(json.dumps({"no_such_threshold": 1}), encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        main(["export", str(phantom_dir), str(tmp_path / "x"), "--audit-thresholds", str(bad)])
    assert stop.value.code == 2


# ---- headless Chromium -----------------------------------------------------------------------

PROBE = """
<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  document.body.setAttribute('data-images', images.map(function (i) {
    return i.naturalWidth + 'x' + i.naturalHeight; }).join(','));
  document.body.setAttribute('data-rows', String(document.querySelectorAll('#cases tbody tr').length));
});
</script>
"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian/Ubuntu: apt-get install -y chromium)"
)
def test_report_renders_in_headless_chromium(exported, tmp_path):
    """Chromium loads report.html from disk: the table has both rows and the thumbnail decodes."""
    probe = exported / "probe.html"
    probe.write_text((exported / "report.html").read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,3000"]
    dom = subprocess.run(
        [*common, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    probe.unlink()
    assert 'data-rows="2"' in dom, dom[-2000:]
    assert 'data-images="1700x640"' in dom, "the qa.png thumbnail did not decode"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", (exported / "report.html").as_uri()], capture_output=True, timeout=120
    )
    assert _png_size(shot) == (1400, 3000)
    image = pytest.importorskip("matplotlib.image").imread(str(shot))[..., :3]
    saturated = (image.max(axis=-1) - image.min(axis=-1)) > 0.3  # coloured pixels: the thumbnail's dose wash
    assert saturated.sum() > 500
    print(
        f"\nChromium {CHROMIUM} rendered report.html: 2 rows, thumbnail 1700x640, {int(saturated.sum())} coloured pixels"
    )


def test_cli_help_lists_the_options():
    text = subprocess.run(
        [sys.executable, "-m", "DoseAlignLib.cli", "export", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for option in ("--no-structures", "--roi-map", "--fractional-masks", "--no-qa-png", "--audit-thresholds"):
        assert option in text
