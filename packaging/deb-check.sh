#!/usr/bin/env bash
# Builds the edge-coupon .deb and checks it the way a store's back-room server uses it.
#
# Run as root on a Debian or Ubuntu machine (CI) that is NOT running systemd:
#
#     sudo packaging/deb-check.sh
#
# It installs what it needs (apt-get: lintian, systemd for systemd-analyze, curl, socat;
# cargo-deb 3.x), builds the release binaries and the package, lints it, verifies and scores
# the systemd units, installs the package, runs both services' ExecStart commands as the
# service user with a test override in conf.d/, probes them over HTTPS, removes and purges the
# package and checks that nothing is left. Any failure exits non-zero with "deb-check: FAIL".
# It can run again on the same machine: it purges an edge-coupon left by an earlier run first.
#
# Environment:
#   SKIP_BUILD=1           reuse target/release binaries (no cargo build)
#   SKIP_TLS_INIT=1        skip the `edge-server tls-init` checks
#   SKIP_NOTIFY=1          skip the sd_notify READY=1 / WATCHDOG=1 checks
#   SKIP_ADMIN=1           skip the admin listener /metrics and /status checks
#   SKIP_CONFIG_PACKAGE=1  skip the regional config package (edge-ctl config-package)
#   (these four test features added with the packaging, issue 4; all pass since a3a2b4b,
#   637926b, 3c5fe2d and 110d9b3)
#   DEB_CHECK_OUT=DIR      where the .deb files and logs go, kept afterwards (default: a new
#                          directory in /tmp, removed when every check passed, kept on failure)
#   DEB_CHECK_RELEASE_XZ=1 build the .deb with cargo-deb's full compression (default --fast:
#                          same contents, a minute less on 2 cores)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVICE_USER=edge-coupon
CONFIG=/etc/edge-coupon/edge-coupon.toml
CONF_D=/etc/edge-coupon/conf.d
STATE_DIR=/var/lib/edge-coupon
UNIT_DIR=/usr/lib/systemd/system
LANE_PORT=8443
ADMIN_PORT=9443
LANE_USER=catapult
LANE_PASSWORD=deb-check-lane-secret
ADMIN_USER="admin"
ADMIN_PASSWORD=deb-check-admin-secret
REGION="test"
REGION_VERSION=1.0

SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_TLS_INIT=${SKIP_TLS_INIT:-0}
SKIP_NOTIFY=${SKIP_NOTIFY:-0}
SKIP_ADMIN=${SKIP_ADMIN:-0}
SKIP_CONFIG_PACKAGE=${SKIP_CONFIG_PACKAGE:-0}

OUT=${DEB_CHECK_OUT:-}
REMOVE_OUT=0
if [ -z "$OUT" ]; then
    OUT=$(mktemp -d /tmp/deb-check.XXXXXX)
    REMOVE_OUT=1
fi
mkdir -p "$OUT"
# The service user must reach the notify sockets in here.
chmod 0755 "$OUT"

SERVER_PID=
DAEMON_PID=
NOTIFY_PIDS=()
SKIPPED=()

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
    printf '\ndeb-check: FAIL: %s\n' "$*" >&2
    exit 1
}
skip() { # name reason
    printf '    SKIPPED (%s=1): %s\n' "$1" "$2"
    SKIPPED+=("$1")
}

# Stop what this script started (only by the PIDs it recorded).
cleanup() {
    local status=$?
    for pid in $DAEMON_PID $SERVER_PID "${NOTIFY_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $DAEMON_PID $SERVER_PID "${NOTIFY_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        echo "deb-check: logs and packages are in $OUT" >&2
        if dpkg-query -W -f='${Status}' edge-coupon 2>/dev/null | grep installed >/dev/null; then
            echo "deb-check: edge-coupon is left installed for inspection; the next run purges it" >&2
        fi
    elif [ "$REMOVE_OUT" -eq 1 ]; then
        # Passed: the packages and logs (about 70 MB) are not needed (DEB_CHECK_OUT keeps them).
        rm -rf "$OUT"
    fi
}
trap cleanup EXIT

# lintian with every tag shown (I: infos, O: overridden tags); fails on any E: or W: tag,
# or on those listed in $1 (e.g. "E" alone).
run_lintian() { # tags-that-fail package
    local status=0
    lintian --display-info --show-overrides --fail-on none "$2" >"$OUT/lintian.log" 2>&1 || status=$?
    grep -v '^running with root privileges' "$OUT/lintian.log" || true
    [ "$status" -eq 0 ] || return "$status"
    ! grep -Eq "^($1): " "$OUT/lintian.log"
}

installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep ' installed$' >/dev/null; }
known() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -v ' not-installed$' >/dev/null; }

