#!/bin/bash
# Removes what install.sh added, exactly: the files and the directories it
# created, as listed in its manifest. nsswitch.conf is left alone; while it
# still names "broker" this refuses (run `userdb-brokerctl disable` first, or
# set FORCE=1).
#
# Variables: DESTDIR and PREFIX as given to install.sh, or MANIFEST.
set -euo pipefail

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr}
MANIFEST=${MANIFEST:-$PREFIX/share/userdb-broker/install-manifest}

if [[ ! -f $DESTDIR$MANIFEST ]]; then
    echo "uninstall.sh: no manifest at $DESTDIR$MANIFEST (installed with another PREFIX or DESTDIR?)" >&2
    exit 1
fi

nsswitch=$DESTDIR/etc/nsswitch.conf
if [[ ${FORCE:-0} != 1 && -f $nsswitch ]] &&
    grep -Eq '^[[:space:]]*[a-z]+:[^#]*[[:space:]]broker([[:space:]]|\[|$)' "$nsswitch"; then
    echo "uninstall.sh: $nsswitch still uses 'broker'; run 'userdb-brokerctl disable' first (or FORCE=1)" >&2
    exit 1
fi

if [[ -z $DESTDIR && -d /run/systemd/system ]]; then
    systemctl disable --now userdb-brokerd.service 2>/dev/null || true
fi

dirs=()
while read -r kind path; do
    case $kind in
    file)
        rm -f -- "$DESTDIR$path"
        echo "removed $DESTDIR$path"
        ;;
    dir) dirs+=("$path") ;;
    esac
done <"$DESTDIR$MANIFEST"
rm -f -- "$DESTDIR$MANIFEST"

# Deepest first; a directory that has gained other files since stays.
if ((${#dirs[@]})); then
    printf '%s\n' "${dirs[@]}" | sort -r | while read -r dir; do
        if rmdir -- "$DESTDIR$dir" 2>/dev/null; then
            echo "removed $DESTDIR$dir/"
        fi
    done
fi

if [[ -z $DESTDIR ]]; then
    ldconfig
    if [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
    fi
fi
