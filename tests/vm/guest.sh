#!/bin/sh
# Runs inside the VM (scripts/run-vm-tests.sh boots it): one pytest session over
# tests/vm/ against the guest's own kernel, which has ESP. Results (junit XML,
# pytest output, daemon and charon logs) go to $1, the --rwdir shared with the host.
# The guest's exit code is pytest's; vng hands it back to the host.
#   guest.sh OUTDIR [k=EXPR [TEST_PATH...]]: EXPR is a pytest -k expression with "+" for
#   each space (k=: all tests);
#   never an empty argument, which the trip through vng's command line could lose.
set -u
OUT=${1:?usage: guest.sh OUTDIR [k=EXPR [TEST_PATH...]]}
shift
K=""
case "${1:-}" in k=*) K=${1#k=}; shift ;; esac
# "+" stands for a space, which the trip through vng's command line would split on.
K=$(printf '%s' "$K" | tr '+' ' ')
[ $# -gt 0 ] || set -- tests/vm
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 2

echo "guest kernel $(uname -r)" > "$OUT/guest.txt"
modprobe -a esp4 esp6 xfrm_user xfrm4_tunnel veth tun >>"$OUT/guest.txt" 2>&1
BASE=/tmp/ikev1d-vm-tests
rm -rf "$BASE"
mkdir -p "$BASE"
# swanctl loads every plugin (~13 s under emulation) unless told which it needs.
printf 'swanctl {\n  load = pem pkcs1 x509 pubkey random nonce openssl\n}\n' > "$BASE/swanctl.conf"

IKEV1D_VM_GUEST=1 STRONGSWAN_CONF="$BASE/swanctl.conf" PYTHONDONTWRITEBYTECODE=1 \
  "$ROOT/.venv/bin/python" -m pytest "$@" ${K:+-k "$K"} -v -ra --durations=0 -p no:cacheprovider -p no:hypothesispytest \
    --basetemp="$BASE/t" --junitxml="$OUT/junit.xml" >"$OUT/pytest.txt" 2>&1
rc=$?

# Logs and configs of every test (not the unix sockets) for the host to read.
(cd "$BASE/t" 2>/dev/null && find . -type f \( -name '*.log' -o -name '*.txt' -o -name '*.toml' \
    -o -name '*.conf' -o -name '*.stdout' \) -exec cp --parents {} "$OUT/" \;) 2>/dev/null
echo "pytest exit code $rc" >> "$OUT/guest.txt"
exit $rc
