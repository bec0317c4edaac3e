#!/usr/bin/env bash
# Headless Chromium for the UI tests (tests/test_ui.py drives it with Playwright), from Debian's own
# package: Playwright's browser download needs internet access that CI machines may not have.
#
#   bash .ci/chromium.sh     # as root; idempotent
set -euo pipefail

log() { echo "[chromium.sh] $*" >&2; }

if [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "run as root: it installs the chromium package"
  exit 1
fi
log "installing chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq chromium >&2
/usr/bin/chromium --version >&2
