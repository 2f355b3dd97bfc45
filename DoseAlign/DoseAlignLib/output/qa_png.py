"""The per-case picture ``qa.png``: axial, coronal and sagittal slices through Dmax.

CT in grey; the dose as a colour wash from :data:`WASH_FROM` of the reference dose up (below it the
CT shows through untouched, and the colour scale starts there); isodose lines as thin *dashed*
lines (levels in % of the prescription when the RTPLAN gives one, else of the output Dmax);
structure outlines as thicker *solid* lines in their ROI colours with a dark edge, so that an
outline never passes for an isodose line even when their colours agree (PTV red, 100 % red);
two legends (isodose levels, structures), a colour bar, one 5-50 mm scale bar and orientation
letters, and a title with the case id and the audit flags. The three panels share one scale
(mm per pixel), so a structure has the same size in each. Views are taken along the output grid's
own axes and named by the patient axis each axis runs closest to; they are flipped so that
anterior / superior is up and the patient's right is on the viewer's left (radiological
convention; sagittal: anterior on the left). Dmax (the cross) is where the audit found it.

The PNG carries its layout in a text chunk (:data:`LAYOUT_KEY`): each panel's pixel box and mm
extent; report.html uses it to show the axial panel as a readable thumbnail.

matplotlib is optional (``pip install dosealign[qa]``) and imported only inside the functions. Pictures
are drawn with its object-oriented API (a ``Figure`` saved straight to PNG, which renders with Agg),
never through pyplot: the engine runs headless and without it, and the pyplot backend of a notebook or
of Slicer's Python is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..audit.stats import AT_MAX_FRACTION, dmax_index
from ..errors import open_files_limit, start_thread, too_many_open_files
from ..geometry.grid import Volume

logger = logging.getLogger(__name__)
#: Errors of the output itself (full disk, file-size limit, quota, I/O, read-only): they stop the export.
_OUTPUT_FAULTS = {errno.ENOSPC, errno.EFBIG, errno.EIO, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}

#: Below this open-file limit (``ulimit -n``), a qa.png that fails in matplotlib (its font list unreadable) is
#: said in one line naming the limit, not with a traceback.
FEW_OPEN_FILES = 100

#: Isodose levels (% of the reference dose).
ISODOSE_PCT = (30, 50, 70, 90, 95, 100, 105)
ISODOSE_COLORS = ("#3050ff", "#00b0ff", "#00d060", "#f0e000", "#ff9000", "#ff2020", "#ff00ff")
#: CT grey window (HU).
CT_WINDOW = (-500.0, 700.0)
#: Dose below this fraction of the reference is not colour-washed; the colour scale starts here.
WASH_FROM = 0.1
WASH_ALPHA = 0.4
#: Isodose lines: thin and dashed; structure outlines: thicker, solid, with a dark edge.
ISODOSE_STYLE = {"linewidths": 1.2, "linestyles": "dashed"}
ROI_WIDTH, ROI_EDGE_WIDTH, ROI_EDGE_COLOR = 1.8, 3.6, "#101010"
#: At most this many ROIs get an entry in the legend (all are outlined).
LEGEND_ROIS = 16
#: The figure (inches at 100 dpi): 17 in wide; as tall as its panels and legends need, at most 6.4 in.
FIGURE_WIDTH_IN = 17.0
MAX_FIGURE_HEIGHT_IN = 6.4
DPI = 100
#: Inches: above the panels (title, subtitle, panel titles), below them, between them; the panels'
#: column (left, right), the legends' left edge and the colour bar's.
TOP_IN, BOTTOM_IN, PANEL_GAP_IN = 0.9, 0.25, 0.25
PANELS_X_IN = (0.17, 13.6)
LEGEND_X_IN, COLORBAR_X_IN = 13.77, 16.18
#: Legend rows (inches, 8 pt text) and the smallest height of the panels' area (for the colour bar).
LEGEND_ROW_IN, LEGEND_TITLE_IN, MIN_CONTENT_IN = 0.167, 0.3, 2.6
#: The PNG text chunk holding the layout: {"panels": {name: {"box_px": [x0, y0, x1, y1], "mm": [w, h]}}, ...}.
LAYOUT_KEY = "dosealign:layout"
#: Views are cropped to the washed dose (and Dmax) plus this margin (mm).
CROP_MARGIN_MM = 15.0
_PATIENT_AXES = "xyz"
_LETTERS = {"x": ("R", "L"), "y": ("A", "P"), "z": ("I", "S")}  # (minus end, plus end) in LPS


def matplotlib_available() -> bool:
    """True when matplotlib can be imported."""
    _wait_for_preload()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


#: What qa.png imports from matplotlib (preloaded by :func:`preload_matplotlib`).
_MATPLOTLIB_MODULES = (
    "matplotlib.figure",
    "matplotlib.colors",
    "matplotlib.lines",
    "matplotlib.patheffects",
    "matplotlib.backends.backend_agg",
)
_preloading: Optional[threading.Thread] = None


def preload_matplotlib() -> None:
    """Start importing what qa.png needs from matplotlib in a background thread (once per process).

    The import takes about 0.35 s, most of the picture's time in a one-case export; done while the case
    is read and resampled (numpy and SimpleITK work, mostly outside the GIL) it is ready when the picture
    is drawn. A fork waits for it (``os.register_at_fork``): a child must not inherit a half-imported module.
    """
    global _preloading
    if _preloading is not None or _MATPLOTLIB_MODULES[0] in sys.modules:
        return
    try:
        if importlib.util.find_spec("matplotlib") is None:
            return
    except (ImportError, ValueError):
        return
    preloading = threading.Thread(target=_import_matplotlib, name="dosealign-matplotlib", daemon=True)
    if not start_thread(preloading):  # no thread to be had: the picture imports what it needs when drawn
        return
    _preloading = preloading
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=preloading.join)


_fonts_lock = threading.Lock()
_fonts_checked = False
#: Why matplotlib's font list cannot draw (found once per process), or None.
_fonts_problem: Optional[str] = None


def _font_list_caches() -> dict:
    """matplotlib's cached font lists (``fontlist-v*.json`` in its cache folder): {path: (inode, size, mtime)}."""
    import matplotlib

    try:
        return {path: _file_key(path) for path in Path(matplotlib.get_cachedir()).glob("fontlist-v*.json")}
    except (OSError, RuntimeError):
        return {}


