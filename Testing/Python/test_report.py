"""Pictures and the batch report: qa.png written with the case (atomically, skipped with a note
without matplotlib), view orientation, report.html (escaped, relative links) and how it renders
in headless Chromium; the CLI options of the structures and audit step."""

from __future__ import annotations

import html
import json
import os
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
from DoseAlignLib.output import report as report_module
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
    size = _png_size(folder / "qa.png")
    assert size[0] == 1700 and 300 <= size[1] <= 640, size
    assert report_module.png_layout(folder / "qa.png")["figure_px"] == list(size)
    arrays, meta = load_case(folder)
    assert meta["qa_png"] == {"written": True, "file": "qa.png"}
    assert set(report_module.png_layout(folder / "qa.png")["panels"]) == {"axial", "coronal", "sagittal"}
    assert {"masks", "body", "dvh_dose_gy", "dvh_output", "dvh_native", "dvh_reference"} <= set(arrays)
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
    failed_row = text.split('<tr class="failed">', 1)[1].split("</tr>", 1)[0]
    assert "noflag" not in failed_row, "a failed case was not audited: no green 'none' in its flags column"


def test_report_shows_each_case_its_own_flag_details(exported):
    """The phantom's linear dose fills its grid: report.html says which faces carry how much dose
    (the case's own detail from its meta.json, escaped), not only the flag's general meaning; the
    case folder holds the reference DVHs as dvh.csv."""
    folder = next(p for p in exported.iterdir() if p.is_dir())
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    flags = {f["flag"]: f["detail"] for f in meta["audit"]["flags"]}
    assert "dose_grid_edge" in flags and " face (" in flags["dose_grid_edge"]
    text = (exported / "report.html").read_text(encoding="utf-8")
    for detail in flags.values():
        assert html.escape(detail) in text
    assert (folder / "dvh.csv").read_text(encoding="utf-8").startswith("roi,dose_gy,volume_cc,volume_pct\n")


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
    width, height = _png_size(path)
    assert width == 1700 and 300 <= height <= 640
    assert qa_plot.dmax_index(dose) == (12, 7, 30)


def test_a_damaged_roi_colour_gets_a_colour_of_its_own_in_the_qa_png(tmp_path):
    """From the eleventh hostile trial (K7): a colour out of 0-255 (or not numbers) given to the qa.png failed it
    with a matplotlib traceback. Such a colour is drawn in a colour of the cycle; the valid one as given."""
    pytest.importorskip("matplotlib")
    image = pytest.importorskip("matplotlib.image")
    grid = Grid.from_spacing((20, 40, 40), (1.0, 1.0, 2.0), (0, 0, 0))
    dose = np.zeros(grid.shape, np.float32)
    dose[10, 20, 20] = 50.0
    masks = np.zeros((4, *grid.shape), bool)
    for n in range(4):
        masks[n, 8:13, 4 + 8 * n : 10 + 8 * n, 15:25] = True
    path = qa_plot.render_qa_png(
        tmp_path / "qa.png",
        Volume(np.zeros(grid.shape, np.int16), grid),
        Volume(dose, grid),
        masks_packed=np.packbits(masks, axis=-1),
        roi_names=["Bad", "Text", "Nan", "Good"],
        roi_colors=[(999, -5, 3), ("red", "green", "blue"), (float("nan"), 1, 2), _ROI_PURPLE],
    )
    pixels = image.imread(str(path))[..., :3]
    assert _near(pixels, _ROI_PURPLE, 0.05).sum() > 20  # the valid colour is drawn


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
  document.body.setAttribute('data-crops', Array.prototype.slice.call(document.querySelectorAll('span.crop')).map(
    function (s) { var r = s.getBoundingClientRect(), i = s.querySelector('img').getBoundingClientRect();
      return Math.round(r.width) + 'x' + Math.round(r.height) + '@' + Math.round(i.width); }).join(','));
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
    ok_id = next(p.name for p in exported.iterdir() if p.is_dir())
    size = "x".join(str(v) for v in _png_size(exported / ok_id / "qa.png"))
    assert f'data-images="{size}"' in dom, "the qa.png thumbnail did not decode"
    crop = dom.split('data-crops="', 1)[1].split('"', 1)[0]  # "WxH@shown width of the whole picture"
    (width, height), shown = (int(v) for v in crop.split("@")[0].split("x")), int(crop.split("@")[1])
    assert shown / 1700 >= 0.5 and width >= 250 and height >= 200, f"thumbnail {crop}: too small to read"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", (exported / "report.html").as_uri()], capture_output=True, timeout=120
    )
    assert _png_size(shot) == (1400, 3000)
    image = pytest.importorskip("matplotlib.image").imread(str(shot))[..., :3]
    saturated = (image.max(axis=-1) - image.min(axis=-1)) > 0.3  # coloured pixels: the thumbnail's dose wash
    assert saturated.sum() > 500
    print(
        f"\nChromium {CHROMIUM} rendered report.html: 2 rows, thumbnail {size}, {int(saturated.sum())} coloured pixels"
    )


