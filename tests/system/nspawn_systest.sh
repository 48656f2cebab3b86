#!/usr/bin/env bash
# gatewayd under a real systemd 252: a Debian 12 system container booted with systemd-nspawn, in
# which a new user's steps are run and checked. Needs root, debootstrap, systemd-container.
#
#   tests/system/nspawn_systest.sh [--keep]      --keep: leave the container's tree for a look
#
# The Debian root is built once with debootstrap and cached under $GATEWAYD_SYSTEST_CACHE
# (default /var/cache/gatewayd-systest), keyed by suite, mirror and package list; each run boots
# a fresh copy of it. The repository is bind-mounted read-only at /mnt/gw, so install.sh is
# proven to work from a read-only checkout. Checks print `ok:` or `FAIL:`, figures `figure:`;
# the exit status is the number of failed checks (capped at 100), or 101 if set-up failed.
#
# Boot flags (see /work/shared/OPS.md): without --register=no --keep-unit nspawn wants a system
# bus; without the unified cgroup hierarchy, CAP_BPF and the bpf system call, DeviceAllow= is
# silently not enforced, and the device checks below would prove nothing.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${GATEWAYD_SYSTEST_CACHE:-/var/cache/gatewayd-systest}
SUITE=bookworm
# python3-ply: debootstrap does not resolve the virtual python3-ply-lex-3.10 that pycparser needs.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,python3-cryptography,python3-cffi,python3-ply
keep=no
[ "${1:-}" = --keep ] && keep=yes

t0=$(date +%s.%N)
since() { python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.2f}')" "$1"; }
now() { date +%s.%N; }
fails=0
ok() { printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; fails=$((fails + 1)); }
figure() { printf 'figure: %s\n' "$*"; }
die() { printf 'SETUP FAILED: %s\n' "$*" >&2; exit 101; }
check() { # check DESCRIPTION COMMAND...: ok if the command succeeds
  local what=$1; shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, systemd-nspawn)"
for b in debootstrap systemd-nspawn nsenter; do
  command -v "$b" >/dev/null || die "$b is missing: apt-get install debootstrap systemd-container"
done

# The mirror apt uses here (deb822 URIs: or a one-line `deb URL bookworm`), else Debian's.
mirror=${GATEWAYD_SYSTEST_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | awk -v s="$SUITE" '
      /^[[:space:]]*#/ { next }
      $1 == "deb" && $0 ~ (" " s "( |$)") { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }
      $1 == "URIs:" { uri = $2 } $1 == "Suites:" && uri != "" { for (i = 2; i <= NF; i++) if ($i == s) { print uri; exit } }' \
    | grep -v -e security -e updates | head -1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi

# 1. The cached Debian root.
key=$(printf '%s %s %s minbase' "$SUITE" "$mirror" "$PACKAGES" | sha256sum | cut -c1-16)
base=$CACHE/$SUITE-$key
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ ! -e "$base/ready" ]; then
  rm -rf "$base.tmp"
  tb=$(now)
  echo "building $base from $mirror (debootstrap, about a minute)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$base.tmp/root" "$mirror" \
    >"$CACHE/debootstrap-$key.log" 2>&1 || die "debootstrap failed: see $CACHE/debootstrap-$key.log"
  rm -rf "$base"
  mv "$base.tmp" "$base"
  touch "$base/ready"
  figure "debootstrap_s=$(since "$tb") (cold cache)"
else
  echo "using the cached root $base"
fi
flock -u 9

# 2. A fresh copy, with the host's CA bundle and pip configuration (this network may re-sign
# TLS, and pip may be pointed at local wheel folders, which are bound in read-only).
run=$(mktemp -d /var/tmp/gatewayd-systest.XXXXXX)
ROOT=$run/root
nspawn_pid=""
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true  # nspawn powers the container off
    for _ in $(seq 1 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  if [ "$keep" = yes ]; then echo "kept $run"; else rm -rf "$run"; fi
}
trap cleanup EXIT
cp -a "$base/root" "$ROOT"
for ca in /etc/ssl/certs/ca-certificates.crt ${PIP_CERT:-} ${SSL_CERT_FILE:-} ${REQUESTS_CA_BUNDLE:-}; do
  [ -f "$ca" ] || continue
  mkdir -p "$ROOT$(dirname "$ca")"
  cp -L "$ca" "$ROOT$ca"
