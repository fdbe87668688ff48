"""Bad input never gives an answer: generated bad images, labels, budgets, artifact fields, settings and audit
databases raise the project's own `InputValidationError` naming the argument (never a torch / sqlite3 /
asyncio error, never a result); the CLI turns each into exit code 2 and one line.

Every distinct bad input tried is recorded in TRIED; the module prints the count at the end (`pytest -s`).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner

import toy_blobs
from guard_artifact import artifact  # noqa: F401 (shared fixture)
from guard_artifact import blobs as guard_blobs
from latentdefence._io import ArtifactIntegrityError, load_tensors, save_tensors
from latentdefence.attacks import APGD, FGSM, JSMA, PGD, AutoAttack, CarliniWagnerL2, Square
from latentdefence.cli import app as cli_app
from latentdefence.data.base import ImageDataset
from latentdefence.dld import CentroidAttack, DeepLatentDefence
from latentdefence.experiments.dld_config import dld_config
from latentdefence.experiments.overrides import apply_overrides
from latentdefence.serving import GuardedClassifier, SQLiteAuditLog
from latentdefence.training import load_checkpoint
from latentdefence.validation import InputValidationError, check_settings

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRIED: set[str] = set()
SHAPE = (1, 28, 28)       # the guard artifact's LeNet-5 input
CLASSES = 3


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print(f"\ndistinct bad inputs tried: {len(TRIED)}")


@pytest.fixture(scope="module")
def detector(artifact: Path) -> DeepLatentDefence:
    return DeepLatentDefence.load(artifact)


def rejection(call: Callable[[], Any], key: str) -> str:
    """The message of the InputValidationError `call()` must raise (never a result, never another error type);
    records `key` as a bad input tried. Callers assert that the message starts with the argument's name."""
    TRIED.add(key)
    with pytest.raises(InputValidationError) as info:
        call()
    return str(info.value)


# -- images ------------------------------------------------------------------------------------------------
@st.composite
def bad_images(draw: st.DrawFn, shape: tuple[int, int, int] = SHAPE) -> tuple[str, Any]:
    """(description, value): wrong scale, shift, NaN/inf, integer dtype, wrong rank, empty, channels, size, type."""
    n = draw(st.integers(1, 3))
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    kind = draw(st.sampled_from(["scale", "shift", "nonfinite", "integer", "rank", "empty", "channels", "size",
                                 "storage", "not a tensor"]))
    if kind == "storage":      # issue 37: these reached torch's own errors
        layout = draw(st.sampled_from(["sparse_coo", "meta"]))
        return f"{kind} {layout} n={n}", x.to_sparse() if layout == "sparse_coo" else x.to("meta")
    if kind == "scale":
        factor = draw(st.floats(1.5, 255.0))
        return f"{kind} x{factor} n={n}", x * factor + 0.5
    if kind == "shift":
        shift = draw(st.floats(-1.0, -0.01) | st.floats(0.01, 1.0))
        return f"{kind} {shift} n={n}", x + shift + (0.0 if shift < 0 else 1.0 - float(x.min()))
    if kind == "nonfinite":
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, shape[1] * shape[2] - 1))
        x.view(n, -1)[i, j] = value
        return f"{kind} {value} at {i},{j} n={n}", x
    if kind == "integer":
        dtype = draw(st.sampled_from([torch.uint8, torch.int32, torch.int64, torch.bool]))
        return f"{kind} {dtype} n={n}", (x * 255).to(dtype)
    if kind == "rank":
        dims = draw(st.sampled_from([(shape[1],), shape[1:], shape, (n, 1, *shape)]))
        return f"{kind} {dims}", torch.rand(*dims)
    if kind == "empty":
        return kind, torch.rand(0, *shape)
    if kind == "channels":
        c = draw(st.sampled_from([c for c in (1, 2, 3, 4) if c != shape[0]]))
        return f"{kind} {c} n={n}", torch.rand(n, c, *shape[1:])
    if kind == "size":
        h, w = draw(st.integers(4, 40)), draw(st.integers(4, 40))
        if (h, w) == shape[1:]:
            h += 1
        return f"{kind} {h}x{w} n={n}", torch.rand(n, shape[0], h, w)
    return kind, draw(st.sampled_from([x.tolist()[:1], x.numpy(), None, "images"]))