def _file_key(path: Path) -> tuple:
    status = path.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns


def _lists_no_fonts(path: Path) -> bool:
    try:
        return not json.loads(path.read_text(encoding="utf-8")).get("ttflist")
    except OSError:  # short of descriptors still: a list of any fonts takes tens of KiB
        return path.stat().st_size < 4096
    except ValueError:
        return False


def load_fonts() -> None:
    """Import matplotlib's font list; when it holds no fonts, raise saying why, and never leave one such behind.

    matplotlib builds the list once per user and caches it; a font file it cannot open is skipped without
    a word. A process one file short of its open-file limit (``ulimit -n``) so cached a list of no fonts,
    and every later matplotlib picture of that user failed ("Failed to find font DejaVu Sans") until someone
    removed the file. A list this process cached that way is removed again (the next run builds it anew);
    one cached before is named, not touched.
    """
    global _fonts_checked, _fonts_problem
    with _fonts_lock:
        if not _fonts_checked:
            before = None if "matplotlib.font_manager" in sys.modules else _font_list_caches()
            from matplotlib import font_manager

            _fonts_checked = True
            if not font_manager.fontManager.ttflist:
                _fonts_problem = _no_fonts(before, f"fontlist-v{font_manager.FontManager.__version__}.json")
        if _fonts_problem is not None:
            raise RuntimeError(_fonts_problem)


def _no_fonts(before: Optional[dict], current: str) -> str:
    """Why matplotlib has no fonts, having removed the empty list this process cached (``before``: the cached
    lists before it imported its font manager, None when something else imported it first; ``current``: the
    file name of this matplotlib's list)."""
    told = []
    for path, key in _font_list_caches().items():
        if path.name != current:
            continue
        if before is not None and before.get(path) != key and _lists_no_fonts(path):
            with contextlib.suppress(OSError):
                path.unlink()
                told.append(f"the empty font list it cached ({path}) is removed; the next run builds it anew")
        elif _lists_no_fonts(path):
            told.append(f"its cached font list {path} names no fonts: remove it and matplotlib builds it anew")
    return "matplotlib found no fonts to draw with" + (": " + "; ".join(told) if told else "")


def _wait_for_preload() -> None:
    """Wait until the preload thread is done: the picture's imports would otherwise run beside its own, and two
    threads importing one package at once may see it half-initialized before Python 3.12 (cpython issue 83065)."""
    preloading = _preloading
    if preloading is not None and preloading is not threading.current_thread():
        preloading.join()


