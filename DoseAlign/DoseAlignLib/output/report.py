"""The per-batch ``report.html``: one table row per case, with a thumbnail linking to its qa.png.

A single self-contained HTML file next to manifest.csv; links are relative, so it opens from
disk (``file://``) with no server and keeps working when the output folder is moved. Every piece
of text from the data (case ids, reasons, ROI names, flags) is escaped with :func:`html.escape`.

The thumbnail is the axial panel of qa.png, cut out with CSS at (nearly) its own size, so that it
can be read; the PNG's layout chunk (:data:`~.qa_png.LAYOUT_KEY`) says where the panel is. A qa.png
without it (an older version's) is shown whole, scaled down. Either links to the full picture.
"""

from __future__ import annotations

import html
import json
import struct
import zlib
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import quote

from .. import __version__
from ..errors import DoseAlignError
from .case_folder import load_meta
from .files import write_text_atomic
from .qa_png import LAYOUT_KEY

#: What each audit flag means, for the legend under the table.
FLAG_MEANINGS = {
    "dmax_changed": "Dmax on the output grid differs from the native Dmax by more than the threshold",
    "dose_outside_grid": "part of the integral dose lies outside the output grid (lost to the pair)",
    "dose_beyond_ct": "part of the integral dose lies where the CT has no image: on its fill value in the pair",
    "integral_changed": "integral dose inside the output grid changed on resampling",
    "dose_grid_edge": "the native dose grid's outer faces carry dose: the grid cuts through the dose (faces named)",
    "dvh_mismatch": "the training pair's DVH of an ROI misses its reference DVH (contours + native dose)",
    "roi_outside_dose_grid": "part of an ROI lies outside the native dose grid (0 Gy there on the output grid)",
    "roi_outside_output_grid": "part of an ROI lies outside the output grid (cut off the training pair)",
    "roi_volume_mismatch": "an ROI's mask volume differs from the volume of its contours",
    "beam_sum_mismatch": "the sum of the BEAM doses differs from the PLAN dose",
    "dose_zero": "the dose is 0 Gy everywhere",
    "dose_below_prescription": "Dmax is far below the plan's prescription: no whole treatment's dose",
    "dose_above_prescription": "Dmax is far above the plan's prescription: a unit or scaling error",
    "ct_without_air": "the CT holds no value near air: its values are likely not HU",
    "ct_regularized": "the CT had uneven slices or gantry tilt and was resampled onto a regular grid",
    "dose_grid_warning": "the dose grid's header needed a warning (see meta.json)",
}

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #bbb; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ok td.status { color: #060; font-weight: bold; }
tr.failed td.status { color: #b00; font-weight: bold; }
tr.skipped td.status { color: #a60; font-weight: bold; }
span.flag { display: inline-block; background: #fdd; color: #900; border-radius: 3px; padding: 0 4px; margin: 1px; }
span.noflag { color: #060; }
img.thumb { width: 360px; border: 1px solid #999; }
ul.details { margin: 4px 0 0 0; padding-left: 1.2em; font-size: 85%; max-width: 40em; }
span.crop { display: inline-block; overflow: hidden; border: 1px solid #999; }
span.crop img { display: block; max-width: none; }
a.full { font-size: small; }
"""
#: Largest thumbnail (CSS pixels): the axial panel is scaled to fit, at most enlarged THUMB_UPSCALE times
#: (a small panel, next to tall coronal and sagittal ones).
THUMB_MAX = (440, 340)
THUMB_UPSCALE = 2.0
#: Pixels above the panel kept in the thumbnail: the panel's title (view and slice).
THUMB_TITLE_PX = 22


def _cell(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _flags_html(flags: str) -> str:
    codes = [f for f in (flags or "").split(";") if f]
    if not codes:
        return '<span class="noflag">none</span>'
    return " ".join(f'<span class="flag" title="{_cell(FLAG_MEANINGS.get(c, ""))}">{_cell(c)}</span>' for c in codes)


def _flag_details(out_dir: Path, case_id: str) -> str:
    """The case's own flag details (its meta.json's ``audit.flags``), as a list under the flag codes."""
    try:
        meta = load_meta(out_dir / case_id)
    except DoseAlignError:  # missing or damaged: the row says why, if the case is listed at all
        return ""
    flags = (meta.get("audit") or {}).get("flags") or []
    if not flags:
        return ""
    items = "".join(f"<li><code>{_cell(f.get('flag'))}</code>: {_cell(f.get('detail'))}</li>" for f in flags)
    return f'<ul class="details">{items}</ul>'


def _thumbnail(out_dir: Path, case_id: str) -> str:
    picture = out_dir / case_id / "qa.png"
    if not picture.is_file():
        return "(no picture)"
    href = _cell(f"{quote(case_id)}/qa.png")
    alt = _cell("qa.png of " + case_id)
    layout = png_layout(picture)
    panel = ((layout or {}).get("panels") or {}).get("axial")
    try:
        width, height = (float(v) for v in layout["figure_px"])
        x0, y0, x1, y1 = (float(v) for v in panel["box_px"])
    except (TypeError, KeyError, ValueError):  # no layout: the whole picture, scaled down
        return f'<a href="{href}"><img class="thumb" src="{href}" alt="{alt}" loading="lazy"></a>'
    y0 = max(0.0, y0 - THUMB_TITLE_PX)
    scale = min(THUMB_UPSCALE, THUMB_MAX[0] / max(x1 - x0, 1.0), THUMB_MAX[1] / max(y1 - y0, 1.0))
    box = f"width:{(x1 - x0) * scale:.0f}px;height:{(y1 - y0) * scale:.0f}px"
    place = (
        f"width:{width * scale:.0f}px;height:{height * scale:.0f}px;"
        f"margin-left:-{x0 * scale:.0f}px;margin-top:-{y0 * scale:.0f}px"
    )
    return (
        f'<a href="{href}"><span class="crop" style="{box}"><img src="{href}" style="{place}" alt="{alt}" '
        f'loading="lazy"></span></a><br><a class="full" href="{href}">full picture (3 views)</a>'
    )


def png_layout(path: Path) -> Optional[dict]:
    """The layout a qa.png carries in its text chunk (None when it has none or cannot be read)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = handle.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IDAT" or kind == b"IEND" or length > 1 << 20:
                    return None  # text chunks we write come before the image data
                data = handle.read(length)
                handle.read(4)  # CRC
                text = _png_text(kind, data, LAYOUT_KEY)
                if text is not None:
                    return json.loads(text)
    except (OSError, ValueError, struct.error, zlib.error):
        return None


def _png_text(kind: bytes, data: bytes, key: str) -> Optional[str]:
    """The text of a tEXt, zTXt or iTXt chunk whose keyword is ``key``."""
    keyword, _, rest = data.partition(b"\0")
    if keyword.decode("latin-1") != key:
        return None
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":
        return zlib.decompress(rest[1:]).decode("latin-1")
    if kind == b"iTXt":
        compressed, _method, rest = rest[0], rest[1], rest[2:]
        _language, _, rest = rest.partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return (zlib.decompress(text) if compressed else text).decode("utf-8")
    return None


def report_html(rows: Sequence[dict], out_dir: Path, *, title: str = "DoseAlign export", source: str = "") -> str:
    """The HTML text of the report for manifest ``rows`` whose case folders are in ``out_dir``.

    Parameters
    ----------
    rows : sequence of dict
        Manifest rows (``case_id``, ``status``, ``reason``, and the audit columns ``audit_flags``,
        ``dmax_native_gy``, ``dmax_output_gy``, ``worst_dvh_delta_gy``, ``worst_dvh_roi``).
    out_dir : Path
        The export folder (thumbnails are looked up as ``<case_id>/qa.png`` in it).
    title, source : str
        Page title and a line naming the input.

    Returns
    -------
    str
    """
    out_dir = Path(out_dir)
    counts = {s: sum(1 for r in rows if r.get("status") == s) for s in ("ok", "failed", "skipped")}
    flagged = sum(1 for r in rows if r.get("audit_flags"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_cell(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_cell(title)}</h1>",
        f"<p>{_cell(source)}</p>" if source else "",
        f'<p id="summary">{len(rows)} case{"" if len(rows) == 1 else "s"}: {counts["ok"]} ok, {counts["failed"]} failed, {counts["skipped"]} skipped; '
        # no wall-clock time: the same export gives the same bytes (a resumed or repeated run equals a clean one)
        f"{flagged} with audit flags. Written by DoseAlign {_cell(__version__)}. "
        'Details per case in <a href="manifest.csv">manifest.csv</a> and each case\'s meta.json.</p>',
        '<table id="cases"><thead><tr>',
        "<th>case</th><th>status</th><th>flags</th><th>Dmax native (Gy)</th><th>Dmax output (Gy)</th>"
        "<th>worst DVH delta (Gy)</th><th>QA picture</th>",
        "</tr></thead><tbody>",
    ]
    for row in rows:
        case_id = str(row.get("case_id", ""))
        status = str(row.get("status", ""))
        folder_link = ""
        if (out_dir / case_id / "meta.json").is_file():
            folder_link = f'<br><a href="{_cell(quote(case_id) + "/meta.json")}">meta.json</a>'
        reason = f"<br><small>{_cell(row.get('reason'))}</small>" if row.get("reason") else ""
        worst = _cell(row.get("worst_dvh_delta_gy"))
        if row.get("worst_dvh_roi"):
            worst += f"<br><small>{_cell(row.get('worst_dvh_roi'))}</small>"
        parts.append(
            f'<tr class="{_cell(status)}">'
            f"<td>{_cell(case_id)}{folder_link}</td>"
            f'<td class="status">{_cell(status)}{reason}</td>'
            f"<td>{_flags_html(str(row.get('audit_flags') or '')) if status in ('ok', 'skipped') else ''}"
            f"{_flag_details(out_dir, case_id) if row.get('audit_flags') else ''}</td>"
            f'<td class="num">{_cell(row.get("dmax_native_gy"))}</td>'
            f'<td class="num">{_cell(row.get("dmax_output_gy"))}</td>'
            f'<td class="num">{worst}</td>'
            f"<td>{_thumbnail(out_dir, case_id) if status in ('ok', 'skipped') else ''}</td>"
            "</tr>"
        )
    parts.append("</tbody></table>")
    parts.append("<h2>Flags</h2><dl>")
    for code, meaning in FLAG_MEANINGS.items():
        parts.append(f"<dt><code>{_cell(code)}</code></dt><dd>{_cell(meaning)}</dd>")
    parts.append("</dl><p>Thresholds: see each case's meta.json (audit.thresholds) and the README.</p>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def write_report(
    out_dir: Path, rows: Sequence[dict], *, title: str = "DoseAlign export", source: Optional[str] = None
) -> Path:
    """Write ``out_dir/report.html`` (atomically) for the manifest ``rows``; return its path."""
    out_dir = Path(out_dir)
    path = out_dir / "report.html"
    write_text_atomic(path, report_html(rows, out_dir, title=title, source=source or ""))
    return path