def test_cli_help_lists_the_options():
    text = subprocess.run(
        [sys.executable, "-m", "DoseAlignLib.cli", "export", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for option in ("--no-structures", "--roi-map", "--fractional-masks", "--no-qa-png", "--audit-thresholds"):
        assert option in text


# ---- pictures people can read: rendered checks ----------------------------------------------------

#: An ellipsoidal dose (2 Gy/mm in x and y, 1 Gy/mm in z) peaking at 60 Gy, on 1 x 1 x 2.5 mm voxels.
#: Prescription 50 Gy: the 50 % line lies at 17.5 mm from the centre in the axial plane, the wash
#: ends at 10 % (5 Gy, 27.5 mm). Two spherical ROIs: r = 10 mm drawn in the 50 % line's own colour,
#: r = 20 mm in a colour no isodose line has (to find the centre and measure the scale).
_ROI_SAME_AS_50 = (0x00, 0xB0, 0xFF)
_ROI_PURPLE = (120, 0, 120)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    pytest.importorskip("matplotlib")
    image = pytest.importorskip("matplotlib.image")
    grid = Grid.from_spacing((61, 121, 121), (1.0, 1.0, 2.5), (-60.0, -60.0, -75.0))
    k, j, i = np.meshgrid(np.arange(61), np.arange(121), np.arange(121), indexing="ij")
    x, y, z = i * 1.0 - 60.0, j * 1.0 - 60.0, k * 2.5 - 75.0
    dose = np.clip(60.0 - 2.0 * np.sqrt(x**2 + y**2 + (z / 2.0) ** 2), 0.0, None).astype(np.float32)
    radius = np.sqrt(x**2 + y**2 + z**2)
    masks = np.stack([radius <= 10.0, radius <= 20.0])
    path = qa_plot.render_qa_png(
        tmp_path_factory.mktemp("qa") / "qa.png",
        Volume(np.zeros(grid.shape, np.int16), grid),
        Volume(dose, grid),
        masks_packed=np.packbits(masks, axis=-1),
        roi_names=["Inner", "Outer"],
        roi_colors=[_ROI_SAME_AS_50, _ROI_PURPLE],
        reference_dose_gy=50.0,
        reference_label="prescription",
        dmax_at=(30, 60, 60),
    )
    return image.imread(str(path))[..., :3], report_module.png_layout(path)


def _near(pixels: np.ndarray, rgb: tuple, tolerance: float = 0.12) -> np.ndarray:
    return np.abs(pixels - np.asarray(rgb) / 255.0).max(axis=-1) < tolerance


def _panel(picture: np.ndarray, layout: dict, name: str) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(v)) for v in layout["panels"][name]["box_px"])
    return picture[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]


def _ring_hits(panel: np.ndarray, centre: tuple, radius_px: float, test, window: int = 3, steps: int = 720) -> float:
    """Share of directions from ``centre`` in which ``test(pixels)`` holds for some pixel within
    ``window`` px of the ring of ``radius_px``."""
    hits = 0
    for angle in np.linspace(0, 2 * np.pi, steps, endpoint=False):
        r = np.arange(radius_px - window, radius_px + window + 0.5, 0.5)
        rows = np.clip(np.rint(centre[0] - r * np.sin(angle)).astype(int), 0, panel.shape[0] - 1)
        cols = np.clip(np.rint(centre[1] + r * np.cos(angle)).astype(int), 0, panel.shape[1] - 1)
        hits += bool(test(panel[rows, cols]).any())
    return hits / steps