done
declare -A binds=()
pipconfs=()
for conf in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" \
  ${PIP_CONFIG_FILE:-}; do
  [ -f "$conf" ] || continue
  mkdir -p "$ROOT$(dirname "$conf")"
  cp "$conf" "$ROOT$conf"
  pipconfs+=("$conf")
done
envs=()
while IFS='=' read -r name value; do
  case "$name" in PIP_*|http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY)
    envs+=("$name=$value") ;; esac
done < <(env)
# Paths the pip configuration names: files (constraints, CA) copied, folders (wheels, local
# indexes, whose links go up from .../simple) bound read-only.
for d in $(cat "${pipconfs[@]}" /dev/null | grep -oE '(file://)?/[^ ,]+' | sed 's#^file://##') \
  ${PIP_FIND_LINKS:-} ${PIP_CONSTRAINT:-}; do
  if [ -f "$d" ]; then
    mkdir -p "$ROOT$(dirname "$d")" && cp -L "$d" "$ROOT$d"
    continue
  fi
  d=${d%/}; d=${d%/simple}
  if [ -d "$d" ]; then binds["--bind-ro=$d"]=1; fi
done

# 3. Boot.
machine=gwsystest-$$
tboot=$(now)
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -q -D "$ROOT" -M "$machine" -b \
  --register=no --keep-unit --capability=CAP_BPF --system-call-filter=bpf \
  --bind-ro="$REPO:/mnt/gw" "${!binds[@]}" </dev/null >"$run/console.log" 2>&1 &
nspawn_pid=$!
leader=""
for _ in $(seq 1 150); do
  kill -0 "$nspawn_pid" 2>/dev/null || die "systemd-nspawn exited: $(tail -5 "$run/console.log")"
  # The container's PID 1 is nspawn's child once it has exec'd systemd (before that, the child
  # is nspawn itself, setting up).
  for c in $(pgrep -P "$nspawn_pid" || true); do
    case "$(readlink "/proc/$c/exe" 2>/dev/null)" in */systemd) leader=$c ;; esac
  done
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || die "no container init under systemd-nspawn ($nspawn_pid)"
# Run a command inside, with a clean environment (what a root shell there would have).
ctr() {
  nsenter -t "$leader" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 "$@"
}
# systemd's private bus socket appears a moment after its exec: retry until it answers.
state=""
for _ in $(seq 1 100); do
  state=$(timeout 120 nsenter -t "$leader" -a systemctl is-system-running --wait 2>&1 || true)
  case "$state" in *"Failed to connect"*|*"No such file"*) sleep 0.2 ;; *) break ;; esac
done
case "$state" in running|degraded) ;; *) die "the container did not boot ($state): $(tail -5 "$run/console.log")" ;; esac
figure "boot_s=$(since "$tboot") (system state: $state)"
ctr systemctl --version | head -1

show() { ctr systemctl show -P "$1" gatewayd.service; }
journal() { ctr journalctl -u gatewayd.service -o cat --no-pager "$@"; }

# 4. The install, as the README says, from the read-only checkout.
check "the checkout is mounted read-only" ctr sh -c '! touch /mnt/gw/.systest-probe 2>/dev/null'
listing() { (cd "$REPO" && find . -path ./.git -prune -o -name __pycache__ -prune -o -print | sort); }
before=$(listing)
ti=$(now)
if ctr env "${envs[@]}" bash /mnt/gw/systemd/install.sh >"$run/install.out" 2>"$run/install.err"; then
  ok "install.sh"
else
  fail "install.sh: $(tail -5 "$run/install.err")"
  die "nothing else can be checked without an install"
fi
figure "install_s=$(since "$ti")"
check "install.sh printed the public key" grep -q 'BEGIN PUBLIC KEY' "$run/install.out"
[ "$(listing)" = "$before" ] && ok "the checkout is unchanged (no build/, no *.egg-info)" \
  || fail "install.sh left files in the checkout: $(diff <(echo "$before") <(listing) | head)"
ctr sh -c '! ls -d /tmp/gatewayd-install.* 2>/dev/null' && ok "no build copy left in /tmp" \
  || fail "install.sh left its build copy in /tmp"
where=$(ctr bash -lc 'command -v gatewayd' || true)
[ "$where" = /usr/local/bin/gatewayd ] && ok "gatewayd is on PATH ($where)" \
  || fail "gatewayd on PATH: '$where'"

