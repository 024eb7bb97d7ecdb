#!/usr/bin/env bash
# The whole test suite on a fresh machine: setup, C tests under ASan+UBSan, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test

echo "== C tests (ctest, AddressSanitizer + UndefinedBehaviorSanitizer) =="
cmake -S . -B build/asan -G Ninja -DSAL_SANITIZE=ON -DSAL_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/asan
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build/asan --output-on-failure

echo "== Python tests (pytest, installed package) =="
set +e
python3 -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
exit $rc
