"""The edge's pure-Python Ed25519 verifier against RFC 8032 and against ``cryptography``."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mechaway.hub.ed25519 import verify

# RFC 8032 section 7.1, tests 1-3 (public key, message, signature)
VECTORS = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


def test_rfc8032_vectors() -> None:
    for pub, msg, sig in VECTORS:
        p, m, s = bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig)
        assert verify(p, m, s)
        assert not verify(p, m + b"x", s)
        bad = bytearray(s)
        bad[0] ^= 1
        assert not verify(p, m, bytes(bad))


def test_malformed_inputs_are_false() -> None:
    pub, msg, sig = (bytes.fromhex(x) for x in VECTORS[1])
    assert not verify(pub[:31], msg, sig)
    assert not verify(pub, msg, sig[:63])
    assert not verify(b"\xff" * 32, msg, sig)  # y >= p: not a point
    # s >= L (a malleable signature) is refused
    s_big = (int.from_bytes(sig[32:], "little") + 2**252 + 27742317777372353535851937790883648493)
    assert not verify(pub, msg, sig[:32] + (s_big % 2**256).to_bytes(32, "little"))


_KEY = Ed25519PrivateKey.generate()
_PUB = _KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _reference(pub: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


@settings(max_examples=40, deadline=None)
@given(msg=st.binary(max_size=300), flip=st.integers(min_value=-1, max_value=64 * 8 - 1))
def test_agrees_with_cryptography(msg: bytes, flip: int) -> None:
    """Signed by ``cryptography``, optionally one bit of the signature flipped: both
    verifiers say the same."""
    sig = bytearray(_KEY.sign(msg))
    if flip >= 0:
        sig[flip // 8] ^= 1 << (flip % 8)
    expected = _reference(_PUB, msg, bytes(sig))
    assert verify(_PUB, msg, bytes(sig)) is expected
    assert expected is (flip < 0)
