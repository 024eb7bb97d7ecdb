#!/usr/bin/env bash
# The Python test suite (a bounded subset) against salnp._core built with AddressSanitizer
# + UndefinedBehaviorSanitizer (libsal and the extension instrumented; CPython is not).
#
#   bash scripts/asan-pytest.sh                  # default subset, about 5-10 minutes
#   bash scripts/asan-pytest.sh tests/test_conv.py -k backward     # any pytest arguments
#
# The instrumented module goes to build/asan-py/pkg/salnp (a copy of python/salnp), never
# over python/salnp/_core*.so, so the normal development build is untouched.  The ASan
# and UBSan runtimes are LD_PRELOADed (the python executable is not instrumented);
# leak detection is off (CPython's own allocations at exit are not ours; the C tests run
# LeakSanitizer in scripts/test.sh); UBSan reports are fatal (-fno-sanitize-recover=all).
# Exit status: pytest's; any ASan/UBSan report aborts the run with a non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."
# the project environment (scripts/setup.sh) when there is one, else python3 on PATH
py="${SALNP_VENV:-$PWD/.venv}/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
out=build/asan-py
pkg="$out/pkg/salnp"
cmake -S . -B "$out" -G Ninja -DSAL_SANITIZE=ON -DSAL_BUILD_PYTHON_INPLACE=ON \
      -DSAL_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DSAL_PYTHON_OUTPUT_DIR="$PWD/$pkg" -DPython_EXECUTABLE="$py" \
      > "$out.configure.log" 2>&1 || { cat "$out.configure.log"; exit 1; }
cmake --build "$out"
mkdir -p "$pkg"
cp python/salnp/*.py "$pkg/"
libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
[ -f "$libasan" ] && [ -f "$libubsan" ] || { echo "asan-pytest: libasan/libubsan not found"; exit 1; }
if [ $# -eq 0 ]; then
  # everything that drives the extension with many shapes and bad inputs; not the RSS
  # checks (ASan's quarantine grows RSS by design) nor the long training runs
  # (the bad-input matrices sit in the subject files: models, train and io included for them)
  set -- tests/test_conv.py tests/test_shift.py tests/test_sal.py tests/test_layers.py \
         tests/test_models.py tests/test_train.py tests/test_io.py tests/test_export.py \
         tests/test_count.py tests/test_data.py tests/test_seams.py tests/test_streams.py \
         tests/test_fuzz_ops.py tests/test_fuzz_npz.py tests/test_reliability.py -m "not slow" -k "not kill9"
fi
echo "== pytest under ASan+UBSan ($pkg) =="
set +e
LD_PRELOAD="$libasan $libubsan" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:handle_segv=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
PYTHONPATH="$out/pkg" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
  "$py" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
echo "asan-pytest: pytest exit status $rc"
exit $rc
