#!/usr/bin/env bash
# Installs everything salnp needs on a fresh Debian machine, then the package itself.
#   bash scripts/setup.sh            runtime (BLIS, Fashion-MNIST, salnp)
#   bash scripts/setup.sh test       + the test extra (pytest, torch==2.13.0 CPU, hypothesis)
# Uses the python3 on PATH; run it inside a virtualenv if you prefer one.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# libblis4-serial: libsal links the serial BLIS flavour (it runs its own threads)
apt_pkgs=(libblis-dev libblis4-serial dataset-fashion-mnist xz-utils build-essential cmake ninja-build pkg-config)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

spec="."
[ -n "$extra" ] && spec=".[$extra]"
echo "setup: pip install $spec"
python3 -m pip install -q --disable-pip-version-check "$spec"
