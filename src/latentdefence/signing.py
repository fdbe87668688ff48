"""Ed25519 signatures for artifacts, so a deployment serves only what its owner signed.

Content digests (`_io.load_tensors`) catch an artifact damaged or edited by hand; they cannot stop someone who
rewrites the digests too. A signature can: it binds the file's sha256 to a private key the attacker does not hold.

```python
from latentdefence.signing import generate_keys, sign_artifact, verify_artifact
generate_keys("deploy")                              # deploy.key (private, mode 600) and deploy.pub
sign_artifact("guard.safetensors", "deploy.key")     # writes guard.safetensors.sig
verify_artifact("guard.safetensors", "deploy.pub")   # SignatureError if unsigned, tampered or another key's
```
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ._io import atomic_path, sha256_file
from .validation import InputValidationError

SIGNATURE_SUFFIX = ".sig"
_CONTEXT = b"latentdefence-artifact-signature/1:"   # signs this prefix + the file's sha256, never bare bytes


class SignatureError(InputValidationError):
    """An artifact without a valid signature by the expected key: unsigned, tampered with, or signed by another."""


def signature_path(artifact: str | os.PathLike[str]) -> Path:
    """Where an artifact's detached signature lives: beside it, with `.sig` appended."""
    return Path(f"{artifact}{SIGNATURE_SUFFIX}")


def generate_keys(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A new Ed25519 key pair: `stem.key` (private, PKCS#8 PEM, readable by its owner only) and `stem.pub`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path, public_path = Path(f"{stem}.key"), Path(f"{stem}.pub")
    for path in (private_path, public_path):
        if path.exists():
            raise InputValidationError(str(path), "already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with atomic_path(private_path) as tmp:
        tmp.chmod(0o600)
        tmp.write_bytes(private)
    with atomic_path(public_path) as tmp:
        tmp.write_bytes(public)
    return private_path, public_path


def sign_artifact(artifact: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> Path:
    """Sign `artifact`'s sha256 with the Ed25519 key in `private_key`; write and return `artifact.sig` (JSON)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = _load_key(private_key, private=True)
    assert isinstance(key, Ed25519PrivateKey)
    digest = _artifact_digest(artifact)
    record = {"algorithm": "ed25519", "artifact": Path(artifact).name, "sha256": digest,
              "public_key": _fingerprint(key.public_key()),
              "signature": base64.b64encode(key.sign(_CONTEXT + digest.encode())).decode()}
    out = signature_path(artifact)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return out


def verify_artifact(artifact: str | os.PathLike[str], public_key: str | os.PathLike[str]) -> str:
    """The artifact's sha256 when `artifact.sig` is a valid signature of it by `public_key`; else SignatureError
    saying which: no signature, a file changed since it was signed, or a signature by another key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = _load_key(public_key, private=False)
    assert isinstance(key, Ed25519PublicKey)
    sig_path = signature_path(artifact)
    name = f"{artifact}"
    if not sig_path.is_file():
        raise SignatureError(name, f"is unsigned: no {sig_path.name} beside it (sign it with `latentdefence sign`)")
    record = _read_signature(sig_path)
    if record["public_key"] != _fingerprint(key):
        raise SignatureError(name, f"was signed by another key ({record['public_key'][:16]}…), not {public_key}")
    digest = _artifact_digest(artifact)
    if digest != record["sha256"]:
        raise SignatureError(name, "was changed since it was signed (its sha256 differs from the signed one)")
    try:
        key.verify(base64.b64decode(record["signature"], validate=True), _CONTEXT + digest.encode())
    except (InvalidSignature, ValueError):
        raise SignatureError(name, f"has a signature that does not verify with {public_key}: "
                             f"{sig_path.name} was forged or edited") from None
    return digest


def _artifact_digest(artifact: str | os.PathLike[str]) -> str:
    path = Path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such artifact file")
    return sha256_file(path)


def _read_signature(path: Path) -> dict[str, Any]:
    """The signature record, each field checked, so a damaged .sig is named rather than a KeyError."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SignatureError(str(path), f"is not a readable signature file ({err})") from None
    fields = ("algorithm", "sha256", "public_key", "signature")
    if not isinstance(record, dict) or any(not isinstance(record.get(f), str) for f in fields):
        raise SignatureError(str(path), f"must be a JSON object with string fields {list(fields)}")
    if record["algorithm"] != "ed25519":
        raise SignatureError(str(path), f"uses algorithm {record['algorithm']!r}; only 'ed25519' is accepted")
    return record


def _load_key(path: str | os.PathLike[str], private: bool) -> Any:
    """An Ed25519 key from a PEM file, named when missing, unreadable or of another kind."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    kind = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as err:
        raise InputValidationError(str(path), f"is not a readable {kind} key PEM file ({err})") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise InputValidationError(str(path), f"holds a {type(key).__name__}; an Ed25519 {kind} key is needed")
    return key


def _fingerprint(public_key: Any) -> str:
    """sha256 of the raw public key: names the signer in the .sig without trusting anything else in it."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()
