#!/bin/sh
# check-unit.sh [UNIT] — what `make check-unit` runs (and tests/packaging/test_unit.py).
#
#  1. `systemd-analyze verify` on the unit (default: systemd/momedod.service). It must exit 0
#     and print nothing about the unit: verify exits 0 even on unknown keys and bad values,
#     so any message naming the unit counts as a failure.
#  2. `systemd-analyze security --offline=true`: the overall exposure level must be at most
#     MAX_EXPOSURE (default 2.0).
#  3. systemd-sysusers and systemd-tmpfiles --create apply systemd/momedo.sysusers and
#     systemd/momedo.tmpfiles to an empty temporary root without complaint.
#
# verify fails when an Exec*= program does not exist, as /opt/momedo/bin/momedod does not
# before `make install`. The check therefore runs on a copy of the unit in which each missing
# program is replaced by a stub script in the temporary directory; nothing else changes. Works
# without a running systemd (containers, CI); needs only the systemd package's binaries.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
unit=${1:-$here/systemd/momedod.service}
max=${MAX_EXPOSURE:-2.0}
sysusers=${SYSUSERS:-$here/systemd/momedo.sysusers}
tmpfiles=${TMPFILES:-$here/systemd/momedo.tmpfiles}

fail() { printf 'check-unit: FAILED: %s\n' "$*" >&2; exit 1; }

command -v systemd-analyze >/dev/null 2>&1 ||
    fail "systemd-analyze not found (Debian package systemd)"
[ -f "$unit" ] || fail "no such unit file: $unit"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/momedo-check-unit.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
name=$(basename "$unit")
copy=$tmp/$name
cp "$unit" "$copy"

# Absolute programs of Exec*= lines (after the optional "-@:+!" prefixes), without arguments.
programs=$(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\(\/[^[:space:]]*\).*/\1/p' "$unit" | sort -u)
for prog in $programs; do
    if [ ! -x "$prog" ]; then
        stub=$tmp/stub$prog
        mkdir -p "$(dirname "$stub")"
        printf '#!/bin/sh\nexit 0\n' >"$stub"
        chmod 0755 "$stub"
        sed -i "/^Exec/s#$prog#$stub#g" "$copy"
        echo "check-unit: $prog is not installed here; verifying with a stub in its place"
    fi
done

# 1. verify
rc=0
out=$(systemd-analyze verify --man=no "$copy" 2>&1) || rc=$?
out=$(printf '%s\n' "$out" | sed "s#$copy#$unit#g")  # messages name the copy
if [ -n "$out" ]; then printf '%s\n' "$out"; fi
[ "$rc" -eq 0 ] || fail "systemd-analyze verify $unit exited with $rc"
if printf '%s\n' "$out" | grep -F -q "$name"; then
    fail "systemd-analyze verify reports problems in $unit (see above)"
fi
echo "check-unit: systemd-analyze verify $unit: ok"

# 2. security
rc=0
out=$(systemd-analyze security --offline=true "$copy" 2>&1) || rc=$?
out=$(printf '%s\n' "$out" | sed "s#$copy#$unit#g")
[ "$rc" -eq 0 ] || { printf '%s\n' "$out"; fail "systemd-analyze security exited with $rc"; }
if printf '%s\n' "$out" | grep -v 'Overall exposure' | grep -F -q "$name"; then
    printf '%s\n' "$out"
    fail "systemd-analyze security reports problems in $unit (see above)"
fi
level=$(printf '%s\n' "$out" |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p')
[ -n "$level" ] || { printf '%s\n' "$out"; fail "no 'Overall exposure level' line"; }
if ! awk -v level="$level" -v max="$max" 'BEGIN { exit !(level + 0 <= max + 0) }'; then
    printf '%s\n' "$out" | grep -v '✓'
    fail "exposure level $level is above $max"
fi
echo "check-unit: systemd-analyze security $unit: exposure level $level (at most $max): ok"

# 3. sysusers.d and tmpfiles.d files, applied to an empty root
if [ -n "$sysusers" ] && [ -f "$sysusers" ]; then
    root=$tmp/root
    mkdir -p "$root/etc"
    sysusers=$(cd "$(dirname "$sysusers")" && pwd)/$(basename "$sysusers")
    out=$(systemd-sysusers --root="$root" "$sysusers" 2>&1) ||
        { printf '%s\n' "$out"; fail "systemd-sysusers rejects $sysusers"; }
    if printf '%s\n' "$out" | grep -q -i -e fail -e ignor -e invalid; then
        printf '%s\n' "$out"
        fail "systemd-sysusers complains about $sysusers"
    fi
    for user in momedo; do
        grep -q "^$user:" "$root/etc/passwd" || fail "$sysusers creates no user $user"
    done
    for group in momedo momedo-admin; do
        grep -q "^$group:" "$root/etc/group" || fail "$sysusers creates no group $group"
    done
    echo "check-unit: systemd-sysusers $sysusers: ok"
    if [ -n "$tmpfiles" ] && [ -f "$tmpfiles" ]; then
        tmpfiles=$(cd "$(dirname "$tmpfiles")" && pwd)/$(basename "$tmpfiles")
        out=$(systemd-tmpfiles --root="$root" --create "$tmpfiles" 2>&1) ||
            { printf '%s\n' "$out"; fail "systemd-tmpfiles rejects $tmpfiles"; }
        if [ -n "$out" ]; then
            printf '%s\n' "$out"
            fail "systemd-tmpfiles complains about $tmpfiles"
        fi
        echo "check-unit: systemd-tmpfiles --create $tmpfiles: ok"
    fi
fi