# A site's edits: a free port for metrics (this container shares the host's network), and a
# broker address that refuses at once instead of a DNS name that goes nowhere.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dead=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ctr sed -i -e "s/^listen = .*/listen = \"127.0.0.1:$port\"/" \
  -e 's/^host = "mqtt.example.com"/host = "127.0.0.1"/' -e "s/^port = 8883/port = $dead/" \
  /etc/gatewayd/gateway.toml
ctr /opt/gatewayd/current/bin/gatewayd check /etc/gatewayd/gateway.toml >/dev/null \
  || fail "gatewayd check of the edited example config"

# 5. Start: active, READY time, STATUS line, journal lines.
ts=$(now)
if ctr systemctl start gatewayd.service; then ok "systemctl start"; else fail "systemctl start: $(journal | tail -5)"; fi
figure "start_s=$(since "$ts") (systemctl start returns at READY=1)"
check "the service is active" [ "$(ctr systemctl is-active gatewayd.service)" = active ]
spawn=$(show ExecMainStartTimestampMonotonic)
ready=$(show ActiveEnterTimestampMonotonic)
figure "ready_s=$(python3 -c "print(f'{($ready - $spawn) / 1e6:.2f}')") (exec to READY=1)"
sleep 3
status_text=$(show StatusText)
[ -n "$status_text" ] && ok "STATUS line: $status_text" || fail "no STATUS= line"
lines=$(journal | wc -l)
[ "$lines" -ge 2 ] && ok "journal: $lines lines, e.g. $(journal | head -2 | tr '\n' '|')" \
  || fail "journal has $lines lines"

# 6. gatewayd status: root, a member of the gatewayd group, and someone else.
if ctr bash -lc 'gatewayd status' >"$run/status.out" 2>&1; then
  ok "gatewayd status as root ($(wc -l <"$run/status.out") lines)"
else
  fail "gatewayd status as root: $(head -3 "$run/status.out")"
fi
ctr useradd --create-home --groups gatewayd alice
ctr useradd --create-home bob
if ctr runuser -u alice -- bash -lc 'gatewayd status' >"$run/alice.out" 2>"$run/alice.err" \
  && ! [ -s "$run/alice.err" ]; then
  ok "gatewayd status as alice (group gatewayd), config read"
else
  fail "gatewayd status as alice: $(head -3 "$run/alice.err")"
fi
rc=0
ctr runuser -u bob -- bash -lc 'gatewayd status' >/dev/null 2>"$run/bob.err" || rc=$?
[ "$rc" != 127 ] && ok "gatewayd status as bob (no group) runs (exit $rc): $(head -1 "$run/bob.err")" \
  || fail "gatewayd status as bob: command not found"
ctr runuser -u alice -- cat /etc/gatewayd/device.key >/dev/null 2>&1 \
  && fail "alice (group gatewayd) can read the device key" || ok "the group may read the config, not the key"
ctr runuser -u bob -- cat /etc/gatewayd/gateway.toml >/dev/null 2>&1 \
  && fail "bob can read /etc/gatewayd/gateway.toml" || ok "bob cannot read the config"

# 7. Reload: same process, still active, logged.
pid=$(show MainPID)
n0=$(journal | wc -l)
check "systemctl reload" ctr systemctl reload gatewayd.service
sleep 2
[ "$(show MainPID)" = "$pid" ] && [ "$(ctr systemctl is-active gatewayd.service)" = active ] \
  && ok "reload kept PID $pid active" || fail "reload changed the process or state"
reload_lines=$(journal | tail -n +"$((n0 + 1))" | grep -ci reload || true)
[ "$reload_lines" -ge 1 ] && ok "the reload is in the journal" || fail "no journal line about the reload"

# 8. Hardening, live: the daemon's view of /dev/shm and /etc/gatewayd, and no EPERM/SIGSYS.
as_daemon() { ctr nsenter -t "$(show MainPID)" -m setpriv --reuid=gatewayd --regid=gatewayd --clear-groups "$@"; }
# Harmless if they succeed: the file is removed, the key's mode set to what it is (0600);
# chmod on a read-only mount fails (EROFS) whatever the mode.
as_daemon python3 -c 'import os; open("/dev/shm/gw-systest", "w"); os.unlink("/dev/shm/gw-systest")' 2>/dev/null \
  && fail "the daemon can write /dev/shm" || ok "/dev/shm is inaccessible to the daemon"
as_daemon python3 -c 'import os; os.chmod("/etc/gatewayd/device.key", 0o600)' 2>"$run/chmod.err" \
  && fail "the daemon can chmod its key" || ok "the key cannot be chmod-ed ($(tail -1 "$run/chmod.err" | sed 's/.*Error: //'))"