# owner:group mode of a path, e.g. "root:edge-coupon 640".
perms() { stat -c '%U:%G %a' "$1"; }
expect_perms() { # path expected
    [ -e "$1" ] || fail "$1 does not exist"
    local got
    got=$(perms "$1")
    [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
    ok "$1 $got"
}

# Runs a command as the service user, the way the units do: User=/Group=, UMask=0027,
# NoNewPrivileges=, no capabilities, a clean environment (systemd passes none of ours), plus
# the variables in EXTRA_ENV. Call it in a subshell: it replaces the shell it runs in, so that
# `(as_service_exec ...) &` leaves the daemon's own PID in $!.
as_service_exec() {
    cd /
    umask 0027
    # shellcheck disable=SC2086 # EXTRA_ENV is a list of NAME=value words
    exec setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups \
        --no-new-privs --inh-caps=-all --bounding-set=-all -- \
        env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$STATE_DIR" ${EXTRA_ENV:-} "$@"
}
as_service() { (as_service_exec "$@"); }

# ExecStart= of an installed unit, so that the check runs exactly what systemd would run.
exec_start() { sed -n 's/^ExecStart=//p' "$UNIT_DIR/$1.service"; }

# Waits up to $2 seconds for `curl` to answer $3 for $1 (extra curl arguments after).
wait_http() { # url seconds expected-code [curl args...]
    local url=$1 secs=$2 want=$3 code=
    shift 3
    for _ in $(seq $((secs * 5))); do
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)
        [ "$code" = "$want" ] && return 0
        sleep 0.2
    done
    echo "    last answer from $url: ${code:-none}" >&2
    return 1
}

wait_log() { # file pattern seconds
    for _ in $(seq $(($3 * 5))); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# Running, not a zombie waiting for `wait`.
# Whether process $1 runs: its state is read once. (Testing that /proc/$1 exists and then
# reading its state raced with bash reaping the exited process in between: the read failed
# and a process already gone counted as running.)
alive() {
    local state
    state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# Starts a UNIX datagram listener standing in for systemd's NOTIFY_SOCKET.
notify_socket() { # name -> sets NOTIFY_SOCK, NOTIFY_LOG
    NOTIFY_SOCK="$OUT/$1.notify.sock"
    NOTIFY_LOG="$OUT/$1.notify.log"
    rm -f "$NOTIFY_SOCK" "$NOTIFY_LOG"
    : >"$NOTIFY_LOG"
    socat -u "UNIX-RECV:$NOTIFY_SOCK,perm=0666" "OPEN:$NOTIFY_LOG,append" &
    NOTIFY_PIDS+=($!)
    for _ in $(seq 25); do [ -S "$NOTIFY_SOCK" ] && return 0; sleep 0.2; done
    fail "socat did not create $NOTIFY_SOCK"
}

stop_process() { # pid name
    local pid=$1 status=0 started waited
    started=$(date +%s%N)
    kill -TERM "$pid" 2>/dev/null || fail "$2 (pid $pid) was no longer running at the end"
    # 10 s by the clock, not by a count of sleeps.
    while alive "$pid" && [ $(($(date +%s%N) - started)) -lt 10000000000 ]; do sleep 0.2; done
    if alive "$pid"; then
        waited=$((($(date +%s%N) - started) / 1000000))
        # Where each thread waits, for whoever reads the failure.
        for task in /proc/"$pid"/task/*; do
            [ -e "$task" ] || continue
            printf '    thread %s %s: state %s, waiting in %s\n' "${task##*/}" \
                "$(cat "$task/comm" 2>/dev/null)" \
                "$(awk '/^State:/ { print $2 }' "$task/status" 2>/dev/null)" \
                "$(cat "$task/wchan" 2>/dev/null)"
        done
        alive "$pid" && fail "$2 did not stop within $waited ms of SIGTERM"
    fi
    wait "$pid" || status=$?
    # systemd counts a clean exit and death by SIGTERM as success.
    case $status in
        0 | 143) ok "$2 stopped on SIGTERM (exit status $status)" ;;
        *) fail "$2 exited with status $status on SIGTERM (log: $OUT/$2.log)" ;;
    esac
}

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs packages and creates a system user)"
command -v dpkg >/dev/null || fail "not a Debian or Ubuntu machine (no dpkg)"
cd "$ROOT"

