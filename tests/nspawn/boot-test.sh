#!/bin/bash
# The boot test: installs the Debian package into copies of debootstrapped
# Debian trees, boots them with systemd-nspawn and proves that generators and
# daemon-reload never wait on the broker or on PID 1 (see tests/nspawn/README.md).
#
# A matrix of boots: suites bookworm (systemd 252) and trixie (systemd 257);
# boot kinds "plain" (systemd-nspawn -b) and "initrd" (the container boots an
# initrd tree that switches root into the real one, as a machine does);
# configurations "broker" (group: files [SUCCESS=merge] broker), whose results
# are asserted, and "control" (systemd in place of broker), which must show
# the problem the broker avoids: the reload wait, or on trixie after
# switch-root PID 1 giving up. Exit 0 when every assertion holds.
#
# Environment:
#   USERDB_BROKER_TEST_CACHE  cache directory (default /var/cache/userdb-broker-tests);
#                             each suite's tree is debootstrapped into it when absent
#   DEBIAN_MIRROR             mirror for debootstrap (default http://deb.debian.org/debian)
#   USERDB_BROKER_DEB         a prebuilt .deb (default: packaging/debian/build-deb.sh)
#   SUITES                    suites to boot (default "bookworm trixie")
#   KINDS                     boot kinds (default "plain initrd")
#   BOOT_TIMEOUT              seconds one boot may take before it is killed (default 240)
#   SKIP_CONTROL=1            skip the control boots
#   KEEP_WORKDIR=1            keep the per-run trees and logs for inspection
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${USERDB_BROKER_TEST_CACHE:-/var/cache/userdb-broker-tests}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
read -r -a suites <<<"${SUITES:-bookworm trixie}"
read -r -a kinds <<<"${KINDS:-plain initrd}"
configs=(broker)
[[ ${SKIP_CONTROL:-0} == 1 ]] || configs+=(control)
boot_timeout=${BOOT_TIMEOUT:-240}

# Bounds (µs) and the generator's cap on one look-up (s).
generator_bound_us=200000
reload_bound_us=2000000
# The module's whole-call deadline (USERDB_BROKER_TIMEOUT_MS, default 1000 ms).
lookup_deadline_us=1000000
lookup_cap_s=3
# daemon-reloads per phase (broker running, stopped, frozen): a control
# reload waits for the cap, so the control boots do fewer.
broker_reloads=5
control_reloads=2

if [[ $(id -u) != 0 ]]; then
    echo "boot-test.sh: must run as root (debootstrap, mounts, cgroups, systemd-nspawn)" >&2
    exit 2
fi
for tool in systemd-nspawn dpkg-deb mountpoint timeout; do
    if ! command -v "$tool" >/dev/null; then
        echo "boot-test.sh: $tool is missing (apt-get install systemd-container dpkg coreutils util-linux)" >&2
        exit 2
    fi
done

# --- cgroups ------------------------------------------------------------------
# systemd-nspawn --keep-unit moves the container into "payload" and itself
# into "supervisor" below the cgroup it starts in, and removes neither when it
# exits: with a unit of its own the host's systemd would remove the unit's
# cgroup with all below it, with --keep-unit nobody does. The container's PID 1
# leaves payload/init.scope, the cgroup it ran in. So each boot runs in a cgroup
# of this script's own, removed after the boot.
#
# cgroup_bases: the cgroup this script runs in, in each hierarchy nspawn uses
# (the unified one; on a hybrid host also the named systemd one).
cgroup_bases=()
own_cgroup() { awk -F: -v h="$1" '$2 == h { print $3 }' /proc/self/cgroup; }
if [[ $(stat -f -c %T /sys/fs/cgroup) == cgroup2fs ]]; then
    cgroup_bases+=("/sys/fs/cgroup$(own_cgroup "")")
else
    [[ -d /sys/fs/cgroup/systemd ]] && cgroup_bases+=("/sys/fs/cgroup/systemd$(own_cgroup name=systemd)")
    if [[ $(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null) == cgroup2fs ]]; then
        cgroup_bases+=("/sys/fs/cgroup/unified$(own_cgroup "")")
    fi
fi
cgroup_bases=("${cgroup_bases[@]%/}")
boot_cgroup=userdb-broker-boot.$$
# cgroup_children: every cgroup directly below the bases.
cgroup_children() {
    local base
    for base in "${cgroup_bases[@]}"; do
        find "$base" -mindepth 1 -maxdepth 1 -type d
    done | sort
}
cgroups_before=$(cgroup_children)