as_daemon python3 -c 'open("/etc/gatewayd/gateway.toml", "a")' 2>/dev/null \
  && fail "the daemon can write its config" || ok "the config is read-only to the daemon"
as_daemon python3 -c 'import os; open("/var/lib/gatewayd/.systest", "w"); os.unlink("/var/lib/gatewayd/.systest")' 2>/dev/null \
  && ok "the state directory is writable" || fail "the state directory is not writable"
# Self-update (gatewayd/lifecycle) writes new releases and their links, nothing else under /opt.
as_daemon python3 -c 'import os; os.mkdir("/opt/gatewayd/releases/.systest"); os.rmdir("/opt/gatewayd/releases/.systest")' 2>/dev/null \
  && ok "the releases directory is writable" || fail "the releases directory is not writable"
as_daemon python3 -c 'import os; os.symlink("x", "/opt/gatewayd/.systest")' 2>/dev/null \
  && fail "the daemon can write /opt/gatewayd" || ok "/opt/gatewayd itself is read-only to the daemon"
as_daemon sh -c 'touch /opt/gatewayd/current/bin/.systest' 2>/dev/null \
  && fail "the daemon can change the release install.sh made" || ok "the installed release is read-only to the daemon"
bad=$(journal | grep -Ei 'operation not permitted|EPERM|SIGSYS|bad system call|seccomp' || true)
[ -z "$bad" ] && ok "no EPERM or SIGSYS in the journal" || fail "journal: $bad"
check "no restarts so far" [ "$(show NRestarts)" = 0 ]

# 9. Serial adapters plugged in after start. A runtime drop-in adds the probe as ExecStartPost=:
# in the daemon's cgroup, as its user with dialout, under the device policy fixed at start. The
# nodes are made once the daemon runs, as udev would (group dialout, 0660). This kernel has no
# usbserial/cdc_acm driver, so a node the policy allows gives ENXIO, a refused one EPERM; 188:200
# (past the allowed minors) is the control that shows the policy is enforced at all.
dropins=/run/systemd/system/gatewayd.service.d
ctr mkdir -p "$dropins"
ctr sh -c "printf '[Service]\nExecStartPost=/usr/bin/python3 /mnt/gw/tests/system/open_probe.py /dev/ttyUSB0 /dev/ttyUSB9 /dev/ttyACM0 /dev/ttyUSB200\n' >$dropins/50-systest-probe.conf"
ctr systemctl daemon-reload
n0=$(journal | wc -l)
ctr systemctl restart --no-block gatewayd.service
for _ in $(seq 1 100); do
  journal | tail -n +"$((n0 + 1))" | grep -q 'open_probe: waiting' && break
  sleep 0.2
done
pid=$(show MainPID)
ctr sh -c 'mknod -m 0660 /dev/ttyUSB0 c 188 0 && mknod -m 0660 /dev/ttyUSB9 c 188 9 &&
  mknod -m 0660 /dev/ttyACM0 c 166 0 && mknod -m 0660 /dev/ttyUSB200 c 188 200 &&
  chgrp dialout /dev/ttyUSB0 /dev/ttyUSB9 /dev/ttyACM0 /dev/ttyUSB200'
for _ in $(seq 1 100); do [ "$(ctr systemctl is-active gatewayd.service)" = active ] && break; sleep 0.2; done
probe=$(journal | tail -n +"$((n0 + 1))" | grep '^open_probe: /dev' | sed 's/^open_probe: //' || true)
outside=$(ctr python3 -c 'import sys; sys.path.insert(0, "/mnt/gw/tests/system"); import open_probe; print(open_probe.probe("/dev/ttyUSB200"))')
echo "$probe" | sed 's/^/  in gatewayd.service, PID '"$pid"' running: /'
echo "  outside the unit, as root: /dev/ttyUSB200 $outside"
ctr nsenter -t "$pid" -m ls /dev/ttyUSB0 >/dev/null && ok "the daemon's /dev shows the new /dev/ttyUSB0" \
  || fail "/dev/ttyUSB0 is not visible in the daemon's mount namespace"
for node in /dev/ttyUSB0 /dev/ttyUSB9 /dev/ttyACM0; do
  r=$(echo "$probe" | awk -v n="$node" '$1 == n { print $2 }')
  [ -n "$r" ] && [ "$r" != EPERM ] && [ "$r" != EACCES ] \
    && ok "$node (made after start) passes the device policy ($r)" || fail "$node refused: ${r:-no result}"
