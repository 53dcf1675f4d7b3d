"""``mechaway-sim``: run a scenario, list the built-in ones, check a file, plot a log, or
run the greenhouse demo (the simulator and the daemon together)."""

from __future__ import annotations

import argparse
import sys

from mechaway_sim import scenario as scn


def cmd_list(args: argparse.Namespace) -> int:
    for name in scn.builtin():
        sc = scn.load(name)
        print(f"{name:<14} {sc.scenario.description}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            sc = scn.load(path)
        except scn.ScenarioError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        devices = len(sc.device_kinds())
        print(f"{path}: ok ({devices} devices, {len(sc.faults)} faults)")
    return status


def cmd_run(args: argparse.Namespace) -> int:
    from mechaway_sim.runner import Simulator, main_loop, run_scenario

    try:
        sc = scn.load(args.scenario)
        duration = scn.duration_s(args.duration, "--duration") if args.duration else None
    except (scn.ScenarioError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sim = Simulator(
        sc, speed=args.speed, run_dir=args.dir, socket=args.socket, log=args.log,
        record_every=args.record_every, free_ports=args.free_ports, mqtt=args.mqtt,
        console=None if args.quiet else sys.stdout,
    )  # fmt: skip
    result: int = main_loop(run_scenario(sim, duration))
    return result


def cmd_plot(args: argparse.Namespace) -> int:
    from mechaway_sim.plot import plot_log

    info = plot_log(args.log, args.out, band=(args.low, args.high), title=args.title)
    print(f"{args.out}: {info}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mechaway_sim.demo import demo

    return demo(speed=args.speed, out=args.out, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mechaway-sim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the built-in scenarios").set_defaults(fn=cmd_list)
    c = sub.add_parser("check", help="validate scenario files")
    c.add_argument("files", nargs="+")
    c.set_defaults(fn=cmd_check)
    r = sub.add_parser("run", help="run a scenario (a built-in name or a file)")
    r.add_argument("scenario")
    r.add_argument("--speed", type=float, help="simulated seconds per real second "
                   "(default: the scenario's)")  # fmt: skip
    r.add_argument("--duration", help='simulated time to run, e.g. "6h" (0: until stopped; '
                   "default: the scenario's)")  # fmt: skip
    r.add_argument("--dir", help="run directory: the socket, the serial and RTU links, "
                   "ready.json (default: $XDG_RUNTIME_DIR/mechaway-sim, else "
                   "/tmp/mechaway-sim-UID)")  # fmt: skip
    r.add_argument("--socket", help="the socket's path (default: DIR/sim.sock)")
    r.add_argument("--log", help="write the model and the events here (JSON lines)")
    r.add_argument("--record-every", type=float, default=60.0,
                   help="simulated seconds between two samples in the log")  # fmt: skip
    r.add_argument("--free-ports", action="store_true",
                   help="Modbus TCP servers on free ports (written to DIR/ready.json)")
    r.add_argument("--mqtt", help="HOST:PORT of a broker for the MQTT sensors")
    r.add_argument("--quiet", action="store_true", help="print nothing but errors")
    r.set_defaults(fn=cmd_run)
    pl = sub.add_parser("plot", help="draw a run's log: air temperature against the band")
    pl.add_argument("log")
    pl.add_argument("--out", default="greenhouse.png")
    pl.add_argument("--low", type=float, default=16.0, help="the band's low edge, °C")
    pl.add_argument("--high", type=float, default=26.0, help="the band's high edge, °C")
    pl.add_argument("--title", default="greenhouse: air temperature over the simulated day")
    pl.set_defaults(fn=cmd_plot)
    d = sub.add_parser("demo", help="the greenhouse closed loop: simulator + daemon, status, "
                       "series, a plot")  # fmt: skip
    d.add_argument("--speed", type=float, default=720.0,
                   help="720: the simulated day in 2 minutes")  # fmt: skip
    d.add_argument("--out", default="greenhouse-demo", help="directory for the plot and logs")
    d.add_argument("--keep", action="store_true", help="keep the daemon's data directory")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.fn(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
