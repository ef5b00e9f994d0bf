#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The full test run: installs the dependencies, builds everything (tests, examples, benchmarks)
# in build/, runs every test; then builds the unit tests again with AddressSanitizer and
# UndefinedBehaviorSanitizer in build-sanitize/ and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build -j"$jobs" --output-on-failure

cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DDEEPMOE_SANITIZE=ON -DDEEPMOE_BUILD_EXAMPLES=OFF -DDEEPMOE_BUILD_BENCH=OFF
cmake --build build-sanitize -j"$jobs"
ctest --test-dir build-sanitize -j"$jobs" --output-on-failure -E "^(package|compile_fail):"
