"""docs/results/catalog.toml, one entry per results folder, and the index of docs/results/README.md generated from it:
the current releases first, then one table per question, then each folder's provenance."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .summary import ARCHIVE, replace_block, rewrite

# question -> the heading of its section in the index, in the order the sections appear
QUESTIONS: dict[str, str] = {
    "release": "The current releases: each paper's question answered (the README's headline rows)",
    "previous release": "Earlier releases, replaced by the ones above and kept unchanged for comparison",
    "which F": "Which classifier F: training length, recipe, TRADES; CIFAR-10 recipes",
    "which encoder training": "How the defensive encoders are trained: epochs, images, training sets, hardening",
    "which k / taps": "Which k and which tapped layers",
    "which detector variant": "Detector variants side by side on the same images, paired",
    "attack budget": "Are the attacks strong enough: budgets, parity with a reference implementation, radius",
    "LAD": "LAD beyond its releases: what each fine-tuning factor does",
    "serving cost": "What guarding costs in serving: guarded / F time, the HTTP service under load",
}
RELEASE = "release"
FIELDS = ("path", "question", "about", "command", "provenance")
ABOUT_MAX = 200   # characters: one short sentence


class CatalogError(ValueError):
    """A catalog entry (or a folder on disk) that breaks the catalog's rules, named in the message."""


@dataclass(frozen=True)
class Entry:
    """One results folder: where it is, the question it answers, the command that wrote it, and how it was run."""

    path: str
    question: str
    about: str
    command: str
    provenance: str


def results_folders(results_dir: Path) -> list[str]:
    """Every results folder under `results_dir`, relative to it: the top level's (but archive/) and archive/'s."""
    def folders(where: Path) -> list[Path]:
        return sorted(p for p in where.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    found = [p.name for p in folders(results_dir) if p.name != ARCHIVE]
    archive = results_dir / ARCHIVE
    return found + ([f"{ARCHIVE}/{p.name}" for p in folders(archive)] if archive.is_dir() else [])


def _entry(raw: Any, number: int, source: str) -> Entry:
    """One `[[folder]]` table, checked: every field present, a string, known; a known question; one-line about and
    command; a release at the top level and everything else under archive/."""
    where = f"{source}: entry {number}"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a [[folder]] table, got {type(raw).__name__}")
    path = raw.get("path")
    if isinstance(path, str) and path:
        where = f"{source}: entry {number} ({path})"
    for field in FIELDS:
        if field not in raw:
            raise CatalogError(f"{where}: missing field {field!r}")
        if not isinstance(raw[field], str) or not raw[field].strip():
            raise CatalogError(f"{where}: field {field!r} must be a non-empty string")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; fields are {', '.join(FIELDS)}")
    entry = Entry(**{field: raw[field].strip() for field in FIELDS})
    if entry.question not in QUESTIONS:
        raise CatalogError(f"{where}: unknown question {entry.question!r}; one of {', '.join(map(repr, QUESTIONS))}")
    for field in ("about", "command"):
        if "\n" in getattr(entry, field):
            raise CatalogError(f"{where}: {field!r} must be one line")
    if "`" in entry.command:
        raise CatalogError(f"{where}: 'command' must not contain a backtick (it is shown as code)")
    if len(entry.about) > ABOUT_MAX:
        raise CatalogError(f"{where}: 'about' is {len(entry.about)} characters; one short sentence, <= {ABOUT_MAX}")
    parts = Path(entry.path).parts
    if entry.path != Path(entry.path).as_posix() or entry.path.startswith("/") or ".." in parts:
        raise CatalogError(f"{where}: path must be relative to docs/results, written with '/'")
    archived = len(parts) == 2 and parts[0] == ARCHIVE
    if entry.question == RELEASE and len(parts) != 1:
        raise CatalogError(f"{where}: a release lives at the top level of docs/results, not in {entry.path}")
    if entry.question != RELEASE and not archived:
        raise CatalogError(f"{where}: only a release lives at the top level; this one belongs in {ARCHIVE}/<name>")
    return entry


def read_catalog(catalog: Path, results_dir: Path | None = None) -> list[Entry]:
    """The catalog's entries in file order, each checked; given `results_dir`, also that every entry's folder exists
    there and every folder there has exactly one entry."""
    source = catalog.name
    try:
        data = tomllib.loads(catalog.read_text())
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"{source}: not valid TOML: {e}") from e
    extra = sorted(set(data) - {"folder"})
    if extra:
        raise CatalogError(f"{source}: unknown top-level key(s) {', '.join(map(repr, extra))}; expected [[folder]]")
    raw = data.get("folder", [])
    if not isinstance(raw, list) or not raw:
        raise CatalogError(f"{source}: no [[folder]] entries")
    entries: list[Entry] = []
    first: dict[str, int] = {}
    for number, item in enumerate(raw, 1):
        entry = _entry(item, number, source)
        if entry.path in first:
            raise CatalogError(f"{source}: entry {number} ({entry.path}): listed twice (first as entry "
                               f"{first[entry.path]})")
        first[entry.path] = number
        entries.append(entry)
    if results_dir is not None:
        for number, entry in enumerate(entries, 1):
            if not (results_dir / entry.path).is_dir():
                raise CatalogError(f"{source}: entry {number} ({entry.path}): no such folder "
                                   f"{results_dir.name}/{entry.path}")
        missing = [folder for folder in results_folders(results_dir) if folder not in first]
        if missing:
            raise CatalogError(f"{source}: folder(s) with no entry: {', '.join(missing)}")
    return entries


def _link(entry: Entry) -> str:
    """The folder as a link relative to docs/results/README.md."""
    return f"[`{entry.path}/`]({entry.path}/)"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _anchor(entry: Entry) -> str:
    """The folder's provenance heading id, as GitHub derives it from `### <path>/`."""
    return "".join(c for c in entry.path.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def render_index(entries: list[Entry]) -> str:
    """The releases, named first, then one section per question: folder | what it answers | command."""
    releases = [e for e in entries if e.question == RELEASE]
    lines = ["**The current releases** (the folders the README's headline rows come from; every other folder is in "
             f"`{ARCHIVE}/`):", ""]
    lines += [f"- {_link(e)}: {e.about}" for e in releases]
    for question, heading in QUESTIONS.items():
        group = [e for e in entries if e.question == question]
        if not group:
            continue
        lines += ["", f"## {heading}", "", "| folder | what it answers | command |", "|---|---|---|"]
        lines += [f"| {_link(e)} ([provenance](#{_anchor(e)})) | {_cell(e.about)} | `{_cell(e.command)}` |"
                  for e in group]
    return "\n".join(lines)


def render_provenance(entries: list[Entry]) -> str:
    """One subsection per folder, in index order: how its committed copy was made."""
    ordered = [e for question in QUESTIONS for e in entries if e.question == question]
    lines: list[str] = []
    for entry in ordered:
        lines += [f"### `{entry.path}/`", "", entry.provenance, ""]
    return "\n".join(lines).rstrip("\n")


INDEX, PROVENANCE = "index", "provenance"


def update_index(readme: Path, catalog: Path, results_dir: Path, check: bool = False) -> bool:
    """Rewrite the index and provenance blocks of `readme` from `catalog` (checked against `results_dir`); with
    check=True only report whether both are current."""
    entries = read_catalog(catalog, results_dir)
    text = readme.read_text()
    new = replace_block(text, INDEX, render_index(entries), readme)
    return rewrite(readme, text, replace_block(new, PROVENANCE, render_provenance(entries), readme), check)
