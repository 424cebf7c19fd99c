#!/usr/bin/env bash
# The README's two commands on a fresh machine: a minimal Debian 12 root
# (debootstrap --variant=minbase, plus only make, git and ca-certificates, which a
# user needs to fetch the code and type `make`), a clean clone of the committed
# HEAD in /root (a directory only root can enter), then `make demo` and `make test`
# run there as root in a chroot.  Prints each command's exit status, the pytest
# summary line and the durations; exits non-zero when either command failed.
#
# Network namespaces work in a chroot on the same kernel once the root is a mount
# point (else `ip netns exec` fails on `mount --make-rslave /`), so the root is
# bind-mounted onto itself, with /proc, /sys, /dev and a tmpfs on /run.  All of
# that happens in a private mount namespace (unshare), unmounted again on exit;
# nothing is mounted on the host, and the root is removed afterwards.
#
# usage: scripts/fresh-machine-check.sh [--cache DIR] [--keep ROOT] [--logs DIR]
#   --cache DIR  keep the pristine root (after debootstrap) as DIR/bookworm-minbase.tar
#                and start from it next time; each run still starts untouched
#   --keep ROOT  build the root in ROOT and leave it there, to look around after a
#                failure; an existing ROOT is reused as it is, with the packages
#                earlier runs installed, so that run is no longer a fresh machine
#   --logs DIR   where the logs go (default: a new /var/tmp/ikev1d-fresh-logs.*)
set -euo pipefail

SUITE=bookworm
EXTRA_PACKAGES=make,git,ca-certificates
CLONE=/root/ikev1d
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LOCAL_CAS=/usr/local/share/ca-certificates
STEP_TIMEOUT=7200  # seconds per make command: a stuck test must not hold the box forever

say() { printf '%s\n' "fresh-machine-check: $*" >&2; }
die() { say "$*"; exit 2; }

# --- inside the private mount namespace: mount, chroot, run, unmount -------------------

mounts_under() {
  findmnt -rn -o TARGET | awk -v root="$1" '$0 == root || index($0, root "/") == 1'
}

# Processes whose root directory is the chroot: what a failing test may leave running.
processes_in() {
  local root=$1 p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && echo "${p#/proc/}"
  done
  return 0
}

inside_cleanup() {
  local root=$1 pids
  pids=$(processes_in "$root" | tr '\n' ' ')
  if [ -n "$pids" ]; then
    say "stopping processes left in the root: $pids"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    sleep 2
    # shellcheck disable=SC2086
    kill -KILL $(processes_in "$root") 2>/dev/null || true
  fi
  umount -R "$root" 2>/dev/null || umount -R -l "$root" 2>/dev/null || true
  if [ -n "$(mounts_under "$root")" ]; then
    say "still mounted: $(mounts_under "$root" | tr '\n' ' ')"
  fi
}

run_in_root() {  # name command...: run in the chroot, log, record exit status and time
  local root=$1 logs=$2 name=$3 started status env
  shift 3
  env=(HOME=/root PATH="$CHROOT_PATH" LANG=C.UTF-8 TERM=dumb)
  if compgen -G "$root$LOCAL_CAS/*.crt" >/dev/null; then
    # pip upgrades itself to one that trusts only its own CA bundle: point it at the
    # system's, which now has the local authorities too.
    env+=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
  fi
  say "running \`$*\` in the root (log: $logs/$name.log)"
  started=$(date +%s)
  set +e
  timeout --kill-after=60 "$STEP_TIMEOUT" \
    chroot "$root" /usr/bin/env -i "${env[@]}" \
    /bin/sh -c "cd $CLONE && $*" </dev/null 2>&1 | tee "$logs/$name.log"
  status=${PIPESTATUS[0]}
  set -e
  echo "$status $(( $(date +%s) - started ))" >"$logs/$name.status"
}

inside() {  # ROOT LOGS
  inside_root=$1  # global: the EXIT trap runs after this function has returned
  local root=$1 logs=$2 left
  trap 'inside_cleanup "$inside_root"' EXIT
  trap 'exit 130' INT TERM HUP
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount --rbind /dev "$root/dev"  # with /dev/pts, /dev/shm and /dev/net/tun
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
  run_in_root "$root" "$logs" demo make demo
  run_in_root "$root" "$logs" test make test
  left=$(chroot "$root" /bin/sh -c 'command -v ip >/dev/null && ip netns list' 2>/dev/null || true)
  printf '%s\n' "$left" | awk 'NF' >"$logs/netns-left"
  processes_in "$root" >"$logs/processes-left"
}

