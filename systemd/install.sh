#!/usr/bin/env bash
# Install gatewayd as a systemd service on Raspberry Pi OS Bookworm / Debian 12.
#
#   sudo systemd/install.sh                 install or upgrade (idempotent), print the public key;
#                                           `gatewayd` on PATH (/usr/local/bin) for root and for
#                                           members of the gatewayd group (they may read the config)
#   sudo systemd/install.sh --uninstall     remove the unit and every release; keep config, key,
#                                           buffer
#   sudo systemd/install.sh --uninstall --purge   also remove /etc/gatewayd, /var/lib/gatewayd, user
#   systemd/install.sh --root DIR           stage into DIR (testing): system changes that need
#                                           root (apt-get, useradd, chown, pip, systemctl) are
#                                           written to DIR/install-actions.log instead of run
#
# Options: --alg ES256|RS256 (new device key, default ES256), --source DIR (what pip installs,
# default: this repository; it is copied first, so a read-only checkout works and no build files
# are left in it), --system-crypto (use Debian's python3-cryptography and python3-cffi through a
# venv with --system-site-packages; the default on 32-bit ARM (dpkg architecture armhf/armel),
# where PyPI has no wheel for cffi, on armv6l for cryptography either, and pip would need a
# compiler). Re-running never overwrites the config or the device key.
#
# Layout (gatewayd/lifecycle, self-update): one venv per version, the unit runs `current`:
#   /opt/gatewayd/releases/<version>/      a venv; `.complete` marks it usable
#   /opt/gatewayd/releases/current -> V    switched by the daemon on update (rename, atomic)
#   /opt/gatewayd/releases/previous -> V   the way back; runs the start check (ExecStartPre)
#   /opt/gatewayd/current -> releases/current   what ExecStart and /usr/local/bin/gatewayd use
# The service user may write /opt/gatewayd/releases (new releases) and nothing else there.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(dirname "$here")
root=""
mode=install
purge=no
alg=ES256
system_crypto=auto

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$(realpath -m "${2:?--root needs a directory}"); shift 2 ;;
    --uninstall) mode=uninstall; shift ;;
    --purge) purge=yes; shift ;;
    --alg) alg=${2:?--alg needs ES256 or RS256}; shift 2 ;;
    --source) source_dir=${2:?--source needs a directory}; shift 2 ;;
    --system-crypto) system_crypto=yes; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 >&2 ;;
  esac
done
case "$alg" in ES256|RS256) ;; *) echo "install.sh: --alg must be ES256 or RS256" >&2; exit 2 ;; esac

USER_NAME=gatewayd
OPT=$root/opt/gatewayd
RELEASES=$OPT/releases
CURRENT_BIN=/opt/gatewayd/current/bin/gatewayd
OLD_VENV_BIN=/opt/gatewayd/venv/bin/gatewayd  # the layout before releases/
ETC=$root/etc/gatewayd
STATE=$root/var/lib/gatewayd
UNIT=$root/etc/systemd/system/gatewayd.service
KEY=$ETC/device.key
LINK=$root/usr/local/bin/gatewayd
ACTIONS=$root/install-actions.log

if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo), or use --root DIR to stage into a directory" >&2
  exit 1
fi

# Run a command that changes the system; in --root mode only record it, with the paths it would
# touch on the real system (the staging prefix removed).
sys() {
  if [ -n "$root" ]; then
    local a line=""
    for a in "$@"; do line+=$(printf '%q ' "${a//"$root"/}"); done
    printf '%s\n' "${line% }" >>"$ACTIONS"
  else
    "$@"
  fi
}
say() { printf 'gatewayd install: %s\n' "$*" >&2; }

