"""``mechaway hub ...``: run a hub, register devices, deploy flows, print the public key."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mechaway.errors import ConfigError, FlowError, MechawayError

HUB_CONFIG_ENV = "MECHAWAY_HUB_CONFIG"


class HubCliError(MechawayError):
    """A user-facing failure of a hub command."""


def _config(args: argparse.Namespace) -> Any:
    from mechaway.hub.config import load_hub_settings

    return load_hub_settings(args.hub_config or os.environ.get(HUB_CONFIG_ENV))


class HubClient:
    """A blocking admin client of the hub's API (stdlib only)."""

    def __init__(self, url: str, token: str, ca_file: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        try:
            req = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method)
        except ValueError as err:
            raise HubCliError(f"--hub-url: {self.url!r} is not a URL ({err})") from err
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ctx) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            try:
                msg = json.loads(err.read() or b"{}").get("error")
            except (ValueError, AttributeError):
                msg = None
            raise HubCliError(f"hub answered {err.code}: {msg or err.reason}") from err
        except (urllib.error.URLError, OSError) as err:
            why = getattr(err, "reason", err)
            raise HubCliError(f"hub not reachable at {self.url} ({why})") from err
        try:
            return json.loads(raw or b"null")
        except ValueError as err:
            raise HubCliError(f"{self.url} is not a mechaway hub (answer not JSON)") from err


def _client(args: argparse.Namespace) -> HubClient:
    url, token = args.hub_url, args.admin_token or os.environ.get("MECHAWAY_HUB_ADMIN_TOKEN")
    if url is None or token is None:
        cfg = _config(args).hub
        if url is None:
            from mechaway.settings import parse_listen

            host, port = parse_listen(cfg.listen, "hub.listen")
            host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            scheme = "https" if cfg.tls_cert else "http"
            url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
        token = token or cfg.admin_token
    return HubClient(url, token, args.ca_file)


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def cmd_start(args: argparse.Namespace) -> int:
    from mechaway.hub.server import run_hub

    return run_hub(_config(args))


def cmd_public_key(args: argparse.Namespace) -> int:
    from mechaway.hub.keys import load_signer

    print(load_signer(Path(_config(args).hub.signing_key)).public_key)
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    api = _client(args)
    if args.action == "add":
        r = api.call("POST", "/devices", {"id": args.id, "tags": args.tag or []})
        print(f"device {r['id']} registered; tags: {', '.join(r['tags']) or 'none'}")
        print("its token (shown once; put it in the device's [hub] token):")
        print(r["token"])
    elif args.action == "list":
        devices = api.call("GET", "/devices")
        if not devices:
            print("no devices")
        now = time.time()
        for d in devices:
            seen = f"{now - d['last_seen']:.0f}s ago" if d["last_seen"] else "never"
            backlog = (d.get("backlog") or {}).get("messages", "-")
            probs = len(d.get("problems") or [])
            print(
                f"{d['id']:<24} seen {seen:<10} bundle {d['applied_seq']}/{d['bundle_seq']:<4}"
                f" flows {len(d['flows']):<3} backlog {backlog!s:<8} problems {probs}"
                f"  tags {','.join(d['tags'])}"
            )
    else:
        print(json.dumps(api.call("GET", f"/devices/{_q(args.id)}"), indent=2))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from mechaway.flow.parse import read_file

    doc = read_file(Path(args.file))
    fid = doc.get("id") if isinstance(doc, dict) else None
    if not isinstance(fid, str) or not fid:
        from mechaway.errors import Issue

        raise FlowError([Issue("id", "missing flow id")], args.file)
    api = _client(args)
    if args.device:
        r = api.call("PUT", f"/devices/{_q(args.device)}/flows/{_q(fid)}", doc)
        print(f"{fid}: deployed to device {args.device} (flows version {r['version']})")
    else:
        r = api.call("PUT", f"/tags/{_q(args.tag)}/flows/{_q(fid)}", doc)
        print(f"{fid}: deployed to tag {args.tag} (flows version {r['version']})")
    return 0


def cmd_telemetry(args: argparse.Namespace) -> int:
    rows = _client(args).call(
        "GET", f"/devices/{_q(args.id)}/telemetry?after={args.after}&limit={args.limit}"
    )
    for r in rows:
        print(json.dumps(r))
    return 0


def _guard(fn: Any) -> Any:
    """A hub command whose failures are one line on stderr, exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            code: int = fn(args)
        except (FlowError, ConfigError):
            raise
        except MechawayError as err:  # the hub sits below the CLI: it says it here
            print(f"mechaway: {err}", file=sys.stderr)
            return 1
        return code

    return run


def register(sub: Any) -> None:
    """Add ``mechaway hub ...`` to the main parser's subcommands."""
    h = sub.add_parser("hub", help="the central hub: devices, signed flow bundles, telemetry")
    hs = h.add_subparsers(dest="hub_command", required=True)

    def common(p: argparse.ArgumentParser, *, client: bool = True) -> None:
        p.add_argument(
            "--config", dest="hub_config", help=f"hub.toml (default: ${HUB_CONFIG_ENV})"
        )
        if client:
            p.add_argument("--hub-url", help="hub URL (default: from the config's hub.listen)")
            p.add_argument("--admin-token", help="default: the config's hub.admin_token")
            p.add_argument("--ca-file", help="CA certificate to verify an HTTPS hub with")

    st = hs.add_parser("start", help="run a hub in the foreground")
    common(st, client=False)
    st.set_defaults(fn=_guard(cmd_start))

    pk = hs.add_parser("public-key", help="print what the edges' [hub] public_key needs")
    common(pk, client=False)
    pk.set_defaults(fn=_guard(cmd_public_key))

    dv = hs.add_parser("devices", help="register and list devices")
    ds = dv.add_subparsers(dest="action", required=True)
    add = ds.add_parser("add", help="register a device; prints its token once")
    add.add_argument("id")
    add.add_argument("--tag", action="append", help="a tag (repeatable)")
    common(add)
    common(ds.add_parser("list"))
    show = ds.add_parser("show")
    show.add_argument("id")
    common(show)
    dv.set_defaults(fn=_guard(cmd_devices))

    dp = hs.add_parser("deploy", help="deploy a flow file to a device or a tag")
    dp.add_argument("file")
    target = dp.add_mutually_exclusive_group(required=True)
    target.add_argument("--device")
    target.add_argument("--tag")
    common(dp)
    dp.set_defaults(fn=_guard(cmd_deploy))

    tl = hs.add_parser("telemetry", help="print a device's telemetry stored at the hub")
    tl.add_argument("id")
    tl.add_argument("--after", type=int, default=0)
    tl.add_argument("--limit", type=int, default=100)
    common(tl)
    tl.set_defaults(fn=_guard(cmd_telemetry))


def main(argv: list[str] | None = None) -> int:
    """``python -m mechaway.hub.cli`` (the same commands without ``mechaway``)."""
    p = argparse.ArgumentParser(prog="mechaway")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        code: int = args.fn(args)
    except FlowError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except (MechawayError, ConfigError) as err:
        print(f"mechaway: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
