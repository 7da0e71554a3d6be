#!/bin/bash
# Builds, with dpkg-deb alone (no debhelper, no network), into target/debian/:
#   userdb-broker_<version>_<arch>.deb         the module, both binaries
#                                               (stripped), unit, tmpfiles.d,
#                                               conffile, man pages, completions
#   userdb-broker-dbgsym_<version>_<arch>.deb  their debug info, by build ID
# and prints the main package's path last.
#
# <version> is the top entry of packaging/debian/changelog; its upstream part
# must equal [workspace.package] version in Cargo.toml.
# Variables: NO_BUILD=1 packages what target/release already holds;
# ASSETS_DIR takes man pages and completions from there instead of running
# `cargo run -p xtask -- dist-assets`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
maintainer="userdb-broker maintainers <maintainers@users.noreply.h-seed-118f68d0.example>"

fail() {
    echo "build-deb.sh: $*" >&2
    exit 1
}

cargo_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
version=$(dpkg-parsechangelog -l "$here/changelog" -S Version)
[[ -n $cargo_version ]] || fail "no version in $repo/Cargo.toml [workspace.package]"
[[ ${version%-*} == "$cargo_version" ]] ||
    fail "packaging/debian/changelog is at $version, Cargo.toml at $cargo_version: add a changelog entry"
arch=$(dpkg --print-architecture)
config=$repo/packaging/userdb-brokerd.toml
[[ -f $config ]] || fail "$config is missing: the package ships it as /etc/userdb-broker/userdb-brokerd.toml"

if [[ ${NO_BUILD:-0} != 1 ]]; then
    (cd "$repo" && cargo build --release -p nss-broker -p userdb-broker)
fi
# As dpkg-buildpackage does: the build's date is the changelog's, so the
# man pages of one version are the same whenever they are built.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -l "$here/changelog" -S Timestamp)}
export SOURCE_DATE_EPOCH
if [[ -z ${ASSETS_DIR:-} ]]; then
    ASSETS_DIR=$target/dist-assets
    rm -rf "$ASSETS_DIR"
    (cd "$repo" && cargo run --release --quiet -p xtask -- dist-assets "$ASSETS_DIR" >&2) ||
        fail "cargo run -p xtask -- dist-assets failed: no man pages or completions"
fi
for asset in man/userdb-brokerd.8 man/userdb-brokerctl.1 man/nss-broker.8 \
    completions/bash/userdb-brokerctl completions/bash/userdb-brokerd \
    completions/zsh/_userdb-brokerctl completions/zsh/_userdb-brokerd \
    completions/fish/userdb-brokerctl.fish completions/fish/userdb-brokerd.fish; do
    [[ -s $ASSETS_DIR/$asset ]] || fail "$ASSETS_DIR/$asset is missing or empty"
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/userdb-broker-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
dbgsym=$stage/dbgsym
doc=$root/usr/share/doc/userdb-broker
mkdir -p "$root" "$dbgsym"

# A package has no install manifest: dpkg keeps the file list itself.
DESTDIR=$root PREFIX=/usr TARGET_DIR=$target/release ASSETS_DIR=$ASSETS_DIR \
    MANIFEST=/manifest "$repo/packaging/install.sh" >/dev/null
rm "$root/manifest"

