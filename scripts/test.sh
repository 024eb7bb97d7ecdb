#!/usr/bin/env bash
# The whole test suite on a fresh machine: setup, C tests under ASan+UBSan (with the fuzz
# corpus replayed), a bounded libFuzzer run (scripts/fuzz.sh), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
stage() { echo "== $1 ($((SECONDS - t0)) s so far) =="; }
bash scripts/setup.sh test
py="${SALNP_VENV:-$PWD/.venv}/bin/python"
# every test runs; a test skipped for a missing package or data set fails the run
# (tests/conftest.py): a clean environment must fail where a user's machine would
export SALNP_STRICT_DEPS=1

stage "C tests (ctest, AddressSanitizer + UndefinedBehaviorSanitizer)"
cmake -S . -B build/asan -G Ninja -DSAL_SANITIZE=ON -DSAL_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/asan
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build/asan --output-on-failure

stage "Fuzzing (libFuzzer, bounded: SAL_CI_FUZZ_SECONDS per target, default 20)"
# 5 targets x 20 s + ~30 s build: about 2 minutes.  Longer runs: bash scripts/fuzz.sh 300
bash scripts/fuzz.sh "${SAL_CI_FUZZ_SECONDS:-20}"

stage "Python tests (pytest, installed package)"
set +e
"$py" -m pytest -q -p no:cacheprovider --durations=12 tests "$@"
rc=$?
set -e
echo "== done in $((SECONDS - t0)) s =="
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi
exit $rc