@SETTINGS
@given(bad=bad_images(), entry=st.sampled_from(["predict", "decision_function", "score_samples", "calibrate",
                                                "guarded", "latents"]))
def test_detector_entry_points_reject_bad_images(detector: DeepLatentDefence, bad: tuple[str, Any],
                                                 entry: str) -> None:
    name, images = bad
    if entry == "calibrate":
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.float32 and images.ndim == 4):
            return                                  # an ImageDataset cannot hold it; covered by the others
        calibration = ImageDataset(images, torch.zeros(len(images), dtype=torch.int64))
        call: Callable[[], Any] = lambda: detector.calibrate(calibration, 0.1)  # noqa: E731
    elif entry == "guarded":
        call = lambda: GuardedClassifier(detector).predict(images)  # noqa: E731
    else:
        call = lambda: getattr(detector, entry)(images)  # noqa: E731
    message = rejection(call, f"detector.{entry} images {name}")
    assert message.startswith("images"), message


def test_calibrating_on_0_255_images_is_rejected_and_keeps_the_threshold(detector: DeepLatentDefence) -> None:
    """The worst silent failure: 0-255 calibration images used to move the threshold to the maximum score."""
    before = detector.threshold_
    clean = guard_blobs(20, 3)
    for bad in (clean.images * 255, clean.images - 0.5):
        message = rejection(lambda: detector.calibrate(ImageDataset(bad, clean.labels), 0.1), f"calibrate {bad.max()}")
        assert message.startswith("images"), message
    assert detector.threshold_ == before


def test_float64_images_are_converted_not_an_error(detector: DeepLatentDefence) -> None:
    x = guard_blobs(6, 4).images
    a, b = detector.predict(x), detector.predict(x.double())
    assert torch.equal(a.nonconformity, b.nonconformity) and torch.equal(a.predicted, b.predicted)


# -- attacks: images, labels and budgets -------------------------------------------------------------------
ATTACKS: dict[str, Callable[[], Any]] = {
    "fgsm": lambda: FGSM(0.1), "pgd": lambda: PGD(0.1, steps=2), "apgd": lambda: APGD(0.1, steps=2),
    "cw": lambda: CarliniWagnerL2(steps=2, binary_search_steps=1), "square": lambda: Square(0.1, queries=2),
}


@SETTINGS
@given(bad=bad_images(), attack=st.sampled_from(sorted(ATTACKS)))
def test_attacks_reject_bad_images(detector: DeepLatentDefence, bad: tuple[str, Any], attack: str) -> None:
    name, images = bad
    if name == "empty":
        return                                      # an empty batch is a valid no-op for attacks
    n = len(images) if isinstance(images, torch.Tensor) and images.ndim == 4 else 1
    labels = torch.zeros(n, dtype=torch.int64)
    message = rejection(lambda: ATTACKS[attack]()(detector.classifier, images, labels), f"{attack} images {name}")
    assert message.startswith("images"), message


@SETTINGS
@given(kind=st.sampled_from(["too big", "negative", "dtype", "shape"]), value=st.integers(1, 2000),
       attack=st.sampled_from(sorted(ATTACKS)), targets=st.booleans())
def test_attacks_reject_labels_outside_the_models_classes(detector: DeepLatentDefence, kind: str, value: int,
                                                          attack: str, targets: bool) -> None:
    x = guard_blobs(3, 5).images
    labels = torch.tensor([0, 1, 2])
    bad = {"too big": torch.tensor([0, CLASSES - 1 + value, 1]), "negative": torch.tensor([0, -value, 1]),
           "dtype": labels.to(torch.int32 if value % 2 else torch.float32), "shape": labels[: value % 3]}[kind]
    if targets:
        pgd = PGD(0.1, steps=2, targeted=True)
        message = rejection(lambda: pgd(detector.classifier, x, labels, bad), f"targets {kind} {value}")
        assert message.startswith("targets"), message
    else:
        message = rejection(lambda: ATTACKS[attack]()(detector.classifier, x, bad), f"{attack} labels {kind} {value}")
        assert message.startswith("labels"), message


