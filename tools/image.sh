#!/usr/bin/env bash
# The OCI image of edge-runtime: build it from a Debian root made here (no registry needed), run it.
#
#   tools/image.sh build [--arch amd64|arm64] [--rebuild-root] [--no-cache] [--source DIR]
#   tools/image.sh run [--arch amd64|arm64] [--name NAME] [PODMAN RUN OPTIONS...] [-- DAEMON ARGS...]
#   tools/image.sh podman ARGS...         any podman command with this machine's settings
#   tools/image.sh size [--arch A]        the image's uncompressed size and its largest parts
#   tools/image.sh mosquitto [--arch A]   localhost/edge-runtime-mosquitto:bookworm, for compose on
#                                         hosts that cannot pull docker.io/library/eclipse-mosquitto
#
# build (as root, non-interactive):
#   1. installs podman, buildah, runc, debootstrap (and qemu-user-static, binfmt-support for a
#      foreign --arch) with apt-get when missing; enables qemu in binfmt_misc for a foreign arch;
#   2. builds a Debian bookworm minbase root with python3, python3-venv, tini and ca-certificates
#      once, cached in ${EDGE_RUNTIME_IMAGE_CACHE:-/var/cache/edge-runtime}/image-ARCH-bookworm and
#      marked complete by a stamp file (like tools/arm64_check.sh);
#   3. imports it as localhost/edge-runtime-base:bookworm-ARCH (again only when the root changed);
#   4. `podman build --network host --format docker` of devices/Containerfile, tagged
#      localhost/edge-runtime:VERSION-ARCH and :latest-ARCH, and for the host's arch also :VERSION and
#      :latest. pip in the builder stage reaches PyPI (or $PIP_INDEX_URL) through the host's network
#      and CA bundle.
# run: `podman run --rm --network host` of the image with the named volume edge-runtime-state on
#   /var/lib/edge-runtime; EDGE_RUNTIME__* variables of the caller are passed in; options before
#   `--` go to podman run (e.g. -v ./my.toml:/etc/edge-runtime/config.toml:ro, --device /dev/video0),
#   arguments after it replace the image's CMD (`--config /etc/edge-runtime/config.toml --quiet`).
#   The arm64 image on an x86-64 host runs under qemu-user with an ARM /proc/cpuinfo bound in.
#
# Podman on these machines: `--runtime runc` (crun refuses the hybrid cgroup layout) and
# CONTAINERS_CONF=tools/podman-containers.conf (no default ulimits, the cgroupfs manager). Both are
# set by this script for every podman call; `tools/image.sh podman ...` uses them too.
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT")")
SUITE=bookworm
CACHE=${EDGE_RUNTIME_IMAGE_CACHE:-/var/cache/edge-runtime}
IMAGE=localhost/edge-runtime
PACKAGES="python3,python3-venv,tini,ca-certificates"
# Bump when the way the root is built changes: a root with another stamp is rebuilt.
ROOT_STAMP_VALUE="edge-runtime image root v1: $SUITE minbase $PACKAGES, trimmed"
export CONTAINERS_CONF=$REPO/tools/podman-containers.conf

usage() { sed -n '2,/^set -euo pipefail/p' "$SCRIPT" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { printf 'image.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[image.sh] %s\n' "$*" >&2; }
pod() { podman --runtime runc "$@"; }

host_arch() { dpkg --print-architecture 2>/dev/null || { uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/'; }; }
version() {
  sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$REPO/pyproject.toml" | head -n 1
}

apt_ensure() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get: install them by hand"
  [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}): run as root, or: sudo apt-get install ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  local aptlog
  aptlog=$(mktemp /tmp/image-apt.XXXXXX)
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
       </dev/null >"$aptlog" 2>&1; then
    tail -n 40 "$aptlog" >&2; rm -f "$aptlog"
    die "apt-get could not install ${missing[*]}"
  fi
  rm -f "$aptlog"
}

ensure_podman() {
  apt_ensure podman buildah runc uidmap
  [ -f "$CONTAINERS_CONF" ] || die "$CONTAINERS_CONF is missing"
}

ensure_emulation() {  # $1: the target arch, when it is not the host's
  apt_ensure qemu-user-static binfmt-support
  local qemu
  case "$1" in arm64) qemu="qemu-aarch64" ;; amd64) qemu="qemu-x86_64" ;; *) die "no emulation known for $1" ;; esac
  if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
  fi
  grep -qx enabled "/proc/sys/fs/binfmt_misc/$qemu" 2>/dev/null || update-binfmts --enable "$qemu" ||
    die "update-binfmts --enable $qemu failed"
}

