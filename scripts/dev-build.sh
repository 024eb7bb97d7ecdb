#!/usr/bin/env bash
# Development build: libsal, its C tests and salnp._core in place (python/salnp), no pip.
# Then: PYTHONPATH=python python -m pytest tests   and   ctest --test-dir build/dev
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build/dev -G Ninja -DSAL_BUILD_PYTHON_INPLACE=ON -DSAL_BUILD_TESTS=ON \
      -DPython_EXECUTABLE="$(command -v python3)" > build-dev-configure.log 2>&1 \
  || { cat build-dev-configure.log; exit 1; }
rm -f build-dev-configure.log
cmake --build build/dev
