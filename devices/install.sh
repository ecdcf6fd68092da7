#!/usr/bin/env bash
# Install edge-runtime as a systemd service on a Debian-based board (Raspberry Pi OS, Debian,
# Ubuntu, Mendel). Idempotent: a second run with the same inputs changes nothing.
#
#   sudo devices/install.sh [--profile NAME] [--wheel FILE | --source DIR] [--python PYTHON]
#                           [--no-apt] [--prefix DIR]
#   sudo devices/install.sh --uninstall [--purge] [--prefix DIR]
#
# What it installs:
#   /opt/edge-runtime/venv                     a venv with the package (from --wheel, or built
#                                              from --source, default: the repository this
#                                              script lives in)
#   /etc/systemd/system/edge-runtime.service   the unit (then daemon-reload + enable)
#   /etc/edge-runtime/profiles/*.toml          the board profiles shipped beside this script
#   /etc/edge-runtime/config.toml              only when there is none: a starter config with
#                                              include = ["NAME"] (--profile NAME), 0640
#                                              root:edge-runtime; an existing one is never touched
#   /etc/sysusers.d/edge-runtime.conf          the system user edge-runtime (groups video,
#                                              dialout, plugdev), created with systemd-sysusers
#   /var/lib/edge-runtime                      the state directory (0700, edge-runtime)
#   system packages                            python3, python3-venv, python3-pip (apt-get;
#                                              skipped with --no-apt or when present)
#
# Options:
#   --profile NAME   board profile for the starter config (see /etc/edge-runtime/profiles/)
#   --wheel FILE     install this wheel instead of building the source tree
#   --source DIR     build the package from this source tree (default: this script's repo)
#   --python PYTHON  interpreter for the venv (default: python3; needs 3.10 or newer)
#   --no-apt         do not install system packages
#   --prefix DIR     install under DIR as a throwaway root (tests, image staging): every path
#                    above goes under DIR, the user goes into DIR/etc/passwd and DIR/etc/group
#                    (systemd-sysusers --root), and nothing outside DIR is changed: no apt-get,
#                    no systemctl, no user on the host. The venv works in place (DIR/opt/...)
#                    but is not relocatable: install on the board itself for production.
#   --uninstall      remove the venv, the unit, the profiles and the sysusers entry; keep
#                    /etc/edge-runtime/config.toml, /var/lib/edge-runtime and the user
#   --purge          with --uninstall: also remove /etc/edge-runtime and /var/lib/edge-runtime
#                    (the user stays, as with Debian packages: `userdel edge-runtime`)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAME=edge-runtime
UNIT=$NAME.service
SERVICE_USER=$NAME
GROUPS_EXTRA=(video dialout plugdev)
APT_PACKAGES=(python3 python3-venv python3-pip)
MIN_PYTHON=3.10

PREFIX=""
WHEEL=""
SOURCE=""
PROFILE=""
PYTHON=python3
APT=1
UNINSTALL=0
PURGE=0
CHANGED=0        # set to 1 by every step that changed something

log() { printf '[install.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --wheel) WHEEL=${2:?--wheel needs a file}; shift 2 ;;
    --wheel=*) WHEEL=${1#*=}; shift ;;
    --source) SOURCE=${2:?--source needs a directory}; shift 2 ;;
    --source=*) SOURCE=${1#*=}; shift ;;
    --profile) PROFILE=${2:?--profile needs a name}; shift 2 ;;
    --profile=*) PROFILE=${1#*=}; shift ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --python=*) PYTHON=${1#*=}; shift ;;
    --no-apt) APT=0; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