done
[ "$(echo "$probe" | awk '$1 == "/dev/ttyUSB200" { print $2 }')" = EPERM ] && [ "$outside" = ENXIO ] \
  && ok "the device policy is enforced (188:200: EPERM in the unit, ENXIO outside)" \
  || fail "device policy not enforced here: 188:200 gave '$probe' / '$outside'"
ctr rm "$dropins/50-systest-probe.conf"

# 10. Watchdog: a stopped (SIGSTOP) process is killed and restarted. A 4 s watchdog (runtime
# drop-in) instead of the unit's 30 s, to keep the test short; the mechanism is the same.
ctr sh -c "printf '[Service]\nWatchdogSec=4\n' >$dropins/50-systest-watchdog.conf"
ctr systemctl daemon-reload
ctr systemctl restart gatewayd.service
pid=$(show MainPID)
restarts=$(show NRestarts)
tw=$(now)
ctr sh -c "kill -STOP $pid"
newpid=$pid
for _ in $(seq 1 120); do
  newpid=$(show MainPID)
  [ "$newpid" != "$pid" ] && [ "$newpid" != 0 ] && [ "$(ctr systemctl is-active gatewayd.service)" = active ] && break
  sleep 0.5
done
if [ "$newpid" != "$pid" ] && [ "$(show NRestarts)" -gt "$restarts" ]; then
  ok "watchdog killed the stopped PID $pid and restarted it as $newpid"
  figure "watchdog_restart_s=$(since "$tw") (SIGSTOP to active again; WatchdogSec=4, RestartSec=2)"
else
  fail "no watchdog restart: $(journal | tail -3)"
fi
logged=no
for _ in $(seq 1 25); do
  ctr journalctl -u gatewayd.service --no-pager | grep -qi 'watchdog timeout' && { logged=yes; break; }
  sleep 0.2
done
[ "$logged" = yes ] && ok "journal: watchdog timeout logged" \
  || fail "no 'Watchdog timeout' in the journal: $(ctr journalctl -u gatewayd.service --no-pager | grep -i -e watchdog -e signal | tail -3)"
ctr rm "$dropins/50-systest-watchdog.conf"
ctr systemctl daemon-reload

# 10b. Self-update under systemd (gatewayd/lifecycle): the host plays the operator
# (update_e2e.py: mosquitto, an HTTP server with the release's wheels, a signed update command);
# the daemon, hardened, builds /opt/gatewayd/releases/0.2.0, switches `current`, exits 75, and
# systemd's Restart= starts 0.2.0, which must report healthy. Then 0.3.0, which dies at every
# start: the start check (ExecStartPre, from 0.2.0) must bring 0.2.0 back.
py=${GATEWAYD_SYSTEST_PYTHON:-$REPO/.venv/bin/python}
if [ -x "$py" ]; then
  upd=$run/update
  tu=$(now)
  if "$py" "$REPO/tests/system/update_e2e.py" prepare "$upd" >"$run/update-prepare.log" 2>&1; then
    figure "update_prepare_s=$(since "$tu") (wheels of 0.2.0, 0.3.0 and their dependencies, on the host)"
    bport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$py" "$REPO/tests/system/update_e2e.py" config "$upd" "$bport" | ctr sh -c 'cat >/etc/gatewayd/gateway.toml'
    ctr sh -c 'cat >/etc/gatewayd/release.pub && chmod 0644 /etc/gatewayd/release.pub' <"$upd/release.pub"
    ctr systemctl restart gatewayd.service
    restarts=$(show NRestarts)
    "$py" "$REPO/tests/system/update_e2e.py" run "$upd" "$bport" >"$run/update-run.log" 2>&1 || true
    cat "$run/update-run.log" | grep -E '^(ok|FAIL|figure): ' || fail "update_e2e.py: $(tail -3 "$run/update-run.log")"
    fails=$((fails + $(grep -c '^FAIL: ' "$run/update-run.log" || true)))
    # After 0.2.0 was applied, 0.3.0 (which dies at start) was tried and rolled back.
    [ "$(ctr readlink /opt/gatewayd/releases/current)" = 0.2.0 ] \
      && [ "$(ctr readlink /opt/gatewayd/releases/previous)" = 0.2.0 ] \
      && ok "releases/current -> 0.2.0 again, and previous -> 0.2.0 (what installed 0.3.0)" \
      || fail "links after the updates: current=$(ctr readlink /opt/gatewayd/releases/current) previous=$(ctr readlink /opt/gatewayd/releases/previous)"
    [ "$(show NRestarts)" -gt "$restarts" ] && [ "$(ctr systemctl is-active gatewayd.service)" = active ] \
      && ok "systemd restarted it on exit 75 and it is active" || fail "no restart through systemd (NRestarts=$(show NRestarts))"
    ctr stat -c %U /opt/gatewayd/releases/0.2.0/bin/python >"$run/owner" 2>/dev/null
    [ "$(cat "$run/owner")" = gatewayd ] && ok "the daemon built releases/0.2.0 as its own user" \
      || fail "releases/0.2.0 owner: $(cat "$run/owner")"
  else
    fail "update_e2e.py prepare: $(tail -3 "$run/update-prepare.log")"
  fi
