#!/bin/bash
# Installs userdb-broker the way a distribution package would:
#   libnss_broker.so.2  -> the multiarch libdir (glibc dlopen()s it by name)
#   userdb-brokerd      -> $PREFIX/sbin, userdb-brokerctl -> $PREFIX/bin
#   the systemd unit, the tmpfiles.d entry, the docs;
#   the default configuration /etc/userdb-broker/userdb-brokerd.toml
#   (only when there is none: an administrator's file is never replaced);
#   man pages and shell completions from ASSETS_DIR, the output of
#   `cargo run -p xtask -- dist-assets ASSETS_DIR`, uncompressed.
# It never edits nsswitch.conf: run `userdb-brokerctl enable` for that.
#
# Variables: DESTDIR (staging root, default none), PREFIX (default /usr),
# SYSCONFDIR (default /etc), LIBDIR (module directory, default: detected),
# SBINDIR, BINDIR, UNITDIR, TMPFILESDIR, DOCDIR, MANDIR, BASHCOMPDIR,
# ZSHCOMPDIR, FISHCOMPDIR, TARGET_DIR (cargo output, default
# <repo>/target/release), ASSETS_DIR (default <repo>/target/dist-assets).
# Every file and directory it creates is listed in a manifest that
# uninstall.sh reads, so uninstalling removes exactly what was added; the
# configuration file is listed with its checksum, so that uninstall.sh
# removes it only while unchanged.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr}
SYSCONFDIR=${SYSCONFDIR:-/etc}
TARGET_DIR=${TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}/release}
ASSETS_DIR=${ASSETS_DIR:-${CARGO_TARGET_DIR:-$repo/target}/dist-assets}

# The directory glibc's loader searches for NSS modules: Debian's multiarch
# triplet (from dpkg-architecture or gcc when installed), else the directory
# the running libc.so.6 itself was loaded from (lib/<triplet>, lib64 or lib).
detect_libdir() {
    local triplet="" libc
    if command -v dpkg-architecture >/dev/null 2>&1; then
        triplet=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || true)
    fi
    if [[ -z $triplet ]] && command -v gcc >/dev/null 2>&1; then
        triplet=$(gcc -print-multiarch 2>/dev/null || true)
    fi
    if [[ -n $triplet ]]; then
        echo "$PREFIX/lib/$triplet"
        return
    fi
    libc=$(ldd /bin/sh | awk '$1 == "libc.so.6" { print $3 }')
    case $libc in
    */lib64/libc.so.6) echo "$PREFIX/lib64" ;;
    */lib/*/libc.so.6)
        libc=${libc%/libc.so.6}
        echo "$PREFIX/lib/${libc##*/}"
        ;;
    *) echo "$PREFIX/lib" ;;
    esac
}

LIBDIR=${LIBDIR:-$(detect_libdir)}
SBINDIR=${SBINDIR:-$PREFIX/sbin}
BINDIR=${BINDIR:-$PREFIX/bin}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
TMPFILESDIR=${TMPFILESDIR:-$PREFIX/lib/tmpfiles.d}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/userdb-broker}
MANDIR=${MANDIR:-$PREFIX/share/man}
BASHCOMPDIR=${BASHCOMPDIR:-$PREFIX/share/bash-completion/completions}
ZSHCOMPDIR=${ZSHCOMPDIR:-$PREFIX/share/zsh/vendor-completions}
FISHCOMPDIR=${FISHCOMPDIR:-$PREFIX/share/fish/vendor_completions.d}
CONFDIR=${CONFDIR:-$SYSCONFDIR/userdb-broker}
MANIFEST=${MANIFEST:-$PREFIX/share/userdb-broker/install-manifest}

for built in libnss_broker.so userdb-brokerd userdb-brokerctl; do
    if [[ ! -f $TARGET_DIR/$built ]]; then
        echo "install.sh: $TARGET_DIR/$built is missing; run 'cargo build --release' first" >&2
        exit 1
    fi
done

# Directories this run creates, plus those an earlier install created, and
# the configuration file an earlier install put there (a re-install must not
# forget them).
created_dirs=()
previous_conf=()
if [[ -f $DESTDIR$MANIFEST ]]; then
    while read -r kind first rest; do
        case $kind in
        dir) created_dirs+=("$first") ;;
        conf) previous_conf+=("$first $rest") ;;
        esac
    done <"$DESTDIR$MANIFEST"
fi
installed_files=()
installed_conf=()

# A staging root may not exist yet (rpmbuild does not always create it).
if [[ -n $DESTDIR ]]; then
    mkdir -p "$DESTDIR"
fi

