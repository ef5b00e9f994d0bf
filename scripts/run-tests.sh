#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The full test run: installs the dependencies, builds everything (tests, examples, benchmarks)
# in build/, runs every test; then builds the unit tests again with AddressSanitizer and
# UndefinedBehaviorSanitizer in build-sanitize/ (without the build-level checks: compile-fail,
# header, package and fuzz tests, nor the CUDA ones) and runs them. Where no GPU is present the
# CUDA tests are built for sm_90a and sm_80 and reported as skipped. JOBS sets the parallelism
# (default: all cores). Ends with one line counting both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=${JOBS:-$(nproc)}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# the number of tests ctest ran, from its summary line in the log
count() { sed -n 's/.*tests passed, 0 tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -n 1; }
# the tests ctest reported as skipped (the GPU tests where no GPU is present)
skipped() { grep -c '(Skipped)$' "$log" || true; }

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build -j"$jobs" --output-on-failure | tee "$log"
release=$(count)
release_skipped=$(skipped)
grep -h '^SKIPPED' build/Testing/Temporary/LastTest.log 2>/dev/null | sort -u || true

cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDEEPMOE_SANITIZE=ON -DDEEPMOE_BUILD_EXAMPLES=OFF -DDEEPMOE_BUILD_BENCH=OFF \
  -DDEEPMOE_ENABLE_CUDA=OFF
cmake --build build-sanitize -j"$jobs"
ctest --test-dir build-sanitize -j"$jobs" --output-on-failure \
  | tee "$log"
sanitized=$(count)

echo
echo "Release build: $release tests ($release_skipped skipped: they need a GPU); ASan+UBSan build: $sanitized tests; no failures."
echo "total: $((release + sanitized - release_skipped)) passed, $release_skipped skipped, 0 failed"
