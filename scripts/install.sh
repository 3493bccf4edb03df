#!/bin/sh
# install.sh — what `make install`, `make uninstall` and `make wheelhouse` run.
#
#   install     (as root) create or update the venv PREFIX (default /opt/momedo), pip-install
#               momedo into it (from this checkout, or with WHEELHOUSE=DIR from that directory
#               without network), link the commands into BINDIR, install the systemd unit and
#               the sysusers.d/tmpfiles.d files, write /etc/momedo/momedod.toml if it is absent.
#               Starts nothing.
#   uninstall   (as root) stop and disable momedod, remove exactly what install added; keep the
#               configuration, the state, the backups and the momedo user and groups.
#   wheelhouse  download every wheel momedo needs for WHEEL_ARCH (default aarch64, Python
#               WHEEL_PYTHON_VERSION, default 3.11) plus momedo's own wheel into WHEELHOUSE
#               (default dist/wheelhouse), for `make install WHEELHOUSE=DIR` on a machine
#               without network.
#
# DESTDIR=DIR installs into a staging root (for tests): everything lands below DIR, the venv
# works only at DIR/PREFIX (venvs are not relocatable), symbolic links point at PREFIX, and
# nothing touches the running system (no systemd-sysusers, systemd-tmpfiles, systemctl).
set -eu
umask 022  # the venv and the unit must be readable by the service user, whatever root uses

PREFIX=${PREFIX:-/opt/momedo}
DESTDIR=${DESTDIR:-}
BINDIR=${BINDIR:-/usr/local/bin}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-/usr/lib/sysusers.d}
TMPFILESDIR=${TMPFILESDIR:-/usr/lib/tmpfiles.d}
WHEELHOUSE=${WHEELHOUSE:-}
INSTALL_PYTHON=${INSTALL_PYTHON:-/usr/bin/python3}
WHEEL_ARCH=${WHEEL_ARCH:-aarch64}
WHEEL_PYTHON_VERSION=${WHEEL_PYTHON_VERSION:-3.11}
# Newest glibc of the target (Debian bookworm: 2.36); manylinux wheels up to it are accepted.
WHEEL_GLIBC_MINOR=${WHEEL_GLIBC_MINOR:-36}

CONFDIR=/etc/momedo  # fixed: the unit's ConfigurationDirectory=momedo and ExecStart use it
CONFIG=$CONFDIR/momedod.toml
COMMANDS="momedod momedoctl momedo momedo-tui"
ADMIN_GROUP=momedo-admin
SRCDIR=$(cd "$(dirname "$0")/.." && pwd)

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'make %s: %s\n' "$ACTION" "$*" >&2; exit 1; }

tmp=
cleanup() { if [ -n "$tmp" ]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

make_tmp() { [ -n "$tmp" ] || tmp=$(mktemp -d "${TMPDIR:-/tmp}/momedo-install.XXXXXX"); }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root, e.g.: sudo make $ACTION"
}

check_paths() {
    case $PREFIX in
        /[!/]*) ;;
        *) die "PREFIX must be an absolute path below / (got '$PREFIX')" ;;
    esac
    PREFIX=${PREFIX%/}
    if [ -n "$DESTDIR" ]; then
        mkdir -p "$DESTDIR"
        DESTDIR=$(cd "$DESTDIR" && pwd)
        [ "$DESTDIR" != / ] || DESTDIR=
    fi
    VENV=$DESTDIR$PREFIX
    if [ -n "$WHEELHOUSE" ] && [ "$ACTION" = install ]; then
        [ -d "$WHEELHOUSE" ] || die "WHEELHOUSE=$WHEELHOUSE is not a directory"
        WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
        set -- "$WHEELHOUSE"/momedo-*.whl
        [ -f "$1" ] || die "no momedo-*.whl in $WHEELHOUSE; make it with: make wheelhouse"
    fi
}

# True when systemd is PID 1 and this is not a staging install (sd_booted(3)).
systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

check_python() {
    command -v "$INSTALL_PYTHON" >/dev/null 2>&1 ||
        die "$INSTALL_PYTHON not found: apt install python3 python3-venv (or set INSTALL_PYTHON=)"
    "$INSTALL_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "momedo needs Python 3.11 or newer; $INSTALL_PYTHON is $("$INSTALL_PYTHON" -V 2>&1)"
    bits=$("$INSTALL_PYTHON" -c 'import struct; print(struct.calcsize("P") * 8)')
    [ "$bits" = 64 ] ||
        die "momedo needs a 64-bit system (Raspberry Pi OS 64-bit, Debian arm64 or amd64):" \
            "cryptography has no wheels for 32-bit ARM, and this Python is $bits-bit"
    "$INSTALL_PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
        die "the Python venv module is missing: apt install python3-venv"
}

# Copy the checkout without venvs, caches and build output, so that building the wheel leaves
# no root-owned files (build/, *.egg-info) in a checkout that belongs to a normal user.
copy_source() {
    mkdir -p "$1"
    (cd "$SRCDIR" && tar -cf - --exclude=./.git --exclude=./.venv --exclude=./.momedo-dev \
        --exclude=./build --exclude=./dist --exclude=./wheelhouse --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache \
        --exclude=./.pytest_cache .) | tar -xf - -C "$1"
}