def _import_matplotlib() -> None:
    before = set(sys.modules)
    try:
        load_fonts()
        for name in _MATPLOTLIB_MODULES:
            importlib.import_module(name)
    except Exception:  # the picture's own import reports it (qa_png_writer records the reason)
        _forget_half_imported(before)


def _forget_half_imported(before: set) -> None:
    """Remove the matplotlib modules an import that failed half-way left. The modules it did import keep the package
    it did not finish: the picture's own import then failed with "module 'matplotlib' has no attribute 'rcParams'"
    instead of trying again (its case was written without qa.png; a warning filter another thread had set to
    "error" failed the preload's import on Python 3.9)."""
    for name in list(sys.modules):  # (list: copied at once, while other threads may import)
        if name not in before and (name == "matplotlib" or name.startswith(("matplotlib.", "mpl_toolkits"))):
            sys.modules.pop(name, None)


def _dominant(direction: np.ndarray) -> tuple:
    """Patient axis ("x", "y", "z") a direction runs closest to, and the sign of that component."""
    a = int(np.argmax(np.abs(direction)))
    return _PATIENT_AXES[a], 1.0 if direction[a] >= 0 else -1.0


def _views(volume: Volume) -> list:
    """For each view: name, fixed array axis, (vertical axis, flip), (horizontal axis, flip)."""
    direction = volume.grid.direction  # columns i, j, k
    array_dir = {0: direction[:, 2], 1: direction[:, 1], 2: direction[:, 0]}  # array axes k, j, i
    normals = {a: _dominant(array_dir[a])[0] for a in range(3)}
    # each patient axis gets the array axis most parallel to it, without reuse
    used, fixed_for = set(), {}
    for name, patient in (("axial", "z"), ("coronal", "y"), ("sagittal", "x")):
        p = _PATIENT_AXES.index(patient)
        candidates = [a for a in range(3) if a not in used]
        best = max(candidates, key=lambda a: (normals[a] == patient, abs(array_dir[a][p])))
        used.add(best)
        fixed_for[name] = best
    views = []
    layout = {"axial": ("y", "x"), "coronal": ("z", "x"), "sagittal": ("z", "y")}
    for name, fixed in fixed_for.items():
        rest = [a for a in range(3) if a != fixed]
        want_v, want_h = layout[name]
        pv, ph = _PATIENT_AXES.index(want_v), _PATIENT_AXES.index(want_h)
        vertical = max(rest, key=lambda a: abs(array_dir[a][pv]))
        horizontal = rest[0] if rest[1] == vertical else rest[1]
        # screen rows grow downwards: up must be anterior (-y) or superior (+z)
        v_sign = np.sign(array_dir[vertical][pv]) or 1.0
        flip_v = v_sign > 0 if want_v == "z" else v_sign < 0
        h_sign = np.sign(array_dir[horizontal][ph]) or 1.0
        flip_h = h_sign < 0  # patient left (+x) / posterior (+y) to the right
        views.append((name, fixed, (vertical, bool(flip_v), want_v), (horizontal, bool(flip_h), want_h)))
    return views


def _cut(array: np.ndarray, fixed: int, index: int, vertical: tuple, horizontal: tuple) -> np.ndarray:
    """The 2-D plane of a (K, J, I) array, oriented for the screen (rows = vertical).

    A view when it can be (basic indexing: np.take would first copy a non-contiguous input whole).
    """
    plane = array[(slice(None),) * fixed + (int(index),)]
    return _orient(plane, fixed, vertical, horizontal)


def _orient(plane: np.ndarray, fixed: int, vertical: tuple, horizontal: tuple) -> np.ndarray:
    """A plane with the two array axes other than ``fixed`` (in order), turned for the screen."""
    rest = [a for a in range(3) if a != fixed]
    if rest.index(vertical[0]) == 1:
        plane = plane.T
    if vertical[1]:
        plane = plane[::-1]
    if horizontal[1]:
        plane = plane[:, ::-1]
    return plane