BAD_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, "0.3", None, True]) | st.floats(-1e3, -1e-6)
BAD_COUNTS = st.sampled_from([0, -1, -40, 2.5, "40", None, True, math.nan])
BUDGETS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "PGD eps": ("eps", lambda v: PGD(v)), "PGD step_size": ("step_size", lambda v: PGD(0.3, step_size=v)),
    "PGD steps": ("steps", lambda v: PGD(0.3, steps=v)), "PGD restarts": ("restarts", lambda v: PGD(0.3, restarts=v)),
    "FGSM eps": ("eps", lambda v: FGSM(v)), "APGD eps": ("eps", lambda v: APGD(v)),
    "APGD steps": ("steps", lambda v: APGD(0.3, steps=v)), "Square eps": ("eps", lambda v: Square(v)),
    "Square queries": ("queries", lambda v: Square(0.3, queries=v)),
    "CW steps": ("steps", lambda v: CarliniWagnerL2(steps=v)), "CW lr": ("lr", lambda v: CarliniWagnerL2(lr=v)),
    "CW confidence": ("confidence", lambda v: CarliniWagnerL2(confidence=v)),
    "JSMA gamma": ("gamma", lambda v: JSMA(gamma=v)), "AutoAttack eps": ("eps", lambda v: AutoAttack(v)),
    "AutoAttack steps": ("steps", lambda v: AutoAttack(0.3, steps=v)),
    "Centroid eps": ("eps", lambda v: CentroidAttack(eps=v)),
    "Centroid step_size": ("step_size", lambda v: CentroidAttack(step_size=v)),
    "Centroid steps": ("steps", lambda v: CentroidAttack(steps=v)),
}


@SETTINGS
@given(budget=st.sampled_from(sorted(BUDGETS)), number=BAD_NUMBERS, count=BAD_COUNTS)
def test_attack_budgets_are_rejected_at_construction(budget: str, number: Any, count: Any) -> None:
    argument, build = BUDGETS[budget]
    integer = argument in ("steps", "restarts", "queries")
    value = count if integer else number
    if argument == "step_size" and value is None:
        value = 0.0                                 # None means "Madry's default"; 0 is the bad step
    message = rejection(lambda: build(value), f"{budget}={value!r}")
    assert message.startswith(argument), message


# -- artifacts ---------------------------------------------------------------------------------------------
def _drop(meta: dict[str, Any], tensors: dict[str, torch.Tensor], key: str) -> None:
    (tensors if key in tensors else meta).pop(key)


EDITS: dict[str, tuple[str, Callable[[dict[str, Any], dict[str, torch.Tensor], Any], None]]] = {
    "threshold": ("metadata field 'threshold'", lambda m, t, v: m.__setitem__("threshold", v)),
    "target_fpr": ("metadata field 'target_fpr'", lambda m, t, v: m.__setitem__("target_fpr", v)),
    "k": ("metadata field 'params.k'", lambda m, t, v: m["params"].__setitem__("k", v)),
    "tap": ("metadata field 'params.taps'", lambda m, t, v: m["params"].__setitem__("taps", [f"layer{v}"])),
    "params": ("metadata field 'params'", lambda m, t, v: _drop(m, t, "params")),
    "encoders": ("metadata field 'encoders'", lambda m, t, v: _drop(m, t, "encoders")),
    "calibration_scores": ("tensor 'calibration_scores'", lambda m, t, v: _drop(m, t, "calibration_scores")),
}
FIELD_VALUES = {"threshold": [math.nan, math.inf, "3", [1.0], True], "target_fpr": [math.nan, 5.0, -0.1, "0.1"],
                "k": ["10", 0, -3, 2.5, None, True], "tap": [9, 42, 100], "params": [None], "encoders": [None],
                "calibration_scores": [None]}


@SETTINGS
@given(data=st.data())
def test_bad_artifact_fields_are_rejected_at_load_time(artifact: Path, tmp_path_factory: pytest.TempPathFactory,
                                                       data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(sorted(EDITS)))
    value = data.draw(st.sampled_from(FIELD_VALUES[field]))
    tensors, meta = load_tensors(artifact)
    argument, edit = EDITS[field]
    edit(meta, tensors, value)
    path = tmp_path_factory.mktemp("bad") / "bad.safetensors"
    save_tensors(path, tensors, meta)
    message = rejection(lambda: DeepLatentDefence.load(path), f"artifact {field}={value!r}")
    assert message.startswith(f"{path}: {argument}"), message
    message = rejection(lambda: GuardedClassifier.load(path), f"guard artifact {field}={value!r}")
    assert message.startswith(f"{path}: {argument}"), message