elfs=("$root"/usr/sbin/userdb-brokerd "$root"/usr/bin/userdb-brokerctl "$root"/usr/lib/*/libnss_broker.so.2)
# As dh_strip does: the debug info goes to the -dbgsym package under its
# build ID (where gdb, systemd-coredump and debuginfod look), the binaries
# keep a debuglink to it and lose their symbol tables.
build_ids=()
for elf in "${elfs[@]}"; do
    id=$(readelf -n "$elf" | awk '$1 == "Build" && $2 == "ID:" { print $3 }')
    [[ ${#id} -gt 2 ]] || fail "$elf has no build ID"
    debug=$dbgsym/usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug
    mkdir -p "$(dirname "$debug")"
    objcopy --only-keep-debug --compress-debug-sections "$elf" "$debug"
    chmod 0644 "$debug"
    case $elf in
    *.so*) strip --remove-section=.comment --remove-section=.note --strip-unneeded "$elf" ;;
    *) strip --remove-section=.comment --remove-section=.note "$elf" ;;
    esac
    objcopy --add-gnu-debuglink="$debug" "$elf"
    build_ids+=("$id")
done

# Depends from what the binaries link: glibc at the newest symbol version
# they use, libgcc_s for Rust's unwinder. Anything else is a packaging bug.
glibc_min=$(objdump -T "${elfs[@]}" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
depends="libc6 (>= $glibc_min)"
while read -r needed; do
    case $needed in
    libc.so.6 | libm.so.6 | libdl.so.2 | libpthread.so.0 | librt.so.1 | ld-linux*) ;;
    libgcc_s.so.1) [[ $depends == *libgcc-s1* ]] || depends+=", libgcc-s1" ;;
    *) fail "unexpected library $needed; add its package to Depends" ;;
    esac
done < <(for elf in "${elfs[@]}"; do
    objdump -p "$elf" | awk '$1 == "NEEDED" { print $2 }'
done | sort -u)
# The unit's ExecReload= runs /bin/kill.
depends+=", procps"

# Policy 12.3 and 12.7: man pages and changelogs gzipped (-n: reproducible),
# the Debian changelog beside the upstream one, the copyright file as is.
find "$root/usr/share/man" -type f -exec gzip -9n {} +
gzip -9nc "$here/changelog" >"$doc/changelog.Debian.gz"
gzip -9nc "$repo/CHANGELOG.md" >"$doc/changelog.gz"
{
    cat "$here/copyright"
    # One paragraph per crate linked into the binaries (build and proc-macro
    # crates are not shipped). DEP-5 writes SPDX's OR/AND as or/and.
    (cd "$repo" && cargo tree --locked -p userdb-broker -p nss-broker -e normal,no-proc-macro \
        --prefix none --no-dedupe --format '{p}|{l}|{r}') | sort -u | while IFS='|' read -r package license repository; do
        read -r name crate_version source <<<"$package"
        [[ -n $name && -z $source ]] || continue # the workspace's own crates: Files: *
        [[ $license != *'('* ]] || fail "crate $name: licence '$license' needs a hand-written paragraph"
        for short in $(sed 's/ OR / /g; s/ AND / /g; s|/| |g' <<<"$license"); do
            grep -qx "License: $short" "$here/copyright" ||
                fail "crate $name is under $short, which packaging/debian/copyright has no text for"
        done
        printf '\nFiles: vendor/%s-%s/*\nCopyright: the %s authors%s\nLicense: %s\n' \
            "$name" "${crate_version#v}" "$name" "${repository:+, $repository}" \
            "$(sed 's/ OR / or /g; s/ AND / and /g; s|/| or |g' <<<"$license")"
    done
} >"$doc/copyright"
install -D -m 0644 "$here/userdb-broker.lintian-overrides" "$root/usr/share/lintian/overrides/userdb-broker"

mkdir -p "$root/DEBIAN"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
install -m 0644 "$here/triggers" "$root/DEBIAN/triggers"
(cd "$root" && find etc -type f -printf '/%p\n' | sort) >"$root/DEBIAN/conffiles"
[[ -s $root/DEBIAN/conffiles ]] || fail "no conffile in /etc"

# md5sums, as dh_md5sums writes them: every file but the conffiles.
md5sums() {
    (cd "$1" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' |
        LC_ALL=C sort -z | xargs -0 -r md5sum) >"$1/DEBIAN/md5sums"
}
installed_size() { du -sk --exclude=DEBIAN "$1" | cut -f1; }
md5sums "$root"
cat >"$root/DEBIAN/control" <<CONTROL
Package: userdb-broker
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(installed_size "$root")
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

# The -dbgsym package as debhelper builds it: its documentation directory
# is a link to the main package's.
mkdir -p "$dbgsym/usr/share/doc" "$dbgsym/DEBIAN"
ln -s userdb-broker "$dbgsym/usr/share/doc/userdb-broker-dbgsym"
md5sums "$dbgsym"
cat >"$dbgsym/DEBIAN/control" <<CONTROL
Package: userdb-broker-dbgsym
Source: userdb-broker
Version: $version
Auto-Built-Package: debug-symbols
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(installed_size "$dbgsym")
Depends: userdb-broker (= $version)
Section: debug
Priority: optional
Description: debug symbols for userdb-broker
Build-Ids: ${build_ids[*]}
CONTROL

mkdir -p "$target/debian"
deb=$target/debian/userdb-broker_${version}_${arch}.deb
dbgsym_deb=$target/debian/userdb-broker-dbgsym_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$dbgsym" "$dbgsym_deb" >/dev/null
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$dbgsym_deb"
echo "$deb"
