#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#   FUZZ_TARGETS="config" scripts/fuzz.sh 300 (a subset)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# No network: the targets are pure functions. Each run starts from the
# committed corpus in fuzz/corpus/<target>/ and adds the new inputs it finds
# to it (`cargo fuzz cmin <target>` keeps it small before a commit). Exits
# non-zero on the first crash, naming the input that reproduces it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;;
esac
targets="${FUZZ_TARGETS:-token_response config}"

cargo +nightly fuzz build -O

for target in $targets; do
    echo "--- fuzz $target for ${seconds}s"
    mkdir -p "corpus/$target" "artifacts/$target"
    log="artifacts/$target/last-run.log"
    status=0
    cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 2>&1 | tee "$log" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "!!! $target failed (exit $status)" >&2
        crash=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | cut -d' ' -f5- || true)
        if [ -n "$crash" ]; then
            echo "!!! crash input: fuzz/$crash" >&2
            echo "!!! reproduce:   (cd fuzz && cargo +nightly fuzz run -O $target $crash)" >&2
        fi
        exit "$status"
    fi
    grep -E '^stat::number_of_executed_units' "$log" | tail -1 || true
done
echo "--- no crash"
