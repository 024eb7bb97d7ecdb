#!/usr/bin/env bash
# Installs everything salnp needs on a fresh Debian machine, into the project's own virtual
# environment .venv (never into the Python on your PATH), then the package itself.
#   bash scripts/setup.sh            runtime (BLIS, Fashion-MNIST, salnp)
#   bash scripts/setup.sh test       + the test extra (pytest, torch==2.13.0 CPU, onnx, ...)
#   bash scripts/setup.sh notebooks  + Jupyter and matplotlib (the main job's figures)
# Afterwards: .venv/bin/python -m salnp ...   or   source .venv/bin/activate
# SALNP_VENV=DIR puts the environment elsewhere; SALNP_PYTHON=python3.12 picks the
# interpreter it is made from (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
venv="${SALNP_VENV:-$PWD/.venv}"
base_python="${SALNP_PYTHON:-python3}"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# libblis4-serial: libsal links the serial BLIS flavour (it runs its own threads)
apt_pkgs=(libblis-dev libblis4-serial dataset-fashion-mnist xz-utils build-essential cmake ninja-build
          pkg-config)
# a Debian python3 makes virtual environments only with python3-venv (ensurepip)
if ! "$base_python" -c "import ensurepip, venv" >/dev/null 2>&1; then
  apt_pkgs+=(python3-venv python3-dev)
fi
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating the virtual environment $venv (from $base_python)"
  "$base_python" -m venv "$venv"
fi
py="$venv/bin/python"
spec="."
[ -n "$extra" ] && spec=".[$extra]"
echo "setup: $py -m pip install $spec"
"$py" -m pip install -q --disable-pip-version-check --upgrade pip
"$py" -m pip install -q --disable-pip-version-check "$spec"
