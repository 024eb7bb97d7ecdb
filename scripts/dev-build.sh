#!/usr/bin/env bash
# Development build: libsal, its C tests and salnp._core in place (python/salnp), no pip.
# Then: PYTHONPATH=python python -m pytest tests   and   ctest --test-dir build/dev
set -euo pipefail
cd "$(dirname "$0")/.."
# the project environment (scripts/setup.sh) when there is one, else python3 on PATH
py="${SALNP_VENV:-$PWD/.venv}/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
cmake -S . -B build/dev -G Ninja -DSAL_BUILD_PYTHON_INPLACE=ON -DSAL_BUILD_TESTS=ON \
      -DPython_EXECUTABLE="$py" > build-dev-configure.log 2>&1 \
  || { cat build-dev-configure.log; exit 1; }
rm -f build-dev-configure.log
cmake --build build/dev
