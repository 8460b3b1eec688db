#!/usr/bin/env bash
# Builds the CPU tree with sanitizers in its own build dir and runs a ctest
# subset chosen to fit CI's budget (timings on 2 cores in tests/RELIABILITY.md).
#   scripts/sanitize.sh asan [extra ctest args]   ASan+UBSan: unit + e2e tests
#   scripts/sanitize.sh tsan [extra ctest args]   TSan: engine, scheduler, state pool,
#       state cache, metrics, and the HTTP front end (the pytest suite against
#       http_test_server, which links no gRPC)
# Environment: CXX/CC pick the compiler (default g++/gcc); JOBS (default nproc);
# EXCLUDE, a ctest regex of more tests to skip (e.g. known failures).
set -euo pipefail
kind=${1:?usage: scripts/sanitize.sh asan|tsan [ctest args]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=build/$kind
jobs=${JOBS:-$(nproc)}
export CC=${CC:-gcc} CXX=${CXX:-g++}
python=$root/.venv/bin/python
[[ -x $python ]] || python=$(command -v python3)

extra_cmake=()
report_dir=
case $kind in
  asan)
    flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
    # Python client tests and deploy checks run no instrumented code.
    ctest_select=(-E "^(python_client_tests|deploy_.*|python_tests)\$${EXCLUDE:+|$EXCLUDE}")
    # Leak checking stays on; gRPC/absl are not instrumented but LSan needs no
    # instrumentation. halt_on_error keeps the first report readable.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=0}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    # ASan's quarantine (256 MiB by default) holds freed memory, so the soak's
    # RSS bound is raised from 64 MiB for this build.
    export GDNSERVE_SOAK_RSS_MB=${GDNSERVE_SOAK_RSS_MB:-320}
    export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0}
    ;;
  tsan)
    flags="-O1 -g -fno-omit-frame-pointer -fsanitize=thread"
    # Everything that links no gRPC: Debian's gRPC/Abseil are not instrumented
    # (tests/sanitizers/tsan.supp says why), so gdnserve and the gRPC e2e,
    # soak and fault tests are out. The HTTP front end runs in
    # http_test_server (engine + HttpServer, no gRPC) under the whole tests/http
    # pytest suite (overload/429, disconnect cancels, SIGTERM drain) and
    # tests/sanitizers/test_http_concurrency.py (24 clients at once, then
    # SIGTERM under load). Both are ctest tests only with
    # -DGDNSERVE_HTTP_SUITE_TEST_SERVER=ON (tests/http/CMakeLists.txt).
    tsan_targets=(engine_test scheduler_test state_pool_test state_cache_test metrics_test http_unit_test
                  http_test_server)
    tsan_tests=(gen_test_models engine_test scheduler_test state_pool_test state_cache_test metrics_test
                http_unit_test http_api_tests_test_server http_concurrency_test_server)
    ctest_select=(-R "^($(IFS='|'; echo "${tsan_tests[*]}"))\$")
    [[ -z ${EXCLUDE:-} ]] || ctest_select+=(-E "$EXCLUDE")
    extra_cmake=(-DGDNSERVE_HTTP_SUITE_TEST_SERVER=ON)
    # libgomp is not TSan-aware: one OpenMP thread keeps its barriers out of
    # the picture (the engine's own threads are what we test here).
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    # Reports go to files that are checked below, so a report fails the run
    # even from a process whose exit code nobody checks (a server the pytest
    # suite expects to fail, or kills). halt_on_error: the process exits 66 at
    # its first report, which also fails its test.
    report_dir=$root/$dir/tsan-reports
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$root/tests/sanitizers/tsan.supp:log_path=$report_dir/tsan}
    ;;
  *) echo "unknown sanitizer '$kind' (asan|tsan)" >&2; exit 2 ;;
esac

t0=$(date +%s)
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="${flags/-O1 -g /}" -DCMAKE_SHARED_LINKER_FLAGS="${flags/-O1 -g /}" \
  -DGDNSERVE_CUDA=OFF -DGDNSERVE_BENCH=OFF -DGDNSERVE_PYTHON="$python" "${extra_cmake[@]}" > /dev/null
if [[ $kind == tsan ]]; then
  # Only what the subset runs.
  cmake --build "$dir" -j "$jobs" --target "${tsan_targets[@]}"
else
  cmake --build "$dir" -j "$jobs"
fi
t1=$(date +%s)
rc=0
[[ -z $report_dir ]] || { rm -rf "$report_dir"; mkdir -p "$report_dir"; }
ctest --test-dir "$dir" -j "$jobs" --output-on-failure --timeout 600 "${ctest_select[@]}" "$@" || rc=$?
t2=$(date +%s)
if [[ -n $report_dir ]] && compgen -G "$report_dir/*" > /dev/null; then
  for f in "$report_dir"/*; do echo "== $f"; cat "$f"; done
  echo "sanitize[$kind]: sanitizer reports above ($report_dir)" >&2
  rc=1
fi
echo "sanitize[$kind]: build $((t1 - t0)) s, tests $((t2 - t1)) s, ctest rc=$rc"
exit $rc