step "Tools"
missing=()
for pkg in lintian systemd curl socat adduser binutils iproute2 procps; do
    installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "    apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || fail "cargo is not installed"
if ! cargo deb --version 2>/dev/null | grep '^cargo-deb 3\.' >/dev/null; then
    echo "    cargo install cargo-deb --locked (3.x)"
    cargo install cargo-deb --locked --version '^3.8' --quiet
fi
ok "$(cargo deb --version), $(lintian --version), $(systemd-analyze --version | head -n1)"

step "Build"
if [ "$SKIP_BUILD" = 1 ]; then
    skip SKIP_BUILD "reusing the binaries in target/release"
else
    cargo build --release --workspace --bins --locked
fi
fast=--fast
[ "${DEB_CHECK_RELEASE_XZ:-0}" = 1 ] && fast=
rm -f "$OUT"/*.deb "$OUT"/*.ddeb
cargo deb -p edge-server --no-build $fast --output "$OUT/" >"$OUT/cargo-deb.log" 2>&1 ||
    { cat "$OUT/cargo-deb.log"; fail "cargo deb failed"; }
DEB=$(ls "$OUT"/edge-coupon_*.deb)
ok "$DEB"

step "dpkg-deb --info"
dpkg-deb --info "$DEB"
step "dpkg-deb --contents"
dpkg-deb --contents "$DEB"
[ "$(dpkg-deb --field "$DEB" Package)" = edge-coupon ] || fail "package name is not edge-coupon"
for f in ./usr/bin/edge-server ./usr/bin/sync-daemon ./usr/bin/edge-ctl \
    ./etc/edge-coupon/edge-coupon.toml ./usr/lib/systemd/system/edge-server.service \
    ./usr/lib/systemd/system/sync-daemon.service; do
    dpkg-deb --contents "$DEB" | awk '{print $NF}' | grep -x "$f" >/dev/null || fail "$f is missing from the package"
done
dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles | grep -x "$CONFIG" >/dev/null ||
    fail "$CONFIG is not a conffile"
ok "binaries, units and conffile present"
# On upgrade prerm stops sync-daemon (an old daemon must not write to the database the new
# edge-server migrates) and leaves edge-server answering the lanes until postinst restarts it.
prerm=$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./prerm)
# (cargo-deb's fragments: an unconditional stop, or one under `[ "$1" = remove ]`.)
guard_of() { # the line before the stop of unit $1
    awk -v stop="deb-systemd-invoke stop $1" 'index($0, stop) { print prev; exit } { prev = $0 }' <<<"$prerm"
}
[ "$(guard_of sync-daemon.service)" = 'if [ -d /run/systemd/system ]; then' ] ||
    fail "prerm does not stop sync-daemon before an upgrade"
case "$(guard_of edge-server.service)" in
*'"$1" = remove'*) ;;
*) fail "prerm stops edge-server on upgrade (the lanes would lose it for the whole unpack)" ;;
esac
ok "prerm stops sync-daemon, not edge-server, before an upgrade"
# lintian does not compare them: a version bump in Cargo.toml needs a changelog entry.
version=$(dpkg-deb --field "$DEB" Version)
changelog_version=$(sed -n '1s/^edge-coupon (\([^)]*\)).*/\1/p' packaging/debian/changelog)
[ "$version" = "$changelog_version" ] ||
    fail "package version $version has no entry in packaging/debian/changelog (top: ${changelog_version:-none})"
ok "version $version, with its packaging/debian/changelog entry"

step "lintian"
# Errors and warnings fail; every accepted tag is overridden, with its reason, in
# packaging/debian/edge-coupon.lintian-overrides (shown here with the O: lines).
run_lintian 'E|W' "$DEB" ||
    fail "lintian reported errors or warnings"
ok "no lintian errors or warnings"

step "Clean machine"
for pkg in $(dpkg-query -W -f='${Package}\n' 'edge-coupon-config-*' 2>/dev/null || true) edge-coupon; do
    if known "$pkg"; then
        echo "    purging $pkg left by an earlier run"
        dpkg --purge "$pkg" >/dev/null
    fi
