#!/bin/bash
# The boot test as .ci/run calls it on a fresh Debian machine: installs what
# it needs (systemd-nspawn, debootstrap, objdump/objcopy for the package
# build) and runs it. Without root there is nothing it can do: it says so and
# skips; as root its exit status is the test's.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ $(id -u) != 0 ]]; then
    echo "SKIP nspawn boot test: needs root (debootstrap, mounts, systemd-nspawn)"
    exit 0
fi

missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v objdump >/dev/null || missing+=(binutils)
if ((${#missing[@]})); then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

exec "$here/boot-test.sh"