# remove_boot_cgroup: removes the boot's cgroups, deepest first; what still
# holds processes (a container that outlived nspawn) is killed first.
remove_boot_cgroup() {
    local base dir pids
    for base in "${cgroup_bases[@]}"; do
        dir=$base/$boot_cgroup
        [[ -d $dir ]] || continue
        if ! find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null; then
            pids=$(find "$dir" -name cgroup.procs -exec cat {} +)
            # shellcheck disable=SC2086 # one pid a word
            [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
            sleep 1
            find "$dir" -depth -type d -exec rmdir {} + || true
        fi
    done
}

# --- cleanup: everything this script mounts or starts is undone here --------
workdir=""
mounts=()
nspawn_pid=""
nspawn_tmpfs=""
cleanup() {
    local status=$? i
    trap - EXIT INT TERM
    if [[ -n $nspawn_pid ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    remove_boot_cgroup
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[i]}" 2>/dev/null || umount --lazy "${mounts[i]}" || true
    done
    if [[ -n $nspawn_tmpfs ]]; then
        umount "$nspawn_tmpfs" || true
    fi
    if [[ -n $workdir ]]; then
        if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then
            echo "kept $workdir"
        else
            rm -rf "$workdir"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- host-side timings ------------------------------------------------------
steps=()
step_start=0
begin() { step_start=$(date +%s%N); echo "== $1"; }
finish() { steps+=("$1"$'\t'$((($(date +%s%N) - step_start) / 1000000))); }

# --- the cached trees ---------------------------------------------------------
# ensure_tree SUITE: $cache/SUITE, debootstrapped (built in SUITE.tmp, renamed
# on success) when absent. Only what a boot needs beyond minbase.
ensure_tree() {
    local suite=$1 tree=$cache/$1 lock
    if [[ -x $tree/usr/lib/systemd/systemd || -x $tree/lib/systemd/systemd ]]; then
        return
    fi
    command -v debootstrap >/dev/null || {
        echo "boot-test.sh: no cached tree at $tree and no debootstrap (apt-get install debootstrap)" >&2
        exit 2
    }
    exec {lock}>"$cache/.lock"
    flock "$lock"
    if [[ ! -d $tree ]]; then
        rm -rf "$tree.tmp"
        debootstrap --variant=minbase \
            --include=systemd,systemd-sysv,dbus,libnss-systemd,procps \
            "$suite" "$tree.tmp" "$mirror"
        mv "$tree.tmp" "$tree"
    fi
    exec {lock}>&-
}

# One boot test at a time: runs share the tmpfs on /run/systemd/nspawn.
mkdir -p "$cache"
exec {run_lock}>"$cache/.run-lock"
flock "$run_lock"

for suite in "${suites[@]}"; do
    begin "cached $suite tree ($cache/$suite)"
    ensure_tree "$suite"
    finish "$suite tree ready"
done

begin "Debian package"
deb=${USERDB_BROKER_DEB:-$("$repo/packaging/debian/build-deb.sh" | tail -n1)}
echo "$deb"
finish "build .deb"

# nss-probe times each look-up around the libc call inside the process, so
# the generator can show what a look-up costs apart from starting a process.
begin "nss-probe"
(cd "$repo" && cargo build --release -q -p userdb-broker-tests --bin nss-probe)
probe=${CARGO_TARGET_DIR:-$repo/target}/release/nss-probe
finish "build nss-probe"

workdir=$(mktemp -d /var/tmp/userdb-broker-boot.XXXXXX)

mkdir -p /run/systemd/nspawn
if ! mountpoint -q /run/systemd/nspawn; then
    mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
    nspawn_tmpfs=/run/systemd/nspawn
fi

# --- assertions ------------------------------------------------------------
failures=()
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then
        echo "ok   $what"
    else
        echo "FAIL $what"
        failures+=("$what")
    fi
}
equals() { [[ $1 == "$2" ]]; }
matches() { [[ $1 =~ $2 ]]; }
below() { [[ -n $1 && $1 -lt $2 ]]; }
count_of() { grep -o -- "$2" <<<"$1" | wc -l; }
quietly() { # quietly LOG COMMAND...: the command's output goes to LOG
    local log=$1
    shift
    "$@" >>"$log" 2>&1
}

# --- container trees ------------------------------------------------------------
# new_tree SUITE DIR: DIR/root, an overlay over the cached tree (a copy when
# the kernel offers no overlayfs). The cached tree itself is never written.
new_tree() {
    local tree=$cache/$1 dir=$2
    mkdir -p "$dir/upper" "$dir/work" "$dir/root"
    if mount -t overlay overlay \
        -o "lowerdir=$tree,upperdir=$dir/upper,workdir=$dir/work" "$dir/root" 2>/dev/null; then
        mounts+=("$dir/root")
    else
        cp -a "$tree/." "$dir/root/"
    fi
}

# A run is SUITE-KIND-CONFIG; its directory holds root/ (the system),
# initrd/root (for the initrd kind), results/ (bind-mounted at /run/boot-test)
# and the console log.
run_suite() { echo "${1%%-*}"; }
run_kind() { local rest=${1#*-}; echo "${rest%-*}"; }
run_config() { echo "${1##*-}"; }

# control_expectation SUITE KIND: what the control boot must show. On
# systemd 257 after switch-root PID 1 carries its listening
# io.systemd.DynamicUser socket into the real root, the generator's group
# look-up waits on it, PID 1 kills the generator at 90 s and gives up
# ("pid1-fails"; uncapped, so that the failure happens). Elsewhere the
# socket is not listening yet when generators first run, and the wait shows
# on daemon-reload ("reload-wait", capped).
control_expectation() {
    if [[ $1 == trixie && $2 == initrd ]]; then
        echo pid1-fails
    else
        echo reload-wait
    fi
}

# prepare RUN: the run's trees with the package, the test's users, generator
# and units installed, and the settings the guest scripts read.
prepare() {
    local run=$1 dir=$workdir/$1 suite kind config root group_line lookup_cap=$lookup_cap_s reloads=$broker_reloads
    suite=$(run_suite "$run")
    kind=$(run_kind "$run")
    config=$(run_config "$run")
    case $config in
    broker) group_line='files [SUCCESS=merge] broker' ;;
    control)
        group_line='files [SUCCESS=merge] systemd'
        reloads=$control_reloads
        [[ $(control_expectation "$suite" "$kind") == pid1-fails ]] && lookup_cap=0
        ;;
    esac
    new_tree "$suite" "$dir"
    root=$dir/root
    mkdir -p "$dir/results"
    printf 'config=%s\nlookup_cap=%s\nreloads_per_phase=%s\n' "$config" "$lookup_cap" "$reloads" \
        >"$dir/results/settings"

    mkdir -p "$root/var/lib/boot-test"
    cp "$deb" "$root/var/lib/boot-test/userdb-broker.deb"
    chroot "$root" dpkg -i /var/lib/boot-test/userdb-broker.deb >"$dir/dpkg.log" 2>&1 || {
        cat "$dir/dpkg.log" >&2
        return 1
    }

    sed -i -E \
        -e 's/^passwd:.*/passwd:         files broker/' \
        -e "s/^group:.*/group:          $group_line/" \
        -e 's/^shadow:.*/shadow:         files broker/' \
        -e 's/^gshadow:.*/gshadow:        files broker/' \
        "$root/etc/nsswitch.conf"

    # A user that exists only as a drop-in, with its own group, a membership
    # drop-in for a group /etc/group lists without it (users) and one for a
    # group /etc/group already lists it in (adm): merged, each member once.
    mkdir -p "$root/etc/userdb"
    cat >"$root/etc/userdb/dropuser.user" <<'JSON'
{"userName":"dropuser","uid":4711,"gid":4711,"realName":"Boot test drop-in user","homeDirectory":"/nonexistent","shell":"/bin/sh","disposition":"regular"}
JSON
    cat >"$root/etc/userdb/dropuser.group" <<'JSON'
{"groupName":"dropuser","gid":4711,"disposition":"regular"}
JSON
    ln -s dropuser.user "$root/etc/userdb/4711.user"
    ln -s dropuser.group "$root/etc/userdb/4711.group"
    # Not empty: an empty drop-in masks its name, as in systemd.
    echo '{}' >"$root/etc/userdb/dropuser:users.membership"
    echo '{}' >"$root/etc/userdb/dropuser:adm.membership"
    sed -i -E '/^adm:/{s/:$/:dropuser/;t;s/$/,dropuser/}' "$root/etc/group"
    # An invalid drop-in: the broker skips it with one warning, which the
    # journal must hold at priority "warning".
    echo '{' >"$root/etc/userdb/broken.user"

    install -D -m 0755 "$here/guest/boot-test-generator" "$root/etc/systemd/system-generators/boot-test-generator"
    install -D -m 0755 "$probe" "$root/usr/local/bin/nss-probe"
    install -D -m 0755 "$here/guest/boot-test-check" "$root/usr/local/sbin/boot-test-check"
    local unit
    for unit in boot-test-user boot-test-dynamic boot-test-check; do
        install -m 0644 "$here/guest/$unit.service" "$root/etc/systemd/system/"
    done
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
    ln -s ../boot-test-user.service ../boot-test-check.service "$root/etc/systemd/system/multi-user.target.wants/"
    # A persistent journal, so the broker's log can be read after poweroff.
    mkdir -p "$root/var/log/journal"

    # The initrd: the same distribution's tree, told it is an initrd (as
    # dracut and mkosi write /etc/initrd-release), with /sysroot for the real
    # root. Its own initrd.target runs initrd-switch-root.service, i.e.
    # `systemctl switch-root /sysroot`, once initrd-fs.target is reached.
    if [[ $kind == initrd ]]; then
        new_tree "$suite" "$dir/initrd"
        cp "$dir/initrd/root/usr/lib/os-release" "$dir/initrd/root/etc/initrd-release"
        mkdir -p "$dir/initrd/root/sysroot"
    fi
}

# boot RUN: boots the prepared run until it powers itself off (or PID 1
# exits), in a cgroup of its own that is removed afterwards.
boot() {
    local run=$1 dir=$workdir/$1 status=0 start base procs=() args
    args=(--register=no --keep-unit --quiet --bind="$dir/results:/run/boot-test")
    if [[ $(run_kind "$run") == initrd ]]; then
        args+=(-D "$dir/initrd/root" --bind="$dir/root:/sysroot")
    else
        args+=(-D "$dir/root")
    fi
    for base in "${cgroup_bases[@]}"; do
        mkdir "$base/$boot_cgroup"
        procs+=("$base/$boot_cgroup/cgroup.procs")
    done
    start=$(date +%s%N)
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
    timeout --kill-after=15 "$boot_timeout" \
        bash -c 'for p in $1; do echo $$ >"$p"; done; shift; exec "$@"' enter-cgroup "${procs[*]}" \
        systemd-nspawn "${args[@]}" -b </dev/null >"$dir/console.log" 2>&1 &
    nspawn_pid=$!
    wait "$nspawn_pid" || status=$?
    nspawn_pid=""
    echo $((($(date +%s%N) - start) / 1000000)) >"$dir/nspawn.ms"
    echo "$status" >"$dir/nspawn.status"
    remove_boot_cgroup
    check "$run: boot left no cgroup behind" equals "$(cgroup_children)" "$cgroups_before"
    if [[ $status != 0 && $(run_config "$run") == broker ]]; then
        echo "systemd-nspawn exited with $status (124: killed after ${boot_timeout}s); last console lines:"
        tail -n 25 "$dir/console.log"
    fi
}

# --- install and remove, leaving the tree as it was ---------------------------
# snapshot ROOT: every path with its type, mode and owner, and the loader's
# cache as ldconfig reads it; dpkg's own database, logs and caches are left out.
snapshot() {
    (cd "$1" && find . -xdev \( -path ./var/lib/dpkg -o -path ./var/log -o -path ./var/cache \
        -o -path ./tmp \) -prune -o -printf '%p %y %m %U:%G\n' | sort)
    chroot "$1" ldconfig -p
}

# packaging_roundtrips SUITE: both uninstall paths on a tree of their own:
# packaging/install.sh then uninstall.sh (no DESTDIR: as on a real machine,
# ldconfig included), and dpkg -i then dpkg --purge. Either must leave the
# tree as it found it. The package is the one built here, on every suite.
packaging_roundtrips() {
    local suite=$1 dir=$workdir/packaging-$1 root before
    root=$dir/root
    new_tree "$suite" "$dir"
    before=$(snapshot "$root")

    # install.sh takes cargo's output; the package holds the same binaries.
    dpkg-deb -x "$deb" "$dir/deb"
    mkdir -p "$root/tmp/src/target/release"
    cp -a "$repo/packaging" "$root/tmp/src/"
    cp "$dir/deb"/usr/lib/*/libnss_broker.so.2 "$root/tmp/src/target/release/libnss_broker.so"
    cp "$dir/deb/usr/sbin/userdb-brokerd" "$dir/deb/usr/bin/userdb-brokerctl" "$root/tmp/src/target/release/"
    check "$suite: install.sh (DESTDIR empty)" quietly "$dir/install.log" \
        chroot "$root" env TARGET_DIR=/tmp/src/target/release /tmp/src/packaging/install.sh
    local module libc
    # awk reads to the end: an early exit would kill ldconfig with SIGPIPE,
    # which pipefail turns into a failure.
    module=$(chroot "$root" ldconfig -p | awk '$1 == "libnss_broker.so.2" && !p { p = $NF } END { print p }')
    libc=$(chroot "$root" ldconfig -p | awk '$1 == "libc.so.6" && !p { p = $NF } END { print p }')
    check "$suite: install.sh put the module beside libc, in the loader's cache ($module)" \
        equals "$(basename "$(dirname "$module")")" "$(basename "$(dirname "$libc")")"
    check "$suite: uninstall.sh" quietly "$dir/install.log" chroot "$root" /tmp/src/packaging/uninstall.sh
    rm -rf "$root/tmp/src"
    check "$suite: install.sh + uninstall.sh left the tree as it was" equals "$(snapshot "$root")" "$before"

    cp "$deb" "$root/tmp/userdb-broker.deb"
    check "$suite: dpkg -i $(basename "$deb")" quietly "$dir/dpkg.log" chroot "$root" dpkg -i /tmp/userdb-broker.deb
    check "$suite: the package enabled the unit" \
        test -L "$root/etc/systemd/system/sysinit.target.wants/userdb-brokerd.service"
    check "$suite: the package left nsswitch.conf alone" cmp -s "$root/etc/nsswitch.conf" "$cache/$suite/etc/nsswitch.conf"
    check "$suite: dpkg --purge" quietly "$dir/dpkg.log" chroot "$root" dpkg --purge userdb-broker
    rm "$root/tmp/userdb-broker.deb"
    check "$suite: dpkg -i + dpkg --purge left the tree as it was" equals "$(snapshot "$root")" "$before"
    if [[ $(snapshot "$root") != "$before" ]]; then
        diff <(echo "$before") <(snapshot "$root") | head -n 20 || true
    fi
}

# --- the matrix -------------------------------------------------------------------
runs=()
for suite in "${suites[@]}"; do
    begin "$suite: packaging round trips (install.sh/uninstall.sh, dpkg -i/--purge)"
    packaging_roundtrips "$suite"
    finish "$suite: packaging round trips"
    for kind in "${kinds[@]}"; do
        for config in "${configs[@]}"; do
            run=$suite-$kind-$config
            runs+=("$run")
            begin "$run: prepare"
            prepare "$run"
            finish "$run: prepare"
            begin "$run: boot"
            boot "$run"
            finish "$run: boot (nspawn wall time)"
        done
    done
done

# --- reading the results ------------------------------------------------------
# value RUN KEY: one value from the run's results file.
value() {
    awk -F'\t' -v key="$2" '$1 == key { v = $2 } END { print v }' \
        "$workdir/$1/results/results" 2>/dev/null || true
}
generator_log() { cat "$workdir/$1/results/generator.log" 2>/dev/null || true; }
ms() {
    if [[ -n $1 ]]; then
        awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'
    else
        echo "-"
    fi
}

# generator_max RUN PHASE LOOKUP: the slowest such generator look-up, in µs
# ("killed" when PID 1 killed the generator during it).
generator_max() {
    if [[ $(cat "$workdir/$1/results/generator.inflight" 2>/dev/null) == "$2"$'\t'"$3" ]]; then
        echo killed
        return
    fi
    generator_log "$1" | awk -F'\t' -v phase="$2" -v lookup="$3" '
        { p = $1; sub(/-[0-9]+$/, "", p) }
        p == phase && $2 == lookup { if ($3 > max) max = $3; seen = 1 }
        END { if (seen) print max }'
}
# What the generator looks up each time it runs (guest/boot-test-generator).
generator_lookups=4
generator_ran() { # generator_ran RUN PHASE: how many look-ups the generator logged in PHASE
    generator_log "$1" | awk -F'\t' -v p="$2" '$1 == p && $2 != "spawn"' | wc -l
}
# reload_max RUN PHASE: the slowest daemon-reload of the phase, in µs.
reload_max() {
    [[ -f $workdir/$1/results/results ]] || return 0
    awk -F'\t' -v key="^reload[.]$2[.][0-9]+[.]us\$" '
        $1 ~ key { if ($2 > max) max = $2; seen = 1 } END { if (seen) print max }' \
        "$workdir/$1/results/results"
}
# loop_stat RUN WHAT STAT: over the restart loop's look-ups of WHAT: count,
# max (µs) or misses (look-ups that did not answer).
# probe_lookups RUN PHASE: the µs of every dropuser look-up nss-probe timed
# in the generator during PHASE (all of its rounds), space-separated.
probe_lookups() {
    generator_log "$1" | awk -F'\t' -v phase="$2" '
        { p = $1; sub(/-[0-9]+$/, "", p) }
        p == phase && $2 == "probe-dropuser" {
            n = split($5, f, " ")
            for (i = 1; i < n; i++) {
                if (f[i] ~ /^(passwd|group):dropuser$/) {
                    printf "%s%s", sep, f[i + 1]
                    sep = " "
                }
            }
            if ($5 !~ /found dropuser:x:4711:4711:/) printf "%s(wrong: %s)", sep, $5
        }'
}
all_below() { # all_below "N N ..." BOUND: non-empty, every N a number below BOUND
    local n
    [[ -n $1 ]] || return 1
    for n in $1; do
        [[ $n =~ ^[0-9]+(\.[0-9]+)?$ ]] || return 1
        awk -v n="$n" -v b="$2" 'BEGIN { exit !(n < b) }' || return 1
    done
}
loop_stat() {
    [[ -f $workdir/$1/results/restart-lookups.log ]] || return 0
    awk -F'\t' -v what="$2" -v stat="$3" '
        $1 == what { n++; if ($2 > max) max = $2; if ($3 != 0) miss++ }
        END { if (stat == "count") print n + 0; else if (stat == "max") print max; else print miss + 0 }' \
        "$workdir/$1/results/restart-lookups.log"
}
restarts_failed() { # restarts_failed RUN: the restarts that did not succeed, and the first one's message
    local i out="" why=""
    for i in $(seq 20); do
        [[ $(value "$1" "restart.$i.rc") == 0 ]] && continue
        out+="#$i "
        [[ -n $why ]] || why=$(value "$1" "restart.$i.out" | sed 's/\. .*/./')
    done
    [[ -z $out ]] || echo "$out($why)"
}
restart_max() { # restart_max RUN: the slowest of the 20 restarts, in µs
    local i max="" us
    for i in $(seq 20); do
        us=$(value "$1" "restart.$i.us")
        [[ -n $us && $us -gt ${max:-0} ]] && max=$us
    done
    echo "$max"
}
# restarted "OLD->NEW STATE": a different, running main process.
restarted() {
    local old=${1%%->*} rest=${1#*->}
    [[ $1 == *"->"* && ${rest%% *} =~ ^[0-9]+$ && ${rest%% *} -gt 1 && ${rest%% *} != "$old" && $rest == *" active" ]]
}

# --- assertions -----------------------------------------------------------------
# assert_broker RUN: a boot with broker on the group line.
assert_broker() {
    local r=$1 id_out dynamic_uid phase i failed slow
    echo
    echo "== assertions: $r"
    check "$r: boot ended by the test's own poweroff" equals "$(cat "$workdir/$r/nspawn.status")" 0
    check "$r: check script completed" equals "$(value "$r" completed)" yes
    check "$r: multi-user.target reached" equals "$(value "$r" multi-user)" active
    check "$r: broker running as its own process (pid $(value "$r" broker.pid))" \
        matches "$(value "$r" broker.pid)/$(value "$r" broker.comm)" '^([2-9]|[1-9][0-9]+)/userdb-brokerd$'
    check "$r: getent passwd dropuser" matches "$(value "$r" getent-passwd-dropuser.out)" '^dropuser:x:4711:4711:'
    id_out=$(value "$r" id-dropuser.out)
    check "$r: id dropuser: uid, gid" matches "$id_out" '^uid=4711\(dropuser\) gid=4711\(dropuser\)'
    check "$r: id dropuser: users (drop-in membership) listed once" equals "$(count_of "$id_out" '100(users)')" 1
    check "$r: id dropuser: adm (files and drop-in) listed once" equals "$(count_of "$id_out" '4(adm)')" 1
    check "$r: getent group users merges the drop-in member" equals "$(value "$r" getent-group-users.out)" "users:x:100:dropuser"
    check "$r: getent group adm lists dropuser once" equals \
        "$(value "$r" getent-group-adm.out | cut -d: -f4 | tr ',' '\n' | grep -cx dropuser)" 1
    check "$r: User=dropuser unit ran as dropuser" matches "$(value "$r" user-unit.out)" '^uid=4711\(dropuser\)'
    dynamic_uid=$(value "$r" dynamic.uid)
    check "$r: DynamicUser= unit's user resolves through the broker by name (uid $dynamic_uid)" \
        matches "$(value "$r" dynamic-by-name.out)" "^boot-test-dynamic:[^:]*:$dynamic_uid:"
    check "$r: DynamicUser= unit's user resolves through the broker by uid" \
        matches "$(value "$r" dynamic-by-uid.out)" '^boot-test-dynamic:'
    check "$r: ... exactly as PID 1's own io.systemd.DynamicUser answers it" \
        equals "$(value "$r" dynamic-by-name.out)" "$(value "$r" dynamic-from-pid1.out)"
    check "$r: ... and the broker never uses PID 1's socket (its sources: $(value "$r" broker.sources))" \
        equals "$(grep -c io.systemd.DynamicUser <<<"$(value "$r" broker.sources)")" 0
    check "$r: broker was stopped, then frozen (state T)" \
        equals "$(value "$r" broker.stopped)/$(value "$r" broker.frozen)" "inactive/T"
    check "$r: a killed broker is restarted by a new process ($(value "$r" broker.restarted))" \
        restarted "$(value "$r" broker.restarted)"
    check "$r: ... within 2 s ($(ms "$(value "$r" broker.restart.us)") ms)" below "$(value "$r" broker.restart.us)" 2000000

    for phase in running stopped frozen; do
        for ((i = 1; i <= broker_reloads; i++)); do
            check "$r: daemon-reload $phase #$i < 2 s ($(ms "$(value "$r" "reload.$phase.$i.us")") ms)" \
                below "$(value "$r" "reload.$phase.$i.us")" "$reload_bound_us"
            check "$r: daemon-reload $phase #$i re-ran the generator" equals "$(generator_ran "$r" "$phase-$i")" "$generator_lookups"
        done
    done
    check "$r: generator ran at boot" equals "$(generator_ran "$r" boot)" "$generator_lookups"
    # With the broker frozen the snapshot file answers, inside the process.
    frozen=$(probe_lookups "$r" frozen)
    check "$r: generator, broker frozen: dropuser from the snapshot file ($frozen µs)" \
        all_below "$frozen" 5000

    check "$r: the unit has no alias ($(value "$r" broker.names))" equals "$(value "$r" broker.names)" userdb-brokerd.service
    for phase in stopping restarting; do
        check "$r: daemon-reload while $phase issued in $(value "$r" "$phase.before")" \
            matches "$(value "$r" "$phase.before")" '^deactivating/'
        check "$r: daemon-reload while $phase < 2 s ($(ms "$(value "$r" "reload.$phase.us")") ms)" \
            below "$(value "$r" "reload.$phase.us")" "$reload_bound_us"
        check "$r: daemon-reload while $phase re-ran the generator" equals "$(generator_ran "$r" "$phase")" "$generator_lookups"
    done
    check "$r: ... the stop completed ($(value "$r" stopping.after))" matches "$(value "$r" stopping.after)" '^inactive/'
    check "$r: ... the restart completed ($(value "$r" restarting.after))" restarted "$(value "$r" restarting.after)"

    failed=$(restarts_failed "$r")
    check "$r: 20 restarts in a row succeeded${failed:+ (failed: $failed)}" equals "$failed" ""
    check "$r: ... broker active after them" equals "$(value "$r" restart-loop.state)" active
    check "$r: ... no unit failed ($(value "$r" restart-loop.failed-units))" equals "$(value "$r" restart-loop.failed-units)" ""
    for what in passwd-dropuser group-users; do
        check "$r: ... look-up loop ran ($(loop_stat "$r" "$what" count) getent $what)" below 0 "$(loop_stat "$r" "$what" count)"
        check "$r: ... every getent $what answered, from the snapshot file while the broker restarted" \
            equals "$(loop_stat "$r" "$what" misses)" 0
        check "$r: ... no getent $what waited past the deadline (slowest $(ms "$(loop_stat "$r" "$what" max)") ms)" \
            below "$(loop_stat "$r" "$what" max)" "$lookup_deadline_us"
    done

    check "$r: dpkg -i again (upgrade path) restarted the broker ($(value "$r" package.reinstall))" \
        restarted "$(value "$r" package.reinstall)"
    check "$r: dpkg -r stopped and masked it" equals "$(value "$r" package.remove)" "inactive masked"
    check "$r: dpkg -i after that enabled and started it" equals "$(value "$r" package.install)" "active enabled"
    check "$r: ... and it answers (getent passwd dropuser)" \
        matches "$(value "$r" package.getent-passwd-dropuser.out)" '^dropuser:x:4711:4711:'
    check "$r: no unit failed during the checks ($(value "$r" failed-units.end))" equals "$(value "$r" failed-units.end)" ""

    slow=$(generator_log "$r" | awk -F'\t' -v bound="$generator_bound_us" '
        $2 == "spawn" { spawn[$1] = $3 }
        $2 != "spawn" && $3 >= bound { printf "%s%s %s %d ms (spawn %d ms)", sep, $1, $2, $3 / 1000, spawn[$1] / 1000; sep = "; " }')
    check "$r: every generator look-up < 200 ms${slow:+ (slow: $slow)}" equals "$slow" ""
    check "$r: the broker's warning is in the journal at priority warning" \
        matches "$(broker_journal "$r" -p warning..warning)" 'etc/userdb/broken\.user: skipped: invalid JSON'
    check "$r: its info lines are at priority info, with no timestamp of their own" \
        matches "$(broker_journal "$r" -p info..info | grep -m1 'ready socket=')" '^ready socket='
}

# broker_journal RUN JOURNALCTL-OPTIONS...: the broker's messages in the run's journal.
broker_journal() {
    local run=$1
    shift
    journalctl -D "$workdir/$run/root/var/log/journal" -u userdb-brokerd.service -o cat --no-pager "$@" 2>/dev/null || true
}

# assert_control RUN: the control must show what the broker avoids.
assert_control() {
    local r=$1 expectation capped
    expectation=$(control_expectation "$(run_suite "$r")" "$(run_kind "$r")")
    echo
    echo "== assertions: $r (expected: $expectation)"
    case $expectation in
    pid1-fails)
        check "$r: PID 1 exited: systemd-nspawn returned $(cat "$workdir/$r/nspawn.status")" \
            equals "$(cat "$workdir/$r/nspawn.status")" 255
        check "$r: ... after PID 1 killed the generator in its group look-up ($(tr '\t' ' ' <"$workdir/$r/results/generator.inflight" 2>/dev/null))" \
            equals "$(generator_max "$r" boot getent-group-systemd-network)" killed
        check "$r: ... and gave up: \"Failed to fork off sandboxing environment for executing generators: Protocol error\"" \
            grep -q 'Failed to fork off sandboxing environment for executing generators: Protocol error' "$workdir/$r/console.log"
        check "$r: ... \"Failed to start up manager\"" grep -q 'Failed to start up manager' "$workdir/$r/console.log"
        ;;
    reload-wait)
        check "$r: boot ended by the test's own poweroff" equals "$(cat "$workdir/$r/nspawn.status")" 0
        check "$r: check script completed" equals "$(value "$r" completed)" yes
        # timeout(1) exits 124 when it killed the look-up at the cap.
        capped=$(generator_log "$r" | awk -F'\t' '$1 ~ /^running-/ && $2 == "getent-group-systemd-network" && $4 == 124' | wc -l)
        check "$r: every reload's generator group look-up (broker running) waited until the ${lookup_cap_s} s cap ($capped of $control_reloads)" \
            equals "$capped" "$control_reloads"
        ;;
    esac
}

for run in "${runs[@]}"; do
    "assert_$(run_config "$run")" "$run"
done
check "the boots left no cgroup behind ($boot_cgroup removed)" equals "$(cgroup_children)" "$cgroups_before"

# --- the table ------------------------------------------------------------------
# cell RUN FUNCTION ARGS...: FUNCTION ARGS... RUN, "-" when it has no value
# or the run was not booted.
cell() {
    local run=$1 v=""
    shift
    if [[ -d $workdir/$run ]]; then
        v=$("$@" "$run") || v=""
    fi
    echo "${v:--}"
}
# The table's cells: µs shown as ms.
ms_or_word() { if [[ $1 =~ ^[0-9]+$ ]]; then ms "$1"; else echo "$1"; fi; }
gen() { ms_or_word "$(generator_max "$3" "$1" "$2")"; }
val() { ms_or_word "$(value "$2" "$1")"; }
rel() { ms_or_word "$(reload_max "$2" "$1")"; }
loop() { ms_or_word "$(loop_stat "$2" "$1" max)"; }
restarts() { ms_or_word "$(restart_max "$1")"; }
misses() {
    local count
    count=$(loop_stat "$2" "$1" count)
    [[ -z $count ]] || echo "$(loop_stat "$2" "$1" misses) of $count"
}
seconds() { awk -v ms="$(cat "$workdir/$1/nspawn.ms")" 'BEGIN { printf "%.1f s", ms / 1000 }'; }
status() { cat "$workdir/$1/nspawn.status"; }

columns=()
for suite in "${suites[@]}"; do
    for kind in "${kinds[@]}"; do
        columns+=("$suite-$kind-broker" "$suite-$kind-control")
    done
done
header() { # header: a column label per run, e.g. "257 initrd ctl"
    local run label
    for run in "${columns[@]}"; do
        case $(run_suite "$run") in bookworm) label=252 ;; trixie) label=257 ;; *) label=$(run_suite "$run") ;; esac
        label+=" $(run_kind "$run")"
        [[ $(run_config "$run") == control ]] && label+=" ctl"
        printf ' %-14s |' "$label"
    done
}
row() { # row LABEL BOUND FUNCTION ARGS...
    local label=$1 bound=$2 run
    shift 2
    printf '| %-44s |' "$label"
    for run in "${columns[@]}"; do
        printf ' %-14s |' "$(cell "$run" "$@")"
    done
    printf ' %s |\n' "$bound"
}

