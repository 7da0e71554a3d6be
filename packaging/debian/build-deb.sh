#!/bin/bash
# Builds target/debian/userdb-broker_<version>_<arch>.deb from the workspace
# with dpkg-deb alone (no debhelper, no network): cargo build --release,
# install.sh into a staging root, the maintainer scripts beside this file,
# and a control file whose Depends come from the binaries' ELF headers.
# NO_BUILD=1 packages what target/release already holds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}

if [[ ${NO_BUILD:-0} != 1 ]]; then
    (cd "$repo" && cargo build --release -p nss-broker -p userdb-broker)
fi

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
arch=$(dpkg --print-architecture)
if [[ -z $version ]]; then
    echo "build-deb.sh: no version in $repo/Cargo.toml [workspace.package]" >&2
    exit 1
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/userdb-broker-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
mkdir -p "$root"

# A package has no install manifest: dpkg keeps the file list itself.
DESTDIR=$root PREFIX=/usr TARGET_DIR=$target/release MANIFEST=/manifest \
    "$repo/packaging/install.sh" >/dev/null
rm "$root/manifest"
# Debug info stays in target/; the symbol table stays for backtraces.
for elf in "$root"/usr/sbin/userdb-brokerd "$root"/usr/bin/userdb-brokerctl "$root"/usr/lib/*/libnss_broker.so.2; do
    objcopy --strip-debug "$elf"
done

# Depends from what the binaries link: glibc at the newest symbol version
# they use, libgcc_s for Rust's unwinder. Anything else is a packaging bug.
glibc_min=$(objdump -T "$root"/usr/sbin/* "$root"/usr/bin/* "$root"/usr/lib/*/libnss_broker.so.2 |
    grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
depends="libc6 (>= $glibc_min)"
while read -r needed; do
    case $needed in
    libc.so.6 | libm.so.6 | libdl.so.2 | libpthread.so.0 | librt.so.1 | ld-linux*) ;;
    libgcc_s.so.1) [[ $depends == *libgcc-s1* ]] || depends+=", libgcc-s1" ;;
    *)
        echo "build-deb.sh: unexpected library $needed; add its package to Depends" >&2
        exit 1
        ;;
    esac
done < <(for elf in "$root"/usr/sbin/* "$root"/usr/bin/* "$root"/usr/lib/*/libnss_broker.so.2; do
    objdump -p "$elf" | awk '$1 == "NEEDED" { print $2 }'
done | sort -u)

mkdir -p "$root/DEBIAN"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
cat >"$root/DEBIAN/control" <<CONTROL
Package: userdb-broker
Version: $version
Architecture: $arch
Maintainer: userdb-broker developers <userdb-broker@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends
Recommends: systemd
Section: admin
Priority: optional
Description: NSS module and userdb broker that never wait on PID 1
 libnss_broker.so.2 (nsswitch.conf service "broker") resolves users and
 groups through userdb-brokerd, which reads /etc/passwd and /etc/group,
 userdb JSON drop-ins and the systemd userdb Varlink services with
 deadlines, so generators and daemon-reload never wait on PID 1.
 .
 The package does not edit /etc/nsswitch.conf: run
 'userdb-brokerctl enable' to add the broker, 'userdb-brokerctl check'
 to review the file.
CONTROL

mkdir -p "$target/debian"
deb=$target/debian/userdb-broker_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
