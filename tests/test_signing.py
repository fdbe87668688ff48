"""Ed25519 artifact signing: a deployment that requires a signature serves only the artifact its owner signed."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guard_artifact import artifact  # noqa: F401 (shared fixture)
from latentdefence.cli import app
from latentdefence.serving import GuardedClassifier
from latentdefence.signing import SignatureError, generate_keys, sign_artifact, signature_path, verify_artifact
from latentdefence.validation import InputValidationError


@pytest.fixture()
def signed(artifact: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(a signed copy of the guard artifact, its private key, its public key)."""
    copy = tmp_path / "guard.safetensors"
    shutil.copy(artifact, copy)
    private, public = generate_keys(tmp_path / "owner")
    sign_artifact(copy, private)
    return copy, private, public


def test_a_signed_artifact_verifies_and_loads(signed: tuple[Path, Path, Path]) -> None:
    path, private, public = signed
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    record = json.loads(signature_path(path).read_text())
    assert record["algorithm"] == "ed25519" and verify_artifact(path, public) == record["sha256"]
    guard = GuardedClassifier.load(path, public_key=public)
    assert guard.info()["artifact_sha256"] == record["sha256"]


def _tamper(path: Path, private: Path, public: Path, tmp_path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0")


def _unsigned(path: Path, private: Path, public: Path, tmp_path: Path) -> None:
    signature_path(path).unlink()


def _other_key(path: Path, private: Path, public: Path, tmp_path: Path) -> None:
    other, _ = generate_keys(tmp_path / "intruder")
    sign_artifact(path, other)


def _forged(path: Path, private: Path, public: Path, tmp_path: Path) -> None:
    sig = signature_path(path)
    record = json.loads(sig.read_text())
    raw = bytearray(base64.b64decode(record["signature"]))
    raw[0] ^= 1
    sig.write_text(json.dumps({**record, "signature": base64.b64encode(bytes(raw)).decode()}))


def _resigned_digest(path: Path, private: Path, public: Path, tmp_path: Path) -> None:
    """The attacker edits the artifact and writes its new sha256 into the .sig without the private key."""
    from latentdefence._io import sha256_file

    path.write_bytes(path.read_bytes() + b"\0")
    sig = signature_path(path)
    sig.write_text(json.dumps({**json.loads(sig.read_text()), "sha256": sha256_file(path)}))


def _garbled(path: Path, private: Path, public: Path, tmp_path: Path) -> None:
    signature_path(path).write_text("{not json")


TAMPERING = {"artifact changed": (_tamper, "was changed since it was signed"),
             "unsigned": (_unsigned, "is unsigned"),
             "signed by another key": (_other_key, "was signed by another key"),
             "signature bytes forged": (_forged, "does not verify"),
             "digest rewritten": (_resigned_digest, "does not verify"),
             "signature file garbled": (_garbled, "not a readable signature file")}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_every_tampering_is_refused_by_name(signed: tuple[Path, Path, Path], tmp_path: Path, case: str) -> None:
    path, private, public = signed
    tamper, expected = TAMPERING[case]
    tamper(path, private, public, tmp_path)
    with pytest.raises(SignatureError, match=expected):
        verify_artifact(path, public)
    with pytest.raises(SignatureError, match=expected):
        GuardedClassifier.load(path, public_key=public)
    serve = CliRunner().invoke(app, ["serve", str(path), "--require-signature", str(public)])
    lines = [line for line in serve.output.splitlines() if line.strip()]
    assert serve.exit_code == 2 and len(lines) == 1 and expected in lines[0], serve.output


def test_keys_are_checked_and_never_overwritten(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    path, private, public = signed
    with pytest.raises(InputValidationError, match="already exists"):
        generate_keys(tmp_path / "owner")
    with pytest.raises(InputValidationError, match="not a readable public key"):
        verify_artifact(path, private)          # the private key where the public one belongs
    with pytest.raises(InputValidationError, match="not a readable private key"):
        sign_artifact(path, public)
    with pytest.raises(InputValidationError, match="not a readable public key"):
        verify_artifact(path, tmp_path / "missing.pub")


def test_the_cli_signs_and_verifies(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "a.safetensors"
    shutil.copy(artifact, copy)
    runner = CliRunner()
    keys = runner.invoke(app, ["keygen", str(tmp_path / "k")])
    assert keys.exit_code == 0 and "keep it secret" in keys.output
    assert runner.invoke(app, ["sign", str(copy), "--key", str(tmp_path / "k.key")]).exit_code == 0
    ok = runner.invoke(app, ["verify", str(copy), "--key", str(tmp_path / "k.pub")])
    assert ok.exit_code == 0 and "signed by" in ok.output
    copy.write_bytes(copy.read_bytes() + b"\0")
    bad = runner.invoke(app, ["verify", str(copy), "--key", str(tmp_path / "k.pub")])
    assert bad.exit_code == 2 and "changed since it was signed" in bad.output
