"""The hub's Ed25519 signing key: a PEM file created (mode 0600) on first start."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from mechaway.errors import ConfigError
from mechaway.hub.wire import public_key_text

log = logging.getLogger("mechaway.hub.keys")


class Signer:
    """Signs bundle payloads with the hub's private key (``cryptography``)."""

    def __init__(self, pem: bytes, where: str) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{where}: not a PEM private key ({err})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{where}: not an Ed25519 private key")
        self._key = key
        self.public_raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def public_key(self) -> str:
        """What the edge's ``[hub] public_key`` needs."""
        return public_key_text(self.public_raw)

    def sign(self, payload: bytes) -> bytes:
        return self._key.sign(payload)


def generate_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_signer(path: Path, *, create: bool = True) -> Signer:
    """The key in ``path``; created there (0600, never overwritten) when missing."""
    where = f"hub.signing_key ({path})"
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = generate_pem()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another hub process created it first: use theirs
        except OSError as err:
            raise ConfigError(f"{where}: cannot create: {err.strerror}") from err
        else:
            try:
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(OSError):
                dfd = os.open(path.parent, os.O_RDONLY)
                os.fsync(dfd)
                os.close(dfd)
            log.info("created a new signing key in %s", path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{where}: cannot read: {err.strerror}") from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by others (mode %o): chmod 600 it", path, mode & 0o777)
    return Signer(data, where)