[ -n "$WHEEL" ] && [ -n "$SOURCE" ] && die "--wheel and --source exclude each other"
[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && die "--purge goes with --uninstall"
[ -n "$PREFIX" ] || [ "$(id -u)" = 0 ] || die "run as root (sudo $0 ...), or install under --prefix DIR"
if [ -n "$PREFIX" ]; then
  mkdir -p "$PREFIX"
  PREFIX=$(cd "$PREFIX" && pwd)
  [ "$PREFIX" != / ] || die "--prefix / is the host itself: leave --prefix out"
  APT=0   # nothing outside the prefix is changed
fi

# The paths on the target system, and where this run writes them.
OPT_DIR=/opt/$NAME
VENV=$OPT_DIR/venv
ETC_DIR=/etc/$NAME
CONFIG=$ETC_DIR/config.toml
PROFILE_DIR=$ETC_DIR/profiles
UNIT_DIR=/etc/systemd/system
SYSUSERS_DIR=/etc/sysusers.d
STATE_DIR=/var/lib/$NAME
at() { printf '%s%s' "$PREFIX" "$1"; }

# Shipped profiles: every *.toml beside this script but the embedded demo's config.
shipped_profiles() {
  local f
  for f in "$SCRIPT_DIR"/*.toml; do
    [ -e "$f" ] || continue
    [ "$(basename "$f")" = demo.toml ] && continue
    printf '%s\n' "$f"
  done
}

systemd_running() { [ -z "$PREFIX" ] && [ -d /run/systemd/system ]; }

# -- write-if-different helpers ----------------------------------------------------------------

# install_file SRC DEST MODE [OWNER:GROUP]: copy only when the content differs; fix the mode and
# owner only when they differ, so an unchanged file keeps its mtime and ctime.
install_file() {
  local src=$1 dest=$2 mode=$3 owner=${4:-}
  mkdir -p "$(dirname "$dest")"
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    :
  else
    local tmp
    tmp=$(mktemp "$dest.XXXXXX")
    cat "$src" > "$tmp"
    chmod "$mode" "$tmp"
    [ -z "$owner" ] || chown "$owner" "$tmp"
    mv -f "$tmp" "$dest"
    log "wrote $dest"
    CHANGED=1
    return 0
  fi
  if [ "$(stat -c %a "$dest")" != "${mode#0}" ]; then chmod "$mode" "$dest"; CHANGED=1; fi
  if [ -n "$owner" ] && [ "$(stat -c %U:%G "$dest")" != "$owner" ]; then chown "$owner" "$dest"; CHANGED=1; fi
}

# write_file DEST MODE [OWNER:GROUP] < content
write_file() {
  local tmp
  tmp=$(mktemp)
  cat > "$tmp"
  install_file "$tmp" "$@"
  rm -f "$tmp"
}

ensure_dir() {  # ensure_dir DIR MODE [OWNER:GROUP]
  local dir=$1 mode=$2 owner=${3:-}
  if [ ! -d "$dir" ]; then mkdir -p "$dir"; CHANGED=1; log "created $dir"; fi
  if [ "$(stat -c %a "$dir")" != "${mode#0}" ]; then chmod "$mode" "$dir"; CHANGED=1; fi
  if [ -n "$owner" ] && [ "$(stat -c %U:%G "$dir")" != "$owner" ]; then chown "$owner" "$dir"; CHANGED=1; fi
}

remove() {  # remove PATH...: rm -rf, logged, only what exists
  local p
  for p in "$@"; do
    if [ -e "$p" ] || [ -L "$p" ]; then rm -rf -- "$p"; log "removed $p"; CHANGED=1; fi
  done
}

rmdir_empty() { local d; for d in "$@"; do [ -d "$d" ] && rmdir --ignore-fail-on-non-empty "$d"; done; return 0; }

# -- steps -------------------------------------------------------------------------------------

apt_ensure() {
  [ "$APT" = 1 ] || return 0
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them, then use --no-apt"
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  CHANGED=1
}

check_python() {
  command -v "$PYTHON" >/dev/null || die "no Python interpreter '$PYTHON' (--python PYTHON)"
  PYTHON=$(command -v "$PYTHON")
  "$PYTHON" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" ||
    die "$PYTHON is Python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); edge-runtime needs $MIN_PYTHON or newer (--python PYTHON)"
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
    die "$PYTHON cannot create venvs: apt-get install python3-venv (or leave out --no-apt)"
}

# The package to install: a wheel as given, or the source tree copied to a scratch folder (so the
# build leaves no build/ or *.egg-info in the repository). Sets PKG_TARGET and PKG_DIGEST.
prepare_package() {
  if [ -n "$WHEEL" ]; then
    [ -f "$WHEEL" ] || die "no such wheel: $WHEEL"
    PKG_TARGET=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
    PKG_DIGEST="wheel $(sha256sum < "$PKG_TARGET" | cut -d' ' -f1)"
    return 0
  fi
  local src=${SOURCE:-$SCRIPT_DIR/..}
  [ -f "$src/pyproject.toml" ] || die "no pyproject.toml in $src (--source DIR or --wheel FILE)"
  src=$(cd "$src" && pwd)
  local items=() item
  for item in pyproject.toml setup.cfg setup.py MANIFEST.in README.md LICENSE edge_runtime; do
    [ -e "$src/$item" ] && items+=("$item")
  done
  PKG_TARGET=$WORK/src
  mkdir -p "$PKG_TARGET"
  tar -C "$src" --exclude=__pycache__ --exclude='*.pyc' -cf - "${items[@]}" | tar -C "$PKG_TARGET" -xf -
  PKG_DIGEST="source $(cd "$PKG_TARGET" && find . -type f -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
}

install_venv() {
  local venv stamp want
  venv=$(at "$VENV")
  stamp=$venv/.edge-runtime-install
  want="python $("$PYTHON" -c 'import sys; print(sys.version.split()[0], sys.base_prefix)')
package $PKG_DIGEST"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/edge-runtime" ] &&
     PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -B -c 'import edge_runtime' 2>/dev/null; then
    log "venv $venv is up to date"
    return 0
  fi
  if [ -d "$venv" ] && ! { [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "$(head -n1 <<<"$want")" ] &&
                           [ -x "$venv/bin/python" ]; }; then
    log "recreating $venv (another Python, or not a complete install)"
    rm -rf "$venv"
  fi
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $PYTHON"
    mkdir -p "$(dirname "$venv")"
    "$PYTHON" -m venv "$venv"
  fi
  local wheel=$PKG_TARGET
  if [ -d "$PKG_TARGET" ]; then
    log "building the package from ${SOURCE:-$SCRIPT_DIR/..}"
    "$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WORK/dist" "$PKG_TARGET"
    wheel=$(find "$WORK/dist" -name '*.whl' | head -n1)
  fi
  log "installing $(basename "$wheel") and its dependencies into $venv"
  local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input --no-warn-script-location)
  "${pip[@]}" "$wheel"
  # The same version may already be there from an earlier build: make it exactly this one.
  "${pip[@]}" --no-deps --force-reinstall "$wheel"
  printf '%s\n' "$want" > "$stamp"
  CHANGED=1
}

install_unit() {
  UNIT_CHANGED=0
  local before=$CHANGED
  CHANGED=0
  install_file "$SCRIPT_DIR/$UNIT" "$(at "$UNIT_DIR/$UNIT")" 0644
  UNIT_CHANGED=$CHANGED
  CHANGED=$((before | CHANGED))
}

install_profiles() {
  local f
  ensure_dir "$(at "$ETC_DIR")" 0755
  ensure_dir "$(at "$PROFILE_DIR")" 0755
  while IFS= read -r f; do
    install_file "$f" "$(at "$PROFILE_DIR/$(basename "$f")")" 0644
  done < <(shipped_profiles)
}

install_user() {
  write_file "$(at "$SYSUSERS_DIR/$NAME.conf")" 0644 <<EOF
# The system user of edge-runtime.service (written by edge-runtime's install.sh).
u $SERVICE_USER - "edge-runtime inference daemon" $STATE_DIR
$(for g in "${GROUPS_EXTRA[@]}"; do printf 'm %s %s\n' "$SERVICE_USER" "$g"; done)
EOF
  if user_complete; then return 0; fi
  if command -v systemd-sysusers >/dev/null; then
    log "creating the system user $SERVICE_USER (groups ${GROUPS_EXTRA[*]})"
    if [ -n "$PREFIX" ]; then
      mkdir -p "$PREFIX/etc"
      systemd-sysusers --root="$PREFIX" "$PREFIX$SYSUSERS_DIR/$NAME.conf"
    else
      systemd-sysusers "$SYSUSERS_DIR/$NAME.conf"
    fi
  elif [ -z "$PREFIX" ]; then
    log "creating the system user $SERVICE_USER with useradd (no systemd-sysusers)"
    local g
    for g in "${GROUPS_EXTRA[@]}"; do getent group "$g" >/dev/null || groupadd --system "$g"; done
    getent passwd "$SERVICE_USER" >/dev/null ||
      useradd --system --user-group --no-create-home --home-dir "$STATE_DIR" \
        --shell /usr/sbin/nologin --comment "edge-runtime inference daemon" "$SERVICE_USER"
    usermod -a -G "$(IFS=,; echo "${GROUPS_EXTRA[*]}")" "$SERVICE_USER"
  else
    die "systemd-sysusers is needed to create the user under --prefix (apt-get install systemd)"
  fi
  user_complete || die "user $SERVICE_USER was not created with groups ${GROUPS_EXTRA[*]}"
  CHANGED=1
}

# The user exists and is in every extra group (read from the target's own files).
user_complete() {
  local passwd group g members
  passwd=$(at /etc/passwd)
  group=$(at /etc/group)
  [ -f "$passwd" ] && [ -f "$group" ] || return 1
  grep -q "^$SERVICE_USER:" "$passwd" || return 1
  for g in "${GROUPS_EXTRA[@]}"; do
    members=$(grep "^$g:" "$group" | cut -d: -f4)
    [[ ",$members," == *",$SERVICE_USER,"* ]] || return 1
  done
}

install_state_dir() {
  if [ -n "$PREFIX" ]; then
    ensure_dir "$(at "$STATE_DIR")" 0700
  else
    ensure_dir "$STATE_DIR" 0700 "$SERVICE_USER:$SERVICE_USER"
  fi
}

install_config() {
  local config
  config=$(at "$CONFIG")
  if [ -e "$config" ]; then
    [ -z "$PROFILE" ] || log "$CONFIG exists: left as it is (--profile $PROFILE not applied)"
    return 0
  fi
  if [ -z "$PROFILE" ]; then
    log "no $CONFIG yet: rerun with --profile NAME for a starter config, or write your own" \
        "(profiles: $(shipped_profiles | xargs -n1 basename | sed 's/\.toml$//' | xargs))"
    return 0
  fi
  [ -f "$(at "$PROFILE_DIR/$PROFILE.toml")" ] ||
    die "unknown profile '$PROFILE'; known: $(shipped_profiles | xargs -n1 basename | sed 's/\.toml$//' | xargs)"
  local owner=""
  [ -n "$PREFIX" ] || owner="root:$SERVICE_USER"
  write_file "$config" 0640 "$owner" <<EOF
# edge-runtime configuration, written once by install.sh and never overwritten by it.
#
# The board profile $PROFILE_DIR/$PROFILE.toml is merged UNDER this file: tables merge
# key by key, a value here wins, lists (pipelines, delegates) are replaced whole. Copy what you
# change from the profile: its camera, pipeline and model are placeholders (the bundled digits
# model keeps it valid anywhere). Check with:
#   $VENV/bin/edge-runtime validate-config $CONFIG
# then: systemctl restart edge-runtime (or reload: SIGHUP re-reads this file).
include = ["$PROFILE"]

[device]
# id = "cam-01"                  # default: the hostname

# [mqtt]
# host = "broker.example.net"
# port = 8883
# username = "cam-01"
# password_file = "/etc/edge-runtime/mqtt-password"   # 0640 root:edge-runtime
# tls = { ca = "/etc/ssl/certs/ca-certificates.crt" }

# [[pipelines]]                  # replaces the profile's pipelines
# name = "detect"
# trigger = "camera"
# [[pipelines.models]]
# path = "/var/lib/edge-runtime/models/detector_int8_edgetpu.tflite"
# inputs = [{ kind = "image", source = "camera", resize = "letterbox" }]
# postprocess = { type = "detection", labels = "/var/lib/edge-runtime/models/labels.txt" }
EOF
}

enable_service() {
  if [ -n "$PREFIX" ]; then return 0; fi
  if ! systemd_running; then
    log "systemd is not running here: on the booted board run: systemctl enable --now $UNIT"
    return 0
  fi
  [ "$UNIT_CHANGED" = 0 ] || systemctl daemon-reload
  if ! systemctl is-enabled --quiet "$UNIT" 2>/dev/null; then
    systemctl enable "$UNIT"
    CHANGED=1
  fi
  # A running service picks up a new package or unit now; a stopped one is left stopped.
  if [ "$CHANGED" = 1 ] && systemctl is-active --quiet "$UNIT"; then
    log "restarting the running $UNIT"
    systemctl try-restart "$UNIT"
  fi
}

validate_config() {
  # Without a prefix the installed binary finds the profiles in /etc/edge-runtime/profiles.
  [ -z "$PREFIX" ] && [ -f "$CONFIG" ] || return 0
  if ! "$VENV/bin/edge-runtime" validate-config "$CONFIG" >&2; then
    log "warning: $CONFIG does not validate: the service will not start until it does"
  fi
}

do_install() {
  apt_ensure
  check_python
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  prepare_package
  install_user
  install_venv
  install_unit
  install_profiles
  install_state_dir
  install_config
  enable_service
  validate_config
  if [ "$CHANGED" = 1 ]; then log "installed${PREFIX:+ under $PREFIX}"; else log "nothing to change${PREFIX:+ under $PREFIX}"; fi
}

do_uninstall() {
  if systemd_running && [ -e "$UNIT_DIR/$UNIT" ]; then
    systemctl disable --now "$UNIT" || true
  fi
  remove "$(at "$UNIT_DIR/$UNIT")"
  if systemd_running; then systemctl daemon-reload; fi
  remove "$(at "$VENV")"
  rmdir_empty "$(at "$OPT_DIR")"
  local f
  while IFS= read -r f; do remove "$(at "$PROFILE_DIR/$(basename "$f")")"; done < <(shipped_profiles)
  rmdir_empty "$(at "$PROFILE_DIR")"
  remove "$(at "$SYSUSERS_DIR/$NAME.conf")"
  if [ "$PURGE" = 1 ]; then
    remove "$(at "$ETC_DIR")" "$(at "$STATE_DIR")"
  else
    [ ! -e "$(at "$CONFIG")" ] || log "kept $CONFIG and $STATE_DIR (--purge removes them)"
  fi
  log "the user $SERVICE_USER is kept (userdel $SERVICE_USER removes it)"
  if [ "$CHANGED" = 1 ]; then log "uninstalled${PREFIX:+ under $PREFIX}"; else log "nothing to remove${PREFIX:+ under $PREFIX}"; fi
}

if [ "$UNINSTALL" = 1 ]; then do_uninstall; else do_install; fi
