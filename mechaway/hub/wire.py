"""What travels between an edge and the hub: signed bundles, telemetry batches, heartbeats.

Shared by both sides and light on purpose (msgpack, orjson, msgspec, zlib: what the edge
has loaded anyway). Every decoder here takes bytes from the network and either returns
checked values or raises ``WireError`` naming the place; nothing else escapes.

Bundle (hub -> edge): the payload is canonical JSON (sorted keys) ::

    {"v": 1, "device": "edge-1", "seq": 7, "flows": {"<flow id>": <flow document>, ...}}

sent as ``{"payload": base64(payload), "sig": base64(Ed25519(payload))}``. The edge
verifies the signature over the exact payload bytes before it parses them.

Telemetry batch (edge -> hub): ``zlib(msgpack([1, epoch, floor, rows]))`` with
``rows = [[seq, ts, topic, payload, flags], ...]``: contiguous seqs, ``payload`` the JSON
bytes the outbox holds, ``floor`` the edge's outbox floor (everything at or below it is
gone from the edge: acknowledged earlier or evicted).
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
import msgspec
import orjson

from mechaway.errors import MechawayError

PROTOCOL = 1
BATCH_CONTENT_TYPE = "application/x-mechaway-batch"
#: a decompressed batch larger than this is refused (a zip bomb stops here)
MAX_BATCH_RAW_BYTES = 64 * 1024 * 1024
MAX_BATCH_MESSAGES = 100_000
MAX_TOPIC_CHARS = 1024
MAX_EPOCH_CHARS = 64
PUBLIC_KEY_PREFIX = "ed25519:"


class WireError(MechawayError):
    """Bytes from the other side that do not follow the protocol (the text names where)."""


class BundleRefused(MechawayError):
    """A bundle the edge will not run: unsigned, badly signed, replayed, not for it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def canonical(value: Any) -> bytes:
    """The one JSON text of ``value`` (sorted keys): what is signed and hashed."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# -- keys ------------------------------------------------------------------------------------
def public_key_text(raw: bytes) -> str:
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str, where: str = "hub.public_key") -> bytes:
    """``ed25519:BASE64`` (what ``mechaway hub public-key`` prints) -> 32 raw bytes."""
    body = text.strip()
    body = body.removeprefix(PUBLIC_KEY_PREFIX)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise WireError(
            f"{where}: not an Ed25519 public key (expected {PUBLIC_KEY_PREFIX}<base64 of 32"
            " bytes>, as `mechaway hub public-key` prints)"
        )
    return raw


# -- bundles ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Bundle:
    device: str
    seq: int
    flows: dict[str, dict[str, Any]]


def bundle_payload(device: str, seq: int, flows: dict[str, dict[str, Any]]) -> bytes:
    return canonical({"v": PROTOCOL, "device": device, "seq": seq, "flows": flows})


def envelope(payload: bytes, signature: bytes) -> dict[str, str]:
    return {
        "payload": base64.b64encode(payload).decode(),
        "sig": base64.b64encode(signature).decode(),
    }


def open_bundle(
    env: Any, public_key: bytes, *, device: str, last_seq: int, verify: Any = None
) -> Bundle | None:
    """Check a bundle envelope; the bundle when it is new, None when it is the one applied.

    Raises ``BundleRefused``: unsigned, bad signature (checked first, before anything in
    the payload is believed), malformed, for another device, replayed (older seq).
    """
    if verify is None:
        from mechaway.hub.ed25519 import verify
    if not isinstance(env, dict):
        raise BundleRefused("malformed", "bundle is not an object")
    p64, s64 = env.get("payload"), env.get("sig")
    if not isinstance(p64, str):
        raise BundleRefused("malformed", "bundle has no payload")
    if not isinstance(s64, str) or not s64:
        raise BundleRefused("unsigned", "bundle carries no signature")
    try:
        payload = base64.b64decode(p64, validate=True)
        sig = base64.b64decode(s64, validate=True)
    except (binascii.Error, ValueError):
        raise BundleRefused("malformed", "payload or sig is not base64") from None
    if not verify(public_key, payload, sig):
        raise BundleRefused("bad signature", "not signed by the pinned hub key")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise BundleRefused("malformed", "signed payload is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != PROTOCOL:
        raise BundleRefused("malformed", f"unknown bundle version {show(doc)}")
    dev, seq, flows = doc.get("device"), doc.get("seq"), doc.get("flows")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise BundleRefused("malformed", "seq is not a positive integer")
    if not isinstance(flows, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in flows.items()
    ):
        raise BundleRefused("malformed", "flows is not an object of flow documents")
    if dev != device:
        raise BundleRefused("wrong device", f"bundle is for {show(dev)}, this is {device!r}")
    if seq < last_seq:
        raise BundleRefused("replayed", f"bundle seq {seq} is older than applied seq {last_seq}")
    if seq == last_seq:
        return None
    return Bundle(dev, seq, flows)


def show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- telemetry batches -----------------------------------------------------------------------
Row = tuple[int, float, str, bytes, int]


@dataclass(frozen=True, slots=True)
class Batch:
    epoch: str
    floor: int
    rows: list[Row]

    @property
    def first(self) -> int:
        return self.rows[0][0]

    @property
    def last(self) -> int:
        return self.rows[-1][0]


def encode_batch(epoch: str, floor: int, rows: list[Row], level: int = 1) -> bytes:
    packed: bytes = msgpack.packb([PROTOCOL, epoch, floor, rows], use_bin_type=True)
    return zlib.compress(packed, level)


def decode_batch(body: bytes, *, max_raw: int = MAX_BATCH_RAW_BYTES) -> Batch:
    """A checked batch; ``WireError`` naming the first problem otherwise."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(body, max_raw)
    except zlib.error as err:
        raise WireError(f"batch: not zlib data ({err})") from None
    if d.unconsumed_tail:
        raise WireError(f"batch: decompresses to more than {max_raw} bytes")
    if not d.eof:
        raise WireError("batch: truncated zlib stream")
    try:
        doc = msgpack.unpackb(
            raw, raw=False, use_list=True, strict_map_key=True, max_array_len=MAX_BATCH_MESSAGES
        )
    except Exception as err:  # msgpack raises several unrelated types on garbage
        raise WireError(f"batch: not msgpack ({type(err).__name__})") from None
    if not isinstance(doc, list) or len(doc) != 4 or doc[0] != PROTOCOL:
        raise WireError(f"batch: expected [{PROTOCOL}, epoch, floor, rows]")
    _, epoch, floor, rows = doc
    if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_CHARS:
        raise WireError(f"batch.epoch: expected text of 1-{MAX_EPOCH_CHARS} characters")
    if not _is_count(floor):
        raise WireError("batch.floor: expected an integer >= 0")
    if not isinstance(rows, list) or not rows:
        raise WireError("batch.rows: expected a non-empty array")
    out: list[Row] = []
    prev = None
    loads = orjson.loads
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 5:
            raise WireError(f"batch.rows[{i}]: expected [seq, ts, topic, payload, flags]")
        seq, ts, topic, payload, flags = row
        if not _is_count(seq) or seq <= floor or seq >= 2**62:
            raise WireError(f"batch.rows[{i}].seq: expected an integer above floor {floor}")
        if prev is not None and seq != prev + 1:
            raise WireError(f"batch.rows[{i}].seq: {seq} does not follow {prev}")
        prev = seq
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise WireError(f"batch.rows[{i}].ts: expected a finite number")
        if not isinstance(topic, str) or len(topic) > MAX_TOPIC_CHARS:
            raise WireError(f"batch.rows[{i}].topic: expected text of <= {MAX_TOPIC_CHARS}")
        if not isinstance(payload, bytes):
            raise WireError(f"batch.rows[{i}].payload: expected JSON bytes")
        try:
            loads(payload)
        except orjson.JSONDecodeError:
            raise WireError(f"batch.rows[{i}].payload: not JSON") from None
        if not _is_count(flags) or flags > 255:
            raise WireError(f"batch.rows[{i}].flags: expected an integer 0-255")
        try:
            topic.encode()
        except UnicodeEncodeError:
            raise WireError(f"batch.rows[{i}].topic: not valid text") from None
        out.append((seq, float(ts), topic, payload, flags))
    return Batch(epoch, floor, out)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# -- heartbeats ------------------------------------------------------------------------------
