#!/usr/bin/env bash
# arm64 check: run the embedded default of edge-runtime with an arm64 (aarch64) Python under
# qemu-user emulation and count its results on a broker on the host.
#
#   tools/arm64_check.sh [--results N] [--root DIR] [--timeout S] [--rebuild]
#
#   --results N   results the daemon must publish (default 20, both pipelines together)
#   --root DIR    cached arm64 Debian bookworm root
#                 (default ${ARM64_ROOT:-/var/cache/edge-runtime/arm64-bookworm})
#   --timeout S   limit for the emulated daemon run, start to exit (default 600)
#   --rebuild     throw the cached root away and build it again
#   env ARM64_CPU the CPU qemu emulates and /proc/cpuinfo shows in the root (default cortex-a72,
#                 a Raspberry Pi 4's; also cortex-a53, cortex-a55, cortex-a76, neoverse-n1)
#
# What it does, as root, non-interactively (CI=true, no stdin):
#   1. installs qemu-user-static, binfmt-support, debootstrap, mosquitto, mosquitto-clients when
#      missing; mounts binfmt_misc when it is not mounted; enables qemu-aarch64;
#   2. builds the root once (debootstrap --arch=arm64 --variant=minbase from the mirror apt uses,
#      python3 + venv at /opt/venv), marked done by a stamp file so an interrupted build is redone;
#   3. builds the project's wheel on the host and installs it in the root's venv with the arm64
#      pip, which fetches the aarch64 wheels of the dependencies from PyPI (only when missing);
#   4. starts mosquitto on a free loopback port on the host, subscribes to
#      edge/arm64/pipelines/+/results, runs `edge-runtime run --max-results N` in the root and
#      prints platform.machine(), the backend, its wheel tag and the delegate in use;
#   5. installs the aarch64 onnxruntime wheel (the `onnx` extra) when missing and runs the bundled
#      int8 QDQ digits_int8.onnx on 100 held-out digits through edge-runtime's Model.
# Exit 0 only when the machine is aarch64, the LiteRT wheel is an aarch64 one, the host broker
# received at least N results, and the ONNX model ran on an aarch64 onnxruntime wheel with an
# accuracy of at least 0.95. proc, dev and sys are mounted in the root only while it runs, in a
# private mount namespace, and unmounted on any exit.
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT")")
RESULTS=20
ROOT=${ARM64_ROOT:-/var/cache/edge-runtime/arm64-bookworm}
RUN_TIMEOUT=600
REBUILD=0
SUITE=bookworm
# Bump when the way the root is built changes: a root with another stamp is rebuilt.
ROOT_STAMP_VALUE="edge-runtime arm64 root v1: $SUITE minbase python3 python3-pip python3-venv /opt/venv"
TOPIC_DEVICE=arm64

usage() { sed -n '2,/^set -euo pipefail/p' "$SCRIPT" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { printf 'arm64 check: FAILED: %s\n' "$*" >&2; exit 1; }
log() { printf '[arm64] %s\n' "$*" >&2; }
elapsed() { printf '%ds' $(($(date +%s) - $1)); }

ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --results) [ $# -ge 2 ] || { usage >&2; exit 2; }; RESULTS=$2; shift 2 ;;
    --results=*) RESULTS=${1#*=}; shift ;;
    --root) [ $# -ge 2 ] || { usage >&2; exit 2; }; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --timeout) [ $# -ge 2 ] || { usage >&2; exit 2; }; RUN_TIMEOUT=$2; shift 2 ;;
    --timeout=*) RUN_TIMEOUT=${1#*=}; shift ;;
    --rebuild) REBUILD=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) printf 'arm64_check.sh: unknown argument: %s\n' "$1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ $RESULTS =~ ^[1-9][0-9]*$ ]] || { echo "arm64_check.sh: --results must be a positive integer, got '$RESULTS'" >&2; exit 2; }
[[ $RUN_TIMEOUT =~ ^[1-9][0-9]*$ ]] || { echo "arm64_check.sh: --timeout must be a positive integer, got '$RUN_TIMEOUT'" >&2; exit 2; }
ROOT=$(readlink -m "$ROOT")
# The root is deleted and rebuilt when incomplete: never a system directory, the repository, one
# of its parents or a folder inside it.
case "$ROOT" in /|/bin|/boot|/dev|/etc|/home|/lib*|/opt|/proc|/root|/run|/sbin|/srv|/sys|/tmp|/usr|/var|/var/cache) \
  die "refusing to use $ROOT as the arm64 root" ;; esac
