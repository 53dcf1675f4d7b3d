#!/usr/bin/env bash
# Prove systemd/install.sh on the Raspberry Pi's architecture: in an arm64 Debian bookworm
# root (64-bit Raspberry Pi OS's base) run through qemu-user, install mechaway with the
# installer, run the installer again, start the daemon as the mechaway user on the aarch64
# wheels, ask /api/v1/health and `mechaway status` (the CLI on PATH, reading
# /etc/mechaway/mechaway.toml and the generated token), stop it, uninstall keeping data.
#
#   sudo systemd/prove-arm64.sh            # ~10 min the first time (the root is cached)
#
# What it cannot prove: systemd is not PID 1 in a chroot, so the unit is enabled but the
# daemon is started by this script with the unit's user and environment, not by systemd
# (the unit itself is checked with systemd-analyze verify against the installed root).
# Timings under emulation are 5-10x a real Pi 4's; RSS is qemu's, not a Pi's.
# Prints what it does, then one JSON line. Env: ARM64_ROOT (the cached root's folder).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${ARM64_ROOT:-$repo/.cache/roots/bookworm-arm64}"
port="${PORT:-7781}"
[ "$(id -u)" -eq 0 ] || { echo "prove-arm64.sh: run as root" >&2; exit 1; }
unset PIP_FIND_LINKS  # a local wheel folder of this machine means nothing in the root
log() { printf '[prove-arm64 %s] %s\n' "$(date +%T)" "$*" >&2; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round($(now) - $1, 1))"; }

# -- qemu-user and debootstrap on this machine -------------------------------------------
need=()
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] \
  || cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register

# -- the root (cached) -------------------------------------------------------------------
t=$(now); boot_s=0
if [ ! -x "$root/usr/bin/python3" ]; then
  log "debootstrap arm64 bookworm into $root"
  rm -rf "$root.tmp"; mkdir -p "$(dirname "$root")"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,systemd,sudo,procps \
    bookworm "$root.tmp" >"$root.debootstrap.log" 2>&1
  mv "$root.tmp" "$root"
  boot_s=$(since "$t")
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
# this machine's trust store (a TLS-intercepting proxy's CA, where there is one) for pip
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
[ "$(chroot "$root" uname -m)" = aarch64 ] || { echo "the root does not run as aarch64" >&2; exit 1; }

mounts=()
cleanup() {
  if [ -n "${daemon_pid:-}" ] && kill -0 "$daemon_pid" 2>/dev/null; then kill -9 "$daemon_pid" || true; fi
  for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for m in proc dev; do mount --bind "/$m" "$root/$m"; mounts+=("$root/$m"); done

# the checkout as it is (tracked and new files, not .venv, .cache, node_modules)
rm -rf "$root/src/mechaway"; mkdir -p "$root/src/mechaway"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
   [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -xf - -C "$root/src/mechaway"

# -- install, again, run ----------------------------------------------------------------
chroot "$root" /src/mechaway/systemd/install.sh --uninstall --purge >/dev/null 2>&1 || true
log "installing (first run)"
t=$(now); chroot "$root" /src/mechaway/systemd/install.sh >&2; install_s=$(since "$t")
log "installing again (nothing changed)"
t=$(now); again="$(chroot "$root" /src/mechaway/systemd/install.sh 2>&1)"; again_s=$(since "$t")
echo "$again" >&2
echo "$again" | grep -q "package unchanged" || { echo "second run changed the package" >&2; exit 1; }
systemd-analyze verify --root="$root" --man=no "$root/etc/systemd/system/mechaway.service" >&2
enabled=$(chroot "$root" systemctl is-enabled mechaway.service 2>/dev/null || true)

machine=$(chroot "$root" /opt/mechaway/.venv/bin/python -c 'import platform; print(platform.machine())')
wheels=$(chroot "$root" /opt/mechaway/.venv/bin/python - <<'EOF'
import importlib.metadata as md, pathlib
out = []
for d in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
    files = [f for f in (d.files or []) if f.name.endswith(".so") or ".so." in f.name]
    arch = ""
    for f in files:
        with open(d.locate_file(f), "rb") as fh:
            head = fh.read(20)
        if head[:4] == b"\x7fELF":
            arch = {183: "aarch64", 62: "x86_64", 40: "arm"}.get(int.from_bytes(head[18:20], "little"), "?")
            break
    out.append(f"{d.metadata['Name']}=={d.version}" + (f"[{arch}]" if arch else ""))
print(" ".join(out))
EOF
)
log "the daemon as user mechaway on $machine"
t=$(now)
chroot "$root" setpriv --reuid=mechaway --regid=mechaway --init-groups \
  env HOME=/var/lib/mechaway MECHAWAY_CONFIG=/etc/mechaway/mechaway.toml \
  MECHAWAY_API_LISTEN="127.0.0.1:$port" /opt/mechaway/.venv/bin/mechaway start \
  >"$root/tmp/daemon.log" 2>&1 &
daemon_pid=$!
health=""
for _ in $(seq 1 600); do
  health=$(python3 - "$port" <<'EOF' 2>/dev/null || true
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/v1/health", timeout=2) as r:
    print(json.dumps(json.load(r)))
EOF
)
  [ -n "$health" ] && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$root/tmp/daemon.log" >&2; echo "daemon died" >&2; exit 1; }
  sleep 0.5
done
[ -n "$health" ] || { cat "$root/tmp/daemon.log" >&2; echo "no health answer" >&2; exit 1; }
health_s=$(since "$t")
log "health: $health"
sleep 3  # settle before reading RSS
# chroot, setpriv and env exec: the pid is the daemon's (qemu-aarch64 running it)
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$daemon_pid/status" 2>/dev/null || echo 0)
# the CLI on PATH, as root, with no option: /etc/mechaway/mechaway.toml and the token file
status_out=$(chroot "$root" env MECHAWAY_API_LISTEN="127.0.0.1:$port" mechaway status 2>&1)
echo "$status_out" >&2
echo "$status_out" | grep -q "^mechaway " || { echo "mechaway status failed" >&2; exit 1; }
kill -TERM "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=""
token_mode=$(chroot "$root" stat -c '%a %U:%G' /var/lib/mechaway/api-token)

log "uninstall, keeping data"
chroot "$root" /src/mechaway/systemd/install.sh --uninstall >&2
[ -f "$root/var/lib/mechaway/mechaway.db" ] && [ -f "$root/etc/mechaway/mechaway.toml" ] \
  && [ ! -e "$root/opt/mechaway" ] && [ ! -e "$root/usr/local/bin/mechaway" ] \
  || { echo "uninstall did not keep data / remove the program" >&2; exit 1; }

python3 - "$machine" "$boot_s" "$install_s" "$again_s" "$health_s" "$rss_kb" "$enabled" \
  "$token_mode" "$health" "$wheels" <<'EOF'
import json, sys
a = sys.argv[1:]
print(json.dumps({
    "machine": a[0], "debootstrap_s": float(a[1]), "install_s": float(a[2]),
    "reinstall_s": float(a[3]), "start_to_health_s": float(a[4]),
    "daemon_rss_under_qemu_mb": round(int(a[5]) / 1024, 1), "unit_enabled": a[6],
    "token_file": a[7], "health": json.loads(a[8]), "wheels": a[9].split(),
}))
EOF