make_dir() {
    local dir=$1 missing=() d
    d=$dir
    while [[ $d != / && ! -d $DESTDIR$d ]]; do
        missing=("$d" "${missing[@]}")
        d=$(dirname "$d")
    done
    for d in "${missing[@]}"; do
        mkdir -m 0755 "$DESTDIR$d"
        created_dirs+=("$d")
    done
}

put() {
    local mode=$1 source=$2 target=$3
    make_dir "$(dirname "$target")"
    install -m "$mode" "$source" "$DESTDIR$target"
    installed_files+=("$target")
    echo "installed $DESTDIR$target"
}

put 0644 "$TARGET_DIR/libnss_broker.so" "$LIBDIR/libnss_broker.so.2"
put 0755 "$TARGET_DIR/userdb-brokerd" "$SBINDIR/userdb-brokerd"
put 0755 "$TARGET_DIR/userdb-brokerctl" "$BINDIR/userdb-brokerctl"
make_dir "$UNITDIR"
sed "s|^ExecStart=/usr/sbin/userdb-brokerd|ExecStart=$SBINDIR/userdb-brokerd|" \
    "$here/systemd/userdb-brokerd.service" >"$DESTDIR$UNITDIR/userdb-brokerd.service"
chmod 0644 "$DESTDIR$UNITDIR/userdb-brokerd.service"
installed_files+=("$UNITDIR/userdb-brokerd.service")
echo "installed $DESTDIR$UNITDIR/userdb-brokerd.service"
put 0644 "$here/tmpfiles.d/userdb-broker.conf" "$TMPFILESDIR/userdb-broker.conf"
put 0644 "$here/nsswitch.conf.example" "$DOCDIR/nsswitch.conf.example"
if [[ -f $repo/README.md ]]; then
    put 0644 "$repo/README.md" "$DOCDIR/README.md"
fi

# The default configuration: every setting commented out, so the broker's
# built-in defaults apply until the administrator edits it.
conf_source=$here/userdb-brokerd.toml
conf=$CONFDIR/userdb-brokerd.toml
if [[ ! -f $conf_source ]]; then
    echo "install.sh: $conf_source is missing; no default configuration installed" >&2
elif [[ -e $DESTDIR$conf ]]; then
    echo "kept existing $DESTDIR$conf"
    for entry in "${previous_conf[@]}"; do
        if [[ ${entry#* } == "$conf" ]]; then
            installed_conf+=("$entry")
        fi
    done
else
    make_dir "$CONFDIR"
    install -m 0644 "$conf_source" "$DESTDIR$conf"
    installed_conf+=("$(sha256sum <"$DESTDIR$conf" | cut -d' ' -f1) $conf")
    echo "installed $DESTDIR$conf"
fi

# Man pages by section (NAME.N into man<N>/), completions by shell.
if [[ -d $ASSETS_DIR ]]; then
    for page in "$ASSETS_DIR"/man/*.[1-8]; do
        if [[ -f $page ]]; then
            put 0644 "$page" "$MANDIR/man${page##*.}/${page##*/}"
        fi
    done
    for shell_dir in bash:"$BASHCOMPDIR" zsh:"$ZSHCOMPDIR" fish:"$FISHCOMPDIR"; do
        for completion in "$ASSETS_DIR/completions/${shell_dir%%:*}"/*; do
            if [[ -f $completion ]]; then
                put 0644 "$completion" "${shell_dir#*:}/${completion##*/}"
            fi
        done
    done
else
    echo "install.sh: no $ASSETS_DIR, so no man pages or completions" \
        "(cargo run -p xtask -- dist-assets $ASSETS_DIR writes them)" >&2
fi

make_dir "$(dirname "$MANIFEST")"
{
    printf 'file %s\n' "${installed_files[@]}"
    if ((${#installed_conf[@]})); then
        printf 'conf %s\n' "${installed_conf[@]}"
    fi
    if ((${#created_dirs[@]})); then
        printf 'dir %s\n' "${created_dirs[@]}" | sort -u
    fi
} >"$DESTDIR$MANIFEST"
echo "manifest $DESTDIR$MANIFEST"

if [[ -z $DESTDIR ]]; then
    ldconfig
    if [[ -d /run/systemd/system ]]; then
        systemd-tmpfiles --create "$TMPFILESDIR/userdb-broker.conf"
        systemctl daemon-reload
    fi
    cat <<NEXT

Next steps:
  systemctl enable --now userdb-brokerd.service   # start the broker, and at every boot
  userdb-brokerctl check                          # review /etc/nsswitch.conf
  userdb-brokerctl enable                         # add 'broker' to it (keeps a backup)
NEXT
fi