def _cut_masks(packed: np.ndarray, n_columns: int, fixed: int, index: int) -> np.ndarray:
    """One plane of bit-packed masks ``(N, K, J, ceil(I/8))`` as ``(N, ...)`` bool, unpacking only it."""
    if fixed == 0:
        return np.unpackbits(packed[:, index], axis=-1, count=n_columns).astype(bool)
    if fixed == 1:
        return np.unpackbits(packed[:, :, index], axis=-1, count=n_columns).astype(bool)
    return ((packed[:, :, :, index // 8] >> (7 - index % 8)) & 1).astype(bool)


def render_qa_png(
    path: Path,
    ct: Volume,
    dose: Volume,
    *,
    masks_packed: Optional[np.ndarray] = None,
    roi_names: Sequence[str] = (),
    roi_colors: Sequence[Optional[Sequence[int]]] = (),
    title: str = "",
    subtitle: str = "",
    flags: Sequence[str] = (),
    reference_dose_gy: Optional[float] = None,
    reference_label: str = "Dmax",
    dmax_at: Optional[Sequence[int]] = None,
) -> Path:
    """Render the three orthogonal views through the output Dmax into a PNG file.

    Parameters
    ----------
    path : Path
        The PNG to write.
    ct, dose : Volume
        CT (HU) and dose (Gy) on the same grid, ``(K, J, I)``.
    masks_packed : (N, K, J, ceil(I/8)) uint8 array, optional
        Bit-packed binary masks (pair.npz's ``masks``).
    roi_names, roi_colors : sequences of length N
        ROI names and RGB 0-255 colours (None: a default colour).
    title, subtitle : str
        First and second title lines; ``flags`` are appended to the title.
    reference_dose_gy : float, optional
        100 % of the isodose levels; the output Dmax when not given.
    reference_label : str
        What the reference is ("prescription" or "Dmax"), for the legend.
    dmax_at : (k, j, i) ints, optional
        Where Dmax is: the audit's ``dmax_index`` (meta["audit"]["dose"]["output"]); located here only
        when not given or not at Dmax.

    Returns
    -------
    Path
    """
    fig, layout = qa_figure(
        ct,
        dose,
        masks_packed=masks_packed,
        roi_names=roi_names,
        roi_colors=roi_colors,
        title=title,
        subtitle=subtitle,
        flags=flags,
        reference_dose_gy=reference_dose_gy,
        reference_label=reference_label,
        dmax_at=dmax_at,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white", metadata={LAYOUT_KEY: json.dumps(layout, sort_keys=True)})
    return path


def qa_figure(
    ct: Volume,
    dose: Volume,
    *,
    masks_packed: Optional[np.ndarray] = None,
    roi_names: Sequence[str] = (),
    roi_colors: Sequence[Optional[Sequence[int]]] = (),
    title: str = "",
    subtitle: str = "",
    flags: Sequence[str] = (),
    reference_dose_gy: Optional[float] = None,
    reference_label: str = "Dmax",
    dmax_at: Optional[Sequence[int]] = None,
) -> tuple:
    """The matplotlib Figure of :func:`render_qa_png` and its layout (what the PNG's text chunk holds:
    each panel's pixel box and mm extent, the wash's dose range, the mm per pixel)."""
    _wait_for_preload()
    import matplotlib  # the object-oriented API only: pyplot's backend (Jupyter's, Slicer's) is left alone

    load_fonts()  # before matplotlib.figure imports the font list: a list of no fonts is said and not kept
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    dose_array = dose.array
    slice_max = dose_array.max(axis=(1, 2))  # one pass; the rest reads a few slices
    dmax = float(slice_max.max())
    reference = float(reference_dose_gy or dmax or 1.0)
    index = tuple(int(v) for v in dmax_at) if dmax_at is not None else None
    if index is not None and not _holds_dmax(dose_array, index, dmax):  # a stale hint: locate it here
        index = None
    if index is None:
        index = dmax_index(dose_array, slice_max)
    spacing_of_axis = {0: float(dose.grid.spacing[2]), 1: float(dose.grid.spacing[1]), 2: float(dose.grid.spacing[0])}
    wash_from = WASH_FROM * reference
    box = _crop_box(dose_array, index, wash_from, spacing_of_axis, slice_max)
    n_rois = 0 if masks_packed is None else int(masks_packed.shape[0])
    colors = _roi_colors(n_rois, roi_colors, matplotlib.colormaps["tab20"])
    wash_top = max(1.1 * reference, dmax)
    norm = Normalize(vmin=wash_from, vmax=wash_top)

    views = _views(dose)
    sizes = []  # (width, height) of each view in mm
    for _name, _fixed, vertical, horizontal in views:
        rows = box[vertical[0]].stop - box[vertical[0]].start
        cols = box[horizontal[0]].stop - box[horizontal[0]].start
        sizes.append((cols * spacing_of_axis[horizontal[0]], rows * spacing_of_axis[vertical[0]]))
    shown_rois = min(n_rois, LEGEND_ROIS) + (1 if n_rois > LEGEND_ROIS else 0)
    legends_in = LEGEND_TITLE_IN + LEGEND_ROW_IN * (len(ISODOSE_PCT) + 1)
    if n_rois:
        legends_in += 0.2 + LEGEND_TITLE_IN + LEGEND_ROW_IN * shown_rois
    rects_in, inch_per_mm = _panel_rects(sizes)
    panels_in = max(h for _x, _y, _w, h in rects_in)
    height_in = min(TOP_IN + max(panels_in, legends_in, MIN_CONTENT_IN) + BOTTOM_IN, MAX_FIGURE_HEIGHT_IN)
    fig = Figure(figsize=(FIGURE_WIDTH_IN, height_in), dpi=DPI)

    def fraction(x_in: float, top_in: float, width_in: float, h_in: float) -> tuple:
        """A figure rectangle (left, bottom, width, height) from inches measured from the top left."""
        return (x_in / FIGURE_WIDTH_IN, 1 - (top_in + h_in) / height_in, width_in / FIGURE_WIDTH_IN, h_in / height_in)

    rects = [fraction(*r) for r in rects_in]
    layout = {
        "figure_px": [int(round(FIGURE_WIDTH_IN * DPI)), int(round(height_in * DPI))],
        "mm_per_px": 1.0 / (inch_per_mm * DPI),
        "wash_gy": [float(norm.vmin), float(norm.vmax)],
        "panels": {},
    }
    wash = None
    levels = [reference * p / 100.0 for p in ISODOSE_PCT]
    for rect, (name, fixed, vertical, horizontal), (width_mm, height_mm) in zip(rects, views, sizes):
        ax = fig.add_axes(rect)
        at = int(index[fixed])
        crop = tuple(slice(None) if a == fixed else box[a] for a in range(3))
        ct_plane = _cut(ct.array[crop], fixed, at, vertical, horizontal).astype(np.float32)
        dose_plane = _cut(dose_array[crop], fixed, at, vertical, horizontal)
        sv, sh = spacing_of_axis[vertical[0]], spacing_of_axis[horizontal[0]]
        rows, cols = dose_plane.shape
        extent = (-0.5 * sh, (cols - 0.5) * sh, (rows - 0.5) * sv, -0.5 * sv)
        ax.imshow(ct_plane, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], extent=extent, interpolation="nearest")
        shown = np.ma.masked_less(dose_plane, wash_from)
        wash = ax.imshow(shown, cmap="jet", norm=norm, alpha=WASH_ALPHA, extent=extent, interpolation="nearest")
        x = np.arange(cols) * sh
        y = np.arange(rows) * sv
        if rows > 1 and cols > 1 and dmax > 0:
            present = [(lv, c) for lv, c in zip(levels, ISODOSE_COLORS) if dose_plane.min() < lv <= dose_plane.max()]
            if present:
                ax.contour(
                    x, y, dose_plane, levels=[p[0] for p in present], colors=[p[1] for p in present], **ISODOSE_STYLE
                )
        if n_rois and rows > 1 and cols > 1:
            planes = _cut_masks(masks_packed, dose_array.shape[2], fixed, at)
            in_plane = tuple(box[a] for a in range(3) if a != fixed)
            for n in range(n_rois):
                oriented = _orient(planes[n][in_plane], fixed, vertical, horizontal)
                if oriented.any() and not oriented.all():
                    outline = ax.contour(
                        x, y, oriented.astype(np.float32), levels=[0.5], colors=[colors[n]], linewidths=ROI_WIDTH
                    )
                    _edge(outline)
        starts = [box[a].start for a in range(3)]
        local = tuple(index[a] - starts[a] for a in range(3))
        dv, dh = _screen_position(local, fixed, vertical, horizontal, dose_array[box].shape)
        ax.plot([dh * sh], [dv * sv], marker="+", color="white", markersize=14, markeredgewidth=2)
        ax.plot([dh * sh], [dv * sv], marker="+", color="black", markersize=10, markeredgewidth=1)
        bar = _scale_bar_mm(min(w for w, _h in sizes))
        _decorate(ax, name, at, fixed, vertical, horizontal, extent, bar)
        left, bottom, width, height = rect
        x0, x1 = left * FIGURE_WIDTH_IN * DPI, (left + width) * FIGURE_WIDTH_IN * DPI
        y0, y1 = (1 - bottom - height) * height_in * DPI, (1 - bottom) * height_in * DPI
        layout["panels"][name] = {
            "box_px": [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)],
            "mm": [round(width_mm, 3), round(height_mm, 3)],
        }
    full_title = title + (f"   flags: {', '.join(flags)}" if flags else "   no flags")
    fig.suptitle(
        full_title, fontsize=13, fontweight="bold", color="#b00000" if flags else "#006000", y=1 - 0.1 / height_in
    )
    if subtitle:
        fig.text(0.5, 1 - 0.45 / height_in, subtitle, ha="center", fontsize=10)
    legend_top = 1 - (TOP_IN - 0.1) / height_in
    isodose = [
        Line2D([0], [0], color=c, lw=1.5, ls="--", label=f"{p} % ({reference * p / 100:.3g} Gy)")
        for p, c in zip(ISODOSE_PCT, ISODOSE_COLORS)
    ]
    isodose.append(Line2D([0], [0], marker="+", color="black", lw=0, markersize=10, label=f"Dmax {dmax:.4g} Gy"))
    first = fig.legend(
        handles=isodose,
        loc="upper left",
        bbox_to_anchor=(LEGEND_X_IN / FIGURE_WIDTH_IN, legend_top),
        fontsize=8,
        title=f"isodose lines (% of {reference_label})",
        title_fontsize=8,
        frameon=False,
        alignment="left",
    )
    if n_rois:
        structures = []
        for n in range(min(n_rois, LEGEND_ROIS)):
            label = roi_names[n] if n < len(roi_names) else f"ROI {n}"
            handle = Line2D([0], [0], color=colors[n], lw=ROI_WIDTH + 0.4, label=str(label)[:24])
            _edge(handle)
            structures.append(handle)
        if n_rois > LEGEND_ROIS:
            structures.append(Line2D([0], [0], color="none", label=f"... {n_rois - LEGEND_ROIS} more ROIs"))
        fig.legend(
            handles=structures,
            loc="upper left",
            bbox_to_anchor=(
                LEGEND_X_IN / FIGURE_WIDTH_IN,
                legend_top - (LEGEND_TITLE_IN + LEGEND_ROW_IN * len(isodose) + 0.2) / height_in,
            ),
            fontsize=8,
            title="structures (outlines)",
            title_fontsize=8,
            frameon=False,
            alignment="left",
        )
    fig.add_artist(first)
    if wash is not None:
        cax = fig.add_axes(fraction(COLORBAR_X_IN, TOP_IN - 0.1, 0.17, height_in - TOP_IN - BOTTOM_IN + 0.1))
        bar = fig.colorbar(wash, cax=cax)
        bar.set_label(f"dose (Gy); no wash below {WASH_FROM:.0%} of {reference_label} ({wash_from:.3g} Gy)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig, layout


def _panel_rects(sizes: list) -> tuple:
    """The panels side by side at one scale, as (left, top, width, height) in inches from the figure's top
    left, centred in their column and top-aligned; and that scale (inches per mm)."""
    left, right = PANELS_X_IN
    width_in = right - left - PANEL_GAP_IN * (len(sizes) - 1)
    height_in = MAX_FIGURE_HEIGHT_IN - TOP_IN - BOTTOM_IN
    total_mm = sum(max(w, 1e-6) for w, _h in sizes)
    tallest_mm = max(max(h, 1e-6) for _w, h in sizes)
    scale = min(width_in / total_mm, height_in / tallest_mm)
    used_in = total_mm * scale + PANEL_GAP_IN * (len(sizes) - 1)
    x_in = left + (right - left - used_in) / 2
    rects = []
    for w, h in sizes:
        rects.append((x_in, TOP_IN, w * scale, h * scale))
        x_in += w * scale + PANEL_GAP_IN
    return rects, scale


def _edge(artist) -> None:
    """A dark edge under a structure outline (a contour set or a legend line)."""
    from matplotlib import patheffects
    from matplotlib.artist import Artist

    effects = [patheffects.Stroke(linewidth=ROI_EDGE_WIDTH, foreground=ROI_EDGE_COLOR), patheffects.Normal()]
    if isinstance(artist, Artist):  # a Line2D; a ContourSet from matplotlib 3.8 on
        artist.set_path_effects(effects)
    else:  # matplotlib < 3.8: a ContourSet holds one collection per level
        for collection in artist.collections:
            collection.set_path_effects(effects)


def _scale_bar_mm(smallest_width_mm: float) -> int:
    """One scale bar length for every panel: the longest of 50, 20, 10, 5, 2, 1 mm within 30 % of the narrowest."""
    return next((b for b in (50, 20, 10, 5, 2, 1) if b <= 0.3 * smallest_width_mm), 1)


def _holds_dmax(dose: np.ndarray, index: tuple, dmax: float) -> bool:
    """Whether ``index`` is inside ``dose`` and at Dmax (within :data:`.audit.AT_MAX_FRACTION`)."""
    if len(index) != 3 or any(not 0 <= v < n for v, n in zip(index, dose.shape)):
        return False
    return bool(dose[index] >= dmax * (1 - AT_MAX_FRACTION)) if dmax > 0 else True


def _crop_box(
    dose: np.ndarray, index: tuple, threshold: float, spacing_of_axis: dict, slice_max: Optional[np.ndarray] = None
) -> tuple:
    """Slices ``(k, j, i)`` around the dose above ``threshold`` and Dmax, plus a margin of CROP_MARGIN_MM.

    The rows and columns above the threshold come from the maximum over the slices that reach it
    (``slice_max``: each slice's maximum), not from a bool copy of the whole dose.
    """
    if slice_max is None:
        slice_max = dose.max(axis=(1, 2))
    ks = np.flatnonzero(slice_max >= threshold)
    if ks.size:
        above = dose[int(ks[0]) : int(ks[-1]) + 1].max(axis=0) >= threshold  # (J, I)
        hits = [ks, np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))]
    else:
        hits = [ks, ks, ks]
    box = []
    for axis in range(3):
        hit = hits[axis]
        lo = min(int(hit[0]), index[axis]) if hit.size else 0
        hi = max(int(hit[-1]), index[axis]) if hit.size else dose.shape[axis] - 1
        margin = int(np.ceil(CROP_MARGIN_MM / spacing_of_axis[axis]))
        box.append(slice(max(lo - margin, 0), min(hi + margin, dose.shape[axis] - 1) + 1))
    return tuple(box)


def _rgb(color) -> Optional[tuple]:
    """``color`` as three numbers 0-255, or None when it is not that (a damaged ROIDisplayColor: a colour of the
    cycle instead, never a failed qa.png)."""
    try:
        rgb = tuple(float(c) for c in color) if color is not None and not isinstance(color, (str, bytes)) else ()
    except (TypeError, ValueError):
        return None
    return rgb if len(rgb) == 3 and all(0.0 <= c <= 255.0 for c in rgb) else None


def _roi_colors(n_rois: int, roi_colors: Sequence, cycle) -> list:
    """RGB (0-1) per ROI: its own colour, or a distinct one when missing or already taken."""
    colors, seen = [], set()
    for n in range(n_rois):
        rgb = _rgb(roi_colors[n]) if n < len(roi_colors) else None
        if rgb is None or rgb in seen:
            colors.append(cycle(n % 20))
        else:
            seen.add(rgb)
            colors.append(tuple(c / 255.0 for c in rgb))
    return colors


def _screen_position(index: tuple, fixed: int, vertical: tuple, horizontal: tuple, shape: tuple) -> tuple:
    v = index[vertical[0]]
    h = index[horizontal[0]]
    if vertical[1]:
        v = shape[vertical[0]] - 1 - v
    if horizontal[1]:
        h = shape[horizontal[0]] - 1 - h
    return float(v), float(h)


def _decorate(ax, name: str, at: int, fixed: int, vertical: tuple, horizontal: tuple, extent: tuple, bar: int) -> None:
    """Panel title, orientation letters and a scale bar of ``bar`` mm."""
    axis_name = "kji"[fixed]
    ax.set_title(f"{name} ({axis_name} = {at})", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    left, right, bottom, top = extent
    width, height = right - left, bottom - top
    minus, plus = _LETTERS[vertical[2]]
    up, down = (plus, minus) if vertical[2] == "z" else (minus, plus)
    h_minus, h_plus = _LETTERS[horizontal[2]]
    style = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "ha": "center", "va": "center"}
    ax.text(left + width / 2, top + 0.04 * height, up, **style)
    ax.text(left + width / 2, bottom - 0.04 * height, down, **style)
    ax.text(left + 0.03 * width, top + height / 2, h_minus, **style)
    ax.text(right - 0.03 * width, top + height / 2, h_plus, **style)
    x0 = left + 0.05 * width
    y0 = bottom - 0.07 * height
    ax.plot([x0, x0 + bar], [y0, y0], color="white", lw=3, solid_capstyle="butt")
    ax.text(x0, y0 - 0.025 * height, f"{bar} mm", color="white", fontsize=9, ha="left", va="bottom")
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)


