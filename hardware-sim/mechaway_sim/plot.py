"""A plot of a run as a PNG, with no plotting library: a small RGB canvas (lines,
rectangles, a 5x7 pixel font) and a PNG writer (zlib + CRC from the standard library).

``plot_log(log, out, band)`` draws the air temperature of a run's log (``mechaway-sim run
--log``) against the band the controller should keep, the outside temperature, the
daemon's own readings if given, and strips for the fan, the vent and the heater, and the
faults' windows.
"""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Color = tuple[int, int, int]

# the classic 5x7 font, one byte per column (bit 0 at the top), ASCII 0x20..0x5A
_FONT_BYTES = bytes.fromhex(
    "0000000000 00005f0000 0007000700 147f147f14 242a7f2a12 2313086462 3649562050 0008070300 "
    "001c224100 0041221c00 2a1c7f1c2a 08083e0808 0080703000 0808080808 0000606000 2010080402 "
    "3e5149453e 00427f4000 7249494946 2141494d33 1814127f10 2745454539 3c4a494931 4121110907 "
    "3649494936 464949291e 0000140000 0040340000 0008142241 1414141414 0041221408 0201590906 "
    "3e415d594e 7c1211127c 7f49494936 3e41414122 7f4141413e 7f49494941 7f09090901 3e41415173 "
    "7f0808087f 00417f4100 2040413f01 7f08142241 7f40404040 7f021c027f 7f0408107f 3e4141413e "
    "7f09090906 3e4151215e 7f09192946 2649494932 03017f0103 3f4040403f 1f2040201f 3f4038403f "
    "6314081463 0304780403 6159494d43"
)
FONT: dict[str, bytes] = {
    chr(0x20 + i): _FONT_BYTES[5 * i : 5 * i + 5] for i in range(len(_FONT_BYTES) // 5)
}
FONT["°"] = bytes.fromhex("0006090906")

WHITE: Color = (255, 255, 255)
BLACK: Color = (30, 30, 30)
GRID: Color = (225, 225, 225)
BAND: Color = (214, 240, 214)
AIR: Color = (205, 40, 40)
READ: Color = (40, 90, 200)
OUTSIDE: Color = (140, 140, 140)
FAN: Color = (60, 120, 220)
VENT: Color = (110, 190, 230)
HEATER: Color = (235, 140, 30)
FAULT: Color = (250, 222, 222)
SUN: Color = (240, 200, 40)


class Canvas:
    """RGB pixels, row by row."""

    def __init__(self, width: int, height: int, bg: Color = WHITE) -> None:
        self.w, self.h = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def set(self, x: int, y: int, c: Color) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i : i + 3] = bytes(c)

    def rect(self, x0: int, y0: int, x1: int, y1: int, c: Color) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.w, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.h, max(y0, y1))
        row = bytes(c) * (x1 - x0)
        for y in range(y0, y1):
            i = (y * self.w + x0) * 3
            self.px[i : i + len(row)] = row

    def line(  # noqa: PLR0917 (a line is its two points)
        self, x0: int, y0: int, x1: int, y1: int, c: Color, width: int = 1
    ) -> None:
        """Bresenham, thickened with a square pen."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        half = width // 2
        while True:
            if width == 1:
                self.set(x0, y0, c)
            else:
                self.rect(x0 - half, y0 - half, x0 - half + width, y0 - half + width, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def polyline(self, points: Sequence[tuple[int, int]], c: Color, width: int = 1) -> None:
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            self.line(x0, y0, x1, y1, c, width)

    def text(self, x: int, y: int, s: str, c: Color = BLACK, scale: int = 2) -> int:
        """Draw ``s`` (upper-cased) from its top left corner; the x after it."""
        for ch in s.upper():
            cols = FONT.get(ch, FONT["?"])
            for cx, col in enumerate(cols):
                for cy in range(8):
                    if col >> cy & 1:
                        self.rect(x + cx * scale, y + cy * scale, x + (cx + 1) * scale,
                                  y + (cy + 1) * scale, c)  # fmt: skip
            x += 6 * scale
        return x

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.px[y * self.w * 3 : (y + 1) * self.w * 3]) for y in range(self.h)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))  # fmt: skip

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))  # fmt: skip


def read_log(path: str | Path) -> list[dict[str, Any]]:
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if line:
                out.append(json.loads(line))
    return out


def plot_log(
    log: str | Path,
    out: str | Path,
    *,
    band: tuple[float, float] = (16.0, 26.0),
    title: str = "greenhouse",
    readings: Iterable[tuple[float, float]] = (),
    size: tuple[int, int] = (1200, 640),
) -> dict[str, Any]:
    """Draw the run in ``log`` to ``out`` (PNG); ``readings``: (wall ts, °C) the daemon
    measured, drawn as dots. Returns what was drawn (counts, extremes)."""
    records = read_log(log)
    samples = [r for r in records if r.get("sample")]
    if len(samples) < 2:
        raise ValueError(f"{log}: fewer than two samples to draw")
    ready = next((r for r in records if r.get("event") == "ready"), None)
    start_h = 0.0
    if ready is not None:
        hh, mm = str(ready.get("start", "00:00")).split(":")[:2]
        start_h = int(hh) + int(mm) / 60.0
    t0 = samples[0]["t"]
    t1 = samples[-1]["t"]
    # wall clock -> simulated time, from the samples (for the daemon's readings)
    w0, w1 = samples[0]["ts"], samples[-1]["ts"]
    rate = (t1 - t0) / (w1 - w0) if w1 > w0 else 0.0

    W, H = size
    left, right, top, bottom = 80, 30, 60, 170
    pw, ph = W - left - right, H - top - bottom
    temps = [s["air_c"] for s in samples] + [s["outside_c"] for s in samples]
    lo = min(*temps, band[0]) - 2.0
    hi = max(*temps, band[1]) + 2.0

    def X(t: float) -> int:
        return int(left + round((t - t0) / (t1 - t0) * pw))

    def Y(v: float) -> int:
        return int(top + round((hi - v) / (hi - lo) * ph))

    cv = Canvas(W, H)
    cv.text(left, 18, title, BLACK, 2)
    # faults behind everything
    opened: dict[tuple[str, str], float] = {}
    faults = []
    for r in records:
        if r.get("event") == "fault":
            key = (r["target"], r["kind"])
            if r["state"] == "start":
                opened[key] = r["t"]
            elif key in opened:
                faults.append((opened.pop(key), r["t"], key))
    for key, start in opened.items():
        faults.append((start, t1, key))
    for a, b, (target, kind) in faults:
        cv.rect(X(a), top, X(min(b, t1)), top + ph, FAULT)
        cv.text(X(a) + 3, top + 4, f"{target} {kind}", (170, 60, 60), 1)
    cv.rect(left, Y(band[1]), left + pw, Y(band[0]), BAND)
    # grid and axes
    step = 2 if hi - lo <= 24 else 5
    v = int(lo // step + 1) * step
    while v < hi:
        cv.line(left, Y(v), left + pw, Y(v), GRID)
        cv.text(left - 46, Y(v) - 5, f"{v:>3}°", BLACK, 1)
        v += step
    hours = (t1 - t0) / 3600.0
    every = 1 if hours <= 12 else 2 if hours <= 30 else 6
    h = int(start_h) + 1
    while (h - start_h) * 3600 + t0 <= t1:
        t = (h - start_h) * 3600.0
        if t >= t0 and h % every == 0:
            cv.line(X(t), top, X(t), top + ph, GRID)
            cv.text(X(t) - 15, top + ph + 6, f"{h % 24:02d}:00", BLACK, 1)
        h += 1
    cv.line(left, top, left, top + ph, BLACK)
    cv.line(left, top + ph, left + pw, top + ph, BLACK)
    # curves
    cv.polyline([(X(s["t"]), Y(s["outside_c"])) for s in samples], OUTSIDE, 2)
    cv.polyline([(X(s["t"]), Y(s["air_c"])) for s in samples], AIR, 3)
    dots = 0
    if rate:
        for ts, c in readings:
            t = t0 + (ts - w0) * rate
            if t0 <= t <= t1:
                cv.rect(X(t) - 1, Y(c) - 1, X(t) + 2, Y(c) + 2, READ)
                dots += 1
    # actuator strips
    strips = [("fan", FAN), ("vent", VENT), ("heater", HEATER)]
    y = top + ph + 24
    for name, color in strips:
        cv.text(8, y + 2, name, BLACK, 1)
        cv.rect(left, y, left + pw, y + 16, (245, 245, 245))
        for s0, s1 in itertools.pairwise(samples):
            level = float(s0.get("levels", {}).get(name, 0.0))
            if level > 0:
                top_y = y + 16 - max(2, round(16 * level))
                cv.rect(X(s0["t"]), top_y, X(s1["t"]) + 1, y + 16, color)
        y += 22
    sun_y = y
    cv.text(8, sun_y + 2, "sun", BLACK, 1)
    peak = max((s["sun_w_m2"] for s in samples), default=0.0) or 1.0
    cv.polyline([(X(s["t"]), sun_y + 16 - round(14 * s["sun_w_m2"] / peak)) for s in samples],
                SUN, 2)  # fmt: skip
    # legend
    x = left
    ly = H - 22
    for label, color in (("air (simulator)", AIR), ("air (daemon's BME280 readings)", READ),
                         ("outside", OUTSIDE), (f"band {band[0]:g}-{band[1]:g}°", BAND),
                         ("fault", FAULT)):  # fmt: skip
        cv.rect(x, ly, x + 18, ly + 12, color)
        x = cv.text(x + 24, ly + 2, label, BLACK, 1) + 18
    Path(out).write_bytes(cv.png())
    air = [s["air_c"] for s in samples]
    return {"samples": len(samples), "readings": dots, "air_min": round(min(air), 2),
            "air_max": round(max(air), 2), "faults": len(faults)}  # fmt: skip
