#!/usr/bin/env bash
# Install mechaway as a systemd service from this checkout (Debian / Raspberry Pi OS).
# Usage: sudo systemd/install.sh
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
apt-get install -y -qq python3-venv >/dev/null
id mechaway >/dev/null 2>&1 || useradd --system --home /var/lib/mechaway --shell /usr/sbin/nologin mechaway
for g in dialout gpio i2c; do getent group "$g" >/dev/null || groupadd --system "$g"; done
install -d -o root -g root /opt/mechaway
python3 -m venv /opt/mechaway/.venv
/opt/mechaway/.venv/bin/pip install -q "$src[logic,hardware]"
install -d /etc/mechaway /etc/mechaway/flows
[ -f /etc/mechaway/mechaway.toml ] || install -m 0640 -g mechaway "$src/configs/mechaway.toml" /etc/mechaway/mechaway.toml
[ -n "$(ls -A /etc/mechaway/flows)" ] || cp "$src"/configs/flows/*.json /etc/mechaway/flows/
install -m 0644 "$src/systemd/mechaway.service" /etc/systemd/system/mechaway.service
systemctl daemon-reload
systemctl enable --now mechaway.service
systemctl --no-pager status mechaway.service | head -5
