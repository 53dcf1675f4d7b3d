#!/usr/bin/env bash
# The greenhouse closed loop on any laptop: the hardware simulator and the mechaway daemon
# together on configs/greenhouse/, no board, no broker. Prints the loop as it runs, the
# series at the end, and writes greenhouse-demo/greenhouse.png (the air against the band
# over the simulated day). Options go to `mechaway-sim demo` (--speed 720: the day in two
# minutes; --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c 'import mechaway_sim' 2>/dev/null; then
  "$PY" -m pip install -q -e hardware-sim
fi
exec "$PY" -m mechaway_sim demo "$@"
