"""The review console (GET /review): flagged inputs from the audit log as one server-rendered HTML page.

No JavaScript: filters are a GET form, images are inline PNGs, exports are links to /v1/audit.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

import numpy as np
import torch
from PIL import Image

from .audit import FlaggedRecord

CSV_COLUMNS = ("id", "time", "predicted", "nonconformity", "credibility", "threshold", "sha256", "model")
_STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f0f0f0}
img{image-rendering:pixelated;width:84px;height:84px;border:1px solid #888}.alarm{background:#fdd;padding:6px}
.quiet{background:#dfd;padding:6px}form{margin:1em 0}code{font-size:13px}"""


def png(image: torch.Tensor) -> bytes:
    """An image (C, H, W) in [0, 1] as an 8-bit PNG (grey for one channel, RGB for three)."""
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buf, "PNG")
    return buf.getvalue()


def to_csv(records: Sequence[FlaggedRecord]) -> str:
    """Records as CSV: the scalar columns, then per-layer scores and neighbour labels as JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*CSV_COLUMNS, "per_layer", "neighbour_labels"])
    for r in records:
        labels = {tap: n["labels"] for tap, n in (r.neighbours or {}).items()}
        writer.writerow([getattr(r, c) for c in CSV_COLUMNS] + [json.dumps(r.per_layer), json.dumps(labels)])
    return out.getvalue()


def render(records: Sequence[FlaggedRecord], images: Mapping[int, torch.Tensor], filters: Mapping[str, Any],
           alarm: Mapping[str, Any], alarms: Sequence[Mapping[str, Any]], total: int) -> str:
    """The whole page: alarm banner, filter form, export links, one table row per flagged input."""
    query = urlencode({k: v for k, v in filters.items() if v not in (None, "")})
    cusum = f'{alarm["statistic"]:.2f} {"&ge;" if alarm["in_alarm"] else "&lt;"} {alarm["threshold"]:.2f}'
    banner = (f'<p class="alarm" id="alarm">Flag-rate alarm raised: CUSUM {cusum}' if alarm["in_alarm"] else
              f'<p class="quiet" id="alarm">No flag-rate alarm: CUSUM {cusum}')
    banner += (f' ({alarm["flagged"]} of {alarm["observed"]} inputs flagged since start; clean rate '
               f'{alarm["p0"]:.4f}; {len(alarms)} alarm{"s" * (len(alarms) != 1)} on record'
               + (f', last at {escape(alarms[-1]["time"])}' if alarms else "") + ")</p>")
    form = ('<form method="get" action="/review">'
            + "".join(f'<label>{text} <input name="{name}" id="{name}" value="{escape(str(filters.get(name) or ""))}"'
                      f' size="{size}"></label> ' for name, text, size in
                      [("since", "from (UTC, ISO 8601)", 22), ("until", "to", 22), ("label", "F's class", 4),
                       ("limit", "at most", 5)])
            + '<button type="submit" id="apply">Filter</button></form>')
    export = (f'<p>Export these: <a id="csv" href="/v1/audit?{escape(query + "&" if query else "")}format=csv">CSV</a>'
              f' · <a id="json" href="/v1/audit?{escape(query)}">JSON</a></p>')
    rows = "".join(_row(r, images.get(r.id)) for r in records)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>latentdefence review</title>'
            f"<style>{_STYLE}</style></head><body><h1>Flagged inputs</h1>{banner}{form}{export}"
            f'<p id="count">{len(records)} shown of {total} flagged in the log.</p>'
            "<table id=\"flagged\"><tr><th>id</th><th>time (UTC)</th><th>input</th><th>F's label</th>"
            "<th>score (threshold)</th><th>credibility</th><th>per layer: score, neighbours' labels</th></tr>"
            f"{rows}</table></body></html>")


def _row(r: FlaggedRecord, image: torch.Tensor | None) -> str:
    picture = (f'<img alt="input {r.id}" src="data:image/png;base64,{base64.b64encode(png(image)).decode()}">'
               if image is not None else "<i>not kept</i> (serve --keep-images)")
    layers = "<br>".join(
        f"<code>{escape(tap)}</code>: {score:g}; "
        + (" ".join(str(label) for label in r.neighbours[tap]["labels"]) if r.neighbours and tap in r.neighbours
           else "<i>no evidence stored</i>")
        for tap, score in r.per_layer.items())
    return (f'<tr class="record" data-label="{r.predicted}"><td>{r.id}</td><td>{escape(r.time)}</td>'
            f"<td>{picture}</td><td class=\"label\">{r.predicted}</td><td>{r.nonconformity:g} ({r.threshold:g})</td>"
            f"<td>{r.credibility:.4f}</td><td>{layers}</td></tr>")