def _outer_ring(panel: np.ndarray) -> tuple:
    """(centre row, centre column, radius px) of the purple outline of the 20 mm sphere."""
    rows, cols = np.nonzero(_near(panel, _ROI_PURPLE))
    assert rows.size > 100, "the purple outline is not in the panel"
    return (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2, (cols.max() - cols.min()) / 2


def test_structure_outlines_do_not_look_like_isodose_lines(rendered):
    """The inner ROI has the 50 % line's colour: it must still differ: solid with a dark edge, the
    isodose line dashed without one."""
    picture, layout = rendered
    panel = _panel(picture, layout, "axial")
    cy, cx, _outer_px = _outer_ring(panel)
    px_per_mm = 1.0 / layout["mm_per_px"]
    same = lambda pixels: _near(pixels, _ROI_SAME_AS_50)  # noqa: E731
    dark = lambda pixels: pixels.max(axis=-1) < 0.2  # noqa: E731
    roi = _ring_hits(panel, (cy, cx), 10.0 * px_per_mm, same)
    isodose = _ring_hits(panel, (cy, cx), 17.5 * px_per_mm, same)
    assert roi > 0.97, f"the structure outline is not continuous ({roi:.2f})"
    assert 0.3 < isodose < 0.85, f"the isodose line of the same colour is not dashed ({isodose:.2f})"
    assert _ring_hits(panel, (cy, cx), 10.0 * px_per_mm, dark, window=5) > 0.9, "no dark edge on the outline"
    assert _ring_hits(panel, (cy, cx), 17.5 * px_per_mm, dark, window=2) < 0.2, "isodose lines have no dark edge"


def test_the_wash_starts_at_its_threshold(rendered):
    picture, layout = rendered
    panel = _panel(picture, layout, "axial")
    cy, cx, _outer_px = _outer_ring(panel)
    px_per_mm = 1.0 / layout["mm_per_px"]
    grey = lambda pixels: (pixels.max(axis=-1) - pixels.min(axis=-1)) < 0.03  # noqa: E731
    coloured = lambda pixels: (pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.08  # noqa: E731
    # 32 mm from the centre the dose is 0 (below 5 Gy): the CT alone, no wash
    assert _ring_hits(panel, (cy, cx), 32.0 * px_per_mm, lambda p: ~grey(p), window=0) < 0.03
    # 25 mm: 10 Gy, washed
    assert _ring_hits(panel, (cy, cx), 25.0 * px_per_mm, coloured, window=0) > 0.95
    assert layout["wash_gy"] == pytest.approx([5.0, 60.0]), "the colour scale starts at the wash threshold"
    # 26 mm: 8 Gy, near the bottom of the colour scale (not 8/60 of the way up from 0 Gy)
    cmap = pytest.importorskip("matplotlib").colormaps["jet"]
    grey = (0.0 - qa_plot.CT_WINDOW[0]) / (qa_plot.CT_WINDOW[1] - qa_plot.CT_WINDOW[0])
    expected = (1 - qa_plot.WASH_ALPHA) * grey + qa_plot.WASH_ALPHA * np.array(cmap((8.0 - 5.0) / 55.0)[:3])
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    ring = panel[
        np.rint(cy - 26.0 * px_per_mm * np.sin(angles)).astype(int),
        np.rint(cx + 26.0 * px_per_mm * np.cos(angles)).astype(int),
    ]
    np.testing.assert_allclose(np.median(ring, axis=0), expected, atol=0.04)  # from 0 Gy: blue 0.65, not 0.54


def test_the_three_panels_share_one_scale(rendered):
    """The 20 mm sphere is equally wide in every panel, although the crops differ (the dose reaches
    twice as far along z)."""
    picture, layout = rendered
    widths = {name: 2 * _outer_ring(_panel(picture, layout, name))[2] for name in ("axial", "coronal", "sagittal")}
    assert max(widths.values()) - min(widths.values()) <= 3, widths
    heights = {name: layout["panels"][name]["box_px"][3] - layout["panels"][name]["box_px"][1] for name in widths}
    assert heights["coronal"] > 1.5 * heights["axial"], "the coronal crop is twice as tall as the axial one"
    mm_per_px = {
        name: layout["panels"][name]["mm"][0]
        / (layout["panels"][name]["box_px"][2] - layout["panels"][name]["box_px"][0])
        for name in widths
    }
    assert max(mm_per_px.values()) / min(mm_per_px.values()) < 1.001, mm_per_px


def test_report_thumbnail_is_the_axial_panel_at_a_readable_size(exported):
    text = (exported / "report.html").read_text(encoding="utf-8")
    ok_id = next(p.name for p in exported.iterdir() if p.is_dir())
    layout = report_module.png_layout(exported / ok_id / "qa.png")
    x0, y0, x1, y1 = layout["panels"]["axial"]["box_px"]
    style = text.split('<span class="crop" style="', 1)[1].split('"', 1)[0]
    width = float(style.split("width:")[1].split("px")[0])
    scale = width / (x1 - x0)
    assert scale >= 0.5, f"the thumbnail shows the axial panel at {scale:.2f} of its size"
    image_style = text.split(f'<img src="{ok_id}/qa.png" style="', 1)[1].split('"', 1)[0]
    assert f"margin-left:-{x0 * scale:.0f}px" in image_style


def test_writing_a_qa_png_leaves_pyplots_backend_alone(tmp_path):
    """A notebook (or Slicer's Python) that plots with its own backend keeps it after an export writes qa.png:
    ``matplotlib.use`` there would switch pyplot's backend (to Agg, where ``plt.show()`` shows nothing)."""
    pytest.importorskip("matplotlib")
    script = f"""
import numpy as np
import matplotlib
import matplotlib.pyplot as plt
plt.switch_backend("svg")  # stands for a notebook's inline backend or an interactive one
from DoseAlignLib.geometry.grid import Grid, Volume
from DoseAlignLib.output import qa_png
grid = Grid.from_spacing((8, 10, 12), (1.0, 1.0, 2.0), (0, 0, 0))
dose = np.zeros(grid.shape, np.float32)
dose[4, 5, 6] = 2.0
qa_png.render_qa_png({str(tmp_path / "qa.png")!r}, Volume(np.zeros(grid.shape, np.int16), grid), Volume(dose, grid))
print(matplotlib.get_backend(), plt.get_backend())
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("MPLBACKEND", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "svg"]
    assert _png_size(tmp_path / "qa.png") == (1700, 640)


_PRELOAD_THEN_FORK = (
    "import os, sys, threading\n"
    "from DoseAlignLib.output import qa_png\n"
    "qa_png.preload_matplotlib()\n"
    "qa_png.preload_matplotlib()\n"
    "names = [t.name for t in threading.enumerate() if t.name == 'dosealign-matplotlib']\n"
    "assert len(names) <= 1, names\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    figure = sys.modules.get('matplotlib.figure')\n"
    "    os._exit(0 if figure is not None and hasattr(figure, 'Figure') else 3)\n"
    "_, status = os.waitpid(pid, 0)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_matplotlib_preloaded_beside_the_case_is_whole_in_a_forked_child():
    # a child forked while the preload thread imports would inherit a half-imported module: the fork waits
    pytest.importorskip("matplotlib")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _PRELOAD_THEN_FORK],
        env={**os.environ, "PYTHONPATH": str(root / "DoseAlign")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_the_picture_waits_for_the_matplotlib_preload(tmp_path, monkeypatch):
    # the picture's imports ran beside the preload's: two threads importing one package at once may see it
    # half-initialized before Python 3.12 (cpython issue 83065)
    import threading
    import time

    pytest.importorskip("matplotlib")
    order = []

    def preload() -> None:
        time.sleep(0.5)
        order.append("preloaded")

    drawing = qa_plot.load_fonts

    def load_fonts() -> None:
        order.append("drawn")
        drawing()

    thread = threading.Thread(target=preload)
    monkeypatch.setattr(qa_plot, "_preloading", thread)
    monkeypatch.setattr(qa_plot, "load_fonts", load_fonts)
    thread.start()
    assert qa_plot.matplotlib_available()
    assert order == ["preloaded"]
    order.clear()
    thread = threading.Thread(target=preload)
    monkeypatch.setattr(qa_plot, "_preloading", thread)
    thread.start()
    grid = Grid.from_spacing((4, 6, 8), (2.0, 2.0, 3.0), (0, 0, 0))
    ct = Volume(np.zeros((4, 6, 8), dtype=np.int16), grid)
    qa_plot.render_qa_png(tmp_path / "qa.png", ct, Volume(np.ones((4, 6, 8), dtype=np.float32), grid))
    assert order == ["preloaded", "drawn"]


_PRELOAD_FAILS_HALF_WAY = (
    "import importlib.abc, sys\n"
    "import numpy as np\n"
    "class FailOnce(importlib.abc.MetaPathFinder):\n"
    "    failed = False\n"
    "    def find_spec(self, name, path, target=None):\n"
    "        if name == 'matplotlib._fontconfig_pattern' and not FailOnce.failed:\n"
    "            FailOnce.failed = True\n"
    "            raise RuntimeError('an import that fails half-way')\n"
    "sys.meta_path.insert(0, FailOnce())\n"
    "from DoseAlignLib.geometry.grid import Grid, Volume\n"
    "from DoseAlignLib.output import qa_png\n"
    "assert 'matplotlib' not in sys.modules\n"
    "qa_png.preload_matplotlib()\n"
    "qa_png._preloading.join()\n"
    "assert FailOnce.failed\n"
    "grid = Grid.from_spacing((4, 6, 8), (2.0, 2.0, 3.0), (0, 0, 0))\n"
    "ct = Volume(np.zeros((4, 6, 8), dtype=np.int16), grid)\n"
    "qa_png.render_qa_png(sys.argv[1], ct, Volume(np.ones((4, 6, 8), dtype=np.float32), grid))\n"
)


def test_a_preload_that_failed_half_way_leaves_no_half_imported_matplotlib(tmp_path):
    # the modules a failed import did load keep the package it did not finish: the picture's import then failed
    # ("module 'matplotlib' has no attribute ...") instead of importing again
    pytest.importorskip("matplotlib")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _PRELOAD_FAILS_HALF_WAY, str(tmp_path / "qa.png")],
        env={**os.environ, "PYTHONPATH": str(root / "DoseAlign"), "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert _png_size(tmp_path / "qa.png")[0] > 0
