"""The bundle signing key pair: ed25519, PEM files, private key readable by its owner only.

Default location: ``<data dir>/keys/bundle-signing.key`` and ``bundle-signing.pub``;
``appliance bundle keygen --out DIR`` and ``appliance bundle build --key FILE`` choose others.
Keep the private key on the build machine; give the ``.pub`` file (or its fingerprint) to
whoever installs bundles, through a channel other than the stick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.errors import BundleError
from appliance.bundle.verify import fingerprint
from appliance.config import data_dir
from appliance.files import write_atomic

__all__ = ["KEY_NAME", "KeyPair", "default_key_dir", "generate", "load_private_key", "sign"]

KEY_NAME = "bundle-signing"


def default_key_dir() -> Path:
    """``<data dir>/keys``."""
    return data_dir() / "keys"


@dataclass(frozen=True)
class KeyPair:
    """Paths of a key pair on disk and the public key's fingerprint."""

    private: Path
    public: Path
    fingerprint: str


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate(out_dir: Path | None = None, *, force: bool = False) -> KeyPair:
    """Write a new key pair to ``out_dir`` (default :func:`default_key_dir`)."""
    out_dir = Path(out_dir) if out_dir else default_key_dir()
    private = out_dir / f"{KEY_NAME}.key"
    public = out_dir / f"{KEY_NAME}.pub"
    if (private.exists() or public.exists()) and not force:
        raise BundleError(
            f"A signing key already exists at {private}; keep using it, or pass --force to "
            "replace it (bundles signed with the old key will no longer match the new .pub)."
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, data, mode in ((private, pem, 0o600), (public, _public_pem(key), 0o644)):
            write_atomic(path, data, mode)
    except OSError as exc:
        raise BundleError(f"Cannot write the key pair to {out_dir}: {exc.strerror or exc}; "
                          "choose another folder with --out.") from exc
    return KeyPair(private, public, fingerprint(_public_pem(key)))


def load_private_key(path: Path | None = None) -> tuple[Ed25519PrivateKey, bytes]:
    """The private key at ``path`` (default location when None) and its public key PEM."""
    path = Path(path) if path else default_key_dir() / f"{KEY_NAME}.key"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"No signing key at {path}; create one with `appliance bundle keygen` or pass "
            "--key FILE."
        ) from None
    except OSError as exc:
        raise BundleError(f"Cannot read the signing key {path}: {exc.strerror or exc}; "
                          "check its permissions.") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path} is not an unencrypted PEM private key ({exc}); create one "
                          "with `appliance bundle keygen`.") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} is not an ed25519 key; create one with "
                          "`appliance bundle keygen`.")
    return key, _public_pem(key)


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """The raw 64-byte ed25519 signature of ``message`` (deterministic)."""
    return key.sign(message)
