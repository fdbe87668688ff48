"""The review console (GET /review): flagged inputs from the audit log as one server-rendered HTML page.

No JavaScript: filters are a GET form, images are inline PNGs, exports are links to /v1/audit, an operator's
verdict is a POST form per record, older records are the next page (`before`).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import torch
from PIL import Image

from ..data import load_split
from .audit import FlaggedRecord

CSV_COLUMNS = ("id", "time", "predicted", "nonconformity", "credibility", "threshold", "sha256", "model", "verdict")
_STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f0f0f0}
img{image-rendering:pixelated;width:84px;height:84px;border:1px solid #888}.alarm{background:#fdd;padding:6px}
.quiet{background:#dfd;padding:6px}form{margin:1em 0}code{font-size:13px}.agree{color:#070}.disagree{color:#b00}
form.verdict{margin:0}tr.confirmed{background:#fee}tr.false_positive{background:#efe}
img.neighbours{width:auto;height:28px;border:0;margin:2px 0 6px}"""
VERDICT_TEXT = {"confirmed": "confirmed attack", "false_positive": "false positive"}


def png(image: torch.Tensor) -> bytes:
    """An image (C, H, W) in [0, 1] as an 8-bit PNG (grey for one channel, RGB for three)."""
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buf, "PNG")
    return buf.getvalue()


class TrainingImages:
    """The training split a detector cites, kept as 8-bit pixels, shown as each layer's neighbours in the console."""

    def __init__(self, images: torch.Tensor, name: str) -> None:
        self.pixels = images.mul(255).round_().to(torch.uint8)    # (N, C, H, W): a quarter of float32's memory
        self.name = name

    @classmethod
    def load(cls, source: Mapping[str, str] | None, rows: Mapping[str, torch.Tensor] | None,
             data_dir: str | None = None, channels: int | None = None) -> "TrainingImages":
        """The split `source` names ({"dataset", "split"}, `data.load_split` names), checked to hold every cited
        row; an artifact that cites nothing is refused by name."""
        if not source or not rows:
            raise ValueError("the artifact cites no training images (fitted before detectors recorded them, or not a "
                             "k-NN detector): run `latentdefence dld cite-training` on it first")
        split = load_split(source["dataset"], source["split"], Path(data_dir) if data_dir else None, channels)
        top = max(int(r.max()) for r in rows.values() if len(r))
        if top >= len(split):
            raise ValueError(f"the artifact cites row {top} of {source['dataset']} {source['split']}, which holds "
                             f"{len(split)} images: another copy of the dataset, or an edited artifact")
        return cls(split.images, f"{source['dataset']} {source['split']}")

    def strip(self, rows: Sequence[int]) -> bytes:
        """The images at `rows`, side by side, nearest first, as one PNG."""
        tiles = self.pixels[list(rows)]                                   # (k, C, H, W)
        return png(torch.cat(list(tiles), dim=2).float().div_(255))


def to_csv(records: Sequence[FlaggedRecord]) -> str:
    """Records as CSV: the scalar columns, then per-layer scores and neighbour labels as JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*CSV_COLUMNS, "per_layer", "neighbour_labels"])
    for r in records:
        labels = {tap: n["labels"] for tap, n in (r.neighbours or {}).items()}
        writer.writerow([getattr(r, c) for c in CSV_COLUMNS] + [json.dumps(r.per_layer), json.dumps(labels)])
    return out.getvalue()


def readable(time: str) -> str:
    """An ISO 8601 UTC time as a person reads it: 2026-12-07 15:22:46 UTC."""
    return datetime.fromisoformat(time).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(records: Sequence[FlaggedRecord], images: Mapping[int, torch.Tensor], filters: Mapping[str, Any],
           alarm: Mapping[str, Any], alarms: Sequence[Mapping[str, Any]], total: int,
           training: TrainingImages | None = None) -> str:
    """The whole page: alarm banner, filter form, export links, one table row per flagged input, the next page,
    the alarm history."""
    shown = {k: v for k, v in filters.items() if v not in (None, "")}
    query = urlencode({k: v for k, v in shown.items() if k != "before"})
    back = "?" + urlencode(shown) if shown else ""
    form = ('<form method="get" action="/review">'
            + "".join(f'<label>{text} <input name="{name}" id="{name}" value="{escape(str(filters.get(name) or ""))}"'
                      f' size="{size}"></label> ' for name, text, size in
                      [("since", "from (UTC, ISO 8601)", 22), ("until", "to", 22), ("label", "F's class", 4),
                       ("limit", "at most", 5)])
            + '<button type="submit" id="apply">Filter</button></form>')
    export = (f'<p>Export these: <a id="csv" href="/v1/audit?{escape(query + "&" if query else "")}format=csv">CSV</a>'
              f' · <a id="json" href="/v1/audit?{escape(query)}">JSON</a></p>')
    rows = "".join(_row(r, images.get(r.id), back, training) for r in records)
    older = ""
    if records and len(records) == filters.get("limit"):
        older = (f'<p><a id="older" href="/review?{escape(urlencode({**shown, "before": records[-1].id}))}">'
                 f"older records &rarr;</a></p>")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>latentdefence review</title>'
            f"<style>{_STYLE}</style></head><body><h1>Flagged inputs</h1>{_banner(alarm, alarms)}{form}{export}"
            f'<p id="count">{len(records)} shown of {total} flagged in the log.</p>'
            "<table id=\"flagged\"><tr><th>id</th><th>time</th><th>input</th><th>F said</th>"
            "<th>the neighbours say (per layer: majority class, votes; score)</th><th>score (threshold)</th>"
            "<th>credibility</th><th>verdict</th></tr>"
            f"{rows}</table>{older}{_history(alarms)}</body></html>")


def _banner(alarm: Mapping[str, Any], alarms: Sequence[Mapping[str, Any]]) -> str:
    """The alarm's state in words: the flag rate against the calibrated one, and whether it is raised."""
    rate = alarm["flagged"] / max(alarm["observed"], 1)
    words = (f'{alarm["flagged"]} of {alarm["observed"]} inputs flagged since start ({100 * rate:.1f}%, calibrated '
             f'{100 * alarm["p0"]:.1f}%)')
    if alarm["in_alarm"]:
        since = f', raised {readable(alarms[-1]["time"])}' if alarms else ""
        return (f'<p class="alarm" id="alarm"><b>Flag-rate alarm raised{escape(since)}</b>: more inputs are flagged '
                f"than the detector's calibration explains (an attack, or inputs unlike the calibration set). "
                f"{words}. Clear it once handled: <code>latentdefence audit reset-alarm</code>.</p>")
    return f'<p class="quiet" id="alarm">No flag-rate alarm: {words}.</p>'


