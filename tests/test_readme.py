"""The README's results table is generated from the committed results files and must match them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from latentdefence.evaluation.catalog import (QUESTIONS, CatalogError, read_catalog, render_index, results_folders,
                                              update_index)
from latentdefence.evaluation.summary import EXCERPT, headline_table, results_table, sync_excerpts, update_readme

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def test_readme_results_table_matches_committed_results() -> None:
    results = ROOT / "docs" / "results"
    assert update_readme(ROOT / "README.md", results, check=True, headline=True), \
        "README.md's results table is out of date: run python scripts/update_readme.py"
    assert update_readme(results / "README.md", results, check=True), \
        "docs/results/README.md's results table is out of date: run python scripts/update_readme.py"


def test_the_readme_shows_the_headline_rows_and_the_full_table_has_every_row() -> None:
    readme = (ROOT / "README.md").read_text()
    full = (ROOT / "docs" / "results" / "README.md").read_text()
    rows = [line for line in readme.split("<!-- results:start -->")[1].splitlines() if line.startswith("| ")]
    assert 8 <= len(rows) - 1 <= 15                               # a short table a newcomer reads (header aside)
    assert all(row in full for row in rows) and full.count("\n| ") > readme.count("\n| ")


def test_docs_tables_match_the_committed_reports() -> None:
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert [d.name for d in docs if EXCERPT.search(d.read_text())] == ["dld.md", "lad.md"]
    stale = [d.name for d in docs if not sync_excerpts(d, ROOT, check=True)]
    assert not stale, f"{stale}: out of date; run python scripts/update_readme.py"


def test_excerpt_is_filled_from_the_named_table_and_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("# r\n\n| a |\n|---|\n| 1 |\n\ntext\n\n| b |\n|---|\n| 2 |\n")
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- excerpt: report.md table 2 -->\n| old |\n<!-- /excerpt -->\nafter\n")
    assert not sync_excerpts(doc, tmp_path, check=True)
    assert sync_excerpts(doc, tmp_path)
    assert doc.read_text() == "intro\n<!-- excerpt: report.md table 2 -->\n| b |\n|---|\n| 2 |\n<!-- /excerpt -->\nafter\n"
    assert sync_excerpts(doc, tmp_path, check=True)
    doc.write_text("<!-- excerpt: report.md table 3 -->\n<!-- /excerpt -->\n")
    with pytest.raises(ValueError, match="table 3 of report.md, which has 2"):
        sync_excerpts(doc, tmp_path)
    doc.write_text("<!-- excerpt: missing.md table 1 -->\n<!-- /excerpt -->\n")
    with pytest.raises(ValueError, match="missing.md, which does not exist"):
        sync_excerpts(doc, tmp_path)


def test_readme_opens_with_the_two_setup_commands() -> None:
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.strip()]
    fence = lines.index("```bash")
    assert lines[fence + 1].startswith("make demo") and lines[fence + 2].startswith("make test")
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_results_table_reads_numbers_from_results_json(tmp_path: Path) -> None:
    folder = tmp_path / "docs" / "results" / "dld-mnist-table1"
    folder.mkdir(parents=True)
    row = {"base_accuracy": 0.9, "robustness": 0.97, "roc_auc": 0.987, "true_positive_rate": 0.8, "n": 500}
    res = {"fpr": 0.018, "clean": {"n": 8000}, "table1": {k: row for k in ("fgsm", "pgd", "cw", "adaptive")}}
    (folder / "results.json").write_text(json.dumps(res))
    table = results_table(tmp_path / "docs" / "results")
    assert "| DLD Table I, PGD eps 0.3: robustness | 97.56% | 97.00% | 500 |" in table
    assert "| DLD Table I, PGD: ROC AUC | 0.990 | 0.987 | 500 |" in table
    assert "| DLD clean false-positive rate | 1.96% | 1.80% | 8000 |" in table


def test_results_table_has_a_row_per_attacked_detector(tmp_path: Path) -> None:
    folder = tmp_path / "docs" / "results" / "dld-mnist-adaptive"
    folder.mkdir(parents=True)
    worst = {"n": 500, "robustness_ci": [0.05, 0.95]}
    res = {"settings": {"attacks": {"eps": 0.3}},
           "detectors": {"dld": {"paper_attacks": {**worst, "robustness": 0.932}, "all_attacks": {**worst, "robustness": 0.41}},
                         "lid": {"paper_attacks": {**worst, "robustness": 0.8}, "all_attacks": {**worst, "robustness": 0.1}}},
           "classifier_alone": {"n": 500, "autoattack_robust_accuracy_after": {"clean": 0.98, "square": 0.88}}}
    (folder / "results.json").write_text(json.dumps(res))
    table = results_table(tmp_path / "docs" / "results")
    assert ("| DLD on F, eps 0.3: robustness, paper's attacks -> all our attacks (worst case) | 95.62% (adaptive) | "
            "93.20% [5.0, 95.0] -> 41.00% [5.0, 95.0] | 500 |") in table
    assert ("| LID on F, eps 0.3: robustness, paper's attacks -> all our attacks (worst case) | — | 80.00% [5.0, 95.0] -> "
            "10.00% [5.0, 95.0] |") in table
    assert "AutoAttack-style cascade (APGD-CE, APGD-T, Square) | — | 88.00% [84.9, 90.6] | 500 |" in table   # Wilson


def test_design_example_adds_an_attack_and_a_detector_the_registries_serve() -> None:
    """docs/design.md's "Adding an attack / a detector" block runs as written."""
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("<!-- tested: design-example -->\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {"__name__": "design_example"}
    exec(compile(block, "docs/design.md", "exec"), namespace)
    from latentdefence.attacks import create_attack
    from latentdefence.detectors import list_detectors

    assert type(create_attack("sign-noise", eps=0.1)).__name__ == "SignNoise" and "max-softmax" in list_detectors()
    result = namespace["result"]
    assert result.images.shape == (8, 1, 8, 8) and bool((result.norms <= 0.1 + 1e-6).all())


def test_cifar10_rows_label_the_jpeg_copy_and_the_papers_svhn_column(tmp_path: Path) -> None:
    results = tmp_path / "docs" / "results"
    (results / "dld-cifar10-table1").mkdir(parents=True)
    row = {"base_accuracy": 0.4, "robustness": 0.6, "robustness_ci": [0.55, 0.65], "roc_auc": 0.8, "n": 500}
    table1 = {"fpr": 0.1, "settings": {"attacks": {"eps": 8 / 255}}, "dataset_sizes": {"clean_eval": 2000},
              "table1": {k: row for k in ("fgsm", "pgd", "cw", "adaptive")}}
    (results / "dld-cifar10-table1" / "results.json").write_text(json.dumps(table1))
    (results / "dld-cifar10-adaptive").mkdir()
    worst = {"robustness": 0.3, "n": 200, "robustness_ci": [0.24, 0.37]}
    adaptive = {"settings": {"attacks": {"eps": 8 / 255}},
                "detectors": {"dld": {"paper_attacks": {"robustness": 0.4, "robustness_ci": [0.33, 0.47]},
                                      "all_attacks": worst}},
                "classifier_alone": {"n": 200, "autoattack_robust_accuracy_after": {"square": 0.28}},
                "paired": [{"first": "dld", "second": "F alone", "robustness_first": 0.3, "robustness_second": 0.28,
                            "mcnemar_p": 0.25}]}
    (results / "dld-cifar10-adaptive" / "results.json").write_text(json.dumps(adaptive))
    table = results_table(results)
    assert ("| DLD Table I on CIFAR-10 (JPEG copy), eps 8/255, PGD: robustness | SVHN: 79.69% | "
            "60.00% [55.0, 65.0] | 500 |") in table
    assert "| DLD Table I on CIFAR-10 (JPEG copy), eps 8/255, clean false-positive rate | SVHN: 10.02% |" in table
    assert ("| DLD on F, CIFAR-10 (JPEG copy), eps 8/255: robustness, paper's attacks -> all our attacks (worst case) "
            "| SVHN: 51.32% (adaptive) | 40.00% [33.0, 47.0] -> 30.00% [24.0, 37.0] | 200 |") in table
    assert "| DLD minus F alone, CIFAR-10 (JPEG copy), eps 8/255: worst-case robustness (pp; exact McNemar p on the " \
           "same images) | — | +2.00 (p 0.25) | 200 |" in table


def test_results_index_is_generated_from_the_catalog() -> None:
    assert update_index(RESULTS / "README.md", RESULTS / "catalog.toml", RESULTS, check=True), \
        "docs/results/README.md's index is out of date with catalog.toml: run python scripts/update_readme.py"


def test_every_results_folder_has_exactly_one_catalog_entry_and_every_entry_a_folder() -> None:
    entries = read_catalog(RESULTS / "catalog.toml", RESULTS)          # raises naming the first problem
    paths = [e.path for e in entries]
    on_disk = results_folders(RESULTS)
    assert len(paths) == len(set(paths)) and set(paths) == set(on_disk)
    releases = {e.path for e in entries if e.question == "release"}
    assert {p for p in on_disk if "/" not in p} == releases
    assert all(p.startswith("archive/") for p in on_disk if p not in releases)
    assert {e.question for e in entries} <= set(QUESTIONS)


def test_the_readme_headline_rows_come_from_the_current_releases() -> None:
    releases = {f"docs/results/{e.path}" for e in read_catalog(RESULTS / "catalog.toml") if e.question == "release"}
    sources = set(re.findall(r"\| `(docs/results/[^`]+)` \|$", headline_table(RESULTS), re.M))
    assert sources and sources <= releases


def _named_paths(text: str) -> list[str]:
    """Every docs/results/... path a document names, with `{a,b}` spelled out and trailing punctuation dropped."""
    found = []
    for match in re.finditer(r"docs/results/[A-Za-z0-9_./*{},<>-]*", text):
        path = match.group(0).rstrip(".,")
        path = path.split("<", 1)[0]                                # docs/results/<experiment>/...: the folder only
        brace = re.search(r"\{([^{}]*)\}", path)
        found += [path[:brace.start()] + part + path[brace.end():] for part in brace[1].split(",")] if brace else [path]
    return found


def test_every_results_path_the_docs_name_exists() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for doc in docs:
        text = doc.read_text()
        for path in _named_paths(text):
            # a path, a glob (`-*`) or a file stem (`.../classifier` for classifier.{safetensors,json})
            if not (list(ROOT.glob(path)) or list(ROOT.glob(path.rstrip("/") + ".*"))):
                missing.append(f"{doc.name}: {path}")
        for link in re.findall(r"\]\(((?:docs/)?results/[^)\s#]+)\)", text):   # markdown links and images
            if not (doc.parent / link).exists():
                missing.append(f"{doc.name}: {link}")
    assert not missing, f"named but not there: {missing}"


def test_docs_results_readme_names_the_current_dld_result_first() -> None:
    head = (RESULTS / "README.md").read_text().splitlines()[:15]
    for folder in ("dld-mnist-table1", "dld-mnist-adaptive"):
        line = next((ln for ln in head if f"[`{folder}/`]" in ln), "")
        assert "current DLD result" in line, f"{folder} is not named as the current DLD result in the first 15 lines"


def _catalog(tmp_path: Path, *entries: dict[str, str]) -> Path:
    for name in ("dld-x", "archive/dld-y"):
        (tmp_path / "results" / name).mkdir(parents=True, exist_ok=True)
    lines = []
    for entry in entries:
        lines += ["[[folder]]", *(f"{k} = {json.dumps(v)}" for k, v in entry.items()), ""]
    catalog = tmp_path / "results" / "catalog.toml"
    catalog.write_text("\n".join(lines))
    return catalog


GOOD = ({"path": "dld-x", "question": "release", "about": "The current X.", "command": "latentdefence reproduce x",
         "provenance": "git `abc1234`, 12 s."},
        {"path": "archive/dld-y", "question": "which k / taps", "about": "k = 30.", "command": "latentdefence y | cat",
         "provenance": "git `def5678`."})


def test_a_good_catalog_renders_the_releases_first_then_one_table_per_question(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, *GOOD)
    entries = read_catalog(catalog, catalog.parent)
    index = render_index(entries)
    assert index.splitlines()[2] == "- [`dld-x/`](dld-x/): The current X."
    assert f"## {QUESTIONS['which k / taps']}" in index and f"## {QUESTIONS['LAD']}" not in index
    row = "| [`archive/dld-y/`](archive/dld-y/) ([provenance](#archivedld-y)) | k = 30. | `latentdefence y \\| cat` |"
    assert row in index                                             # a | in a command does not split the cell


@pytest.mark.parametrize(("change", "message"), [
    ({"question": "which colour"}, r"entry 2 \(archive/dld-y\): unknown question 'which colour'"),
    ({"command": None}, r"entry 2 \(archive/dld-y\): missing field 'command'"),
    ({"about": ""}, r"entry 2 \(archive/dld-y\): field 'about' must be a non-empty string"),
    ({"colour": "red"}, r"entry 2 \(archive/dld-y\): unknown field\(s\) 'colour'"),
    ({"path": "archive/dld-z"}, r"entry 2 \(archive/dld-z\): no such folder results/archive/dld-z"),
    ({"path": "dld-x", "question": "release"}, r"entry 2 \(dld-x\): listed twice \(first as entry 1\)"),
    ({"path": "dld-y"}, r"entry 2 \(dld-y\): only a release lives at the top level"),
    ({"question": "release"}, r"entry 2 \(archive/dld-y\): a release lives at the top level"),
    ({"command": "two\nlines"}, r"entry 2 \(archive/dld-y\): 'command' must be one line"),
])
def test_a_bad_catalog_entry_is_refused_by_name(tmp_path: Path, change: dict[str, str | None], message: str) -> None:
    bad = {k: v for k, v in {**GOOD[1], **change}.items() if v is not None}
    catalog = _catalog(tmp_path, GOOD[0], bad)
    with pytest.raises(CatalogError, match=message):
        read_catalog(catalog, catalog.parent)


def test_a_folder_without_an_entry_is_named(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, *GOOD)
    (catalog.parent / "archive" / "dld-new").mkdir()
    with pytest.raises(CatalogError, match=r"folder\(s\) with no entry: archive/dld-new"):
        read_catalog(catalog, catalog.parent)
    with pytest.raises(CatalogError, match="no such folder"):
        read_catalog(_catalog(tmp_path, *GOOD, {**GOOD[1], "path": "archive/dld-gone"}), catalog.parent)
