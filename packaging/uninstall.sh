#!/bin/bash
# Removes what install.sh added, exactly: the files and the directories it
# created, as listed in its manifest, and the configuration file unless the
# administrator changed it. nsswitch.conf is left alone; while it still names
# "broker" (as the installed `userdb-brokerctl is-enabled` judges), or when
# that cannot be asked, this refuses: run `userdb-brokerctl disable` first,
# or set FORCE=1.
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
if [[ ${FORCE:-0} != 1 && -f $nsswitch ]]; then
    ctl=$(awk '$1 == "file" && $2 ~ /\/userdb-brokerctl$/ { print $2 }' "$DESTDIR$MANIFEST")
    status=0
    "$DESTDIR$ctl" is-enabled --file "$nsswitch" >/dev/null 2>&1 || status=$?
    case $status in
    0)
        echo "uninstall.sh: $nsswitch still uses 'broker'; run 'userdb-brokerctl disable' first (or FORCE=1)" >&2
        exit 1
        ;;
    1) ;;
    *)
        echo "uninstall.sh: cannot tell whether $nsswitch uses 'broker'" \
            "('${DESTDIR}${ctl:-userdb-brokerctl} is-enabled' exited $status); FORCE=1 removes anyway" >&2
        exit 1
        ;;
    esac
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
    conf)
        # "conf SHA256 PATH": removed only while it is what install.sh put there.
        read -r checksum conf <<<"$path"
        if [[ -f $DESTDIR$conf && $(sha256sum <"$DESTDIR$conf" | cut -d' ' -f1) != "$checksum" ]]; then
            echo "kept $DESTDIR$conf: changed since it was installed"
        elif [[ -e $DESTDIR$conf ]]; then
            rm -f -- "$DESTDIR$conf"
            echo "removed $DESTDIR$conf"
        fi
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