def render_case(result, path: Path) -> Path:
    """``qa.png`` of a :class:`~DoseAlignLib.pipeline.CaseResult` (masks, flags and Dmax from its meta)."""
    meta = result.meta
    audit = meta.get("audit") or {}
    structures = meta.get("structures") or {}
    flags = [f["flag"] for f in audit.get("flags", [])]
    dose_audit = audit.get("dose") or {}
    native = (dose_audit.get("native") or {}).get("dmax_gy")
    output_summary = dose_audit.get("output") or {}
    output = output_summary.get("dmax_gy")
    if output is None:
        output = float(result.dose.array.max())
    prescription = audit.get("prescription_gy")
    subtitle = f"Dmax output {output:.4g} Gy" + (f", native {native:.4g} Gy" if native is not None else "")
    worst = audit.get("worst_dvh_delta")
    if worst:
        subtitle += f"; worst DVH delta {worst['delta_gy']:+.3g} Gy ({worst['roi']} {worst['point']})"
    subtitle += f"; {meta.get('resampling', {}).get('interpolator', '')} onto {meta.get('resampling', {}).get('reference_grid', '')}"
    colors = [r.get("color") for r in structures.get("rois", [])]
    return render_qa_png(
        path,
        result.ct,
        result.dose,
        masks_packed=result.extra_arrays.get("masks"),
        roi_names=structures.get("names", []),
        roi_colors=colors,
        title=str(result.case_id),
        subtitle=subtitle,
        flags=flags,
        reference_dose_gy=prescription,
        reference_label="prescription" if prescription else "Dmax",
        dmax_at=output_summary.get("dmax_index"),
    )


