#!/usr/bin/env bash
# The whole test suite on a fresh machine: setup, C tests under ASan+UBSan (with the fuzz
# corpus replayed), a bounded libFuzzer run (scripts/fuzz.sh), then pytest.  Every stage
# runs even when an earlier one failed (a fuzz finding must not hide the pytest results);
# the command fails if any stage failed and names them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
stage() { echo "== $1 ($((SECONDS - t0)) s so far) =="; }
bash scripts/setup.sh test
py="${SALNP_VENV:-$PWD/.venv}/bin/python"
# every test runs; a test skipped for a missing package or data set fails the run
# (tests/conftest.py): a clean environment must fail where a user's machine would
export SALNP_STRICT_DEPS=1
failed=()

stage "C tests (ctest, AddressSanitizer + UndefinedBehaviorSanitizer)"
cmake -S . -B build/asan -G Ninja -DSAL_SANITIZE=ON -DSAL_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null \
  && cmake --build build/asan \
  && ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build/asan --output-on-failure \
  || failed+=("C tests")

stage "Fuzzing (libFuzzer, bounded: SAL_CI_FUZZ_SECONDS per target, default 20)"
# 5 targets x 20 s + ~30 s build: about 2 minutes.  Longer runs: bash scripts/fuzz.sh 300
bash scripts/fuzz.sh "${SAL_CI_FUZZ_SECONDS:-20}" || failed+=("fuzzing")

stage "Python tests (pytest, installed package)"
rc=0
"$py" -m pytest -q -p no:cacheprovider --durations=12 tests "$@" || rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; fi
[ $rc -eq 0 ] || failed+=("pytest (exit $rc)")

echo "== done in $((SECONDS - t0)) s =="
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED stages: $(IFS=,; echo "${failed[*]}" | sed 's/,/, /g')"
  exit 1
fi
echo "test.sh: every stage passed"