case "$REPO/" in "$ROOT"/*) die "refusing to use $ROOT as the arm64 root: it holds the repository" ;; esac
case "$ROOT/" in "$REPO"/*) die "refusing to use $ROOT as the arm64 root: it is inside the repository" ;; esac
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and mount need it)"

# ------------------------------------------------------------------------------------------------
# 1. Host set-up (in the host's mount namespace: the binfmt_misc mount is meant to stay).
# ------------------------------------------------------------------------------------------------
host_setup() {
  local missing=() pkg
  for pkg in qemu-user-static binfmt-support debootstrap mosquitto mosquitto-clients; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    local aptlog
    aptlog=$(mktemp /tmp/arm64-check-apt.XXXXXX)
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
         </dev/null >"$aptlog" 2>&1; then
      tail -n 40 "$aptlog" >&2; rm -f "$aptlog"
      die "apt-get could not install ${missing[*]}"
    fi
    rm -f "$aptlog"
  fi
  if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    log "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
      die "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc (a container without that right cannot emulate arm64)"
  fi
  if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
    log "enabling qemu-aarch64 in binfmt_misc"
    update-binfmts --enable qemu-aarch64 || die "update-binfmts --enable qemu-aarch64 failed"
  fi
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
    die "qemu-aarch64 is not enabled in /proc/sys/fs/binfmt_misc: aarch64 programs cannot run here"
  # F (fix binary): the kernel opened the interpreter at registration, so the root needs no copy.
  grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
    log "note: qemu-aarch64 is registered without the F flag; the root needs its own qemu-aarch64-static"
}

if [ -z "${_ARM64_CHECK_INNER:-}" ]; then
  T_START=$(date +%s)
  host_setup
  # Everything that mounts runs in a private mount namespace: whatever happens to this script
  # (even SIGKILL), the mounts in the root go away with the namespace. The trap below unmounts
  # them explicitly as well.
  if unshare --mount --propagation private true 2>/dev/null; then
    export _ARM64_CHECK_INNER=1 _ARM64_CHECK_T0=$T_START
    exec unshare --mount --propagation private -- bash "$SCRIPT" "${ARGS[@]}"
  fi
  log "note: unshare --mount is not available: relying on the exit trap to unmount"
  export _ARM64_CHECK_T0=$T_START
fi
T0=${_ARM64_CHECK_T0:-$(date +%s)}

# ------------------------------------------------------------------------------------------------
# Clean-up: unmount, stop what we started, remove temp files; on every exit.
# ------------------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/arm64-check.XXXXXX)
MOUNTED=()
PIDS=()
cleanup() {
  local rc=$? i pid
  trap - EXIT INT TERM HUP
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null ||
      printf '[arm64] WARNING: could not unmount %s\n' "${MOUNTED[i]}" >&2
  done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Mount points below the root, deepest first (stale ones from a killed run included).
mounts_under_root() {
  awk -v root="$ROOT" '{ gsub(/\\040/, " ", $2) } $2 == root || index($2, root "/") == 1 { print $2 }' \
    /proc/self/mounts | sort -r
}

unmount_stale() {
  local m
  while read -r m; do
    [ -n "$m" ] || continue
    log "unmounting a stale mount: $m"
    umount "$m" 2>/dev/null || umount -l "$m"
  done < <(mounts_under_root)
}

# qemu-user 7.2 (bookworm) shows an aarch64 guest the host's x86 /proc/cpuinfo. With /sys mounted,
# LiteRT's CPU detection (the cpuinfo library) then finds CPUs in /sys but no ARM entry in
# /proc/cpuinfo and crashes in Interpreter() (SIGSEGV at address 0x8). A board has an ARM
# /proc/cpuinfo: give the root one that matches the emulated CPU (ARM64_CPU, a Cortex-A72 as on a
# Raspberry Pi 4 unless told otherwise), one entry per host CPU.
ARM64_CPU=${ARM64_CPU:-cortex-a72}
arm_cpuinfo() {
  local n i part
  case "$ARM64_CPU" in
    cortex-a53) part=0xd03 ;; cortex-a55) part=0xd05 ;; cortex-a57) part=0xd07 ;;
    cortex-a72) part=0xd08 ;; cortex-a76) part=0xd0b ;; neoverse-n1) part=0xd0c ;;
    *) part=0xd08 ;;
  esac
  n=$(nproc --all)
  for ((i = 0; i < n; i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n\n' "$part"
  done
}

mount_at() {  # mount ARGS... TARGET: mounts, then remembers TARGET for the clean-up
  mount "$@" || die "mount $* failed"
  MOUNTED+=("${@: -1}")
}

mount_root() {
  unmount_stale
  arm_cpuinfo >"$TMP/cpuinfo"
  mount_at -t proc proc "$ROOT/proc"
  mount_at --bind "$TMP/cpuinfo" "$ROOT/proc/cpuinfo"
  mount_at --bind /dev "$ROOT/dev"
  mount_at --bind /sys "$ROOT/sys"
}

# Commands in the root run with a clean environment: the host's PIP_* settings name paths that do
# not exist in there (find-links, file:// indexes, constraints).
CHROOT_ENV=(
  PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  HOME=/root LANG=C.UTF-8 TERM=dumb PYTHONUNBUFFERED=1
  PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1
  PIP_DEFAULT_TIMEOUT=180 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
  QEMU_CPU="$ARM64_CPU"
)
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  if [ -n "${!var:-}" ]; then CHROOT_ENV+=("$var=${!var}"); fi
done
case "${PIP_INDEX_URL:-}" in http://*|https://*) CHROOT_ENV+=("PIP_INDEX_URL=$PIP_INDEX_URL") ;; esac
in_root() { chroot "$ROOT" /usr/bin/env -i "${CHROOT_ENV[@]}" "$@" </dev/null; }

# ------------------------------------------------------------------------------------------------
# 2. The cached root.
# ------------------------------------------------------------------------------------------------
# The Debian mirror apt uses here (deb822 .sources first, then sources.list).
apt_mirror() {
  local m="" f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    m=$(awk -v suite="$SUITE" '
      function flush() {
        if (!found && enabled != "no" && types ~ /(^|[ \t])deb([ \t]|$)/ && uri != "" &&
            (" " suites " ") ~ ("[ \t]" suite "[ \t]")) { print uri; found = 1 }
        types = ""; suites = ""; uri = ""; enabled = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^[Tt]ypes:/ { sub(/^[^:]*:[ \t]*/, ""); types = $0 }
      /^URIs:/ { sub(/^[^:]*:[ \t]*/, ""); split($0, a, /[ \t]+/); uri = a[1] }
      /^[Ss]uites:/ { sub(/^[^:]*:[ \t]*/, ""); suites = $0 }
      /^[Ee]nabled:/ { sub(/^[^:]*:[ \t]*/, ""); enabled = tolower($0) }
      END { flush() }' "$f")
    [ -n "$m" ] && { echo "$m"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    m=$(awk -v suite="$SUITE" '$1 == "deb" {
          i = 2
          if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
          if ($(i + 1) == suite) { print $i; exit }
        }' "$f")
    [ -n "$m" ] && { echo "$m"; return; }
  done
  echo http://deb.debian.org/debian
}