def qa_png_writer(result) -> Callable[[Path], None]:
    """A writer for the case's temporary output folder: renders ``qa.png`` there.

    It records the outcome in ``result.meta["qa_png"]`` and never raises: without matplotlib,
    or when rendering fails, the case is still written, with the reason.
    """

    def write(folder: Path) -> None:
        if not matplotlib_available():
            result.meta["qa_png"] = {
                "written": False,
                "reason": "matplotlib is not installed (pip install 'dosealign[qa]')",
            }
            return
        try:
            render_case(result, Path(folder) / "qa.png")
            result.meta["qa_png"] = {"written": True, "file": "qa.png"}
        except OSError as error:
            if error.errno in _OUTPUT_FAULTS:  # the disk, not the picture: the case fails, the export stops
                raise  # (case_folder names the cause; no traceback)
            limit_reached = too_many_open_files(error)
            if limit_reached:  # the process's open-file limit (ulimit -n): one line, no traceback
                logger.warning("qa.png of %s not written: %s", result.case_id, limit_reached)
                result.meta["qa_png"] = {"written": False, "reason": f"not written: {limit_reached}"}
                return
            logger.warning("qa.png of %s failed: %s", result.case_id, error, exc_info=True)
            result.meta["qa_png"] = {"written": False, "reason": f"{type(error).__name__}: {error}"}
        except Exception as error:  # a picture must never cost the case
            most = open_files_limit()
            if most is not None and most < FEW_OPEN_FILES:  # e.g. matplotlib's font list could not be read
                why = f"{type(error).__name__}: {error} (this process may open only {most} files, ulimit -n)"
                logger.warning("qa.png of %s failed: %s", result.case_id, why)  # one line, with the likely cause
                result.meta["qa_png"] = {"written": False, "reason": why}
                return
            logger.warning("qa.png of %s failed: %s", result.case_id, error, exc_info=True)
            result.meta["qa_png"] = {"written": False, "reason": f"{type(error).__name__}: {error}"}

    return write
