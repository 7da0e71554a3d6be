#!/bin/bash
# Generic Varlink clients against a real broker: the Python `varlink`
# package (from PyPI) and systemd 257's `varlinkctl` (from the trixie tree
# the boot test caches), both reading the broker's own interface
# descriptions. Run as root after `cargo build --release` and the boot test.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
tree=${USERDB_BROKER_TEST_CACHE:-/var/cache/userdb-broker-tests}/trixie
brokerd=$repo/target/release/userdb-brokerd

python3 -c 'import varlink' 2>/dev/null || pip install --quiet varlink
[[ -x $tree/usr/bin/varlinkctl ]] || {
    echo "varlink-clients: no varlinkctl in $tree (the boot test caches that tree)" >&2
    exit 1
}

work=$(mktemp -d)
broker_pid=""
cleanup() {
    [[ -n $broker_pid ]] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# A root with a files user and group, and a drop-in member of that group.
mkdir -p "$work/root/etc/userdb" "$work/sock"
printf 'root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001:Alice:/home/alice:/bin/sh\n' >"$work/root/etc/passwd"
printf 'root:x:0:\nwheel:x:10:alice\n' >"$work/root/etc/group"
echo '{"userName":"bob","uid":2001}' >"$work/root/etc/userdb/bob.user"
echo '{}' >"$work/root/etc/userdb/bob:wheel.membership"
: >"$work/empty.toml"
"$brokerd" --root "$work/root" --socket "$work/sock/io.userdb.Broker" --config "$work/empty.toml" \
    2>"$work/broker.log" &
broker_pid=$!
for _ in $(seq 100); do
    [[ -S $work/sock/io.userdb.Broker ]] && break
    sleep 0.05
done

echo "== Python varlink client"
python3 "$here/python_client.py" "$work/sock/io.userdb.Broker" alice wheel bob

echo "== varlinkctl (systemd 257, from the trixie tree)"
# The socket directory appears at /run in the tree, in a mount namespace
# of this command only: the cached tree is not written.
varlinkctl() {
    unshare --mount --propagation private -- sh -c \
        'mount --bind "$1" "$2/run" && shift 2 && exec chroot "$0" varlinkctl "$@"' \
        "$tree" "$work/sock" "$tree" "$@"
}
address=unix:/run/io.userdb.Broker
for interface in org.varlink.service io.systemd.UserDatabase io.userdb.Broker; do
    varlinkctl introspect "$address" "$interface" >"$work/idl" || {
        echo "varlinkctl introspect $interface failed" >&2
        exit 1
    }
    grep -q "^interface $interface" "$work/idl" || {
        echo "varlinkctl introspect $interface printed no interface line:" >&2
        cat "$work/idl" >&2
        exit 1
    }
done
reply=$(varlinkctl call "$address" io.systemd.UserDatabase.GetUserRecord \
    '{"userName":"bob","service":"io.userdb.Broker"}')
grep -q '"userName" *: *"bob"' <<<"$reply" || {
    echo "varlinkctl call GetUserRecord bob answered: $reply" >&2
    exit 1
}
members=$(varlinkctl call --more "$address" io.systemd.UserDatabase.GetMemberships \
    '{"groupName":"wheel","service":"io.userdb.Broker"}')
for member in alice bob; do
    grep -q "\"userName\" *: *\"$member\"" <<<"$members" || {
        echo "varlinkctl call --more GetMemberships wheel lacks $member: $members" >&2
        exit 1
    }
done
echo "varlinkctl: introspect of all three interfaces, GetUserRecord and streamed GetMemberships as expected"