else
  fail "no host python with paho and cryptography for the update step ($py); set GATEWAYD_SYSTEST_PYTHON"
fi

# 11. Stop: clean exit within TimeoutStopSec (the figure is reported, not asserted).
tstop=$(now)
ctr systemctl stop gatewayd.service
figure "stop_s=$(since "$tstop") (systemctl stop, goal <= 5 s)"
[ "$(show Result)" = success ] && [ "$(show ExecMainStatus)" = 0 ] \
  && ok "stopped cleanly (exit 0, not killed)" \
  || fail "stop: Result=$(show Result) ExecMainStatus=$(show ExecMainStatus)"
bad=$(journal | grep -v '^open_probe' | grep -Ei 'operation not permitted|EPERM|SIGSYS|bad system call|seccomp' || true)
[ -z "$bad" ] && ok "still no EPERM or SIGSYS in the journal after reload, restarts and stop" || fail "journal: $bad"

# 12. The 32-bit Pi OS way, on this amd64 root: Debian's cryptography and cffi in a venv with
# system site packages, wheels only for everything else. The config and key are kept.
pub=$(cat "$run/install.out")
check "install.sh --uninstall (keep config)" ctr bash /mnt/gw/systemd/install.sh --uninstall
if ctr env "${envs[@]}" bash /mnt/gw/systemd/install.sh --system-crypto >"$run/install2.out" 2>"$run/install2.err"; then
  ok "install.sh --system-crypto"
else
  fail "install.sh --system-crypto: $(tail -5 "$run/install2.err")"
fi
[ "$(cat "$run/install2.out")" = "$pub" ] && ok "the device key was kept" \
  || fail "the public key changed: $(diff "$run/install.out" "$run/install2.out" | head -5)"
crypto=$(ctr /opt/gatewayd/current/bin/python -c 'import cffi, cryptography, jwt; print(cryptography.__file__, cffi.__file__)' || true)
case "$crypto" in /usr/lib/python3/dist-packages/*" /usr/lib/python3/dist-packages/"*) ok "cryptography and cffi from Debian" ;;
  *) fail "cryptography/cffi not Debian's: $crypto" ;; esac
ctr systemctl start gatewayd.service && [ "$(ctr systemctl is-active gatewayd.service)" = active ] \
  && ok "the --system-crypto install starts" || fail "the --system-crypto install does not start: $(journal | tail -3)"
ctr systemctl stop gatewayd.service

# 13. Uninstall and purge: nothing left.
check "install.sh --uninstall --purge" ctr bash /mnt/gw/systemd/install.sh --uninstall --purge
for p in /etc/systemd/system/gatewayd.service /opt/gatewayd /etc/gatewayd /var/lib/gatewayd \
  /usr/local/bin/gatewayd /etc/systemd/system/multi-user.target.wants/gatewayd.service; do
  ctr test ! -e "$p" -a ! -L "$p" && ok "removed $p" || fail "left $p"
done
ctr getent passwd gatewayd >/dev/null && fail "user gatewayd left" || ok "user gatewayd removed"
ctr getent group gatewayd >/dev/null && fail "group gatewayd left" || ok "group gatewayd removed (it had a member)"
[ "$(ctr systemctl show -P LoadState gatewayd.service)" = not-found ] && ok "systemd no longer knows gatewayd.service" \
  || fail "gatewayd.service LoadState=$(ctr systemctl show -P LoadState gatewayd.service)"

figure "systest_total_s=$(since "$t0")"
echo "$fails failed check(s)"
exit $((fails > 100 ? 100 : fails))