do_uninstall() {
  if [ -n "$root" ] || command -v systemctl >/dev/null; then
    sys systemctl disable --now gatewayd.service || true
  fi
  rm -f "$UNIT"
  sys systemctl daemon-reload || true
  # Only our own link: never a gatewayd installed some other way.
  if [ -L "$LINK" ] && { [ "$(readlink "$LINK")" = "$CURRENT_BIN" ] \
    || [ "$(readlink "$LINK")" = "$OLD_VENV_BIN" ]; }; then
    rm -f "$LINK"
  fi
  rm -rf "$OPT"
  if [ "$purge" = yes ]; then
    rm -rf "$ETC" "$STATE"
    if [ -n "$root" ] || getent passwd "$USER_NAME" >/dev/null; then
      sys userdel "$USER_NAME"
    fi
    # userdel keeps the group while people are members of it (added for `gatewayd status`).
    if [ -n "$root" ] || getent group "$USER_NAME" >/dev/null; then
      sys groupdel "$USER_NAME" || true
    fi
    say "removed the service, the releases, the config with the device key, the buffer and the user"
  else
    say "removed the service and the releases; kept $ETC (config, device key) and $STATE (buffer);"
    say "run again with --uninstall --purge to remove those too"
  fi
}

do_install() {
  [ -n "$root" ] && mkdir -p "$root" && : >"$ACTIONS"

  # 1. Python venv support (the Lite image may lack it); on 32-bit ARM, Debian's cryptography.
  # The userland decides, not the kernel: 32-bit Pi OS on a Pi 3/4/5 runs a 64-bit kernel
  # (uname -m: aarch64) under an armhf Python, which needs armv7l wheels.
  if [ "$system_crypto" = auto ]; then
    system_crypto=no
    case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
      armhf|armel|armv6l|armv7l|armv8l) system_crypto=yes ;;
    esac
  fi
  local debs=() venv_opts=() pip_opts=()
  if [ -n "$root" ] || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    debs+=(python3-venv)
  fi
  if [ "$system_crypto" = yes ]; then
    say "using Debian's python3-cryptography and python3-cffi (no compiler needed)"
    debs+=(python3-cryptography python3-cffi)
    venv_opts+=(--system-site-packages)
    # Wheels only, so a missing one fails here with its name instead of starting a compiler.
    pip_opts+=(--only-binary=:all:)
  fi
  if [ ${#debs[@]} -gt 0 ]; then
    # stdout is for the public key only.
    sys apt-get install -y --no-install-recommends "${debs[@]}" >&2
  fi

  # 2. The service user: no login, no home of its own beyond the state directory.
  if [ -n "$root" ] || ! getent passwd "$USER_NAME" >/dev/null; then
    sys useradd --system --user-group --home-dir /var/lib/gatewayd --no-create-home \
      --shell /usr/sbin/nologin --comment "gatewayd edge gateway" "$USER_NAME"
  fi

  # 3. This version's venv under /opt/gatewayd/releases, upgraded in place when it is re-run.
  local version
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$source_dir/pyproject.toml" | head -n 1)
  if [ -z "$version" ]; then
    echo "install.sh: no version = \"...\" in $source_dir/pyproject.toml" >&2
    exit 1
  fi
  local VENV=$RELEASES/$version
  mkdir -p "$RELEASES"
  chmod 0755 "$OPT" "$RELEASES"
  # The daemon builds new releases here (and only here): the directory is the service user's,
  # the releases installed by this script stay root's.
  sys chown "$USER_NAME:$USER_NAME" "$RELEASES"
  local want_ssp=false
  [ "$system_crypto" = yes ] && want_ssp=true
  if [ -e "$VENV/pyvenv.cfg" ] \
    && ! grep -qx "include-system-site-packages = $want_ssp" "$VENV/pyvenv.cfg"; then
    say "recreating $VENV (include-system-site-packages changes to $want_ssp)"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    sys python3 -m venv "${venv_opts[@]}" "$VENV"
  fi
  # pip builds inside the source folder (build/, *.egg-info): build from a throw-away copy, of
  # the sources only (no venvs, such as the tests' .venv-sdk/ that may change as it is read,
  # and no tool caches).
  build_copy=$(mktemp -d "${TMPDIR:-/tmp}/gatewayd-install.XXXXXX")
  trap 'rm -rf "$build_copy"' EXIT
  tar -C "$source_dir" --exclude=./.git --exclude='./.venv*' --exclude=./build \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude='./.*_cache' \
    --exclude=./.hypothesis -cf - . | tar -C "$build_copy" -xf -
  sys "$VENV/bin/pip" install --quiet --disable-pip-version-check "${pip_opts[@]}" --upgrade \
    "$build_copy"
  rm -rf "$build_copy"
  trap - EXIT
  mkdir -p "$VENV"  # (staging: only recorded above)
  echo install >"$VENV/.complete"
  # Links by rename, as the daemon switches them: a reader sees the old or the new one.
  local old
  old=$(readlink "$RELEASES/current" 2>/dev/null || true)
  if [ -n "$old" ] && [ "$old" != "$version" ] && [ -e "$RELEASES/$old/.complete" ]; then
    ln -sfn "$old" "$RELEASES/.previous.tmp" && mv -T "$RELEASES/.previous.tmp" "$RELEASES/previous"
  elif [ ! -e "$RELEASES/previous" ]; then
    ln -sfn "$version" "$RELEASES/.previous.tmp" && mv -T "$RELEASES/.previous.tmp" "$RELEASES/previous"
  fi
  ln -sfn "$version" "$RELEASES/.current.tmp" && mv -T "$RELEASES/.current.tmp" "$RELEASES/current"
  ln -sfn releases/current "$OPT/.current.tmp" && mv -T "$OPT/.current.tmp" "$OPT/current"
  rm -rf "$OPT/venv"  # the layout before releases/
  mkdir -p "$(dirname "$LINK")"
  ln -sfn "$CURRENT_BIN" "$LINK"

  # 4. /etc/gatewayd: root owns it, the service group may read it.
  mkdir -p "$ETC"
  chmod 0750 "$ETC"
  sys chown root:"$USER_NAME" "$ETC"
  if [ ! -e "$ETC/gateway.toml" ]; then
    install -m 0640 "$source_dir/config/examples/gateway.toml" "$ETC/gateway.toml"
    sys chown root:"$USER_NAME" "$ETC/gateway.toml"
    say "wrote the example configuration to $ETC/gateway.toml: edit it for this site"
  else
    say "kept the existing $ETC/gateway.toml"
  fi

  # 5. The device key: created once, mode 0600, owned by the service user who signs with it.
  local gatewayd
  if [ -x "$VENV/bin/gatewayd" ]; then
    gatewayd=$VENV/bin/gatewayd
  elif [ -n "$root" ] && command -v gatewayd >/dev/null; then
    gatewayd=$(command -v gatewayd)  # staging: the venv was only recorded, use the one at hand
  else
    echo "install.sh: no gatewayd executable found (expected $VENV/bin/gatewayd)" >&2
    exit 1
  fi
  local pub
  if [ -e "$KEY" ]; then
    pub=$("$gatewayd" keygen --alg "$alg" --out "$KEY" --reuse)
  else
    pub=$(umask 077 && "$gatewayd" keygen --alg "$alg" --out "$KEY")
    say "created the device key $KEY ($alg)"
  fi
  chmod 0600 "$KEY"
  sys chown "$USER_NAME:$USER_NAME" "$KEY"
  printf '%s\n' "$pub" >"$ETC/device.pub"
  chmod 0644 "$ETC/device.pub"

  # 6. The unit: installed, enabled; restarted only if it was already running (an upgrade).
  mkdir -p "$(dirname "$UNIT")"
  install -m 0644 "$here/gatewayd.service" "$UNIT"
  sys systemctl daemon-reload
  sys systemctl enable gatewayd.service
  sys systemctl try-restart gatewayd.service

  say "installed. Register this public key for the device in the cloud, then start the service:"
  say "  systemctl start gatewayd && gatewayd status"
  say "gatewayd status works for root and for members of the $USER_NAME group:"
  say "  usermod -aG $USER_NAME USER   (then log in again)"
  printf '%s\n' "$pub"
}

if [ "$mode" = uninstall ]; then do_uninstall; else do_install; fi
