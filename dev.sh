#!/usr/bin/env bash
# edge-runtime developer entry point: one command sets up what it needs, then does its job.
#
#   ./dev.sh run [ARGS...]   set up .venv, then `edge-runtime run ARGS` (the embedded default
#                            when no --config is given: bundled model, bundled input, no broker)
#   ./dev.sh test [PYTEST ARGS...]
#                            set up .venv, .venv-tflite and the Debian packages the tests use
#                            (mosquitto, socat, ffmpeg, curl, chromium, prometheus), then run the suite under LiteRT and the
#                            runtime/model tests again under tflite-runtime and under ONNX Runtime
#   ./dev.sh lint            ruff check, ruff format --check, mypy --strict
#   ./dev.sh setup           only the set-up steps
#
# Works on a fresh Debian 12 / Raspberry Pi OS bookworm machine as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD

log() { printf '[dev.sh] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@";
  elif command -v sudo >/dev/null; then sudo "$@";
  else log "need root (or sudo) to run: $*"; return 1; fi
}

# Debian packages: installed only when missing; `apt-get update` first on a fresh machine.
apt_ensure() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    log "missing system packages (${missing[*]}) and no apt-get: install them by hand"; return 1
  fi
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; }

pick_python() {  # $1: max minor version allowed (for tflite-runtime: 11)
  local max=${1:-99} cand
  for cand in python3 python3.11 python3.10 python3.12 python3.13; do
    command -v "$cand" >/dev/null || continue
    python_ok "$cand" || continue
    local minor; minor=$("$cand" -c 'import sys; print(sys.version_info.minor)')
    [ "$minor" -le "$max" ] && { command -v "$cand"; return 0; }
  done
  return 1
}

# A venv stays until pyproject.toml changes; $1 dir, $2 python, $3 pip install target
venv_ensure() {
  local dir=$1 py=$2 target=$3
  local stamp; stamp=$(cat pyproject.toml | sha256sum | cut -c1-16)-$target
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then return 0; fi
  log "creating $dir with $py ($("$py" --version 2>&1)) and installing $target"
  rm -rf "$dir"
  "$py" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -e "$target"
  echo "$stamp" > "$dir/.stamp"
}

setup_base() {
  if ! PY=$(pick_python); then
    apt_ensure python3 python3-venv python3-pip
    PY=$(pick_python) || { log "no Python >= 3.10 with venv found"; exit 1; }
  fi
  venv_ensure .venv "$PY" ".[dev]"
}

setup_test() {
  setup_base
  apt_ensure mosquitto mosquitto-clients socat ffmpeg systemd shellcheck faketime curl chromium chromium-driver prometheus
  if PY_TFL=$(pick_python 11); then
    venv_ensure .venv-tflite "$PY_TFL" ".[tflite-runtime,test]"
  else
    log "tflite-runtime 2.14 has wheels for Python <= 3.11 only; none found here"
    [ "${CI:-}" = true ] && exit 1
  fi
}

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup_test ;;
  run)
    setup_base
    exec .venv/bin/edge-runtime run "$@" ;;
  test)
    setup_test
    export EDGE_RUNTIME_SOAK_S=${EDGE_RUNTIME_SOAK_S:-60}  # the soak test, shortened (600 = 10 min)
    log "suite under LiteRT (.venv)"
    # the container tests build and run the OCI image: slow, CI runs them as their own stage
    .venv/bin/python -m pytest -m "not container" "$@"
    if [ -x .venv-tflite/bin/python ]; then
      log "runtime and model tests under tflite-runtime (.venv-tflite)"
      EDGE_RUNTIME_TEST_BACKEND=tflite-runtime .venv-tflite/bin/python -m pytest -m backend "$@"
    fi
    log "runtime and model tests under ONNX Runtime (.venv; the .onnx twins of the bundled models)"
    EDGE_RUNTIME_TEST_BACKEND=onnxruntime .venv/bin/python -m pytest -m "backend and not tflite" "$@" ;;
  lint)
    setup_base
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy ;;
  *) sed -n '2,16p' "$0"; [ "$cmd" = help ] || exit 2 ;;
esac