echo
echo "== timings (ms unless marked). Columns: systemd 252 (bookworm) or 257 (trixie); plain"
echo "   (systemd-nspawn -b) or initrd (an initrd that switches root into the system); ctl: the"
echo "   control, systemd in place of broker on the group line. Generator rows: the slowest look-up"
echo "   of the phase; ~${lookup_cap_s}000 is the generator's own cap firing (without it the look-up waits for PID 1,"
echo "   which waits for it); killed: PID 1 killed the generator in that look-up. Reload rows: the slowest"
echo "   of $broker_reloads (ctl: of $control_reloads)."
echo
printf '| %-44s |%s bound |\n' "measurement" "$(header)"
printf '|%s\n' "$(printf -- '---|%.0s' $(seq $((${#columns[@]} + 2))))"
row "systemd-nspawn exit status" "0 (ctl 257 initrd: 255)" status
row "whole boot (nspawn wall time, incl. checks)" "" seconds
for phase in boot running stopped frozen; do
    for lookup in spawn getent-group-systemd-network id-dropuser getent-passwd-dropuser; do
        bound="< 200"
        [[ $lookup == spawn ]] && bound="(process start)"
        row "generator $lookup ($phase)" "$bound" gen "$phase" "$lookup"
    done
done
for phase in stopping restarting; do
    for lookup in getent-group-systemd-network id-dropuser getent-passwd-dropuser; do
        row "generator $lookup (broker $phase)" "< 200" gen "$phase" "$lookup"
    done
