"""The ``mechaway`` command. User mistakes get one clear line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechaway import __version__
from mechaway.errors import ConfigError, FlowError, MechawayError, StoreError

if TYPE_CHECKING:
    from mechaway.client import Client


class CliError(MechawayError):
    """A user-facing failure: printed as one line, exit status 1."""


def _settings(args: argparse.Namespace) -> Any:
    from mechaway.settings import load_settings

    return load_settings(args.config)


# -- talking to the daemon (through mechaway.client) ------------------------------------------
@contextlib.contextmanager
def _talking(api: Client) -> Iterator[None]:
    """The SDK's typed errors as the CLI says them: one line, or the located issues."""
    from mechaway.client import ApiError, BadURL, Unauthorized, ValidationFailed

    try:
        yield
    except Unauthorized as err:
        raise CliError(
            "the daemon refused the token (set --token or MECHAWAY_API_TOKEN)"
            if api.token
            else "the daemon needs a token and none was found (--token, api.token,"
            " or the api-token file in the daemon's data directory: --data-dir)"
        ) from err
    except ValidationFailed as err:
        raise FlowError(err.issues) from err
    except BadURL as err:
        raise CliError(f"--url: {err}") from err
    except ApiError as err:
        raise CliError(err.message) from err


def _api(args: argparse.Namespace) -> Client:
    """A client of the daemon this machine's config names: its URL from ``api.listen``,
    its token from ``--token``, ``api.token`` (or ``MECHAWAY_API_TOKEN``), else the token
    the daemon generated into its data directory (``mechaway.client.discover``)."""
    from mechaway.client import Client
    from mechaway.settings import TOKEN_RE

    url, token = args.url, args.token
    if token and not TOKEN_RE.fullmatch(token):
        raise CliError("--token: must be printable ASCII without blanks")
    if url is not None and "://" not in url:
        raise CliError(f"--url: {url!r} needs a scheme: http://{url} (or https://)")
    return Client.discover(args.config, url=url, token=token, data_dir=args.data_dir or None)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


# -- commands ---------------------------------------------------------------------------------
def cmd_start(args: argparse.Namespace) -> int:
    import msgspec

    from mechaway.daemon import Daemon, run, setup_logging

    settings = _settings(args)
    for flag, value in (("--flows", args.flows), ("--data-dir", args.data_dir)):
        if value is not None and not value:
            raise CliError(f"{flag}: must not be empty")
        if value is not None and Path(value).exists() and not Path(value).is_dir():
            raise CliError(f"{flag}: {value} is not a directory")
    if args.data_dir:
        settings = msgspec.structs.replace(
            settings, device=msgspec.structs.replace(settings.device, data_dir=args.data_dir)
        )
    if args.listen is not None:
        from mechaway.settings import exposure_problem, parse_listen

        host, _ = parse_listen(args.listen, "--listen")
        problem = exposure_problem(settings.api, host)
        if problem is not None:
            raise ConfigError(f"--listen: {problem[1]}")
        settings = msgspec.structs.replace(
            settings, api=msgspec.structs.replace(settings.api, listen=args.listen)
        )
    setup_logging(settings.log.level)
    flows_dir = Path(args.flows) if args.flows else None

    async def main() -> int:
        return await Daemon(settings, flows_dir=flows_dir).serve()

    return run(main)


def _read_flow(name: str) -> Any:
    from mechaway.flow.parse import read_file

    return read_file(Path(name))


def cmd_validate(args: argparse.Namespace) -> int:
    from mechaway.flow.validate import validate

    _load_plugins()
    bad = 0
    for name in args.files:
        try:
            valid = validate(_read_flow(name), source=name)
        except FlowError as err:
            print(err.render(), file=sys.stderr)
            bad += 1
        else:
            for warning in valid.warnings:
                print(f"{name}: warning: {warning}", file=sys.stderr)
            said = f" ({len(valid.warnings)} warning(s))" if valid.warnings else ""
            print(f"{name}: ok{said}")
    return 1 if bad else 0


def _load_plugins() -> None:
    """Entry-point node types, so validation knows third-party types too."""
    from mechaway.nodes import plugins

    plugins.load_entry_points()


def cmd_schema(args: argparse.Namespace) -> int:
    from mechaway.nodes.registry import node_types, params_schema

    _load_plugins()
    if args.type:
        try:
            _print(params_schema(args.type))
        except KeyError:
            raise CliError(
                f"unknown node type {args.type!r} (known: {', '.join(node_types())})"
            ) from None
    else:
        _print({name: params_schema(name) for name in node_types()})
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    api = _api(args)
    with _talking(api):
        status = api.status()
    if args.json:
        _print(status)
    else:
        print(render_status(status, now=time.time()))
    return 0