done
if pgrep -u "$SERVICE_USER" >/dev/null 2>&1; then
    fail "processes of $SERVICE_USER are running (pgrep -u $SERVICE_USER); stop them first"
fi
for path in /etc/edge-coupon "$STATE_DIR"; do
    if [ -e "$path" ]; then fail "$path exists without the package: remove it first"; fi
done
for port in $LANE_PORT $ADMIN_PORT; do
    if ss -Hltn "sport = :$port" | grep . >/dev/null; then fail "port $port is already in use"; fi
done
ok "no edge-coupon installed, ports $LANE_PORT and $ADMIN_PORT free"

step "Install"
# dpkg -i does not resolve dependencies: make sure they are there.
for dep in adduser init-system-helpers; do installed "$dep" || fail "$dep is not installed"; done
dpkg -i "$DEB"
installed edge-coupon || fail "edge-coupon is not installed after dpkg -i"
getent passwd "$SERVICE_USER" >/dev/null || fail "user $SERVICE_USER was not created"
getent group "$SERVICE_USER" >/dev/null || fail "group $SERVICE_USER was not created"
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd "$SERVICE_USER")
[ "$uid" -lt 1000 ] || fail "$SERVICE_USER is not a system user (uid $uid)"
[ "$home" = "$STATE_DIR" ] || fail "$SERVICE_USER's home is $home, expected $STATE_DIR"
case $shell in */nologin | */false) ;; *) fail "$SERVICE_USER has a login shell: $shell" ;; esac
ok "system user $SERVICE_USER (uid $uid, home $home, shell $shell)"
expect_perms "$CONFIG" "root:$SERVICE_USER 640"
expect_perms "$CONF_D" "root:$SERVICE_USER 750"
expect_perms "$STATE_DIR" "$SERVICE_USER:$SERVICE_USER 750"
for unit in edge-server sync-daemon; do
    [ -L /etc/systemd/system/multi-user.target.wants/$unit.service ] ||
        fail "$unit.service is not enabled (no multi-user.target.wants link)"
done
ok "both units enabled for multi-user.target"
# No md5sums from cargo-deb: compare the installed files with the package's instead.
mkdir -p "$OUT/extracted" && rm -rf "${OUT:?}/extracted/"*
dpkg-deb --extract "$DEB" "$OUT/extracted"
while IFS= read -r f; do
    cmp -s "$OUT/extracted/$f" "/$f" || fail "/$f differs from the package"
done < <(cd "$OUT/extracted" && find . -type f -printf '%P\n')
ok "installed files are identical to the package's"

step "Reinstall (postinst with a previous version, as on an upgrade)"
echo "# local edit kept across upgrades" >>"$CONFIG"
sum=$(sha256sum "$CONFIG")
dpkg -i "$DEB" >"$OUT/reinstall.log" 2>&1 || { cat "$OUT/reinstall.log"; fail "reinstall failed"; }
[ "$(sha256sum "$CONFIG")" = "$sum" ] || fail "reinstall changed the edited $CONFIG"
expect_perms "$CONFIG" "root:$SERVICE_USER 640"
expect_perms "$STATE_DIR" "$SERVICE_USER:$SERVICE_USER 750"
ok "edited conffile kept, permissions still right"

step "systemd-analyze verify"
man_opt=--man=yes
if [ ! -e /usr/share/man/man1/edge-server.1.gz ] || ! command -v man >/dev/null; then
    # Images that exclude /usr/share/man (dpkg path-exclude) cannot resolve Documentation=man:.
    man_opt=--man=no
    echo "    man pages not installed on this machine: not checking Documentation=man: links"
fi
# It exits 0 on some warnings (unknown keys, for one): any output at all is a failure.
if ! systemd-analyze verify $man_opt "$UNIT_DIR/edge-server.service" "$UNIT_DIR/sync-daemon.service" \
    >"$OUT/verify.log" 2>&1 || [ -s "$OUT/verify.log" ]; then
    cat "$OUT/verify.log"
    fail "systemd-analyze verify reported problems"
fi
ok "both units verify clean"