def _history(alarms: Sequence[Mapping[str, Any]]) -> str:
    """Every raised alarm, newest first."""
    if not alarms:
        return '<h2>Alarm history</h2><p id="alarms">No alarm on record.</p>'
    rows = "".join(f'<tr><td>{a["id"]}</td><td>{escape(readable(a["time"]))}</td>'
                   f'<td>{a["flagged"]} of {a["observed"]}</td><td>{a["statistic"]:.1f} / {a["threshold"]:.1f}</td></tr>'
                   for a in reversed(alarms))
    return ('<h2>Alarm history</h2><table id="alarms"><tr><th>id</th><th>raised</th><th>flagged then</th>'
            f"<th>CUSUM / threshold</th></tr>{rows}</table>")


def majority(labels: Sequence[int]) -> tuple[int, int]:
    """(the most common label, its count); ties go to the smaller label."""
    label, votes = min(Counter(labels).items(), key=lambda item: (-item[1], item[0]))
    return label, votes


def _row(r: FlaggedRecord, image: torch.Tensor | None, back: str, training: TrainingImages | None) -> str:
    picture = (f'<img alt="input {r.id}" src="data:image/png;base64,{base64.b64encode(png(image)).decode()}">'
               if image is not None else "<i>not kept</i> (serve --keep-images)")
    layers = "<br>".join(_layer(tap, score, r, training) for tap, score in r.per_layer.items())
    buttons = "".join(f'<button name="verdict" value="{v}" id="{v}-{r.id}">{VERDICT_TEXT[v]}</button> '
                      for v in VERDICT_TEXT if v != r.verdict)
    if r.verdict:
        buttons += f'<button name="verdict" value="" id="clear-{r.id}">clear</button>'
    verdict = (f"<b>{VERDICT_TEXT[r.verdict]}</b><br>" if r.verdict else "") + (
        f'<form class="verdict" method="post" action="/review/{r.id}/verdict">'
        f'<input type="hidden" name="back" value="{escape(back)}">{buttons}</form>')
    return (f'<tr class="record {r.verdict or ""}" id="record-{r.id}" data-label="{r.predicted}"><td>{r.id}</td>'
            f"<td>{escape(readable(r.time))}</td><td>{picture}</td><td class=\"label\">{r.predicted}</td>"
            f"<td>{layers}</td><td>{r.nonconformity:g} ({r.threshold:g})</td><td>{r.credibility:.4f}</td>"
            f"<td>{verdict}</td></tr>")


def _layer(tap: str, score: float, r: FlaggedRecord, training: TrainingImages | None) -> str:
    """One layer's evidence: the neighbours' majority class against F's, the votes, the layer's score and, where
    the training images are at hand, the neighbours themselves."""
    if not r.neighbours or tap not in r.neighbours:
        return f"<code>{escape(tap)}</code>: <i>no evidence stored</i>; score {score:g}"
    labels = r.neighbours[tap]["labels"]
    label, votes = majority(labels)
    agree = "agree" if label == r.predicted else "disagree"
    text = (f'<code>{escape(tap)}</code>: <span class="{agree}">{label}</span> ({votes} of {len(labels)}: '
            f'{" ".join(map(str, labels))}); score {score:g}')
    rows = r.neighbours[tap].get("rows")
    if training is None or rows is None:
        return text
    return (f'{text}<br><img class="neighbours" alt="{escape(training.name)} rows {" ".join(map(str, rows))}" '
            f'src="data:image/png;base64,{base64.b64encode(training.strip(rows)).decode()}">')
