#!/bin/bash
# Builds the source and binary RPMs (rpmbuild) into target/rpm/ from the
# committed HEAD: Source0 `git archive`, Source1 `cargo vendor
# --versioned-dirs`, Source2 `cargo run -p xtask -- dist-assets`, and the
# spec with @VERSION@ replaced by [workspace.package] version from
# Cargo.toml, whose top %changelog entry must name that version.
# Variables: SRPM_ONLY=1 stops after the source RPM (for a build elsewhere,
# e.g. mock or a distribution's build system).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}

fail() {
    echo "build-rpm.sh: $*" >&2
    exit 1
}

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
[[ -n $version ]] || fail "no version in $repo/Cargo.toml [workspace.package]"
top_entry=$(sed -n '/^%changelog/,${/^\* /{s/.* - \([^ ]*\)$/\1/p;q}}' "$here/userdb-broker.spec")
[[ ${top_entry%-*} == "$version" ]] ||
    fail "the spec's top %changelog entry is $top_entry, Cargo.toml at $version: add an entry"

# Every licence of a crate linked into the binaries must be in License:.
license_tag=$(sed -n 's/^License: *//p' "$here/userdb-broker.spec")
for license in $(cd "$repo" && cargo tree --locked -p userdb-broker -p nss-broker -e normal,no-proc-macro \
    --prefix none --no-dedupe --format '{l}' | sed 's/ OR / /g; s/ AND / /g; s|/| |g; s/[()]//g' | tr ' ' '\n' | sort -u); do
    [[ " $license_tag " == *[\ \(]"$license"[\ \)]* ]] ||
        fail "a linked crate is under $license, which the spec's License: does not name"
done

top=$target/rpm
name=userdb-broker-$version
rm -rf "$top"
mkdir -p "$top"/{SOURCES,SPECS}
sed "s/@VERSION@/$version/" "$here/userdb-broker.spec" >"$top/SPECS/userdb-broker.spec"

(cd "$repo" && git archive --format=tar.gz --prefix="$name/" HEAD) >"$top/SOURCES/$name.tar.gz"
work=$(mktemp -d "${TMPDIR:-/tmp}/userdb-broker-rpm.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$repo" && cargo vendor --locked --versioned-dirs "$work/vendor" >/dev/null)
tar -C "$work" -czf "$top/SOURCES/$name-vendor.tar.gz" vendor
# The pages' date: the commit's, so one version's pages are the same whenever built.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(cd "$repo" && git log -1 --format=%ct HEAD)}
export SOURCE_DATE_EPOCH
(cd "$repo" && cargo run --release --quiet -p xtask -- dist-assets "$work/dist-assets" >&2) ||
    fail "cargo run -p xtask -- dist-assets failed: no man pages or completions"
tar -C "$work" -czf "$top/SOURCES/$name-assets.tar.gz" dist-assets

if [[ ${SRPM_ONLY:-0} == 1 ]]; then
    rpmbuild --define "_topdir $top" -bs "$top/SPECS/userdb-broker.spec"
else
    rpmbuild --define "_topdir $top" -ba "$top/SPECS/userdb-broker.spec"
fi