step "systemd-analyze security --offline=true"
for unit in edge-server sync-daemon; do
    systemd-analyze security --offline=true --no-pager "$UNIT_DIR/$unit.service" >"$OUT/$unit.security" 2>&1 ||
        { cat "$OUT/$unit.security"; fail "systemd-analyze security failed for $unit"; }
    # The settings that still cost exposure (lines ending in their share).
    grep -E '[0-9]\.[0-9]$' "$OUT/$unit.security" || true
    line=$(grep 'Overall exposure level' "$OUT/$unit.security") ||
        fail "no exposure level for $unit in $OUT/$unit.security"
    echo "    $line"
    # "→ Overall exposure level for X.service: 1.2 OK 🙂": OK (< 5.0), SAFE or PERFECT pass.
    level=$(sed -n 's/.*: \([0-9.]*\) \([A-Z]*\).*/\2/p' <<<"$line")
    case $level in
        OK | SAFE | PERFECT) ok "$unit.service is $level" ;;
        *) fail "$unit.service is rated ${level:-unknown}, not OK or better" ;;
    esac
done

step "TLS certificate from postinst (edge-server tls-init)"
if [ "$SKIP_TLS_INIT" = 1 ]; then
    skip SKIP_TLS_INIT "postinst's tls-init (it printed a warning above if tls-init is missing)"
