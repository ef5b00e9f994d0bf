#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The full test run: installs the dependencies, builds everything (tests, examples, benchmarks)
# in build/, runs every test; then builds the unit tests again with AddressSanitizer and
# UndefinedBehaviorSanitizer in build-sanitize/ (without the build-level checks: compile-fail,
# header, package and fuzz tests) and runs them. JOBS sets the parallelism
# (default: all cores). Ends with one line counting both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=${JOBS:-$(nproc)}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# the number of tests ctest ran, from its summary line in the log
count() { sed -n 's/.*tests passed, 0 tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -n 1; }

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build -j"$jobs" --output-on-failure | tee "$log"
release=$(count)

cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDEEPMOE_SANITIZE=ON -DDEEPMOE_BUILD_EXAMPLES=OFF -DDEEPMOE_BUILD_BENCH=OFF
cmake --build build-sanitize -j"$jobs"
ctest --test-dir build-sanitize -j"$jobs" --output-on-failure \
  | tee "$log"
sanitized=$(count)

echo
echo "Release build: $release tests; ASan+UBSan build: $sanitized tests; all passed."
echo "total: $((release + sanitized)) passed, 0 failed"