def _age(ts: Any, now: float) -> str:
    """Epoch seconds as an age: ``12s ago``, ``3m ago``, ``2h ago``, ``4d ago``."""
    if not isinstance(ts, (int, float)) or not ts:
        return "-"
    d = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= size:
            return f"{int(d // size)}{unit} ago"
    return f"{int(d)}s ago"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h}h" if d else (f"{h}h {m}m" if h else (f"{m}m {s}s" if m else f"{s}s"))


def render_status(st: dict[str, Any], *, now: float) -> str:
    """The daemon's status for a person: problems first, then flows with their nodes,
    connections and the store, times as ages (``--json`` gives all of it to scripts)."""
    lines = [
        f"mechaway {st.get('version', '?')} on {st.get('device', '?')},"
        f" up {_duration(st.get('uptime_s'))}"
    ]
    api = st.get("api") or {}
    if api.get("enabled"):
        extra = " + read-only token" if api.get("read_token") else ""
        scheme = "https" if api.get("tls") else "http"
        lines.append(f"api: {scheme} on {api.get('listen')}, auth: {api.get('auth')}{extra}")
    problems = st.get("problems") or []
    lines.append("problems: none" if not problems else "problems:")
    lines += [f"  ! {p}" for p in problems]
    flows = st.get("flows") or {}
    lines.append(f"flows: {len(flows)}")
    for fid, flow in flows.items():
        name = f"  ({flow['name']})" if flow.get("name") else ""
        lines.append(
            f"  {fid}  rev {flow.get('rev')}  deployed {_age(flow.get('deployed_at'), now)}{name}"
        )
        nodes = flow.get("nodes") or {}
        width = max((len(n) for n in nodes), default=4)
        for nid, node in nodes.items():
            counts = (
                f"in {node.get('in', 0):>8}  out {node.get('out', 0):>8}"
                f"  errors {node.get('errors', 0):>5}"
            )
            if node.get("dropped"):
                counts += f"  dropped {node['dropped']}"
            if "queue" in node:
                counts += f"  queue {node['queue']}/{node.get('queue_size')}"
            lines.append(f"    {nid:<{width}}  {node.get('type', '?'):<18} {counts}")
            if node.get("last_error"):
                when = _age(node.get("last_error_ts"), now)
                text = str(node["last_error"])[:120]
                lines.append(f"    {'':<{width}}  last error {when}: {text}")
    for name, err in (st.get("flow_file_errors") or {}).items():
        lines.append(f"  file {name}: {str(err).splitlines()[0][:160] if err else ''}")
    conns = st.get("connections") or {}
    if conns:
        lines.append(f"connections: {len(conns)}")
        for name, c in conns.items():
            down = c.get("last_error") and c.get("state") != "connected"
            why = f" ({c['last_error']})" if down else ""
            lines.append(
                f"  {name}  {c.get('state')} since {_age(c.get('since'), now)}"
                f"  reconnects {c.get('reconnects', 0)}{why}"
            )
    return "\n".join(lines)


def cmd_flows(args: argparse.Namespace) -> int:
    api = _api(args)
    action = args.action
    with _talking(api):
        if action == "list":
            flows = api.flows()
            if not flows:
                print("no flows")
            for f in flows:
                state = "running" if f.running else ("disabled" if f.disabled else "stopped")
                print(f"{f.id:<24} rev {f.rev:<4} {state:<8} {f.source:<8} {f.name}")
        elif action == "show":
            _print(api.flow(args.id).raw)
        elif action == "deploy":
            doc = _read_flow(args.file)
            fid = doc.get("id") if isinstance(doc, dict) else None
            if not isinstance(fid, str) or not fid:
                raise FlowError([_issue("id", "missing flow id")], args.file)
            try:  # YAML holds more than JSON: dates, NaN
                json.dumps(doc, allow_nan=False)
            except (TypeError, ValueError) as err:
                raise FlowError([_issue("", f"not JSON-compatible: {err}")], args.file) from err
            result = api.deploy(doc)
            print(f"{fid}: deployed rev {result.rev}"
                  f"{'' if result.new_revision else ' (unchanged)'}")  # fmt: skip
        elif action == "delete":
            api.delete(args.id)
            print(f"{args.id}: deleted")
        elif action == "history":
            for r in api.history(args.id):
                mark = "*" if r.active else " "
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
                print(f"{mark} rev {r.rev:<4} {r.source:<8} {when}")
        elif action == "rollback":
            result = api.rollback(args.id, args.rev)
            print(f"{args.id}: rolled back to rev {args.rev} (now rev {result.rev})")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    api = _api(args)
    with _talking(api):
        reports = api.plugins()
    if not reports:
        print("no plugins")
    for r in reports:
        state = f"skipped: {r['error']}" if r["error"] else ", ".join(r["types"]) or "(no types)"
        print(f"{r['name']:<20} {state}   [{r['source']}]")
    return 0