# -- issue 37: artifacts that prove they are whole ------------------------------------------------------------
def _raw(path: Path) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's header (JSON) and its data bytes, for edits that bypass `save_tensors`."""
    blob = path.read_bytes()
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + size]), blob[8 + size:]


def _write_raw(path: Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _edit_metadata(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    meta = json.loads(header["__metadata__"]["json"])
    meta["threshold"] = meta["threshold"] + 1
    header["__metadata__"]["json"] = json.dumps(meta)
    return header, data


def _flip_index_byte(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    start = header["index.conv1.embeddings"]["data_offsets"][0]
    return header, data[:start] + bytes([data[start] ^ 0x40]) + data[start + 1:]


def _redeclare_scores(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    entry = header["calibration_scores"]
    narrow = {"F64": "F32", "I64": "I32"}[entry["dtype"]]    # same bytes read as twice as many narrower values
    header["calibration_scores"] = {**entry, "dtype": narrow, "shape": [2 * entry["shape"][0]]}
    return header, data


def _drop_digest(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    del header["__metadata__"]["latentdefence.integrity"]
    return header, data


RAW_EDITS = {"metadata field 'threshold'": _edit_metadata, "tensor 'index.conv1.embeddings'": _flip_index_byte,
             "tensor 'calibration_scores'": _redeclare_scores}


@pytest.mark.parametrize("named", sorted(RAW_EDITS))
def test_an_artifact_edited_on_disk_is_refused_naming_what_changed(artifact: Path, tmp_path: Path,
                                                                   named: str) -> None:
    """Issue 37: a threshold raised, an index byte flipped, the scores' dtype re-declared in the header: each loaded
    and served before; the digests written with the file now name the changed entry."""
    path = tmp_path / "edited.safetensors"
    _write_raw(path, *RAW_EDITS[named](*_raw(artifact)))
    TRIED.add(f"raw edit {named}")
    for load in (DeepLatentDefence.load, GuardedClassifier.load):
        with pytest.raises(ArtifactIntegrityError, match=f"edited or damaged since it was written: {named} differ"):
            load(path)


def test_an_artifact_without_digests_loads_with_a_warning_that_says_so(artifact: Path, tmp_path: Path) -> None:
    path = tmp_path / "legacy.safetensors"
    _write_raw(path, *_drop_digest(*_raw(artifact)))
    with pytest.warns(UserWarning, match="no content digests"):
        assert DeepLatentDefence.load(path).threshold_ == DeepLatentDefence.load(artifact).threshold_


def _swap_taps(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    for part in ("embeddings", "labels"):
        a, b = f"index.conv1.{part}", f"index.conv2.{part}"
        tensors[a], tensors[b] = tensors[b], tensors[a]


def _shift_labels(offset: int) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    def edit(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        labels = tensors["index.conv2.labels"]
        tensors["index.conv2.labels"] = torch.where(labels == labels.max(), labels + offset, labels) if offset > 0 \
            else torch.where(labels == 0, labels + offset, labels)
    return edit


def _nan_weight(prefix: str) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    def edit(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        key = next(k for k, v in tensors.items() if k.startswith(prefix) and v.is_floating_point())
        tensors[key] = tensors[key].clone().view(-1).index_fill(0, torch.tensor([0]), math.nan).view_as(tensors[key])
    return edit


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    def edit(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return edit


def _both(*edits: Callable[[dict[str, Any], dict[str, torch.Tensor]], None]
          ) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    def edit(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        for change in edits:
            change(meta, tensors)
    return edit


def _edit_rows(change: Callable[[torch.Tensor], torch.Tensor | None]
               ) -> Callable[[dict[str, Any], dict[str, torch.Tensor]], None]:
    def edit(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        rows = change(tensors.pop("index.conv1.rows"))
        if rows is not None:
            tensors["index.conv1.rows"] = rows
    return edit


def _scores_as_float32(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["calibration_scores"] = tensors["calibration_scores"].double().view(torch.float32).clone()


# (edit, the argument the refusal must name): issue 37's list, each re-digested as an editor who knows the format
# would, so only the consistency checks stand between it and a served detector
CONSISTENCY = {
    "threshold 1e9": (_set(("threshold",), 1e9), "metadata fields 'threshold' and 'target_fpr'"),
    "threshold -1": (_set(("threshold",), -1.0), "metadata fields 'threshold' and 'target_fpr'"),
    "target_fpr 0.9": (_set(("target_fpr",), 0.9), "metadata fields 'threshold' and 'target_fpr'"),
    "k 1": (_set(("params", "k"), 1), "metadata field 'params.k'"),
    "k 50": (_set(("params", "k"), 50), "metadata field 'params.k'"),
    "k 100 (more than indexed)": (_set(("params", "k"), 100), "tensor 'index.conv1.labels'"),
    "k 1, calibration record gone": (_both(_set(("params", "k"), 1), _set(("calibration",), None)),
                                     "tensor 'calibration_scores'"),
    "label = classes": (_shift_labels(1), "tensor 'index.conv2.labels'"),
    "label -1": (_shift_labels(-1), "tensor 'index.conv2.labels'"),
    "taps' indexes swapped": (_swap_taps, "tensor 'index.conv1.labels'"),
    "pruned count": (_set(("pruned", "conv1"), lambda v: v + 1), "metadata field 'pruned'"),
    "scores re-declared float32": (_scores_as_float32, "tensor 'calibration_scores'"),
    "cited row -1": (_edit_rows(lambda r: torch.where(r == r.max(), -1, r)), "tensor 'index.conv1.rows'"),
    "cited rows as int64": (_edit_rows(lambda r: r.long()), "tensor 'index.conv1.rows'"),
    "cited rows one short": (_edit_rows(lambda r: r[1:].clone()), "tensor 'index.conv1.rows'"),
    "cited rows of a tap gone": (_edit_rows(lambda r: None), "tensor 'index.conv1.rows'"),
    "cited training set unnamed": (_set(("evidence",), "mnist"), "metadata field 'evidence'"),
    "NaN classifier weight": (_nan_weight("classifier."), "tensor 'classifier."),
    "NaN encoder weight": (_nan_weight("encoder."), "tensor 'encoder."),
    "NaN index embedding": (_nan_weight("index."), "tensor 'index."),
}


@pytest.mark.parametrize("edit", sorted(CONSISTENCY))
def test_an_inconsistent_artifact_is_refused_by_name_even_with_fresh_digests(artifact: Path, tmp_path: Path,
                                                                             edit: str) -> None:
    tensors, meta = load_tensors(artifact)
    change, argument = CONSISTENCY[edit]
    change(meta, tensors)
    path = tmp_path / "inconsistent.safetensors"
    save_tensors(path, tensors, meta)
    for load in (DeepLatentDefence.load, GuardedClassifier.load):
        message = rejection(lambda: load(path), f"artifact consistency {edit}")
        assert message.startswith(f"{path}: {argument}"), message


def test_a_checkpoint_with_a_nan_weight_or_a_foreign_sidecar_is_refused(artifact: Path, tmp_path: Path) -> None:
    weights = GuardedClassifier.load(artifact).export_classifier(tmp_path / "f")
    tensors, meta = load_tensors(weights)
    _nan_weight("model.")(meta, tensors)
    save_tensors(weights, tensors, meta)
    message = rejection(lambda: load_checkpoint(weights), "checkpoint NaN weight")
    assert message.startswith(f"{weights}: tensor 'model.") and "NaN" in message, message
    sidecar = weights.with_suffix(".json")
    edited = {**json.loads(sidecar.read_text()), "arch": "dld_svhn"}
    sidecar.write_text(json.dumps(edited))
    message = rejection(lambda: load_checkpoint(weights), "checkpoint sidecar arch")
    assert message.startswith(f"{sidecar}: field 'arch'"), message


def test_loading_a_directory_says_so(tmp_path: Path) -> None:
    TRIED.add("artifact directory")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        DeepLatentDefence.load(tmp_path)


# -- experiment settings -----------------------------------------------------------------------------------
SETTINGS_BAD = st.sampled_from(["target_fpr=5", "target_fpr=-0.1", "target_fpr=nan", "target_fpr=1", "k=0", "k=-2",
                                "latent_dim=0", "n_calibration=0", "attacks.pgd_steps=0", "attacks.eps=-0.1",
                                "attacks.eps=nan", "attacks.step_size=0", "attacks.pgd_restarts=0",
                                "attacks.batch_size=0", "classifier.epochs=0", "classifier.lr=0",
                                "classifier.lr=-1e-3", "encoder.epochs=0", "encoder.steps=0",
                                "attacks.alpha1=inf", "attacks.alpha2=[1, NaN]"])


@SETTINGS
@given(assignment=SETTINGS_BAD)
def test_bad_settings_are_rejected_before_any_work(assignment: str) -> None:
    key = assignment.partition("=")[0]
    config = apply_overrides(dld_config("smoke"), [assignment])
    message = rejection(lambda: check_settings(config), f"setting {assignment}")
    assert message.startswith(key), message


def test_every_profile_passes_its_own_settings_check() -> None:
    for profile in ("smoke", "demo", "cpu", "paper"):
        check_settings(dld_config(profile))


# -- audit databases ---------------------------------------------------------------------------------------
FOREIGN = {
    "other tables": "CREATE TABLE users (id INTEGER, name TEXT); INSERT INTO users VALUES (1, 'a');",
    "flagged of another shape": "CREATE TABLE flagged (id INTEGER, note TEXT); INSERT INTO flagged VALUES (1, 'x');",
    "empty database": "",
    "our table plus more": "CREATE TABLE flagged (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT, sha256 TEXT, "
                           "predicted INTEGER, nonconformity REAL, credibility REAL, threshold REAL, per_layer TEXT, "
                           "model TEXT, shape TEXT, image BLOB); CREATE TABLE extra (x);",
}


@SETTINGS
@given(kind=st.sampled_from(sorted(FOREIGN)), version=st.sampled_from([0, 1, 7, 2**31 - 1]))
def test_a_foreign_database_is_refused_untouched(tmp_path_factory: pytest.TempPathFactory, kind: str,
                                                 version: int) -> None:
    path = tmp_path_factory.mktemp("db") / "foreign.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(FOREIGN[kind] + f"PRAGMA user_version={version};")
    db.close()
    before = path.read_bytes()
    message = rejection(lambda: SQLiteAuditLog(path, read_only=True), f"audit db {kind} v{version}")
    assert message.startswith(str(path)), message
    TRIED.add(f"audit list db {kind} v{version}")
    result = CliRunner().invoke(cli_app, ["audit", "list", "--db", str(path)])
    assert result.exit_code == 2 and "not a latentdefence audit log" in result.output
    if kind != "empty database" or version:
        message = rejection(lambda: SQLiteAuditLog(path), f"audit writer {kind} v{version}")
        assert message.startswith(str(path)), message
    assert path.read_bytes() == before                              # not a byte changed, journal mode included
    assert not path.with_name(path.name + "-wal").exists()


def test_our_own_log_still_lists_read_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    log = SQLiteAuditLog(path)
    x = torch.rand(2, 1, 4, 4)
    log.record(x, torch.tensor([1, 2]), torch.tensor([3.0, 4.0]), torch.tensor([0.1, 0.2]), {"t": torch.ones(2)},
               2.0, "m")
    log.close()
    reader = SQLiteAuditLog(path, read_only=True)
    assert [r.predicted for r in reader.records()] == [1, 2]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._db.execute("DELETE FROM flagged")
    reader.close()


# -- the CLI -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    checkpoint = GuardedClassifier.load(artifact).export_classifier(root / "f")
    clean = guard_blobs(4, 6).images
    out = {"artifact": artifact, "ckpt": checkpoint, "root": root}
    for name, images in (("x255", clean * 255), ("shifted", clean - 0.5), ("nan", clean.clone().fill_(math.nan))):
        out[name] = root / f"{name}.safetensors"
        save_tensors(out[name], {"images": images})
    out["noimages"] = root / "noimages.safetensors"
    save_file({"pixels": clean}, str(out["noimages"]))      # a user's own file, written without latentdefence
    return out


CLI_CASES = [  # (args with {placeholders}, text the one-line message must hold)
    ("attack run {ckpt} --out {root}/a.safetensors --steps 0", "steps"),
    ("attack run {ckpt} --out {root}/a.safetensors --attack cw --steps 0", "steps"),
    ("attack run {ckpt} --out {root}/a.safetensors --attack apgd-ce --steps -1", "steps"),
    ("attack run {ckpt} --out {root}/a.safetensors --eps nan", "eps"),
    ("attack run {ckpt} --out {root}/a.safetensors --eps -0.1", "eps"),
    ("attack run {ckpt} --out {root}/a.safetensors --step-size -0.01", "step_size"),
    ("attack run {ckpt} --out {root}/a.safetensors --step-size 0", "step_size"),
    ("attack run {ckpt} --out {root}/a.safetensors --restarts 0", "restarts"),
    ("attack run {ckpt} --out {root}/a.safetensors --limit 0", "--limit"),
    ("attack run {ckpt} --out {root}/a.safetensors --batch-size 0", "--batch-size"),
    ("attack run {ckpt} --out {root}/a.safetensors --attack autoattack --queries 0", "square_queries"),
    ("attack run {ckpt} --out {root}/a.safetensors --attack apgdt --n-target-classes 0", "n_target_classes"),
    ("evaluate {ckpt} --limit 0", "--limit"),
    ("evaluate {ckpt} --limit -3", "--limit"),
    ("evaluate {ckpt} --steps 0", "--steps"),
    ("evaluate {ckpt} --restarts 0", "--restarts"),
    ("evaluate {ckpt} --eps nan", "eps"),
    ("serve {root}/missing.safetensors --port 70000", "--port"),
    ("serve {root}/missing.safetensors --port -1", "--port"),
    ("serve {root}/missing.safetensors --max-images 0", "--max-images"),
    ("serve {root}/missing.safetensors --max-wait-ms nan", "--max-wait-ms"),
    ("dld detect {artifact} {x255}", "images must lie in [0, 1]"),
    ("dld detect {artifact} {shifted}", "images must lie in [0, 1]"),
    ("dld detect {artifact} {nan}", "images contain NaN"),
    ("dld detect {root} {x255}", "is a directory"),
    ("dld detect {artifact} {noimages}", "noimages.safetensors holds no 'images' tensor (it holds 'pixels')"),
    ("reproduce dld-mnist-table1 --profile smoke --out {root}/r --set target_fpr=5", "target_fpr"),
    ("reproduce dld-mnist-table1 --profile smoke --out {root}/r --set k=0", "k must be"),
    ("reproduce dld-mnist-table1 --profile smoke --out {root}/r --set attacks.pgd_steps=0", "attacks.pgd_steps"),
    ("reproduce lad-mnist-table2 --profile smoke --out {root}/r --set attack.pgd_eps=-1", "attack.pgd_eps"),
    ("audit list --db {artifact}", "not a usable audit database"),
    ("audit list --db {root}/missing.sqlite", "no such audit log"),
    ("audit list --db {artifact} --limit 0", "--limit"),
    ("audit list --db {artifact} --since-id -1", "--since-id"),
    ("dld calibrate {artifact} --n-calibration -1", "n_calibration must be an integer >= 1"),   # issue 37
    ("dld calibrate {artifact} --n-calibration 0", "n_calibration must be an integer >= 1"),
    ("evaluate-detector {artifact} --n-calibration -1 --n 5", "n_calibration must be an integer >= 1"),
    # issue 37: an output that would destroy an input, or cannot be written, is refused before the work
    ("dld detect {artifact} {x255} --out {artifact}", "is an input of this command"),
    ("attack run {ckpt} --out {ckpt}.safetensors", "is an input of this command"),
    ("attack run {ckpt} --out {ckpt}.json", "is an input of this command"),
    ("export-classifier {artifact} --out {artifact}", "is an input of this command"),
    ("evaluate-detector {artifact} --out {artifact}", "is an input of this command"),
    ("attack run {ckpt} --out {root}", "is an existing directory"),
    ("attack run {ckpt} --out {artifact}/sub/a.safetensors", "is not a folder this process can write to"),
    ("evaluate-detector {artifact} --out {x255}", "is an existing file; give a folder"),
    ("audit export --db {artifact} --out {artifact}", "is an input of this command"),
    ("train --out {x255} --epochs 1", "is an existing file; give a folder"),
    ("lad train-generator --classifier {ckpt} --out {ckpt}.safetensors", "is an input of this command"),
    ("lad boundary --classifier {ckpt} --out {root}", "is an existing directory"),
    ("lad generate --classifier {ckpt} --generator {x255} --boundaries {shifted} --out {shifted}",
     "is an input of this command"),
    ("lad finetune --classifier {ckpt} --generated {x255} --out {ckpt}", "is an input of this command"),
    ("lad finetune --classifier {ckpt} --generated {x255} --out {artifact}/sub/f", "is not a folder this process"),
]


@pytest.mark.parametrize("args, expected", CLI_CASES)
def test_cli_rejects_bad_options_in_one_line(files: dict[str, Path], args: str, expected: str) -> None:
    TRIED.add(f"cli {args}")
    result = CliRunner().invoke(cli_app, args.format(**files).split())
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    assert not (files["root"] / "r").exists()                      # reproduce stopped before writing anything


def test_a_multi_file_output_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    """Issue 37: outputs of several files are staged in a temp folder and published after the work; a run that
    dies leaves the folder as it was (here: the old report untouched, no new file, no temp folder left)."""
    from latentdefence._io import staged_folder

    out = tmp_path / "results"
    out.mkdir()
    (out / "report.md").write_text("old run")
    TRIED.add("multi-file output, run dies midway")
    with pytest.raises(RuntimeError, match="died"):
        with staged_folder(out) as staging:
            (staging / "results.json").write_text("{}")
            (staging / "report.md").write_text("new run")
            raise RuntimeError("the run died after two of its files")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert [p.name for p in out.iterdir()] == ["report.md"] and (out / "report.md").read_text() == "old run"
    with staged_folder(out) as staging:
        (staging / "figs").mkdir()
        (staging / "figs" / "a.png").write_bytes(b"png")
        (staging / "report.md").write_text("new run")
    assert (out / "report.md").read_text() == "new run" and (out / "figs" / "a.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_toy_detector_rejects_bad_k_when_fitting() -> None:
    train = toy_blobs.blobs(30, 0)
    for k in (0, "10", 2.5):
        det = DeepLatentDefence(toy_blobs.tiny_model(), ("layer1",), k=k, encoders={})  # type: ignore[arg-type]
        TRIED.add(f"fit k={k!r}")
        with pytest.raises(InputValidationError, match="^k must be"):
            det.fit(train)


@pytest.mark.parametrize("layout", ["sparse_coo", "meta"])
def test_labels_in_another_storage_are_named(detector: DeepLatentDefence, layout: str) -> None:
    x = guard_blobs(3, 5).images
    labels = torch.tensor([0, 1, 2])
    bad = labels.to_sparse() if layout == "sparse_coo" else labels.to("meta")
    message = rejection(lambda: PGD(0.1, steps=2)(detector.classifier, x, bad), f"labels {layout}")
    assert message.startswith("labels"), message


def test_audit_export_without_stored_images_writes_neither_file(tmp_path: Path) -> None:
    """Issue 37: `audit export --images` on a log without images used to write the records, then fail."""
    path = tmp_path / "audit.sqlite"
    log = SQLiteAuditLog(path)                     # keep_images off: records only
    log.record(torch.rand(1, 1, 4, 4), torch.tensor([1]), torch.tensor([3.0]), torch.tensor([0.1]),
               {"t": torch.ones(1)}, 2.0, "m")
    log.close()
    TRIED.add("audit export --images without images")
    out, images = tmp_path / "records.jsonl", tmp_path / "images.safetensors"
    result = CliRunner().invoke(cli_app, ["audit", "export", "--db", str(path), "--out", str(out),
                                          "--images", str(images)])
    assert result.exit_code == 2 and "holds no images" in result.output, result.output
    assert not out.exists() and not images.exists()