build_root() {
  local t mirror
  t=$(date +%s)
  unmount_stale
  [ -z "$(mounts_under_root)" ] || die "$ROOT still has mounts below it; not deleting it"
  rm -rf --one-file-system "$ROOT"
  mkdir -p "$ROOT"
  mirror=$(apt_mirror)
  log "building the arm64 $SUITE root in $ROOT from $mirror (once; a few minutes)"
  if ! debootstrap --arch=arm64 --variant=minbase --include=python3,python3-pip,python3-venv \
      "$SUITE" "$ROOT" "$mirror" >"$TMP/debootstrap.log" 2>&1; then
    tail -n 30 "$TMP/debootstrap.log" >&2
    [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOT/debootstrap/debootstrap.log" >&2
    unmount_stale
    die "debootstrap of the arm64 root failed (log above)"
  fi
  unmount_stale  # debootstrap's own mounts, if it left any
  rm -f "$ROOT"/var/cache/apt/archives/*.deb  # 44 MB of downloaded packages
  log "debootstrap done in $(elapsed "$t")"
}

prepare_root() {
  if [ "$REBUILD" = 1 ] || [ "$(cat "$ROOT/.arm64-check-stamp" 2>/dev/null)" != "$ROOT_STAMP_VALUE" ]; then
    if [ -e "$ROOT" ]; then log "no complete root at $ROOT (or --rebuild): building it again"; fi
    build_root
    NEW_ROOT=1
  else
    NEW_ROOT=0
    log "using the cached root $ROOT"
  fi
  # Refreshed every run: the host's resolver and CA bundle (a proxy CA included).
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  mkdir -p "$ROOT/etc/ssl/certs"
  local ca
  for ca in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    [ -n "$ca" ] && [ -f "$ca" ] && { cp -L "$ca" "$ROOT/etc/ssl/certs/host-ca-bundle.crt"; break; }
  done
  [ -f "$ROOT/etc/ssl/certs/host-ca-bundle.crt" ] || die "no CA bundle found on the host to copy into the root"
  mount_root
  in_root /bin/true 2>"$TMP/true.err" ||
    die "an aarch64 program does not run in $ROOT ($(head -c 300 "$TMP/true.err")); is qemu-aarch64 enabled in binfmt_misc?"
  if [ "$NEW_ROOT" = 1 ] || [ ! -x "$ROOT/opt/venv/bin/python" ]; then
    log "creating /opt/venv in the root"
    in_root python3 -m venv /opt/venv
    echo "$ROOT_STAMP_VALUE" >"$ROOT/.arm64-check-stamp"
  fi
}

# ------------------------------------------------------------------------------------------------
# 3. The project's wheel, installed with the arm64 pip.
# ------------------------------------------------------------------------------------------------
install_project() {
  local t py wheel name
  t=$(date +%s)
  py=$(command -v python3 || true)
  [ -n "$py" ] && "$py" -m pip --version >/dev/null 2>&1 || py=/usr/bin/python3
  "$py" -m pip --version >/dev/null 2>&1 || die "no python3 with pip on the host to build the wheel"
  log "building the project's wheel on the host ($("$py" --version 2>&1))"
  # From a copy of the work tree: setuptools' in-tree build/ would otherwise be left in the repo,
  # and a stale build/lib from an earlier build can leak deleted files into the wheel.
  mkdir -p "$TMP/src"
  tar -C "$REPO" --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache --exclude=.pytest_cache \
    --exclude=.ruff_cache --exclude=.hypothesis -cf - . | tar -C "$TMP/src" -xf -
  (cd "$TMP/src" && "$py" -m pip wheel -q --no-deps -w "$TMP/dist" .) >"$TMP/wheel.log" 2>&1 ||
    { cat "$TMP/wheel.log" >&2; die "building the wheel of $REPO failed"; }
  wheel=$(compgen -G "$TMP/dist/edge_runtime-*.whl" | head -n 1 || true)
  [ -n "$wheel" ] || die "pip wheel left no edge_runtime-*.whl in $TMP/dist"
  name=$(basename "$wheel")
  "$py" - "$wheel" <<'EOF' || die "$name does not hold the bundled models"
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["edge_runtime/models/digits_int8.tflite", "edge_runtime/models/fused_int8.tflite", "edge_runtime/demo.toml",
        "edge_runtime/models/digits_int8.onnx", "edge_runtime/models/digits_heldout.npz"]
missing = [n for n in need if n not in names]
if missing:
    print("missing from the wheel:", ", ".join(missing), file=sys.stderr)
    sys.exit(1)
EOF
  mkdir -p "$ROOT/tmp/arm64-check"
  rm -f "$ROOT"/tmp/arm64-check/*.whl
  cp "$wheel" "$ROOT/tmp/arm64-check/$name"
  log "installing $name in the root (arm64 pip; dependencies only when missing)"
  in_root /opt/venv/bin/python -m pip install -q --force-reinstall --no-deps "/tmp/arm64-check/$name" \
    >"$TMP/pip.log" 2>&1 || { cat "$TMP/pip.log" >&2; die "pip install of $name in the root failed"; }
  # The requirements a resolving `pip install` would look at, checked in 2 s instead of 12 under
  # emulation; pip runs (and fetches the aarch64 wheels from PyPI) only for what is missing.
  local missing
  missing=$(in_root /opt/venv/bin/python -c "$REQS_PROBE" 2>&1) ||
    { printf '%s\n' "$missing" >&2; die "cannot check the requirements of $name in the root"; }
  if [ -n "$missing" ]; then
    log "fetching the aarch64 dependencies from PyPI: $(printf '%s' "$missing" | paste -sd, -)"
    in_root /opt/venv/bin/python -m pip install -q --only-binary=:all: "/tmp/arm64-check/$name" \
      >"$TMP/pip.log" 2>&1 || { cat "$TMP/pip.log" >&2; die "pip could not install the aarch64 dependencies of $name"; }
  fi
  log "project installed in $(elapsed "$t")"
}

# Prints the requirements of the installed edge-runtime that are missing or of the wrong version.
REQS_PROBE='
from importlib import metadata
from pip._vendor.packaging.requirements import Requirement
missing = []
for line in metadata.requires("edge-runtime") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        missing.append(line)
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{line} (installed {version})")
print("\n".join(missing))
'

# One inference of the bundled int8 QDQ digits model on onnxruntime (the `onnx` extra), 100 held-out
# digits through edge-runtime's Model, with the wheel's tag and the provider in use.
ONNX_PROBE='
import platform
from importlib import metadata, resources
import numpy as np
from edge_runtime.runtime.model import Model
from edge_runtime.runtime.quant import quantize
models = resources.files("edge_runtime") / "models"
model = Model(str(models / "digits_int8.onnx"), threads=1)
with np.load(str(models / "digits_heldout.npz")) as data:
    images, labels = data["images"][:100], data["labels"][:100]
spec = model.inputs[0]
predicted = [int(np.argmax(model.invoke([quantize(x[None, ..., None] / 255.0, spec.quant)])[0])) for x in images]
dist = metadata.distribution("onnxruntime")
tags = [l.split(":", 1)[1].strip() for l in (dist.read_text("WHEEL") or "").splitlines() if l.startswith("Tag:")]
print("onnx machine:", platform.machine())
print("onnxruntime wheel:", " ".join(f"onnxruntime-{dist.version}-{t}.whl" for t in tags))
print("onnx model:", model.name, model.sha256[:12], model.placement + ", backend", model.backend.name, model.backend.version)
print("onnx inputs:", model.inputs[0].describe(), "(QDQ edge as int8)")
print("onnx accuracy:", f"{np.mean(np.array(predicted) == labels):.3f}", "on 100 held-out digits")
'

onnx_check() {
  local t
  echo "== one ONNX model on onnxruntime (aarch64 wheel, the onnx extra)"
  if ! in_root /opt/venv/bin/python -c 'import onnxruntime' >/dev/null 2>&1; then
    log "fetching the aarch64 onnxruntime wheel from PyPI"
    in_root /opt/venv/bin/python -m pip install -q --only-binary=:all: "onnxruntime>=1.17" >"$TMP/pip-ort.log" 2>&1 ||
      { cat "$TMP/pip-ort.log" >&2; die "pip could not install the aarch64 onnxruntime wheel"; }
  fi
  t=$(date +%s)
  ONNX_INFO=$(in_root /opt/venv/bin/python -c "$ONNX_PROBE" 2>&1) ||
    { printf '%s\n' "$ONNX_INFO" >&2; die "the ONNX inference on aarch64 failed (output above)"; }
  printf '%s\n' "$ONNX_INFO" | sed 's/^/  /'
  log "ONNX check done in $(elapsed "$t")"
}

# ------------------------------------------------------------------------------------------------
# 4. The host broker, the subscriber and the emulated run.
# ------------------------------------------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # $1 seconds, then a command that succeeds when ready
  local deadline=$(($(date +%s) + $1)); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
subscribed() { grep -q "arm64-check-sub 1 edge/$TOPIC_DEVICE/pipelines/+/results" "$TMP/mosquitto.log" 2>/dev/null; }
result_count() { grep -c "^edge/$TOPIC_DEVICE/pipelines/[^/ ]*/results " "$TMP/results.txt" 2>/dev/null || true; }
enough_results() { [ "$(result_count)" -ge "$RESULTS" ]; }

start_broker() {
  PORT=$(free_port)
  {
    echo "listener $PORT 127.0.0.1"
    echo "allow_anonymous true"
    echo "persistence false"
    echo "log_dest file $TMP/mosquitto.log"
    echo "log_type error"
    echo "log_type warning"
    echo "log_type notice"
    echo "log_type information"
    echo "log_type subscribe"
    [ "$(id -u)" = 0 ] && echo "user root"  # mosquitto 2 drops privileges otherwise
  } >"$TMP/mosquitto.conf"
  mosquitto -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.out" 2>&1 &
  PIDS+=($!)
  wait_for 10 port_open || { cat "$TMP/mosquitto.out" "$TMP/mosquitto.log" >&2 2>/dev/null; die "mosquitto did not start on 127.0.0.1:$PORT"; }
  mosquitto_sub -h 127.0.0.1 -p "$PORT" -i arm64-check-sub -q 1 -v \
    -t "edge/$TOPIC_DEVICE/pipelines/+/results" >"$TMP/results.txt" 2>"$TMP/sub.err" &
  PIDS+=($!)
  wait_for 10 subscribed || { cat "$TMP/sub.err" >&2; die "mosquitto_sub did not subscribe on 127.0.0.1:$PORT"; }
  log "host broker: mosquitto on 127.0.0.1:$PORT, subscribed to edge/$TOPIC_DEVICE/pipelines/+/results"
}

run_check() {
  local t rc=0 info machine tag litert
  echo "== arm64 Python in $ROOT"
  local probe
  probe=$(cat <<'EOF'
import platform, sys
from importlib import metadata
print("machine:", platform.machine())
print("python:", platform.python_version(), sys.executable)
for name in ("edge-runtime", "ai-edge-litert", "numpy", "opencv-python-headless", "paho-mqtt", "pydantic"):
    print(f"{name}: {metadata.version(name)}")
dist = metadata.distribution("ai-edge-litert")
tags = [l.split(":", 1)[1].strip() for l in (dist.read_text("WHEEL") or "").splitlines() if l.startswith("Tag:")]
print("ai-edge-litert wheel:", " ".join(f"ai_edge_litert-{dist.version}-{t}.whl" for t in tags))
print("ai-edge-litert WHEEL:", dist.locate_file(f"ai_edge_litert-{dist.version}.dist-info/WHEEL"))
EOF
  )
  info=$(in_root /opt/venv/bin/python -c "$probe" 2>&1) ||
    { printf '%s\n' "$info" >&2; die "the arm64 Python in the root failed"; }
  printf '%s\n' "$info" | sed 's/^/  /'
  machine=$(printf '%s\n' "$info" | sed -n 's/^machine: //p')
  tag=$(printf '%s\n' "$info" | sed -n 's/^ai-edge-litert wheel: //p')
  litert=$(printf '%s\n' "$info" | sed -n 's/^ai-edge-litert: //p')

  start_broker
  rm -rf "$ROOT/tmp/edge-state"  # a fresh outbox and seq: the count is this run's results only
  echo "== edge-runtime run --max-results $RESULTS (emulated aarch64; timeout ${RUN_TIMEOUT}s)"
  t=$(date +%s)
  timeout --kill-after=10 "$RUN_TIMEOUT" chroot "$ROOT" /usr/bin/env -i "${CHROOT_ENV[@]}" \
    /opt/venv/bin/edge-runtime run --max-results "$RESULTS" \
      --set "device.id=$TOPIC_DEVICE" --set mqtt.host=127.0.0.1 --set "mqtt.port=$PORT" \
      --set device.state_dir=/tmp/edge-state \
    </dev/null >"$TMP/daemon.out" 2>"$TMP/daemon.err" &
  local daemon=$!
  PIDS+=("$daemon")
  wait "$daemon" || rc=$?
  local run_s=$(($(date +%s) - t))
  if [ "$rc" = 0 ]; then wait_for 15 enough_results || true; fi  # the last acks may still be on the way
  echo "== daemon log (stderr)"
  sed 's/^/  /' "$TMP/daemon.err"
  echo "== first results on the daemon's stdout ($(grep -c . "$TMP/daemon.out" || true) lines)"
  head -n 2 "$TMP/daemon.out" | cut -c1-300 | sed 's/^/  /'
  echo "== backend and delegate in use"
  grep -E "pipeline [^ ]+: model .* running on |XNNPACK" "$TMP/daemon.err" | sed 's/^/  /' || true
  local count placements errors
  count=$(result_count)
  # "pipeline digits: model digits_int8 (b249a253203d) running on cpu, backend litert 2.3.0"
  placements=$(sed -n 's/.*pipeline \([^ ]*\): model \([^ ]*\) ([0-9a-f]*) running on \(.*\), backend \(.*\)$/\1\/\2: \3 [\4]/p' \
    "$TMP/daemon.err" | paste -sd';' - | sed 's/;/; /g')
  errors=$(grep -cE " (ERROR|CRITICAL) |^Traceback" "$TMP/daemon.err" || true)
  onnx_check
  local onnx_machine onnx_tag onnx_acc
  onnx_machine=$(printf '%s\n' "$ONNX_INFO" | sed -n 's/^onnx machine: //p')
  onnx_tag=$(printf '%s\n' "$ONNX_INFO" | sed -n 's/^onnxruntime wheel: //p')
  onnx_acc=$(printf '%s\n' "$ONNX_INFO" | sed -n 's/^onnx accuracy: \([0-9.]*\).*/\1/p')
  echo "== summary"
  echo "  machine: $machine (qemu-user $(qemu-aarch64-static --version | sed -n 's/.*version \([^ ]*\).*/\1/p' | head -n 1), QEMU_CPU=$ARM64_CPU)"
  echo "  backend: ai-edge-litert $litert, wheel $tag"
  echo "  models: ${placements:-none reported}"
  echo "  onnx: $(printf '%s\n' "$ONNX_INFO" | sed -n 's/^onnx model: //p'); accuracy $onnx_acc; wheel $onnx_tag"
  if [ "$errors" -gt 0 ]; then echo "  daemon log: $errors ERROR line(s), shown above"; fi
  echo "  daemon: exit $rc after ${run_s}s; results per pipeline at the host broker:" \
    "$(awk '{ split($1, p, "/"); n[p[4]]++ } END { for (k in n) printf "%s=%d ", k, n[k] }' "$TMP/results.txt")"
  echo "  total time: $(elapsed "$T0")"
  echo "arm64 check: $count results received by the host broker"
  [ "$machine" = aarch64 ] || die "platform.machine() is '$machine', not aarch64"
  [[ $tag == *aarch64* ]] || die "the ai-edge-litert wheel in use is not an aarch64 one: '$tag'"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then die "the emulated daemon did not finish within ${RUN_TIMEOUT}s"; fi
  [ "$rc" = 0 ] || die "the emulated daemon exited with status $rc (its log is above)"
  grep -q "running on .*, backend litert " "$TMP/daemon.err" ||
    die "the daemon did not report a model running on the LiteRT backend (its log is above)"
  [ "$count" -ge "$RESULTS" ] || die "only $count of $RESULTS results reached the host broker"
  [ "$onnx_machine" = aarch64 ] || die "the ONNX probe ran on '$onnx_machine', not aarch64"
  [[ $onnx_tag == *aarch64* ]] || die "the onnxruntime wheel in use is not an aarch64 one: '$onnx_tag'"
  grep -q "^onnx model: .*backend onnxruntime " <<<"$ONNX_INFO" || die "the ONNX model did not run on onnxruntime"
  awk -v a="$onnx_acc" 'BEGIN { exit !(a >= 0.95) }' || die "digits_int8.onnx accuracy on aarch64 is $onnx_acc (< 0.95)"
  echo "arm64 check: OK (aarch64, ai-edge-litert $litert aarch64 wheel, $count/$RESULTS results;" \
    "onnxruntime aarch64 wheel, digits_int8.onnx accuracy $onnx_acc)"
}

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock -w 1800 9 || die "another arm64 check holds $ROOT.lock"
T_ROOT=$(date +%s)
prepare_root
log "root ready in $(elapsed "$T_ROOT")"
install_project
run_check
