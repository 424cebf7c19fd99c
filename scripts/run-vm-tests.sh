#!/bin/sh
# Boot a stock Debian kernel under qemu (software emulation) with this machine's
# userspace shared read-only, and run tests/vm/ inside it: the host kernel has
# XFRM but no ESP, the guest's has both (see KERNEL-VM notes in tests/vm/guest.sh).
#
#   scripts/run-vm-tests.sh [OUTDIR]     (default: vm-out/ in the repository)
#
# VM_TESTS: the test paths to run (default tests/vm); VM_K: a pytest -k expression with
# "+" for each space ("libreswan", "nat+or+rekey"), to iterate on some tests without
# running the whole suite under emulation.
#
# Needs: qemu-system-x86, linux-image-amd64, busybox-static (apt) and virtme-ng
# in .vm-venv (`make test-kernel` installs them). Exit code: the guest's pytest's.
# Results: OUTDIR/junit.xml, OUTDIR/pytest.txt, per-test daemon and charon logs.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/vm-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Old results are removed, but only from a directory this script made.
if [ -n "$(ls -A "$OUT")" ] && [ ! -e "$OUT/.ikev1d-vm-out" ]; then
    echo "run-vm-tests: $OUT is not empty and not an earlier results directory" >&2
    exit 2
fi
find "$OUT" -mindepth 1 -delete
touch "$OUT/.ikev1d-vm-out"
PATH=$ROOT/.vm-venv/bin:$PATH
export PATH
KERNEL=$(ls -1v /boot/vmlinuz-*-amd64 2>/dev/null | tail -1)
if [ -z "$KERNEL" ] || ! command -v vng >/dev/null; then
    echo "run-vm-tests: needs linux-image-amd64 and .vm-venv/bin/vng (make test-kernel)" >&2
    exit 2
fi
echo "run-vm-tests: booting $KERNEL, results in $OUT"
start=$(date +%s)
set +e
# --disable-kvm: /dev/kvm here cannot run a stock kernel; --force-9p: no virtiofsd.
timeout "${VM_TIMEOUT:-1200}" vng --disable-kvm --force-9p --cpus 2 --memory 1G \
    --rwdir="$OUT" --run "$KERNEL" -- "$ROOT/tests/vm/guest.sh" "$OUT" "k=${VM_K:-}" \
    ${VM_TESTS:-tests/vm} \
    </dev/null >"$OUT/console.txt" 2>&1
rc=$?
set -e
echo "run-vm-tests: guest exit code $rc after $(( $(date +%s) - start )) s"
tail -n 30 "$OUT/pytest.txt" 2>/dev/null || tail -n 30 "$OUT/console.txt"
exit $rc
