#!/usr/bin/env bash
# Set up everything the app and the tests need on a fresh Debian machine with Python 3.11:
# a virtual environment in .venv with the pinned packages, Java (caption metrics) and, with --dev,
# the test tools and Chromium (browser tests). Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install $* (e.g. sudo apt-get install $*) and run again" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
if [ "$dev" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
hash=$(cat requirements*.txt | sha256sum | cut -c1-16)
stamp=.venv/.installed-$hash-$dev
# A test set-up (dev) includes everything the app needs.
if [ ! -f "$stamp" ] && [ ! -f ".venv/.installed-$hash-1" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  if [ "$dev" = 1 ]; then
    # The optional extras are installed for the tests, so that the Ray executor, the figures and the
    # trackers are tested too.
    .venv/bin/python -m pip install -q -r requirements-dev.txt -r requirements-ray.txt -r requirements-report.txt \
      -r requirements-tracking.txt
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