# momedo's own wheel, built from the checkout into $tmp/wheel; prints its path. Call make_tmp
# first: this runs in a $(...) subshell, whose variables do not reach the caller.
build_wheel() {  # $1: a python with pip
    copy_source "$tmp/src"
    "$1" -m pip wheel --quiet --no-deps --wheel-dir "$tmp/wheel" "$tmp/src" >&2
    set -- "$tmp"/wheel/momedo-*.whl
    [ -f "$1" ] || die "building the momedo wheel failed"
    printf '%s\n' "$1"
}

make_venv() {
    want=$("$INSTALL_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ -x "$VENV/bin/python" ]; then
        have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
            2>/dev/null || echo broken)
        if [ "$have" = "$want" ]; then
            say "Updating the venv $VENV"
        else
            say "Recreating the venv $VENV for Python $want (it was $have)"
            "$INSTALL_PYTHON" -m venv --clear "$VENV"
        fi
    else
        if [ -e "$VENV" ] && [ -n "$(ls -A "$VENV" 2>/dev/null)" ]; then
            die "$VENV exists and is not a Python venv; refusing to touch it (set PREFIX=)"
        fi
        say "Creating the venv $VENV"
        "$INSTALL_PYTHON" -m venv "$VENV"
    fi
}

pip_install() {
    py=$VENV/bin/python
    if [ -n "$WHEELHOUSE" ]; then
        say "Installing momedo from the wheelhouse $WHEELHOUSE (no network)"
        "$py" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" --upgrade momedo
        # Same version number, new build: replace momedo itself, keep the dependencies.
        "$py" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" \
            --force-reinstall --no-deps momedo
    else
        say "Building momedo from $SRCDIR"
        make_tmp
        wheel=$(build_wheel "$py")
        say "Installing momedo and its dependencies (a few minutes on a Raspberry Pi)"
        "$py" -m pip install --quiet --upgrade "$wheel"
        "$py" -m pip install --quiet --force-reinstall --no-deps "$wheel"
    fi
    for c in $COMMANDS; do
        [ -x "$VENV/bin/$c" ] || die "$VENV/bin/$c is missing after pip install"
    done
}

