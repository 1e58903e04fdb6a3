#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets of fuzz/ (the VMM code that parses
# guest-controlled bytes) for SECONDS each; prints a table and exits non-zero
# if any target crashed (or failed to build or run).
#
#   scripts/fuzz.sh [TARGET…]        SECONDS=30 by default (make fuzz: 600)
#
# Corpora grow under build/fuzz/corpus/<target> (kept between runs, never
# committed), seeded from fuzz/seeds/<target> when that exists; a crashing
# input lands in build/fuzz/artifacts/<target>/ — reproduce it with
# `fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>` and turn it
# into a regression test in the crate. Binaries build in fuzz/target.
#
# Toolchain: only stable Rust is installed. cargo fuzz passes unstable rustc
# flags (-Zsanitizer, sanitizer coverage), which stable accepts with
# RUSTC_BOOTSTRAP=1; the stable rust-std ships the AddressSanitizer runtime,
# so targets build with ASan. If that build fails the script falls back to
# `--sanitizer none` (coverage-guided, no ASan) and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

SECONDS_EACH=${SECONDS_EACH:-${FUZZ_SECONDS:-30}}
out="$root/build/fuzz"
all_targets=(virtio_blk vsock_tx mmio virtio_net_tx)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

export RUSTC_BOOTSTRAP=1
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi

sanitizer=address
build() {
    (cd fuzz && nice -n 19 cargo fuzz build --sanitizer "$sanitizer" "$@")
}
echo "fuzz: building ${targets[*]} (sanitizer $sanitizer)" >&2
build_start=$(date +%s)
if ! build; then
    echo "fuzz: WARNING: the AddressSanitizer build failed; building without a sanitizer" >&2
    echo "fuzz: (panics, overflows and bounds checks still crash; memory errors in unsafe code may not)" >&2
    sanitizer=none
    build
fi
build_secs=$(( $(date +%s) - build_start ))
bin_dir="$root/fuzz/target/x86_64-unknown-linux-gnu/release"

declare -A runs secs result
failed=0
for t in "${targets[@]}"; do
    corpus="$out/corpus/$t"
    artifacts="$out/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    log="$out/$t.log"
    echo "fuzz: $t for ${SECONDS_EACH}s (log: $log)" >&2
    start=$(date +%s)
    rc=0
    # -rss_limit_mb: ASan's quarantine plus 16 MiB of guest memory per run.
    nice -n 19 "$bin_dir/$t" "$corpus" "${seeds[@]}" \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    secs[$t]=$(( $(date +%s) - start ))
    runs[$t]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s+=$1} END {print s+0}')
    if [ "$rc" -eq 0 ]; then
        result[$t]=ok
    else
        failed=1
        crash=$(ls -t "$artifacts" 2>/dev/null | head -n1)
        result[$t]="FAILED (exit $rc${crash:+, input $artifacts/$crash})"
        grep -E -m3 "panicked at|ERROR: (AddressSanitizer|libFuzzer)|SUMMARY" "$log" >&2 || tail -n 20 "$log" >&2
    fi
done

echo
echo "fuzz: build ${build_secs}s, sanitizer $sanitizer"
printf '%-14s %12s %8s  %s\n' target runs seconds result
for t in "${targets[@]}"; do
    printf '%-14s %12s %8s  %s\n' "$t" "${runs[$t]}" "${secs[$t]}" "${result[$t]}"
done
exit "$failed"