done
for phase in running stopped frozen; do
    row "daemon-reload, broker $phase (slowest)" "< 2000" rel "$phase"
done
row "daemon-reload while the broker is stopping" "< 2000" val reload.stopping.us
row "daemon-reload while the broker is restarting" "< 2000" val reload.restarting.us
row "systemctl restart, 20 in a row (slowest)" "" restarts
row "... getent passwd dropuser in a loop (slowest)" "< 1000" loop passwd-dropuser
row "... getent group users in a loop (slowest)" "< 1000" loop group-users
row "... getent passwd dropuser unanswered" "" misses passwd-dropuser
for lookup in getent-passwd-dropuser id-dropuser getent-group-users getent-group-systemd-network dynamic-by-name; do
    row "after boot: $lookup" "" val "$lookup.us"
done
row "getent passwd dropuser, broker frozen" "" val frozen-getent-passwd-dropuser.us
echo
for run in "${columns[@]}"; do
    [[ $(run_config "$run") == broker && -d $workdir/$run ]] || continue
    echo "$run: unit hardening (systemd-analyze security): $(value "$run" broker.exposure)"
done
echo
echo "== host steps (ms)"
for step in "${steps[@]}"; do
    printf '%-50s %s\n' "${step%%$'\t'*}" "${step#*$'\t'}"
done

if ((${#failures[@]})); then
    echo
    echo "boot test FAILED: ${#failures[@]} assertion(s)"
    printf '  - %s\n' "${failures[@]}"
    for run in "${runs[@]}"; do
        [[ $(run_config "$run") == broker ]] || continue
        echo "--- $run: failed units: $(value "$run" failed-units)"
        echo "--- $run: broker log (last 20 lines)"
        journalctl -D "$workdir/$run/root/var/log/journal" -u userdb-brokerd.service \
            --no-pager -o short-monotonic 2>/dev/null | tail -n 20 || true
    done
    echo "(KEEP_WORKDIR=1 keeps the trees, console logs and results)"
    exit 1
fi
echo
echo "boot test passed"