install_shared_files() {
    install -d -m 0755 "$VENV/share/doc/momedo" "$VENV/share/momedo"
    for f in "$SRCDIR"/README.md "$SRCDIR"/docs/*.md; do
        if [ -f "$f" ]; then install -m 0644 "$f" "$VENV/share/doc/momedo/"; fi
    done
    # The config template, Grafana dashboard and Prometheus rules, for reference.
    if [ -d "$SRCDIR/etc" ]; then
        cp -R "$SRCDIR/etc/." "$VENV/share/momedo/"
        chmod -R u=rwX,go=rX "$VENV/share/momedo"
    fi
}

# Refuse early (before the long pip run) to replace a command that is not one of our links.
check_links() {
    for c in $COMMANDS; do
        link=$DESTDIR$BINDIR/$c
        if [ -e "$link" ] && [ ! -L "$link" ]; then
            die "$link exists and is not a symbolic link; move it away and run make install again"
        fi
    done
}

link_commands() {
    install -d -m 0755 "$DESTDIR$BINDIR"
    for c in $COMMANDS; do
        ln -sfn "$PREFIX/bin/$c" "$DESTDIR$BINDIR/$c"
    done
    say "Linked $COMMANDS into $DESTDIR$BINDIR"
}

install_systemd_files() {
    make_tmp
    sed "s#/opt/momedo#$PREFIX#g" "$SRCDIR/systemd/momedod.service" >"$tmp/momedod.service"
    install -D -m 0644 "$tmp/momedod.service" "$DESTDIR$UNITDIR/momedod.service"
    install -D -m 0644 "$SRCDIR/systemd/momedo.sysusers" "$DESTDIR$SYSUSERSDIR/momedo.conf"
    install -D -m 0644 "$SRCDIR/systemd/momedo.tmpfiles" "$DESTDIR$TMPFILESDIR/momedo.conf"
    say "Installed $DESTDIR$UNITDIR/momedod.service, $DESTDIR$SYSUSERSDIR/momedo.conf" \
        "and $DESTDIR$TMPFILESDIR/momedo.conf"
    if [ -n "$DESTDIR" ]; then
        return
    fi
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$SYSUSERSDIR/momedo.conf"
        systemd-tmpfiles --create "$TMPFILESDIR/momedo.conf"
        say "Created the user momedo and the group $ADMIN_GROUP (if they were missing)"
    else
        warn "systemd-sysusers not found: create the user momedo and the group $ADMIN_GROUP" \
            "yourself, and the directories listed in $TMPFILESDIR/momedo.conf"
    fi
}

write_config() {
    conf=$DESTDIR$CONFIG
    if [ -e "$conf" ] || [ -L "$conf" ]; then
        say "Kept the existing $conf"
    else
        install -d -m 0755 "$DESTDIR$CONFDIR"
        group=root
        if [ -z "$DESTDIR" ] && getent group "$ADMIN_GROUP" >/dev/null 2>&1; then
            group=$ADMIN_GROUP
        fi
        (umask 077 && "$VENV/bin/momedod" default-config >"$conf.new")
        chown "root:$group" "$conf.new"
        chmod 0640 "$conf.new"
        mv "$conf.new" "$conf"
        say "Wrote $conf (owner root:$group, mode 0640) from momedod default-config"
    fi
    "$VENV/bin/momedod" check-config --config "$conf" ||
        warn "$conf has a problem (see above): fix it before you start momedod"
}

do_install() {
    need_root
    check_paths
    check_python
    check_links
    make_venv
    pip_install
    install_shared_files
    link_commands
    install_systemd_files
    write_config
    if systemd_running; then
        systemctl daemon-reload
    fi
    version=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("momedo"))')
    say ""
    say "momedo $version is installed in $PREFIX. Nothing was started or enabled."
    if systemd_running && systemctl is-active --quiet momedod.service; then
        say "momedod is still running the previous version; to switch: systemctl restart momedod"
    else
        say "Next: set [server] public_address in $CONFIG, check it with"
        say "  momedod check-config -c $CONFIG"
        say "then: systemctl enable --now momedod && journalctl -u momedod -f"
    fi
}

do_uninstall() {
    need_root
    check_paths
    unit=$DESTDIR$UNITDIR/momedod.service
    if systemd_running && [ -e "$unit" ]; then
        systemctl disable --now momedod.service
        say "Stopped and disabled momedod"
    fi
    wants=$DESTDIR$UNITDIR/multi-user.target.wants/momedod.service
    if [ -L "$wants" ]; then rm -f "$wants"; fi
    for c in $COMMANDS; do
        link=$DESTDIR$BINDIR/$c
        if [ -L "$link" ] && [ "$(readlink "$link")" = "$PREFIX/bin/$c" ]; then
            rm -f "$link"
        elif [ -e "$link" ] || [ -L "$link" ]; then
            warn "left $link alone: it is not a link to $PREFIX/bin/$c"
        fi
    done
    rm -f "$unit" "$DESTDIR$SYSUSERSDIR/momedo.conf" "$DESTDIR$TMPFILESDIR/momedo.conf"
    if [ -f "$VENV/pyvenv.cfg" ]; then
        rm -rf "$VENV"
    elif [ -e "$VENV" ]; then
        warn "left $VENV alone: it is not a Python venv"
    fi
    if systemd_running; then
        systemctl daemon-reload
    fi
    say "Removed the momedo commands from $DESTDIR$BINDIR, the venv $VENV, the unit, and the"
    say "sysusers.d and tmpfiles.d files."
    say "Kept: $DESTDIR$CONFDIR (configuration), $DESTDIR/var/lib/momedo (database, TLS key),"
    say "$DESTDIR/var/backups/momedo (backups), the user momedo and the group $ADMIN_GROUP."
    if [ -d "$DESTDIR$UNITDIR/momedod.service.d" ]; then
        say "Also kept your overrides in $DESTDIR$UNITDIR/momedod.service.d."
    fi
    say "To remove those too (this deletes every user, device and queued message):"
    say "  rm -r $CONFDIR /var/lib/momedo /var/backups/momedo; userdel momedo;" \
        "groupdel $ADMIN_GROUP"
}

do_wheelhouse() {
    out=${WHEELHOUSE:-$SRCDIR/dist/wheelhouse}
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    "$INSTALL_PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
        die "the Python venv module is missing: apt install python3-venv"
    make_tmp
    "$INSTALL_PYTHON" -m venv "$tmp/venv"
    py=$tmp/venv/bin/python
    say "Building momedo from $SRCDIR"
    wheel=$(build_wheel "$py")
    cp "$wheel" "$out/"
    platforms="--platform manylinux2014_$WHEEL_ARCH"
    n=17
    while [ "$n" -le "$WHEEL_GLIBC_MINOR" ]; do
        platforms="$platforms --platform manylinux_2_${n}_$WHEEL_ARCH"
        n=$((n + 1))
    done
    say "Downloading the dependencies for $WHEEL_ARCH, CPython $WHEEL_PYTHON_VERSION"
    # shellcheck disable=SC2086  # $platforms is a list of options
    "$py" -m pip download --quiet --dest "$out" --only-binary=:all: $platforms \
        --python-version "$WHEEL_PYTHON_VERSION" --implementation cp "$wheel"
    (cd "$out" && sha256sum -- *.whl >SHA256SUMS)
    say "Wheelhouse ready: $out ($(ls "$out"/*.whl | wc -l) wheels, checksums in SHA256SUMS)."
    say "Copy it to the server and run there: sudo make install WHEELHOUSE=/path/to/wheelhouse"
}

ACTION=${1:-}
case $ACTION in
    install) do_install ;;
    uninstall) do_uninstall ;;
    wheelhouse) do_wheelhouse ;;
    *)
        ACTION=install
        die "usage: $0 install|uninstall|wheelhouse (normally run through make)"
        ;;
esac