self=$(readlink -f "$0")
if [ "${1:-}" = "--inside" ]; then
  inside "$2" "$3"
  exit 0
fi

# --- on the host: build the root, clone, run the above in a mount namespace -----------

usage() { sed -n '/^# usage:/,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; }

cache="" keep="" logs=""
while [ $# -gt 0 ]; do
  case $1 in
    --cache) cache=${2:?--cache needs a directory}; shift 2 ;;
    --keep) keep=${2:?--keep needs a directory}; shift 2 ;;
    --logs) logs=${2:?--logs needs a directory}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, mount, chroot): sudo $0"
command -v unshare >/dev/null && command -v findmnt >/dev/null || die "needs util-linux"

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse HEAD)
subject=$(git -C "$repo" log -1 --format=%s HEAD)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  say "note: $repo has uncommitted changes; the check runs the committed HEAD only"
fi

# The Debian mirror this machine's apt uses (one-line or deb822 sources), else the CDN.
apt_mirror() {
  local f uri=""
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$SUITE" '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit } }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" } {
        uris = ""; ok = 0; off = 0
        for (i = 1; i <= NF; i++) {
          line = $i; if (line ~ /^#/) continue
          if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); split(line, u, /[ \t]+/); uris = u[1] }
          if (line ~ /^Suites:/) { n = split(line, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
          if (line ~ /^Enabled:[ \t]*no/) off = 1
        }
        if (ok && !off && uris != "") { print uris; exit } }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  echo "http://deb.debian.org/debian"
}

