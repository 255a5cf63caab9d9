# Sourced by the device_*.sh scripts, run from the checkout's root on the lent GPU machine: install
# the package (no dependencies: the machine has torch and Triton) into /tmp/site, set REPO and the
# work folder W (kept while the machine stays warm), and define `ea` (the edge-awq command).
set -uo pipefail
export PYTHONUNBUFFERED=1
pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/site . >/dev/null 2>&1 || exit 1
export PYTHONPATH=/tmp/site
REPO=$PWD
W=$REPO/.device/w
mkdir -p $W
cd /tmp  # not the checkout: its edge_awq/ folder lacks the kernels/ mapping
ea() { python3 -m edge_awq "$@"; }
