"""Small I/O helpers shared by every artifact: atomic writes, checksums, provenance, safe tensors."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .validation import InputValidationError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp folder beside `path` for a multi-file output; when the block succeeds its files move into `path` (each
    by an atomic rename, all after the work), when it fails it is removed: a run that dies leaves `path` as it was,
    never half of the new run's files beside the old run's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        path.mkdir(exist_ok=True)
        for src in sorted(p for p in tmp.rglob("*") if p.is_file()):
            dest = path / src.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 120, tight_layout: bool = False) -> None:
    """A matplotlib figure as PNG, atomically, then closed (so long runs do not pile up open figures); cropped to
    its content, or laid out with `tight_layout` first and saved at its own size."""
    import matplotlib.pyplot as plt

    if tight_layout:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=None if tight_layout else "tight")
    plt.close(fig)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically so a crash never leaves half a results file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def jsonable(obj: Any) -> Any:
    """A dataclass (or settings holding dataclasses, mappings, tuples) as plain JSON types: dicts with string keys
    and lists, so settings recorded in results.json read back equal to what was written."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON, naming the file when it is missing or corrupt."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt JSON ({err})") from err


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any] | None = None) -> None:
    """Save tensors as safetensors (no pickle) with JSON metadata and their content digests, atomically."""
    text = json.dumps(metadata or {}, default=_json_default)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"json": text, INTEGRITY_KEY: json.dumps(content_digests(flat, json.loads(text)))}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by `save_tensors`: (tensors, metadata), refused when any tensor or metadata
    field differs from the digests written with it (`ArtifactIntegrityError`, naming each one)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a .safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        meta = json.loads(header.get("json", "{}"))
        tensors = load_file(str(path))
        recorded = json.loads(header[INTEGRITY_KEY]) if INTEGRITY_KEY in header else None
    except Exception as err:  # safetensors raises its own error types for truncation/corruption
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if recorded is None and "json" in header:   # ours, from before digests (a user's own file has no "json")
        warnings.warn(f"{path}: no content digests (written before latentdefence recorded them), so edits to it "
                      "cannot be detected; save it again to add them", UserWarning, stacklevel=2)
    elif recorded is not None:
        verify_digests(path, recorded, content_digests(tensors, meta))
    return tensors, meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of a `save_tensors` file from its header alone (no tensor read, not verified: enough to
    tell what kind of artifact it is; `load_tensors` verifies everything)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        meta = json.loads(header.get("json", "{}"))
    except Exception as err:  # safetensors raises its own error types for truncation/corruption
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its metadata is not a JSON object")
    return meta


def load_tensor(path: str | os.PathLike[str], key: str) -> torch.Tensor:
    """One named tensor of a safetensors file (e.g. a user's `images`); a file without it is named, with what it has."""
    tensors, _ = load_tensors(path)
    if key not in tensors:
        held = ", ".join(repr(k) for k in sorted(tensors)[:8]) or "no tensors"
        raise InputValidationError(f"{path}", f"holds no {key!r} tensor (it holds {held}); save the images under "
                                   f"the name {key!r}")
    return tensors[key]


INTEGRITY_KEY = "latentdefence.integrity"


class ArtifactIntegrityError(ValueError):
    """An artifact whose content differs from the digests written with it: edited or damaged since it was saved."""


def content_digests(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """sha256 of every tensor (its dtype, shape and bytes) and of every top-level metadata field (canonical JSON)."""
    return {"tensors": {name: tensor_digest(t) for name, t in sorted(tensors.items())},
            "metadata": {key: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
                         for key, value in sorted(metadata.items())}}


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and raw bytes (so a header that re-declares a dtype changes it too)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def verify_digests(path: str | os.PathLike[str], recorded: Mapping[str, Any], actual: Mapping[str, Any]) -> None:
    """Refuse, naming every tensor and metadata field that was changed, added or removed since the file was written."""
    changed = [f"{label} {name!r}" for kind, label in (("tensors", "tensor"), ("metadata", "metadata field"))
               for name in sorted(set(recorded.get(kind, {})) | set(actual[kind]))
               if recorded.get(kind, {}).get(name) != actual[kind].get(name)]
    if changed:
        raise ArtifactIntegrityError(f"{path}: edited or damaged since it was written: {', '.join(changed)} "
                                     "differ from the digests saved with it")


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str:
    """Current git commit (with '-dirty' if the tree has changes), or 'unknown' outside a checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def environment_info() -> dict[str, Any]:
    """Library versions and hardware, recorded beside every result."""
    import numpy
    import sklearn

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit_learn": sklearn.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def write_comparison_files(out_dir: str | os.PathLike[str], results: Mapping[str, Any], settings: Mapping[str, Any],
                           report: str) -> Path:
    """`out_dir`/results.json (the results with their settings, git revision and machine) and report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {**results, "settings": dict(settings), "git_revision": git_revision(),
                                      "environment": environment_info()})
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report)
    return out


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's weights live (its first parameter's device)."""
    return next(module.parameters()).device