root="" inner="" phase=""
cleanup() {
  local status=$? left
  trap '' INT TERM HUP
  if [ -n "$inner" ] && kill -0 "$inner" 2>/dev/null; then
    kill -TERM -- "-$inner" 2>/dev/null || true
    wait "$inner" 2>/dev/null || true
  fi
  if [ -n "$root" ] && [ -d "$root" ]; then
    left=$(mounts_under "$root")
    if [ -n "$left" ]; then  # only if something escaped the mount namespace
      say "unmounting what is left under $root"
      umount -R "$root" 2>/dev/null || umount -R -l "$root" 2>/dev/null || true
    fi
    if [ -n "$(mounts_under "$root")" ]; then
      say "still mounted under $root, so it is NOT removed: $(mounts_under "$root" | tr '\n' ' ')"
      status=1
    elif [ -z "$keep" ]; then
      rm -rf --one-file-system "$root"
    fi
  fi
  [ -n "$phase" ] && [ "$status" != 0 ] && say "stopped during: $phase"
  exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM HUP

# Each long step runs as its own process group (job control), so an interrupt can be
# passed on to all of it and the cleanup above still runs.
set -m
run_job() {
  "$@" </dev/null &
  inner=$!
  local status=0
  wait "$inner" || status=$?
  inner=""
  return "$status"
}

logs=${logs:-$(mktemp -d /var/tmp/ikev1d-fresh-logs.XXXXXX)}
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)
rm -f "$logs"/*.status "$logs"/*.log "$logs"/netns-left "$logs"/processes-left
started=$(date +%s)

if [ -n "$keep" ]; then
  mkdir -p "$keep"
  root=$(cd "$keep" && pwd)
else
  root=$(mktemp -d /var/tmp/ikev1d-fresh-root.XXXXXX)
fi
chmod 0755 "$root"  # mktemp's 0700 would lock everyone but root out of "/"

phase="building the root"
base_started=$(date +%s)
if [ -n "$keep" ] && [ -e "$root/.ikev1d-fresh-base" ]; then
  base_how="reused $root as it is (NOT a fresh machine: earlier runs installed packages)"
elif [ -n "$cache" ] && [ -s "$cache/$SUITE-minbase.tar" ]; then
  say "unpacking the cached root $cache/$SUITE-minbase.tar"
  tar -C "$root" --numeric-owner -xpf "$cache/$SUITE-minbase.tar"
  base_how="from the cached $cache/$SUITE-minbase.tar"
else
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    apt=(apt-get -q -o DPkg::Lock::Timeout=600)  # wait while another apt runs
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y debootstrap >/dev/null ||
      { "${apt[@]}" update >/dev/null && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y debootstrap; }
  fi
  mirror=$(apt_mirror)
  say "debootstrap --variant=minbase --include=$EXTRA_PACKAGES $SUITE $root $mirror"
  # debootstrap mounts /proc and /sys in the root while it works: in a mount namespace
  # of its own, so an interrupted run leaves nothing mounted.
  if ! run_job unshare --mount --propagation private \
      debootstrap --variant=minbase --include="$EXTRA_PACKAGES" "$SUITE" "$root" "$mirror" \
      >"$logs/debootstrap.log" 2>&1; then
    tail -n 20 "$logs/debootstrap.log" >&2
    die "debootstrap failed (log: $logs/debootstrap.log)"
  fi
  # What a machine would have that a bare root lacks: a host name resolver, and no
  # package scripts starting services (a chroot has no init, and charon would bind
  # the host's port 500).
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  if [ -n "$cache" ]; then
    mkdir -p "$cache"
    say "caching the root as $cache/$SUITE-minbase.tar"
    tar -C "$root" --numeric-owner --one-file-system -cpf "$cache/$SUITE-minbase.tar.new" . &&
      mv "$cache/$SUITE-minbase.tar.new" "$cache/$SUITE-minbase.tar"
  fi
  base_how="debootstrap --variant=minbase from $mirror, plus ${EXTRA_PACKAGES//,/ }"
fi
touch "$root/.ikev1d-fresh-base"
base_seconds=$(( $(date +%s) - base_started ))
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The certificate authorities this machine's administrator added (a network whose
# proxy inspects TLS has one), as they would be on any machine of that network.
if compgen -G "$LOCAL_CAS/*.crt" >/dev/null; then
  mkdir -p "$root$LOCAL_CAS"
  cp "$LOCAL_CAS"/*.crt "$root$LOCAL_CAS/"
  chroot "$root" /usr/sbin/update-ca-certificates >/dev/null 2>&1 ||
    die "update-ca-certificates failed in the root"
fi
# A new root has no Python yet: bringing it is part of what the two commands must do.
if [ "${base_how#reused}" = "$base_how" ] && [ -e "$root/usr/bin/python3" ]; then
  die "the new root already has python3: not the minimal Debian this check is about"
fi

phase="cloning"
rm -rf "${root:?}$CLONE"
git clone -q --no-hardlinks "$repo" "$root$CLONE"
if [ "$(git -C "$root$CLONE" rev-parse HEAD)" != "$commit" ]; then
  git -C "$root$CLONE" checkout -q "$commit"
fi
say "clone of $commit in $CLONE (mode $(stat -c %a "$root/root"): only root can enter)"

phase="make demo / make test in the root"
run_job unshare --mount --propagation private "$self" --inside "$root" "$logs" || true
phase=""

# --- summary ---------------------------------------------------------------------------

failed=0
result() {  # NAME: sets $outcome to "exit N, S s" (and $failed unless N is 0)
  local f="$logs/$1.status" status seconds
  outcome="did not run"
  if [ -r "$f" ]; then
    read -r status seconds <"$f"
    outcome="exit $status, $seconds s"
    [ "$status" = 0 ] && return
  fi
  failed=1
}
result demo; demo_result=$outcome
result test; test_result=$outcome
demo_line=$(grep -aE '^(summary:|demo finished|.* demo (failed|stopped))' "$logs/demo.log" 2>/dev/null |
  sed 's/\x1b\[[0-9;]*m//g' | tail -n 2 | tr '\n' ' ' || true)
pytest_line=$(grep -aE '^(=+ )?[0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran' \
  "$logs/test.log" 2>/dev/null | tail -n 1 || true)
netns_left=$(wc -l <"$logs/netns-left" 2>/dev/null || echo "?")
procs_left=$(wc -l <"$logs/processes-left" 2>/dev/null || echo "?")

cat <<EOF

fresh-machine check of $commit ($subject)
  root:      Debian 12 $base_how, ${base_seconds} s
  clone:     $CLONE (mode $(stat -c %a "$root/root"))
  make demo: $demo_result
             ${demo_line:-(no demo summary line)}
  make test: $test_result
             ${pytest_line:-(no pytest summary line: see the log)}
  left over: $netns_left network namespaces, $procs_left processes in the root
  total:     $(( $(date +%s) - started )) s; logs in $logs
EOF
[ "$netns_left" = 0 ] && [ "$procs_left" = 0 ] || failed=1
exit "$failed"
