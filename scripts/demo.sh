#!/usr/bin/env bash
# The main job: build, start userdb-brokerd on this machine's own data, and
# resolve users and groups through libnss_broker.so.2 with real getent/id.
# The machine's /etc is not touched: the look-ups run in a private mount
# namespace whose /etc/nsswitch.conf names only `broker`, so every answer
# printed below came through the module and the broker.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/demo.sh: run as root (it reads /etc/shadow and uses a mount namespace)" >&2
    exit 1
fi

cargo build --release --workspace

work=$(mktemp -d /tmp/userdb-broker-demo.XXXXXX)
broker_pid=
cleanup() {
    [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/lib"
ln -s "$PWD/target/release/libnss_broker.so" "$work/lib/libnss_broker.so.2"
socket="$work/io.userdb.Broker"

target/release/userdb-brokerd --root / --socket "$socket" 2>"$work/broker.log" &
broker_pid=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.05; done
[ -S "$socket" ] || { cat "$work/broker.log" >&2; echo "broker did not start" >&2; exit 1; }

cat >"$work/nsswitch.conf" <<'CONF'
passwd: broker
group:  broker
shadow: broker
gshadow: broker
CONF

in_namespace() {
    unshare --mount --propagation private -- sh -c \
        'mount --bind "$0" /etc/nsswitch.conf && exec "$@"' "$work/nsswitch.conf" \
        env LD_LIBRARY_PATH="$work/lib" USERDB_BROKER_SOCKET="$socket" "$@"
}

first_user=$(awk -F: '$3 >= 1000 && $3 < 60000 { print $1; exit }' /etc/passwd)
user=${first_user:-root}

echo "== nsswitch.conf in the namespace:"; cat "$work/nsswitch.conf"
echo "== getent passwd root";        in_namespace getent passwd root
echo "== getent passwd 0";           in_namespace getent passwd 0
echo "== getent group root";         in_namespace getent group root
echo "== id $user";                  in_namespace id "$user"
echo "== getent initgroups $user";   in_namespace getent initgroups "$user"
echo "== getent shadow root: as root the hash is there (its length shown, not the hash)"
in_namespace getent shadow root | awk -F: '{ printf "%s:<hash of %d characters>:%s\n", $1, length($2), $3 }'
echo "== getent shadow root as nobody: the broker withholds it"
in_namespace setpriv --reuid=65534 --regid=65534 --clear-groups getent shadow root || echo "   (exit $?: no entry)"
echo "== getent passwd | wc -l (broker) vs /etc/passwd"
echo "   broker: $(in_namespace getent passwd | wc -l)   /etc/passwd: $(grep -cv '^\s*#' /etc/passwd)"
echo "== userdb-brokerctl status"
target/release/userdb-brokerctl --socket "$socket" status
