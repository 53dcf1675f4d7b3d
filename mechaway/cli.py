"""The ``mechaway`` command. User mistakes get one clear line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mechaway import __version__
from mechaway.errors import ConfigError, FlowError, MechawayError, StoreError


class CliError(MechawayError):
    """A user-facing failure: printed as one line, exit status 1."""


def _settings(args: argparse.Namespace) -> Any:
    from mechaway.settings import load_settings

    return load_settings(args.config)


# -- talking to the daemon --------------------------------------------------------------------
class Api:
    """A tiny blocking client of the admin API (stdlib only: the CLI stays light)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        try:
            req = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method)
        except ValueError as err:  # "notaurl", "http://[::1"
            raise CliError(f"--url: {self.url!r} is not an http:// URL ({err})") from err
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            try:
                payload = json.loads(err.read() or b"{}")
            except ValueError:
                payload = {}
            if not isinstance(payload, dict):
                payload = {}
            if err.code == 401:
                raise CliError(
                    "the daemon refused the token (set --token or MECHAWAY_API_TOKEN)"
                ) from err
            if err.code == 400 and isinstance(payload.get("issues"), list):
                from mechaway.errors import Issue

                issues = [Issue(i["where"], i["message"]) for i in payload["issues"]]
                raise FlowError(issues) from err
            raise CliError(payload.get("error") or f"HTTP {err.code}") from err
        except urllib.error.URLError as err:
            raise CliError(
                f"daemon not reachable at {self.url} ({err.reason}); is it running?"
            ) from err
        except (TimeoutError, ConnectionError) as err:
            raise CliError(f"daemon at {self.url} did not answer ({err})") from err
        except (http.client.HTTPException, ValueError) as err:  # not HTTP; a bad port in --url
            why = " ".join(str(err).split())  # one line, whatever the peer sent
            raise CliError(f"{self.url} is not a mechaway daemon ({why})") from err
        try:
            return json.loads(raw or b"null")
        except ValueError as err:
            raise CliError(f"{self.url} is not a mechaway daemon (its answer is not JSON)") from err


def _quote(flow_id: str) -> str:
    """A flow id as one URL path segment (``a b``, ``a/b``: the daemon answers 404)."""
    return urllib.parse.quote(flow_id, safe="")


def _api(args: argparse.Namespace) -> Api:
    from mechaway.settings import TOKEN_RE

    url, token = args.url, args.token
    if token and not TOKEN_RE.fullmatch(token):
        raise CliError("--token: must be printable ASCII without blanks")
    if url is None or token is None:
        settings = _settings(args)
        if url is None:
            from mechaway.settings import parse_listen

            host, port = parse_listen(settings.api.listen)
            host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        token = token if token is not None else settings.api.token
    return Api(url, token)


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
        from mechaway.settings import is_loopback, parse_listen

        host, _ = parse_listen(args.listen, "--listen")
        if not settings.api.token and not is_loopback(host):
            raise ConfigError(f"--listen: refusing to listen on {host} without api.token")
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
            validate(_read_flow(name), source=name)
        except FlowError as err:
            print(err.render(), file=sys.stderr)
            bad += 1
        else:
            print(f"{name}: ok")
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
    _print(_api(args).call("GET", "/status"))
    return 0


def cmd_flows(args: argparse.Namespace) -> int:
    api = _api(args)
    action = args.action
    if action == "list":
        flows = api.call("GET", "/flows")
        if not flows:
            print("no flows")
        for f in flows:
            state = "running" if f["running"] else ("disabled" if f["disabled"] else "stopped")
            print(f"{f['id']:<24} rev {f['rev']:<4} {state:<8} {f['source']:<8} {f['name']}")
    elif action == "show":
        _print(api.call("GET", f"/flows/{_quote(args.id)}"))
    elif action == "deploy":
        doc = _read_flow(args.file)
        fid = doc.get("id") if isinstance(doc, dict) else None
        if not isinstance(fid, str) or not fid:
            raise FlowError([_issue("id", "missing flow id")], args.file)
        try:  # YAML holds more than JSON: dates, NaN
            json.dumps(doc, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise FlowError([_issue("", f"not JSON-compatible: {err}")], args.file) from err
        result = api.call("PUT", f"/flows/{_quote(fid)}", doc)
        print(
            f"{fid}: deployed rev {result['rev']}{'' if result['new_revision'] else ' (unchanged)'}"
        )
    elif action == "delete":
        api.call("DELETE", f"/flows/{_quote(args.id)}")
        print(f"{args.id}: deleted")
    elif action == "history":
        for r in api.call("GET", f"/flows/{_quote(args.id)}/revisions"):
            mark = "*" if r["active"] else " "
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
            print(f"{mark} rev {r['rev']:<4} {r['source']:<8} {when}")
    elif action == "rollback":
        result = api.call("POST", f"/flows/{_quote(args.id)}/rollback", {"rev": args.rev})
        print(f"{args.id}: rolled back to rev {args.rev} (now rev {result['rev']})")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    reports = _api(args).call("GET", "/plugins")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mechaway", description=__doc__)
    p.add_argument("--version", action="version", version=f"mechaway {__version__}")
    p.add_argument("--config", "-c", help="config file (default: $MECHAWAY_CONFIG or built-in)")
    p.add_argument("--url", help="admin API URL (default: from the config's api.listen)")
    p.add_argument("--token", help="admin API token (default: api.token / MECHAWAY_API_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("start", help="run the daemon in the foreground")
    s.add_argument("--flows", help="directory of flow files to watch (overrides flows.dir)")
    s.add_argument("--data-dir", help="where the SQLite file lives (overrides device.data_dir)")
    s.add_argument("--listen", help="admin API host:port (overrides api.listen)")
    s.set_defaults(fn=cmd_start)

    v = sub.add_parser("validate", help="check flow files; exit 1 with located errors")
    v.add_argument("files", nargs="+")
    v.set_defaults(fn=cmd_validate)

    sc = sub.add_parser("schema", help="JSON Schema of node params (all, or one type)")
    sc.add_argument("type", nargs="?")
    sc.set_defaults(fn=cmd_schema)

    st = sub.add_parser("status", help="per flow and node counters from the running daemon")
    st.set_defaults(fn=cmd_status)

    nr = sub.add_parser("import-nodered", help="Node-RED flows.json -> flow files + a report")
    nr.add_argument("file")
    nr.add_argument("--out", help="write one flow file per tab here (default: print them)")
    nr.set_defaults(fn=cmd_import_nodered)

    pl = sub.add_parser("plugins", help="node-type plugins the running daemon loaded")
    pl.add_argument("action", choices=["list"])
    pl.set_defaults(fn=cmd_plugins)

    f = sub.add_parser("flows", help="manage flows on the running daemon")
    fs = f.add_subparsers(dest="action", required=True)
    fs.add_parser("list")
    for name in ("show", "delete", "history"):
        fs.add_parser(name).add_argument("id")
    fs.add_parser("deploy").add_argument("file")
    rb = fs.add_parser("rollback")
    rb.add_argument("id")
    rb.add_argument("rev", type=int)
    f.set_defaults(fn=cmd_flows)

    from mechaway.hub.cli import register as register_hub

    register_hub(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
