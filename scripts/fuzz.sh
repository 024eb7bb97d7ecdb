#!/usr/bin/env bash
# libFuzzer run of every target in tests/fuzz (fuzz_<target>.c), with libsal and the
# harnesses built by clang with -fsanitize=fuzzer,address,undefined.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET [MAX_RUNS_PER_TARGET]]    (defaults 60, 50000000)
#   FUZZ_TARGETS="cifar idx" bash scripts/fuzz.sh 30                   (a subset)
#   SAL_FUZZ_SEED=1 bash scripts/fuzz.sh 300 20000                     (reproducible)
#
# Each target starts from its seed corpus tests/fuzz/corpus/<target>/ (read only); inputs
# the fuzzer finds go to build/fuzz/work/<target>/, crashing inputs to
# build/fuzz/artifacts/<target>/.  Prints libFuzzer's final line per target (executions,
# cov: edges, ft: features, exec/s) and exits non-zero if any target crashed, leaked,
# timed out or failed an assertion.  A crash input belongs in the seed corpus
# (tests/fuzz/corpus/<target>/crash_<what>) with the fix: ctest then replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
runs="${2:-50000000}"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# clang + the compiler-rt runtimes (libFuzzer, ASan, UBSan) on Debian bookworm; libomp only
# for its omp.h header (the openmp flavour's blis.h includes it): libsal links no OpenMP;
# llvm-14 for llvm-symbolizer (sanitizer stack traces).  Without recommends: clang-14
# recommends llvm-14-dev, whose llvm-14-tools put python3-pygments and python3-yaml into the
# system Python (seen on a fresh Debian 12), and the fuzz build needs none of it.
pkgs=(clang libclang-rt-14-dev libomp-14-dev llvm-14 libblis-dev cmake ninja-build)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fuzz: apt-get install ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "== fuzz: building the libFuzzer targets (clang, build/fuzz) =="
cmake -S . -B build/fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DSAL_FUZZ=ON -DSAL_BUILD_TESTS=OFF \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo > build-fuzz-configure.log 2>&1 \
  || { cat build-fuzz-configure.log; exit 1; }
rm -f build-fuzz-configure.log
cmake --build build/fuzz

targets="${FUZZ_TARGETS:-$(cd tests/fuzz && ls fuzz_*.c | sed 's/^fuzz_//; s/\.c$//' | tr '\n' ' ')}"
export OMP_NUM_THREADS=1
# leaks count as failures; a UBSan report is fatal (libsal: -fno-sanitize-recover=all)
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
summary=()
for t in $targets; do
  bin="build/fuzz/tests/fuzz/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz: no target $bin"; exit 1; }
  work="build/fuzz/work/$t"; art="build/fuzz/artifacts/$t"; log="build/fuzz/fuzz_$t.log"
  mkdir -p "$work" "$art"
  maxlen=4096
  [ "$t" = cifar ] && maxlen=16384   # room for a few 3073-byte records
  [ "$t" = net ] && maxlen=16384   # exported seeds (whole programs) reach 6.5 kB
  seed=""
  [ -n "${SAL_FUZZ_SEED:-}" ] && seed="-seed=$SAL_FUZZ_SEED"
  cmd="$bin $seed -max_total_time=$secs -runs=$runs -max_len=$maxlen -timeout=20 -rss_limit_mb=2048 \
-print_final_stats=1 -artifact_prefix=$art/ $work tests/fuzz/corpus/$t"
  echo "== fuzz: $t: $cmd"
  set +e
  $cmd > "$log" 2>&1
  rc=$?
  set -e
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  [ -n "$done_line" ] || done_line=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  echo "   $done_line"
  echo "   executions: ${execs:-?}   exit status: $rc"
  summary+=("$(printf '%-6s execs=%-10s %s' "$t" "${execs:-?}" "$(echo "$done_line" | \
             grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9/]+[a-zA-Z]* .*exec/s: [0-9]+' || true)")")
  if [ $rc -ne 0 ]; then
    failed+=("$t")
    echo "fuzz: $t FAILED (exit $rc); log $log; crash inputs:"
    ls -l "$art" || true
    grep -E 'ERROR|FUZZ_ASSERT|runtime error|SUMMARY' "$log" | head -20 || true
  fi
done

echo "== fuzz summary (${secs} s / at most ${runs} runs per target) =="
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}"
  exit 1
fi
echo "fuzz: no crash"
