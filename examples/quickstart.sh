#!/usr/bin/env bash
# examples/quickstart.sh -- the README's quick start: on a fresh machine (as root),
# install bpftrace, build and install pyusdt into .venv, and show a live trace
# of examples/demo.py with sample.bt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf 'quickstart: %s\n' "$*" >&2; }

if [[ $(id -u) != 0 ]]; then
    log "bpftrace needs root: run this as root (sudo bash examples/quickstart.sh)"
    exit 1
fi
if ! command -v bpftrace >/dev/null 2>&1; then
    log "installing bpftrace"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq bpftrace >/dev/null
fi
if [[ ! -d /sys/kernel/tracing/events ]]; then
    mount -t tracefs nodev /sys/kernel/tracing
fi

# A Python >= 3.12 (sys.monitoring): found or built by matrix/provision.
py=$(matrix/provision 3.12 2>/dev/null | awk '{ print $2; exit }' || true)
if [[ -z $py ]]; then
    py=$(matrix/provision 3.13 | awk '{ print $2; exit }')
fi
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    log "creating .venv with $py"
    rm -rf .venv
    "$py" -m venv .venv
fi
log "installing pyusdt into .venv (builds the Rust extension)"
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q .
log "tracing examples/demo.py with sample.bt"
exec .venv/bin/pyusdt-trace sample.bt -- examples/demo.py
