#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test
# (format, lints, unit tests, end-to-end and fault tests through real glibc,
# and the systemd-nspawn boot test). Needs root: the tests use mount and PID
# namespaces and boot a container.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (the tests use mount namespaces and systemd-nspawn)" >&2
    exit 1
fi

# Debian packages the tests use; installed only when missing. man-db, zsh
# and fish check the generated man pages and shell completions, lintian the
# Debian package.
packages=(systemd systemd-container debootstrap libnss-systemd valgrind strace binutils util-linux procps dpkg-dev man-db zsh fish lintian)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build --release"
cargo build --release --workspace
echo "== cargo test (unit, end-to-end, faults)"
cargo test --release --workspace
echo "== fuzzing: every target of fuzz/ for a bounded time"
# cargo-fuzz drives libFuzzer; installed once (about a minute on a fresh machine).
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# No sanitizer: the parsers are safe Rust, ASan would cost three quarters of
# the executions, and without it the targets build on the stable toolchain.
# Overflow checks and debug assertions stay on. New inputs go to a scratch
# directory, the committed corpus is only read; a failing check fails this
# command and leaves its input in fuzz/artifacts/<target>/. The progress
# lines for every new input and the dictionary are left out of the log.
fuzz_seconds=25
fuzz_flags=(--sanitizer none --debug-assertions)
fuzz_scratch=$(mktemp -d)
trap 'rm -rf "$fuzz_scratch"' EXIT
cargo fuzz build "${fuzz_flags[@]}"
for target in $(cargo fuzz list); do
    mkdir "$fuzz_scratch/$target"
    cargo fuzz run "${fuzz_flags[@]}" "$target" "$fuzz_scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$fuzz_seconds" -timeout=10 -print_final_stats=1 2>&1 |
        grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)|^".*" # Uses: [0-9]+$'
done
echo "== Debian package, checked by lintian"
# Every tag of every level fails the build unless the package overrides it
# with a reason (packaging/debian/userdb-broker.lintian-overrides).
debs=$(packaging/debian/build-deb.sh)
# shellcheck disable=SC2086 # one path per line, none with spaces
lintian --pedantic --display-info --display-experimental \
    --fail-on error,warning,info,pedantic $debs
# The boot test installs the package just built.
export USERDB_BROKER_DEB=${debs##*$'\n'}
# Boots bookworm and trixie, plain and through an initrd, with the broker and
# the control; the first run debootstraps both trees into the cache.
echo "== systemd-nspawn boot test (bookworm, trixie; plain, initrd; broker, control)"
bash tests/nspawn/boot-test.sh
# Needs the trixie tree the boot test caches, for systemd 257's varlinkctl.
echo "== generic Varlink clients (Python varlink, systemd 257's varlinkctl)"
bash tests/varlink-clients/run.sh
