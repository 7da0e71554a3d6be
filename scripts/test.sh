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