else
    cert=$STATE_DIR/tls/cert.pem
    [ -s "$cert" ] || fail "postinst did not create $cert (edge-server tls-init)"
    [ "$(stat -c %U "$cert")" = "$SERVICE_USER" ] || fail "$cert is not owned by $SERVICE_USER"
    key=$STATE_DIR/tls/key.pem
    [ -s "$key" ] || fail "postinst did not create $key"
    [ $((8#$(stat -c %a "$key") & 8#007)) -eq 0 ] || fail "$key is readable by others"
    as_service /usr/bin/edge-server --config "$CONFIG" tls-init >"$OUT/tls-init.log" 2>&1 ||
        { cat "$OUT/tls-init.log"; fail "a second tls-init failed"; }
    cat "$OUT/tls-init.log"
    grep -Eqi 'sha-?256' "$OUT/tls-init.log" || fail "tls-init printed no SHA-256 fingerprint"
    grep 'keytool -importcert' "$OUT/tls-init.log" >/dev/null || fail "tls-init printed no keytool -importcert command"
    ok "certificate and key made by postinst; tls-init prints the fingerprint and keytool command"
fi

step "Test override in conf.d/"
override=$CONF_D/90-deb-check.toml
{
    echo "# Written by packaging/deb-check.sh; deleted by purge."
    echo "[[lanes.credentials]]"
    echo "username = \"$LANE_USER\""
    echo "password = \"$LANE_PASSWORD\""
    if [ "$SKIP_ADMIN" != 1 ]; then
        echo
        echo "[admin]"
        echo "listen = \"127.0.0.1:$ADMIN_PORT\""
        echo "username = \"$ADMIN_USER\""
        echo "password = \"$ADMIN_PASSWORD\""
    fi
} >"$override"
chown "root:$SERVICE_USER" "$override"
chmod 0640 "$override"
as_service /usr/bin/edge-server --config "$CONFIG" check-config ||
    fail "edge-server check-config failed as $SERVICE_USER"
ok "the service user reads and validates the configuration"

step "Start edge-server as $SERVICE_USER: $(exec_start edge-server)"
read -r -a server_cmd <<<"$(exec_start edge-server)"
EXTRA_ENV=
if [ "$SKIP_NOTIFY" != 1 ]; then
    notify_socket edge-server
    # WATCHDOG_USEC as systemd sets it for WatchdogSec=, shortened so heartbeats come fast.
    EXTRA_ENV="NOTIFY_SOCKET=$NOTIFY_SOCK WATCHDOG_USEC=2000000"
fi
(as_service_exec "${server_cmd[@]}" >"$OUT/edge-server.log" 2>&1) &
SERVER_PID=$!
EXTRA_ENV=
if ! wait_http "https://127.0.0.1:$LANE_PORT/readyz" 30 200; then
    cat "$OUT/edge-server.log"
    fail "https://127.0.0.1:$LANE_PORT/readyz did not answer 200 within 30 s"
fi
ok "GET /readyz: 200"
lane_url="https://127.0.0.1:$LANE_PORT/coupons/customer?site=STO1&customer=4000000000001"
wait_http "$lane_url" 2 401 || fail "a lane request without credentials was not refused with 401"
wait_http "$lane_url" 2 200 -u "$LANE_USER:$LANE_PASSWORD" ||
    fail "the lane password from conf.d/ was not accepted"
ok "lane credentials come from conf.d/ (401 without, 200 with)"

# sync-daemon starts after edge-server is ready, as After=edge-server.service does with
# Type=notify: both migrate the database at start, and edge-server has done it by now.
step "Start sync-daemon as $SERVICE_USER: $(exec_start sync-daemon)"
read -r -a daemon_cmd <<<"$(exec_start sync-daemon)"
if [ "$SKIP_NOTIFY" != 1 ]; then
    notify_socket sync-daemon
    EXTRA_ENV="NOTIFY_SOCKET=$NOTIFY_SOCK WATCHDOG_USEC=2000000"
fi
(as_service_exec "${daemon_cmd[@]}" >"$OUT/sync-daemon.log" 2>&1) &
DAEMON_PID=$!
EXTRA_ENV=
if ! wait_log "$OUT/sync-daemon.log" "for configuration changes" 20; then
    cat "$OUT/sync-daemon.log"
    fail "sync-daemon did not start watching the configuration within 20 s"
fi
alive "$DAEMON_PID" || { cat "$OUT/sync-daemon.log"; fail "sync-daemon exited"; }
ok "sync-daemon runs and watches $CONFIG and $CONF_D"

step "sd_notify: READY=1 and WATCHDOG=1 (Type=notify, WatchdogSec=)"
if [ "$SKIP_NOTIFY" = 1 ]; then
    skip SKIP_NOTIFY "READY=1 and WATCHDOG=1 on NOTIFY_SOCKET"
else
    for name in edge-server sync-daemon; do
        log=$OUT/$name.notify.log
        wait_log "$log" READY=1 10 || fail "$name sent no READY=1 to NOTIFY_SOCKET (got: $(cat "$log"))"
        # WATCHDOG_USEC=2 s: a heartbeat is due within 2 s; allow 5.
        : >"$log"
        wait_log "$log" WATCHDOG=1 5 || fail "$name sent no WATCHDOG=1 within 5 s (WATCHDOG_USEC=2000000)"
        ok "$name: READY=1, then WATCHDOG=1 heartbeats"
    done
fi

step "Admin listener: /metrics and /status with the [admin] credentials"
if [ "$SKIP_ADMIN" = 1 ]; then
    skip SKIP_ADMIN "https://127.0.0.1:$ADMIN_PORT/metrics and /status"
else
    for path in metrics status; do
        url="https://127.0.0.1:$ADMIN_PORT/$path"
        wait_http "$url" 10 401 || fail "$url without credentials did not answer 401"
        wait_http "$url" 2 200 -u "$ADMIN_USER:$ADMIN_PASSWORD" ||
            fail "$url with the admin credentials did not answer 200"
        # Into a file first: `curl | head` fails under pipefail once head stops reading.
        curl -sk -u "$ADMIN_USER:$ADMIN_PASSWORD" "$url" >"$OUT/admin-$path.out" ||
            fail "$url could not be read"
        head -n 5 "$OUT/admin-$path.out"
        case $path in
        metrics) want='edge_outbox_items{' ;;
        status) want='id="providers"' ;;
        esac
        grep -F "$want" "$OUT/admin-$path.out" >/dev/null || fail "$url does not show $want"
        ok "GET /$path: 401 without credentials, 200 with, shows $want"
    done
fi

step "Regional config package (edge-ctl config-package) and hot reload"
if [ "$SKIP_CONFIG_PACKAGE" = 1 ]; then
    skip SKIP_CONFIG_PACKAGE "edge-coupon-config-$REGION and the hot reload it triggers"
else
    region_toml=$OUT/region-$REGION.toml
    # A reloadable change: sync-daemon logs "configuration reloaded: outbox".
    printf '[outbox]\nconcurrency = 2\n' >"$region_toml"
    mkdir -p "$OUT/config-package"
    /usr/bin/edge-ctl config-package --region "$REGION" --version "$REGION_VERSION" \
        "$region_toml" --output "$OUT/config-package" || fail "edge-ctl config-package failed"
    region_deb=$OUT/config-package/edge-coupon-config-${REGION}_${REGION_VERSION}_all.deb
    [ -f "$region_deb" ] || fail "edge-ctl config-package did not write $region_deb"
    dpkg-deb --info "$region_deb"
    dpkg-deb --contents "$region_deb"
    # Shown for information: the package is built by edge-ctl, not by cargo-deb.
    run_lintian E "$region_deb" || echo "    (lintian reports errors for $region_deb: not failing on them)"
    dpkg -i "$region_deb"
    region_file=$CONF_D/50-region-$REGION.toml
    [ -f "$region_file" ] || fail "$region_file was not installed"
    cmp -s "$region_file" "$region_toml" || fail "$region_file differs from $region_toml"
    # It may hold provider credentials: readable by the service, not by everyone.
    [ $((8#$(stat -c %a "$region_file") & 8#004)) -eq 0 ] || fail "$region_file is world-readable"
    as_service test -r "$region_file" || fail "$SERVICE_USER cannot read $region_file"
    # dpkg must not have reset the directory to the package's root:root 0755.
    expect_perms "$CONF_D" "root:$SERVICE_USER 750"
    if ! wait_log "$OUT/sync-daemon.log" "configuration reloaded" 15; then
        cat "$OUT/sync-daemon.log"
        fail "sync-daemon did not log \"configuration reloaded\" within 15 s of the install"
    fi
    grep "configuration reloaded" "$OUT/sync-daemon.log"
    wait_http "https://127.0.0.1:$LANE_PORT/readyz" 5 200 || fail "edge-server not ready after the reload"
    ok "edge-coupon-config-$REGION installed $region_file; sync-daemon reloaded it"
fi

step "Stop the services"
alive "$SERVER_PID" || { cat "$OUT/edge-server.log"; fail "edge-server exited while running"; }
alive "$DAEMON_PID" || { cat "$OUT/sync-daemon.log"; fail "sync-daemon exited while running"; }
stop_process "$DAEMON_PID" sync-daemon
DAEMON_PID=
stop_process "$SERVER_PID" edge-server
SERVER_PID=
grep -E ' (ERROR|WARN) ' "$OUT/edge-server.log" "$OUT/sync-daemon.log" || true

step "Remove (data and configuration stay)"
dpkg-query -L edge-coupon >"$OUT/edge-coupon.files"
config_packages=$(dpkg-query -W -f='${Package}\n' 'edge-coupon-config-*' 2>/dev/null || true)
# shellcheck disable=SC2086 # one word per package
dpkg --remove $config_packages edge-coupon
if [ -e /usr/bin/edge-server ]; then fail "/usr/bin/edge-server is still there after remove"; fi
[ -f "$STATE_DIR/edge.db" ] || fail "remove deleted the database"
[ -f "$CONFIG" ] || fail "remove deleted the configuration"
getent passwd "$SERVICE_USER" >/dev/null || fail "remove deleted the service user"
ok "binaries gone; database, configuration and service user kept"

step "Purge"
# shellcheck disable=SC2086
dpkg --purge $config_packages edge-coupon
left=()
for path in /etc/edge-coupon "$STATE_DIR" \
    /etc/systemd/system/multi-user.target.wants/edge-server.service \
    /etc/systemd/system/multi-user.target.wants/sync-daemon.service \
    /var/lib/systemd/deb-systemd-helper-enabled/edge-server.service.dsh-also \
    /var/lib/systemd/deb-systemd-helper-enabled/sync-daemon.service.dsh-also; do
    if [ -e "$path" ] || [ -L "$path" ]; then left+=("$path"); fi
done
while IFS= read -r path; do
    # Directories such as /usr/bin are shared with other packages; files must all be gone.
    if [ -d "$path" ]; then continue; fi
    if [ -e "$path" ] || [ -L "$path" ]; then left+=("$path"); fi
done <"$OUT/edge-coupon.files"
[ ${#left[@]} -eq 0 ] || fail "left after purge: ${left[*]}"
if getent passwd "$SERVICE_USER" >/dev/null; then fail "user $SERVICE_USER is left after purge"; fi
if getent group "$SERVICE_USER" >/dev/null; then fail "group $SERVICE_USER is left after purge"; fi
if known edge-coupon; then fail "dpkg still knows edge-coupon after purge"; fi
ok "nothing left: no /etc/edge-coupon, no $STATE_DIR, no user or group, no packaged file"

if [ ${#SKIPPED[@]} -gt 0 ]; then
    printf '\ndeb-check: OK, except the skipped checks: %s\n' "${SKIPPED[*]}"
else
    printf '\ndeb-check: OK\n'
fi
