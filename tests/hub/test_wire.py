"""Wire formats: batches round-trip, hostile bytes are one WireError, bundles verify."""

from __future__ import annotations

import base64
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechaway.hub.keys import Signer, generate_pem
from mechaway.hub.wire import (
    BundleRefused,
    WireError,
    bundle_payload,
    decode_batch,
    decode_heartbeat,
    encode_batch,
    envelope,
    open_bundle,
    parse_public_key,
)

SIGNER = Signer(generate_pem(), "test key")
OTHER = Signer(generate_pem(), "other key")


@st.composite
def batches(draw: st.DrawFn) -> tuple[str, int, list[tuple[int, float, str, bytes, int]]]:
    floor = draw(st.integers(0, 10**12))
    n = draw(st.integers(1, 30))
    first = floor + 1 + draw(st.integers(0, 1000))
    rows = [
        (
            first + i,
            draw(st.floats(allow_nan=False, allow_infinity=False)),
            draw(st.text(max_size=40)),
            draw(st.sampled_from([b"1", b'{"v": 2.5}', b'"x"', b"null", b"[1,2]"])),
            draw(st.integers(0, 255)),
        )
        for i in range(n)
    ]
    epoch = draw(st.text(min_size=1, max_size=64))
    return epoch, floor, rows


@settings(max_examples=100, deadline=None)
@given(batches())
def test_batch_round_trip(b: tuple[str, int, list[tuple[int, float, str, bytes, int]]]) -> None:
    epoch, floor, rows = b
    try:
        body = encode_batch(epoch, floor, rows)
    except UnicodeEncodeError:
        return  # a lone surrogate in a topic cannot even be sent
    got = decode_batch(body)
    assert (got.epoch, got.floor, got.rows) == (epoch, floor, rows)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_one_wire_error(data: bytes) -> None:
    for body in (data, zlib.compress(data)):
        with pytest.raises(WireError):
            decode_batch(body)


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ([2, "e", 0, [[1, 0.0, "t", b"1", 0]]], "expected [1"),
        ([1, "", 0, [[1, 0.0, "t", b"1", 0]]], "batch.epoch"),
        ([1, "e", -1, [[1, 0.0, "t", b"1", 0]]], "batch.floor"),
        ([1, "e", 0, []], "batch.rows"),
        ([1, "e", 5, [[5, 0.0, "t", b"1", 0]]], "rows[0].seq"),
        ([1, "e", 0, [[1, 0.0, "t", b"1", 0], [3, 0.0, "t", b"1", 0]]], "does not follow"),
        ([1, "e", 0, [[1, float("nan"), "t", b"1", 0]]], "rows[0].ts"),
        ([1, "e", 0, [[1, 0.0, 7, b"1", 0]]], "rows[0].topic"),
        ([1, "e", 0, [[1, 0.0, "t", "1", 0]]], "rows[0].payload"),
        ([1, "e", 0, [[1, 0.0, "t", b"{", 0]]], "not JSON"),
        ([1, "e", 0, [[1, 0.0, "t", b"1", 256]]], "rows[0].flags"),
        ([1, "e", 0, [[1, True, "t", b"1", 0]]], "rows[0].ts"),
    ],
)
def test_bad_batches_name_the_place(doc: list[object], where: str) -> None:
    body = zlib.compress(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(WireError, match=where.replace("[", r"\[")):
        decode_batch(body)


def test_zip_bomb_is_refused() -> None:
    body = zlib.compress(b"\x00" * (2 * 1024 * 1024))
    with pytest.raises(WireError, match="decompresses to more than"):
        decode_batch(body, max_raw=1024 * 1024)


def test_heartbeat_bounds() -> None:
    assert decode_heartbeat(b'{"bundle_seq": 3}').bundle_seq == 3
    for bad in (b"[", b'{"bundle_seq": -1}', b'{"flows": 3}', b"x" * (2 * 1024 * 1024)):
        with pytest.raises(WireError):
            decode_heartbeat(bad)


def _env(device: str = "d1", seq: int = 5, signer: Signer = SIGNER) -> dict[str, str]:
    payload = bundle_payload(device, seq, {"f": {"id": "f", "nodes": [], "edges": []}})
    return envelope(payload, signer.sign(payload))


PK = SIGNER.public_raw


def test_bundle_verifies_and_is_new() -> None:
    b = open_bundle(_env(), PK, device="d1", last_seq=4)
    assert b is not None and b.seq == 5 and list(b.flows) == ["f"]
    assert open_bundle(_env(), PK, device="d1", last_seq=5) is None  # the one applied


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({**_env(), "sig": ""}, "unsigned"),
        ({"payload": _env()["payload"]}, "unsigned"),
        (_env(signer=OTHER), "bad signature"),
        (
            {
                **_env(),
                "payload": base64.b64encode(
                    base64.b64decode(_env()["payload"]).replace(b'"seq":5', b'"seq":9')
                ).decode(),
            },
            "bad signature",
        ),
        (_env(device="d2"), "wrong device"),
        (_env(seq=3), "replayed"),
        ({"payload": "%%%", "sig": "AAAA"}, "malformed"),
        ("not an object", "malformed"),
    ],
)
def test_bundle_refusals(env: object, reason: str) -> None:
    with pytest.raises(BundleRefused) as info:
        open_bundle(env, PK, device="d1", last_seq=4)
    assert info.value.reason == reason


def test_public_key_text() -> None:
    assert parse_public_key(SIGNER.public_key) == PK
    for bad in ("", "ed25519:", "ed25519:AAAA", "rsa:" + "A" * 44):
        with pytest.raises(WireError, match=r"hub\.public_key"):
            parse_public_key(bad)