# The Debian mirror apt uses here (deb822 .sources, then sources.list), as in tools/arm64_check.sh.
apt_mirror() {
  local m
  m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# Unneeded in an image: downloaded packages, apt lists, documentation, man pages, translations.
trim_root() {
  local root=$1
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*.log \
    "$root"/debootstrap
  # Keep the copyright files, as Debian's own images do.
}

build_root() {  # $1 arch, $2 root
  local arch=$1 root=$2 t mirror
  t=$(date +%s)
  case "$root" in "$CACHE"/image-*) ;; *) die "refusing to rebuild $root: not below $CACHE/image-*" ;; esac
  rm -rf --one-file-system "$root"
  mkdir -p "$root"
  mirror=$(apt_mirror)
  log "building the $arch $SUITE root in $root from $mirror (once; minutes, more under emulation)"
  if ! debootstrap --arch="$arch" --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" \
      >"$root.debootstrap.log" 2>&1; then
    tail -n 30 "$root.debootstrap.log" >&2
    die "debootstrap of the $arch root failed (log: $root.debootstrap.log)"
  fi
  trim_root "$root"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$root/.image-root-built"
  echo "$ROOT_STAMP_VALUE" >"$root/.image-root-stamp"
  log "root built in $(($(date +%s) - t))s ($(du -sh "$root" | cut -f1))"
}

base_image() {  # $1 arch, $2 root, $3 rebuild: the base image, imported when the root is newer
  local arch=$1 root=$2 rebuild=$3 tag=$IMAGE-base:$SUITE-$1 built have
  if [ "$rebuild" = 1 ] || [ "$(cat "$root/.image-root-stamp" 2>/dev/null)" != "$ROOT_STAMP_VALUE" ]; then
    [ "$arch" = "$(host_arch)" ] || ensure_emulation "$arch"
    build_root "$arch" "$root"
  else
    log "using the cached root $root"
  fi
  built="$ROOT_STAMP_VALUE; $(cat "$root/.image-root-built")"
  have=$(pod image inspect --format '{{ index .Labels "io.edge-runtime.root" }}' "$tag" 2>/dev/null || true)
  if [ "$have" != "$built" ]; then
    log "importing $root as $tag"
    tar -C "$root" --exclude=./proc --exclude=./sys --exclude=./dev --exclude=./.image-root-stamp \
      --exclude=./.image-root-built --numeric-owner -cf - . |
      pod import --arch "$arch" --os linux --change "LABEL io.edge-runtime.root=$built" \
        --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
  fi
  echo "$tag"
}

# The build context: the package's sources, the dependency list, the container's files, the CA bundle.
make_context() {  # $1 source tree, $2 context dir
  local src=$1 ctx=$2 ca=""
  mkdir -p "$ctx/src"
  cp "$src/pyproject.toml" "$src/README.md" "$ctx/src/"
  tar -C "$src" --exclude=__pycache__ -cf - edge_runtime | tar -C "$ctx/src" -xf -
  cp "$src/devices/container/config.toml" "$ctx/container.toml"
  cp "$src/devices/container/healthcheck.py" "$ctx/healthcheck.py"
  chmod 0755 "$ctx/healthcheck.py"
  python3 - "$src/pyproject.toml" >"$ctx/requirements.txt" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for req in project["dependencies"] + project["optional-dependencies"]["fleet"]:
    print(req)
EOF
  for ca in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    [ -n "$ca" ] && [ -f "$ca" ] && { cp -L "$ca" "$ctx/host-ca-bundle.crt"; return 0; }
  done
  die "no CA bundle found on the host for pip in the builder stage"
}

image_size() {  # $1 tag
  local bytes
  bytes=$(pod image inspect --format '{{.Size}}' "$1")
  echo "$1: $((bytes / 1000000)) MB uncompressed"
}

cmd_build() {
  local arch source=$REPO rebuild=0 nocache=() t0 base ver ctx
  arch=$(host_arch)
  while [ $# -gt 0 ]; do
    case "$1" in
      --arch) [ $# -ge 2 ] || die "--arch needs a value"; arch=$2; shift 2 ;;
      --arch=*) arch=${1#*=}; shift ;;
      --source) [ $# -ge 2 ] || die "--source needs a value"; source=$(readlink -f "$2"); shift 2 ;;
      --rebuild-root) rebuild=1; shift ;;
      --no-cache) nocache=(--no-cache); shift ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  case "$arch" in amd64|arm64) ;; *) die "--arch must be amd64 or arm64, got '$arch'" ;; esac
  [ "$(id -u)" = 0 ] || die "must run as root (debootstrap and rootful podman)"
  t0=$(date +%s)
  apt_ensure debootstrap
  ensure_podman
  [ "$arch" = "$(host_arch)" ] || ensure_emulation "$arch"
  mkdir -p "$CACHE"
  exec 9>"$CACHE/image-$arch-$SUITE.lock"
  flock -w 1800 9 || die "another build holds $CACHE/image-$arch-$SUITE.lock"
  base=$(base_image "$arch" "$CACHE/image-$arch-$SUITE" "$rebuild")
  ver=$(version)
  ctx=$(mktemp -d /tmp/edge-runtime-image.XXXXXX)
  # shellcheck disable=SC2064  # expand now: the trap outlives this function's locals
  trap "rm -rf '$ctx'" EXIT
  make_context "$source" "$ctx"
  local tags=(--tag "$IMAGE:$ver-$arch" --tag "$IMAGE:latest-$arch")
  if [ "$arch" = "$(host_arch)" ]; then tags+=(--tag "$IMAGE:$ver" --tag "$IMAGE:latest"); fi
  local args=(--network host --format docker --arch "$arch" --os linux "${tags[@]}" "${nocache[@]}"
    --build-arg "BASE=$base" --build-arg "VERSION=$ver" --build-arg "ARCH=$arch"
    --file "$source/devices/Containerfile")
  case "${PIP_INDEX_URL:-}" in http://*|https://*) args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL") ;; esac
  log "podman build ${args[*]} $ctx"
  pod build "${args[@]}" "$ctx" >&2 || die "podman build failed (output above)"
  image_size "$IMAGE:$ver-$arch"
  echo "built $IMAGE:$ver-$arch in $(($(date +%s) - t0))s"
}