def cmd_import_nodered(args: argparse.Namespace) -> int:
    from mechaway.flow.nodered import write_import

    return write_import(Path(args.file), Path(args.out) if args.out else None)


def _issue(where: str, message: str) -> Any:
    from mechaway.errors import Issue

    return Issue(where, message)


DESCRIPTION = """mechaway: an edge/IoT runtime for fast telemetry microflows.

Run the daemon with `mechaway start`; the other commands talk to a running daemon
(found through the config's api.listen, its token through api.token or the api-token
file the daemon keeps in its data directory) or work offline (validate, schema)."""

#: options every command takes, before or after its name; SUPPRESS keeps a value given
#: before the command from being reset by the subcommand's default
_COMMON = (
    (("--config", "-c"), "config file (default: $MECHAWAY_CONFIG, else"
     " /etc/mechaway/mechaway.toml if it exists, else built-in defaults)"),
    (("--url",), "admin API URL, e.g. http://127.0.0.1:7700 (default: from api.listen)"),
    (("--token",), "admin API token (default: api.token, MECHAWAY_API_TOKEN, or the"
     " daemon's api-token file)"),
    (("--data-dir",), "the daemon's data directory (default: device.data_dir)"),
)  # fmt: skip


def _common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    group = parser.add_argument_group("common options")
    for flags, text in _COMMON:
        group.add_argument(*flags, help=text, default=None if top else argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="mechaway", description=DESCRIPTION, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"mechaway {__version__}")
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text, description=text)
        _common(c)
        return c

    s = command("start", "run the daemon in the foreground (Ctrl-C or SIGTERM stops it)")
    s.add_argument("--flows", help="directory of flow files to watch (overrides flows.dir)")
    s.add_argument("--listen", help="admin API host:port (overrides api.listen)")
    s.set_defaults(fn=cmd_start)

    v = command("validate", "check flow files offline; exit 1 with located errors")
    v.add_argument("files", nargs="+")
    v.set_defaults(fn=cmd_validate)

    sc = command("schema", "JSON Schema of node params (all types, or one)")
    sc.add_argument("type", nargs="?")
    sc.set_defaults(fn=cmd_schema)

    st = command("status", "what the running daemon does: problems, flows, nodes, connections")
    st.add_argument("--json", action="store_true", help="the whole status as JSON, for scripts")
    st.set_defaults(fn=cmd_status)

    nr = command("import-nodered", "Node-RED flows.json -> flow files + a report")
    nr.add_argument("file")
    nr.add_argument("--out", help="write one flow file per tab here (default: print them)")
    nr.set_defaults(fn=cmd_import_nodered)

    pl = command("plugins", "node-type plugins the running daemon loaded")
    pl.add_argument("action", choices=["list"])
    pl.set_defaults(fn=cmd_plugins)

    f = command("flows", "manage flows on the running daemon")
    fs = f.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        a = fs.add_parser(name, help=text, description=text)
        _common(a)
        return a

    action("list", "every flow: revision, state, where it came from")
    action("show", "one flow's document and revision").add_argument("id")
    action("delete", "stop a flow and delete it").add_argument("id")
    action("history", "every revision of a flow, with its source").add_argument("id")
    action("deploy", "deploy a flow file through the API").add_argument("file")
    rb = action("rollback", "deploy an earlier revision again (as a new revision)")
    rb.add_argument("id")
    rb.add_argument("rev", type=int)
    f.set_defaults(fn=cmd_flows)

    from mechaway.hub.cli import register as register_hub

    register_hub(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flags, _ in _COMMON:  # given nowhere: None, as the top-level parser's default
        name = flags[0].lstrip("-").replace("-", "_")
        if not hasattr(args, name):
            setattr(args, name, None)
    try:
        code: int = args.fn(args)
    except FlowError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except (CliError, ConfigError, StoreError) as err:
        print(f"mechaway: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the environment: permissions, missing directories, full disk
        where = f" ({err.filename})" if err.filename else ""
        print(f"mechaway: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