class _Wire(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    pass


class FlowReport(_Wire):
    id: str
    rev: int = 0
    state: str = "running"
    source: str = ""
    #: managed by the hub (from a bundle)
    hub: bool = False
    #: changed on the device since the hub's bundle deployed it
    drift: bool = False


class Report(_Wire):
    """Something the edge did with a bundle: applied, failed, rolled_back, refused."""

    ts: float
    result: str
    bundle_seq: int = 0
    flow: str = ""
    detail: str = ""


class Heartbeat(_Wire):
    state: str = "running"
    version: str = ""
    bundle_seq: int = 0
    flows: list[FlowReport] = msgspec.field(default_factory=list)
    backlog: dict[str, Any] = msgspec.field(default_factory=dict)
    problems: list[str] = msgspec.field(default_factory=list)
    reports: list[Report] = msgspec.field(default_factory=list)


#: a heartbeat body larger than this is refused before it is parsed
MAX_HEARTBEAT_BYTES = 1024 * 1024
MAX_REPORTS = 100


def decode_heartbeat(body: bytes) -> Heartbeat:
    if len(body) > MAX_HEARTBEAT_BYTES:
        raise WireError(f"heartbeat: larger than {MAX_HEARTBEAT_BYTES} bytes")
    try:
        hb = msgspec.json.decode(body, type=Heartbeat)
    except msgspec.DecodeError as err:
        raise WireError(f"heartbeat: {err}") from None
    if len(hb.reports) > MAX_REPORTS or len(hb.flows) > 10_000 or len(hb.problems) > 1000:
        raise WireError("heartbeat: too many reports, flows or problems")
    if hb.bundle_seq < 0:
        raise WireError("heartbeat.bundle_seq: expected an integer >= 0")
    return hb


def encode_heartbeat(hb: Heartbeat) -> bytes:
    return msgspec.json.encode(hb)
