#!/usr/bin/env bash
# Install, upgrade or remove mechaway as a systemd service (Debian 12 "bookworm",
# Raspberry Pi OS bookworm). Needs Python >= 3.11 (bookworm's python3 is 3.11).
#
#   systemd/install.sh                  install, or upgrade in place (run it again)
#   systemd/install.sh --uninstall      remove the program and the unit; keep the config
#                                       (/etc/mechaway) and the data (/var/lib/mechaway)
#   systemd/install.sh --uninstall --purge   remove those and the mechaway user too
#
# Options: --extras LIST (pip extras, default logic,hardware,postgres), --no-start (install
# and enable, do not start). Runs as root, or re-runs itself through sudo. Idempotent: a
# run that changes nothing restarts nothing; a run that changed the package or the unit
# restarts the running service. See docs/install.md.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/mechaway
venv="$prefix/.venv"
etc=/etc/mechaway
data=/var/lib/mechaway
unit=/etc/systemd/system/mechaway.service
link=/usr/local/bin/mechaway
extras="logic,hardware,postgres"
mode=install
purge=0
start=1
args=("$@")

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) mode=uninstall ;;
    --purge) purge=1 ;;
    --extras) [ $# -ge 2 ] || { echo "install.sh: --extras needs a value" >&2; exit 2; }
              extras="$2"; shift ;;
    --extras=*) extras="${1#--extras=}" ;;
    --no-start) start=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$purge" = 1 ] && [ "$mode" != uninstall ]; then
  echo "install.sh: --purge goes with --uninstall" >&2; exit 2
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -- "$0" "${args[@]}"
  fi
  echo "install.sh: run as root (no sudo here): su -c '$0'" >&2
  exit 1
fi

say() { printf 'mechaway install: %s\n' "$*"; }
# systemd is PID 1 here (not a chroot, a container or an image being built)
systemd_up() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# -- uninstall --------------------------------------------------------------------------
if [ "$mode" = uninstall ]; then
  if systemd_up; then
    systemctl disable --now mechaway.service >/dev/null 2>&1 || true
  elif command -v systemctl >/dev/null 2>&1; then
    systemctl disable mechaway.service >/dev/null 2>&1 || true
  fi
  rm -f "$unit"
  systemd_up && systemctl daemon-reload
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$venv/bin/mechaway" ]; then rm -f "$link"; fi
  rm -rf "$prefix"
  if [ "$purge" = 1 ]; then
    rm -rf "$etc" "$data"
    if id mechaway >/dev/null 2>&1; then userdel mechaway 2>/dev/null || true; fi
    getent group mechaway >/dev/null && groupdel mechaway 2>/dev/null || true
    say "removed the program, its unit, $etc, $data and the mechaway user"
  else
    say "removed the program and its unit; kept $etc (config, flows) and $data (database," \
        "token): --uninstall --purge removes them"
  fi
  exit 0
fi

# -- Python >= 3.11 with venv -----------------------------------------------------------
apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: missing $* and no apt-get: install them and run again" >&2; exit 1
  fi
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"; apt-get update -qq; apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install.sh: mechaway needs Python >= 3.11; python3 here is" \
       "$(python3 -c 'import platform; print(platform.python_version())')" \
       "(Debian 12 bookworm and Raspberry Pi OS bookworm have 3.11)" >&2
  exit 1
fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_install python3-venv

# -- user, groups, directories ----------------------------------------------------------
if ! id mechaway >/dev/null 2>&1; then
  say "creating the system user mechaway"
  useradd --system --user-group --home-dir "$data" --no-create-home \
          --shell /usr/sbin/nologin mechaway
fi
# the unit's SupplementaryGroups (serial ports, GPIO, I2C): a group that does not exist
# would stop the service from starting
for g in dialout gpio i2c; do getent group "$g" >/dev/null || groupadd --system "$g"; done
install -d -m 0755 -o root -g root "$prefix"
install -d -m 0750 -o root -g mechaway "$etc" "$etc/flows"
install -d -m 0750 -o mechaway -g mechaway "$data"

# -- the program ------------------------------------------------------------------------
fingerprint() {  # what is installed: every distribution and version, every mechaway file
  [ -x "$venv/bin/python" ] || { echo none; return; }
  {
    "$venv/bin/python" -m pip freeze --all 2>/dev/null | grep -v '^mechaway @' || true
    "$venv/bin/python" - <<'EOF'
import hashlib, pathlib, mechaway
root = pathlib.Path(mechaway.__file__).parent
h = hashlib.sha256()
for p in sorted(root.rglob("*")):
    if p.is_file() and "__pycache__" not in p.parts:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
print(h.hexdigest())
EOF
  } | sha256sum | cut -d' ' -f1
}
if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
  say "the venv in $venv is broken (Python upgraded?): making a new one"; rm -rf "$venv"
fi
before="$(fingerprint)"
[ -x "$venv/bin/python" ] || { say "creating $venv"; python3 -m venv "$venv"; }
say "installing mechaway[$extras] from $src into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade \
  "$src[$extras]"
after="$(fingerprint)"
changed=0; [ "$before" = "$after" ] || changed=1
ln -sfn "$venv/bin/mechaway" "$link"

# documentation the unit's Documentation= points at
install -d -m 0755 "$prefix/share/doc"
for f in install.md operations.md postgres.md; do
  [ -f "$src/docs/$f" ] && install -m 0644 "$src/docs/$f" "$prefix/share/doc/$f"
done

# -- configuration: written once (never overwritten), 0640 root:mechaway ----------------
if [ ! -e "$etc/mechaway.toml" ]; then
  install -m 0640 -o root -g mechaway "$src/systemd/mechaway.toml" "$etc/mechaway.toml"
  say "wrote $etc/mechaway.toml"
fi
# no flow is installed: the service starts with none (put flow files in $etc/flows)

# -- the unit ---------------------------------------------------------------------------
unit_changed=0
if ! cmp -s "$src/systemd/mechaway.service" "$unit"; then
  install -m 0644 "$src/systemd/mechaway.service" "$unit"; unit_changed=1
fi
if systemd_up; then
  [ "$unit_changed" = 1 ] && systemctl daemon-reload
  systemctl enable --quiet mechaway.service
  if systemctl is-active --quiet mechaway.service; then
    if [ "$changed" = 1 ] || [ "$unit_changed" = 1 ]; then
      say "package or unit changed: restarting the service"; systemctl restart mechaway.service
    else
      say "nothing changed; the running service was left alone"
    fi
  elif [ "$start" = 1 ]; then
    systemctl start mechaway.service
  fi
  systemctl --no-pager --lines=0 status mechaway.service || true
else
  command -v systemctl >/dev/null 2>&1 && systemctl enable --quiet mechaway.service 2>/dev/null || true
  say "systemd is not running here (a chroot or container): enabled, not started"
fi
[ "$changed" = 1 ] && say "package installed or upgraded" || say "package unchanged"
say "done: 'sudo mechaway status', logs: 'journalctl -u mechaway -f', docs: $prefix/share/doc"
