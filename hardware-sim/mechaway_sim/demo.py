"""The greenhouse closed loop on one machine: the simulator and the daemon as two
processes, wired by configs/greenhouse/, no board and no broker.

``Loop`` starts ``mechaway-sim run greenhouse`` (free ports, a private run directory),
rewrites the example config's addresses to that run (the socket, the pty links, the PLC's
port, a data directory, an API port), starts ``mechaway start`` on it, and talks to the
daemon's API. ``demo()`` is ``mechaway-sim demo`` (and hardware-sim/run-greenhouse.sh):
it prints the loop as it runs (the simulated clock, the air, the fan, the heater, the
problems), then the series, and writes a plot of the day (PNG). The tests use ``Loop``
too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: the example config's run directory, replaced by the run's own
TEMPLATE_DIR = "/tmp/mechaway-sim"
#: the band the example flows keep the air in (configs/greenhouse/flows/climate.json)
BAND = (16.0, 26.0)


def config_dir() -> Path:
    """configs/greenhouse of the repository this package lives in (or the current
    directory's)."""
    here = Path(__file__).resolve().parents[2] / "configs" / "greenhouse"
    if here.is_dir():
        return here
    cwd = Path.cwd() / "configs" / "greenhouse"
    if cwd.is_dir():
        return cwd
    raise FileNotFoundError("configs/greenhouse not found: run from the mechaway repository")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def daemon_config(template: str, run_dir: Path, ready: dict[str, Any], api_port: int,
                  data_dir: Path) -> str:  # fmt: skip
    """The example config with this run's addresses."""
    text = template.replace(f'"{TEMPLATE_DIR}/data"', json.dumps(str(data_dir)))
    text = text.replace(TEMPLATE_DIR, str(run_dir))
    plc = ready["modbus"]["plc"]["at"].rsplit(":", 1)[1]
    text, n = re.subn(r"(?m)^port = 5020$", f"port = {plc}", text)
    if n != 1:
        raise ValueError("the template has no [modbus.plc] port = 5020 line")
    text = re.sub(r'(?m)^listen = ".*"$', f'listen = "127.0.0.1:{api_port}"', text)
    return text


class Loop:
    """The simulator and the daemon under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, *, speed: float, duration: str | None = None,
                 sim_args: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.root = root
        self.run_dir = root / "run"
        self.data_dir = root / "data"
        self.sim_log = root / "sim-log.jsonl"
        self.speed = speed
        self.duration = duration
        self.sim_args = sim_args
        self.sim: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self.api_port = 0
        self.config = root / "mechaway.toml"

    # -- processes ------------------------------------------------------------------------
    def start_sim(self, timeout: float = 30.0) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "mechaway_sim", "run", "greenhouse", "--speed",
                str(self.speed), "--dir", str(self.run_dir), "--free-ports", "--log",
                str(self.sim_log), "--quiet", *self.sim_args]  # fmt: skip
        if self.duration:
            args += ["--duration", self.duration]
        with (self.root / "sim.out").open("ab") as out:
            self.sim = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        ready_file = self.run_dir / "ready.json"
        deadline = time.monotonic() + timeout
        while not ready_file.exists():
            if self.sim.poll() is not None:
                raise RuntimeError(f"the simulator exited: {self.tail('sim.out')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the simulator is not ready: {self.tail('sim.out')}")
            time.sleep(0.05)
        self.ready = json.loads(ready_file.read_text())
        return self.ready

    def start_daemon(self, timeout: float = 30.0) -> None:
        cfg = config_dir()
        self.api_port = free_port()
        template = (cfg / "mechaway.toml").read_text(encoding="utf-8")
        self.config.write_text(daemon_config(template, self.run_dir, self.ready, self.api_port,
                                             self.data_dir))  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MECHAWAY_")}
        with (self.root / "daemon.log").open("ab") as out:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "mechaway", "--config", str(self.config), "start",
                 "--flows", str(cfg / "flows"), "--data-dir", str(self.data_dir)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.health() != 200:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited: {self.tail('daemon.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the daemon does not answer: {self.tail('daemon.log')}")
            time.sleep(0.1)

    def sim_alive(self) -> bool:
        return self.sim is not None and self.sim.poll() is None

    def wait_sim(self, timeout: float) -> int:
        assert self.sim is not None
        return self.sim.wait(timeout)

    def stop(self) -> None:
        """Both processes down (SIGTERM, then SIGKILL); idempotent."""
        for proc in (self.daemon, self.sim):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.daemon, self.sim):
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def tail(self, name: str, n: int = 30) -> str:
        try:
            lines = (self.root / name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    # -- the daemon's API -----------------------------------------------------------------
    def token(self) -> str | None:
        try:
            return (self.data_dir / "api-token").read_text().strip() or None
        except OSError:
            return None

    def api(self, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}/api/v1{path}")
        token = self.token()
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v1/health",
                                        timeout=2) as resp:  # fmt: skip
                return int(resp.status)
        except (OSError, ValueError):
            return 0

    def status(self) -> dict[str, Any]:
        code, body = self.api("/status")
        if code != 200:
            raise RuntimeError(f"GET /status: {code} {body}")
        result: dict[str, Any] = body
        return result

    def series(self, name: str) -> list[tuple[float, Any]]:
        """Every sample of a series: (wall ts, value); [] if it has none yet."""
        out: list[tuple[float, Any]] = []
        start = ""
        while True:
            code, body = self.api(f"/series/{name}?limit=10000{start}")
            if code == 404:
                return out
            if code != 200:
                raise RuntimeError(f"GET /series/{name}: {code} {body}")
            points = body["points"]
            out.extend((float(p[0]), p[1]) for p in points)
            if not body.get("truncated") or not points:
                return out
            start = f"&from={points[-1][0] + 1e-6}"


def _clock(ready: dict[str, Any], wall: float) -> str:
    start = str(ready.get("start", "00:00"))
    hh, mm = (int(x) for x in start.split(":")[:2])
    t = (wall - float(ready["wall_start"])) * float(ready["speed"]) + hh * 3600 + mm * 60
    return f"{int(t // 3600) % 24:02d}:{int(t % 3600 // 60):02d}"


def demo(speed: float = 720.0, out: str = "greenhouse-demo", keep: bool = False) -> int:
    """``mechaway-sim demo``: see the module docstring. The exit status: 0 when the air
    stayed in the band (with a margin for the controller's sampling) all day."""
    from mechaway_sim.plot import plot_log

    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="mechaway-sim-demo-"))
    loop = Loop(root, speed=speed)
    print(f"greenhouse demo: one simulated day at {speed:g}x "
          f"(about {86400 / speed / 60:.1f} minutes)")  # fmt: skip
    try:
        ready = loop.start_sim()
        print(f"simulator ready: socket {ready['socket']}, PLC on {ready['modbus']['plc']['at']}, "
              f"meter on {ready['modbus']['meter']['at']}")  # fmt: skip
        loop.start_daemon()
        print(f"daemon up: http://127.0.0.1:{loop.api_port} (token in {loop.data_dir}/api-token)")
        print(f"{'clock':>5}  {'air °C':>7}  {'fan':>4}  {'heater':>6}  {'power W':>8}  problems")
        last = 0.0
        # the status as the day ends, before the simulator (and so every device) goes away
        end = float(ready["wall_start"]) + 86400 / speed - 1.0
        st: dict[str, Any] = {}
        while loop.sim_alive():
            time.sleep(0.2)
            if not st and time.time() >= end:
                st = loop.status()
            if time.monotonic() - last < max(1.0, 3600 / speed):
                continue
            last = time.monotonic()
            _show(loop, ready)
        if loop.wait_sim(10) != 0:
            print(f"the simulator failed:\n{loop.tail('sim.out')}")
            return 1
        air = loop.series("air_c")
        power = loop.series("power_l1_w")
        fan = loop.series("fan")
        st = st or loop.status()
        print("\nseries (from the daemon's store, GET /api/v1/series/NAME):")
        for name in ("air_c", "air_rh", "fan", "heater", "power_w", "power_l1_w", "energy_kwh",
                     "light_lux", "soil_pct", "leaf_c", "bench_c", "soil_v", "door", "gps"):
            pts = loop.series(name)
            nums = [v for _, v in pts if isinstance(v, int | float)]
            if nums:
                print(f"  {name:<11} {len(pts):>5} samples  min {min(nums):9.2f}  "
                      f"max {max(nums):9.2f}  last {nums[-1]:9.2f}")  # fmt: skip
            else:
                print(f"  {name:<11} {len(pts):>5} samples")
        conns = sorted(st.get("connections", {}).items())
        print("connections: " + ", ".join(f"{k} {v.get('state')}" for k, v in conns))
        print("problems as the day ended: " + ("; ".join(st.get("problems") or []) or "none"))
        png = out_dir / "greenhouse.png"
        readings = [(ts, v) for ts, v in air if isinstance(v, int | float)]
        info = plot_log(loop.sim_log, png, band=BAND, readings=readings,
                        title="greenhouse: air temperature over the simulated day")
        shutil.copy(loop.sim_log, out_dir / "sim-log.jsonl")
        shutil.copy(root / "daemon.log", out_dir / "daemon.log")
        toggles = sum(1 for (_, a), (_, b) in itertools.pairwise(fan) if a != b)
        on = [v for _, v in power if v > 150]
        print(f"\nthe air stayed between {info['air_min']} and {info['air_max']} °C "
              f"(band {BAND[0]:g}-{BAND[1]:g}); the fan switched {toggles} times; "
              f"L1 drew {sum(on) / max(1, len(on)):.0f} W with the fan on")  # fmt: skip
        print(f"plot: {png}\nlogs: {out_dir}/sim-log.jsonl, {out_dir}/daemon.log")
        ok = BAND[0] - 2 <= info["air_min"] and info["air_max"] <= BAND[1] + 3
        return 0 if ok else 1
    finally:
        loop.stop()
        if keep:
            print(f"kept: {root}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)


def _show(loop: Loop, ready: dict[str, Any]) -> None:
    try:
        st = loop.status()
    except (OSError, RuntimeError):
        return
    last = {}
    for name in ("air_c", "fan", "heater", "power_w"):
        code, body = loop.api(f"/series/{name}?from={time.time() - 1.5:.3f}")
        pts = body.get("points") if code == 200 else None
        last[name] = pts[-1][1] if pts else None

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    problems = "; ".join(p[:70] for p in st.get("problems") or []) or "none"
    print(f"{_clock(ready, time.time()):>5}  {fmt(last['air_c'], '7.2f')}  "
          f"{'on' if last['fan'] else 'off':>4}  {'on' if last['heater'] else 'off':>6}  "
          f"{fmt(last['power_w'], '8.0f')}  {problems[:110]}", flush=True)  # fmt: skip