arm_cpuinfo() {  # a Cortex-A72's /proc/cpuinfo (a Raspberry Pi 4's), one entry per host CPU
  local i
  for ((i = 0; i < $(nproc --all); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
  done
}

cmd_run() {
  local arch name=edge-runtime popts=() dargs=() tag
  arch=$(host_arch)
  while [ $# -gt 0 ]; do
    case "$1" in
      --arch) arch=$2; shift 2 ;;
      --name) name=$2; shift 2 ;;
      --) shift; dargs=("$@"); break ;;
      *) popts+=("$1"); shift ;;
    esac
  done
  ensure_podman
  tag=$IMAGE:latest-$arch
  pod image exists "$tag" || die "no image $tag: build it first with tools/image.sh build --arch $arch"
  if [ "$arch" = arm64 ] && [ "$(host_arch)" != arm64 ]; then
    # Under qemu-user the guest sees the host's x86 /proc/cpuinfo, and LiteRT's CPU detection
    # crashes on it (SIGSEGV in Interpreter(), as in tools/arm64_check.sh): show it an ARM one.
    ensure_emulation arm64
    arm_cpuinfo >"$CACHE/arm64-cpuinfo"
    popts=(--volume "$CACHE/arm64-cpuinfo:/proc/cpuinfo:ro" --env "QEMU_CPU=${ARM64_CPU:-cortex-a72}" "${popts[@]}")
  fi
  exec podman --runtime runc run --rm --network host --name "$name" \
    --volume edge-runtime-state:/var/lib/edge-runtime --env 'EDGE_RUNTIME__*' \
    "${popts[@]}" "$tag" "${dargs[@]}"
}

cmd_size() {
  local arch tag
  arch=$(host_arch)
  if [ "${1:-}" = --arch ]; then arch=$2; fi
  tag=$IMAGE:latest-$arch
  image_size "$tag"
  echo "largest parts (MB):"
  pod run --rm --network none --entrypoint /bin/sh "$tag" -c \
    'du -sm /opt/venv /usr /var/lib/dpkg 2>/dev/null; du -sm /opt/venv/lib/python3*/site-packages/* | sort -rn | head -n 12'
}

cmd_mosquitto() {  # a mosquitto image on the same base, for hosts without docker.io
  local arch tag base
  arch=$(host_arch)
  if [ "${1:-}" = --arch ]; then arch=$2; fi
  [ "$(id -u)" = 0 ] || die "must run as root (debootstrap and rootful podman)"
  apt_ensure debootstrap
  ensure_podman
  [ "$arch" = "$(host_arch)" ] || ensure_emulation "$arch"
  mkdir -p "$CACHE"
  exec 9>"$CACHE/image-$arch-$SUITE.lock"
  flock -w 1800 9 || die "another build holds $CACHE/image-$arch-$SUITE.lock"
  base=$(base_image "$arch" "$CACHE/image-$arch-$SUITE" 0)
  tag=$IMAGE-mosquitto:$SUITE
  [ "$arch" = "$(host_arch)" ] || tag=$tag-$arch
  pod build --network host --format docker --arch "$arch" --os linux --tag "$tag" \
    --build-arg "BASE=$base" --file "$REPO/devices/container/mosquitto.Containerfile" "$REPO/devices/container" >&2 ||
    die "podman build of the mosquitto image failed (output above)"
  echo "built $tag"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  run) shift; cmd_run "$@" ;;
  size) shift; cmd_size "$@" ;;
  mosquitto) shift; cmd_mosquitto "$@" ;;
  podman) shift; ensure_podman; exec podman --runtime runc "$@" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
