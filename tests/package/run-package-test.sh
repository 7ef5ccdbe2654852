#!/usr/bin/env bash
# kleakd's Debian package, end to end.
#
# Builds kleakd_<version>_<arch>.deb with packaging/build-deb.sh into a
# temporary directory outside the source tree, checks its contents and runs
# lintian on it (any E: fails), then boots systemd in systemd-nspawn on a
# throwaway overlay of the host root (the same container as the systemd test:
# tests/systemd/nspawn-lib.sh) and there: installs the .deb with apt-get,
# checks that the maintainer scripts created group kleakd and enabled and
# started the service, sees a leak through kleakctl, checks the versions, the
# man pages and the conffile, reinstalls the package (an upgrade: the service
# restarts, a local conffile change survives), stops the service, removes the
# package (the service stops, the conffile and state stay) and purges it
# (nothing of the package is left, nor /etc/kleakd or /var/lib/kleakd), and
# checks that no BPF program of the package's daemons is left loaded.
#
# usage: run-package-test.sh BUILD_DIR SOURCE_DIR     (as root; ctest runs it
#        as the `package_deb` test, label `package`)
#
# BUILD_DIR is only checked to exist: the package is built from SOURCE_DIR
# from scratch, as dpkg-buildpackage does. (KLEAKD_PACKAGE_PREBUILT=DIR, for
# work on this test only, takes the .deb from DIR instead of building it.)
#
# Prints "PASS: ..." / "FAIL: ..." per check and ends with "N passed, M failed";
# exits 0 only when nothing failed. Not root, or a tool missing: exit 1 (exit
# 77, a ctest skip, when KLEAKD_ALLOW_KERNEL_SKIP=1, like the kernel tests).
# Every wait is time-boxed, and the whole run stays inside a budget
# (KLEAKD_PACKAGE_BUDGET seconds, default 510, the package build included)
# that leaves time for cleanup before ctest's 600 s timeout.
set -uo pipefail

prog=${0##*/}
usage() { echo "usage: $prog BUILD_DIR SOURCE_DIR" >&2; exit 2; }
HERE=$(dirname "$(realpath -e -- "${BASH_SOURCE[0]}")")
# shellcheck source=tests/systemd/nspawn-lib.sh
source "$HERE/../systemd/nspawn-lib.sh" || { echo "$prog: cannot read ../systemd/nspawn-lib.sh" >&2; exit 1; }

[ $# -eq 2 ] || usage
# shellcheck disable=SC2034  # only checked: see above
BUILD_DIR=$(realpath -e -- "$1" 2>/dev/null) || die "build directory '$1' does not exist"
SOURCE_DIR=$(realpath -e -- "$2" 2>/dev/null) || die "source directory '$2' does not exist"

# --- prerequisites ------------------------------------------------------------
nspawn_prerequisites
for tool in dpkg-buildpackage dpkg-deb dpkg-architecture dh lintian scdoc; do
    command -v "$tool" >/dev/null || refuse "$tool is missing: run scripts/install-deps.sh"
done
[ -x "$SOURCE_DIR/packaging/build-deb.sh" ] && [ -f "$SOURCE_DIR/CMakeLists.txt" ] ||
    die "$SOURCE_DIR is not the kleakd source tree (no packaging/build-deb.sh)"
VERSION=$(sed -n -E 's/^[[:space:]]*project[[:space:]]*\([[:space:]]*kleakd[[:space:]]+VERSION[[:space:]]+([0-9]+(\.[0-9]+)*)([[:space:]].*)?\).*$/\1/p' \
    "$SOURCE_DIR/CMakeLists.txt" | head -n 1)
[ -n "$VERSION" ] || die "no 'project(kleakd VERSION x.y.z ...)' in $SOURCE_DIR/CMakeLists.txt"
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
DEB_NAME="kleakd_${VERSION}_${ARCH}.deb"

# The container is an overlay of the host root: whatever kleakd the host has
# would be there before the package, and the checks that the package installs
# (and purges) its files would prove nothing. Refuse rather than touch the host.
case "$(dpkg-query -W -f='${db:Status-Status}' kleakd 2>/dev/null)" in
    "" | not-installed) ;;
    *) die "the kleakd package is on this host (dpkg-query -W kleakd): purge it first (apt-get purge kleakd)" ;;
esac
host_left=""
for f in /usr/sbin/kleakd /usr/bin/kleakctl /usr/local/sbin/kleakd /usr/local/bin/kleakctl \
    /usr/lib/systemd/system/kleakd.service /usr/lib/systemd/system/kleakd.socket \
    /usr/local/lib/systemd/system/kleakd.service /etc/systemd/system/kleakd.service \
    /usr/lib/sysusers.d/kleakd.conf /usr/local/lib/sysusers.d/kleakd.conf \
    /etc/kleakd /var/lib/kleakd /usr/share/doc/kleakd; do
    [ -e "$f" ] || [ -L "$f" ] && host_left+="$f "
done
[ -z "$host_left" ] ||
    die "this host has kleakd installed outside the package manager (a 'cmake --install' on the host?): ${host_left% }. The test's container overlays the host root, so it would not start clean: remove these first"
nspawn_cgroups

# --- state and reporting --------------------------------------------------------
nspawn_init "${KLEAKD_PACKAGE_BUDGET:-510}" KLEAKD_PACKAGE_BUDGET 10
PKG_WORK=""
nspawn_cleanup_hook() { [ -n "$PKG_WORK" ] && rm -rf "$PKG_WORK"; }

# paths_left PATH...: (in the container) prints each PATH that still exists,
# except directories other packages share (a directory is the package's own
# when its path names kleakd)
paths_left() {
    C 30 "$PY" -c '
import os, sys
for p in sys.argv[1:]:
    if not os.path.lexists(p):
        continue
    if os.path.isdir(p) and "kleakd" not in p:  # /lib is a link to /usr/lib
        continue
    print(p)' "$@"
}

# --- 0: build -------------------------------------------------------------------
step 0 "build $DEB_NAME with packaging/build-deb.sh"
PKG_WORK=$(mktemp -d /tmp/kleakd-package.XXXXXX) || fatal "mktemp failed"
DEBS="$PKG_WORK/debs"
mkdir "$DEBS"
BUILD_LOG="$PKG_WORK/build.log"
left=$(budget_left) || fatal "the time budget of ${BUDGET}s is used up ($BUDGET_VARIABLE)"
t_build=$(now_ms)
if [ -n "${KLEAKD_PACKAGE_PREBUILT:-}" ]; then
    # for working on this test: reuse a .deb built before (CI never sets it)
    note "KLEAKD_PACKAGE_PREBUILT=$KLEAKD_PACKAGE_PREBUILT: using the $DEB_NAME there instead of building one"
    cp "$KLEAKD_PACKAGE_PREBUILT/$DEB_NAME" "$DEBS/" || fatal "no $DEB_NAME in $KLEAKD_PACKAGE_PREBUILT"
elif timeout -k 10 "$left" "$SOURCE_DIR/packaging/build-deb.sh" "$DEBS" >"$BUILD_LOG" 2>&1; then
    pass "packaging/build-deb.sh built $(cd "$DEBS" && echo *.deb) in $(fmt_ms $(($(now_ms) - t_build)))s"
else
    echo "    build log (last 40 lines of $BUILD_LOG):"
    tail -n 40 "$BUILD_LOG" | indent
    fatal "packaging/build-deb.sh failed"
fi
DEB="$DEBS/$DEB_NAME"
[ -f "$DEB" ] || fatal "no $DEB_NAME in $DEBS: $(ls "$DEBS")"
deb_version=$(dpkg-deb -f "$DEB" Version)
if [ "$deb_version" = "$VERSION" ]; then
    pass "$DEB_NAME: Version $deb_version, CMakeLists.txt's project(kleakd VERSION $VERSION)"
else
    fail "$DEB_NAME has Version '$deb_version', CMakeLists.txt says $VERSION"
fi
contents=$(dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's|^\./|/|')
missing=""
for f in /usr/sbin/kleakd /usr/bin/kleakctl /lib/systemd/system/kleakd.service /lib/systemd/system/kleakd.socket \
    /usr/lib/sysusers.d/kleakd.conf /etc/kleakd/kleakd.conf /usr/share/man/man8/kleakd.8.gz \
    /usr/share/man/man1/kleakctl.1.gz /usr/share/man/man5/kleakd.conf.5.gz /usr/share/doc/kleakd/README.md \
    /usr/share/doc/kleakd/docs/ARCHITECTURE.md /usr/share/doc/kleakd/copyright /usr/share/doc/kleakd/changelog.gz \
    /usr/bin/kleakd-exporter /lib/systemd/system/kleakd-exporter.service /lib/systemd/system/kleakd-exporter.socket \
    /lib/systemd/system/kleakd-exporter-textfile.service /lib/systemd/system/kleakd-exporter-textfile.timer \
    /usr/share/kleakd/prometheus/kleakd-rules.yml /usr/share/man/man1/kleakd-exporter.1.gz; do
    grep -qxF "$f" <<<"$contents" || missing+="$f "
done
if [ -z "$missing" ]; then
    pass "the .deb holds kleakd, kleakctl, kleakd-exporter, the units, the sysusers.d file, the config, the alert rules, 4 man pages, README.md, docs/ARCHITECTURE.md, copyright, changelog"
else
    fail "missing from the .deb: $missing"
    dpkg-deb -c "$DEB" | indent
fi
for unit in kleakd.service kleakd.socket; do
    if dpkg-deb --fsys-tarfile "$DEB" | tar -xOf - "./lib/systemd/system/$unit" | cmp -s - "$SOURCE_DIR/$unit"; then
        pass "/lib/systemd/system/$unit in the .deb is $SOURCE_DIR/$unit"
    else
        fail "/lib/systemd/system/$unit in the .deb differs from $SOURCE_DIR/$unit"
    fi
done
conffiles=$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xOf - ./conffiles 2>/dev/null)
if [ "$conffiles" = /etc/kleakd/kleakd.conf ]; then
    pass "conffiles: /etc/kleakd/kleakd.conf"
else
    fail "conffiles is '$conffiles', want /etc/kleakd/kleakd.conf"
fi
depends=$(dpkg-deb -f "$DEB" Depends)
missing=""
for dep in libbpf1 libsystemd0 libfmt9 libspdlog1.10 libcpp-httplib0.11 libprometheus-cpp-core1.0 \
    "systemd | systemd-standalone-sysusers | systemd-sysusers"; do
    grep -qF "$dep" <<<"$depends" || missing+="'$dep' "
done
if [ -z "$missing" ]; then pass "Depends: $depends"; else fail "Depends lacks $missing: $depends"; fi
postinst=$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xOf - ./postinst 2>/dev/null)
sysusers_line=$(grep -n 'systemd-sysusers' <<<"$postinst" | head -n 1 | cut -d: -f1)
start_line=$(grep -n 'deb-systemd-invoke' <<<"$postinst" | head -n 1 | cut -d: -f1)
if [ -n "$sysusers_line" ] && [ -n "$start_line" ] && [ "$sysusers_line" -lt "$start_line" ]; then
    pass "postinst runs systemd-sysusers (line $sysusers_line) before it starts the units (line $start_line)"
else
    fail "postinst does not run systemd-sysusers before deb-systemd-invoke (lines '$sysusers_line', '$start_line')"
fi

# --- 1: lintian -----------------------------------------------------------------
step 1 "lintian $DEB_NAME"
lint_log="$PKG_WORK/lintian.log"
left=$(budget_left) || fatal "the time budget of ${BUDGET}s is used up ($BUDGET_VARIABLE)"
timeout -k 5 "$((left < 180 ? left : 180))" lintian --info --display-info --show-overrides "$DEB" >"$lint_log" 2>&1
lint_rc=$?
errors=$(grep -c '^E: ' "$lint_log")
warnings=$(grep -c '^W: ' "$lint_log")
infos=$(grep -c '^I: ' "$lint_log")
overridden=$(grep -c '^O: ' "$lint_log")
echo "    lintian: $errors errors, $warnings warnings, $infos info, $overridden overridden (exit $lint_rc):"
grep -E '^[EWIO]: ' "$lint_log" | indent
if [ "$lint_rc" -ge 124 ]; then
    fail "lintian did not finish (exit $lint_rc)"
elif [ "$errors" -gt 0 ]; then
    fail "lintian reports $errors errors"
elif [ "$lint_rc" -ne 0 ]; then
    tail -n 20 "$lint_log" | indent
    fail "lintian failed (exit $lint_rc)"
else
    pass "lintian: no errors ($warnings warnings, $infos info, $overridden overridden)"
fi
# Every warning lintian gives must be one packaging/README.md accepts, with
# its reason ("accepted lintian warnings").
undocumented=""
for tag in $(sed -n 's/^W: [^:]*: \([a-z0-9+.-]*\).*/\1/p' "$lint_log" | sort -u); do
    grep -qF "\`$tag\`" "$SOURCE_DIR/packaging/README.md" || undocumented+="$tag "
done
if [ -z "$undocumented" ]; then
    pass "every lintian warning is listed, with its reason, in packaging/README.md"
else
    fail "lintian warnings not accepted in packaging/README.md: $undocumented"
fi

# --- 2: boot --------------------------------------------------------------------
# The checks compare installed files with the source tree: bind it in too
# (a CI clone may live under /tmp, which the container replaces).
nspawn_boot 2 "$DEBS" "$SOURCE_DIR"
C 10 test -f "$DEB" || fatal "$DEB is not visible inside the container"

# --- 3: install -----------------------------------------------------------------
step 3 "apt-get install $DEB_NAME"
status=$(C 10 dpkg-query -W -f='${db:Status-Status}' kleakd 2>/dev/null)
if [ -z "$status" ] || [ "$status" = not-installed ]; then
    pass "the container starts without the kleakd package"
else
    fatal "the container already has the kleakd package ($status)"
fi
# shellcheck disable=SC2046  # one path a line, none with blanks
left=$(paths_left $(grep -v '/$' <<<"$contents") /var/lib/kleakd /etc/kleakd)
if [ -z "$left" ]; then
    pass "none of the package's files, nor /etc/kleakd or /var/lib/kleakd, is in the container yet"
else
    fatal "the container already has: $(tr '\n' ' ' <<<"$left")"
fi
group_before=$(C 10 getent group kleakd)
[ -n "$group_before" ] && note "group kleakd exists before the install ($group_before): the host has it"
# Container images (this host's root among them) often carry a policy-rc.d
# that forbids starting services during package installs (exit 101). A real
# machine has none: remove it from the container's overlay (the host keeps it).
if C 10 test -e /usr/sbin/policy-rc.d; then
    note "the host root has /usr/sbin/policy-rc.d, which keeps packages from starting services; removing it inside the container only, as on a real machine"
    C 10 rm -f /usr/sbin/policy-rc.d || fatal "cannot remove /usr/sbin/policy-rc.d in the container"
fi
# The container has no network: apt-get resolves the .deb's dependencies from
# what is installed, and would fail (not hang) if it had to download one.
install_log=$(C 180 env DEBIAN_FRONTEND=noninteractive apt-get install -y "$DEB" 2>&1)
install_rc=$?
if [ "$install_rc" -eq 0 ]; then
    pass "apt-get install -y $DEB"
    grep -E '^(Selecting|Preparing|Unpacking|Setting up|Created symlink)' <<<"$install_log" | indent
else
    echo "$install_log" | tail -n 15 | indent
    note "apt-get could not install it offline (exit $install_rc); trying dpkg -i"
    if out=$(C 180 env DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" 2>&1); then
        pass "dpkg -i $DEB"
    else
        echo "$out" | tail -n 20 | indent
        fatal "neither apt-get install nor dpkg -i installed $DEB_NAME"
    fi
fi
status=$(C 10 dpkg-query -W -f='${Status} ${Version}' kleakd)
if [ "$status" = "install ok installed $VERSION" ]; then
    pass "dpkg-query: kleakd $status"
else
    fatal "dpkg-query says kleakd is '$status'"
fi
group=$(C 10 getent group kleakd)
if [ -n "$group" ]; then
    pass "group kleakd exists ($group)${group_before:+ (it existed before)}"
else
    fail "no group kleakd after the install: postinst did not run systemd-sysusers"
fi
enabled=$(C 10 systemctl is-enabled kleakd.service kleakd.socket | tr '\n' ' ')
if [ "$enabled" = "enabled enabled " ]; then
    pass "kleakd.service and kleakd.socket are enabled"
else
    fail "systemctl is-enabled kleakd.service kleakd.socket: '$enabled', want 'enabled enabled'"
fi
# The exporter opens a TCP port: installed, not enabled, not started.
exporter=$(C 10 systemctl is-enabled kleakd-exporter.socket kleakd-exporter-textfile.timer | tr '\n' ' ')
exporter_active=$(C 10 systemctl is-active kleakd-exporter.socket kleakd-exporter.service | tr '\n' ' ')
if [ "$exporter" = "disabled disabled " ] && [ "$exporter_active" = "inactive inactive " ]; then
    pass "kleakd-exporter.socket and kleakd-exporter-textfile.timer are installed but neither enabled nor started"
else
    fail "kleakd-exporter units: is-enabled '$exporter', is-active '$exporter_active'; want disabled and inactive"
fi
if out=$(C 30 promtool check rules /usr/share/kleakd/prometheus/kleakd-rules.yml 2>&1); then
    pass "promtool check rules /usr/share/kleakd/prometheus/kleakd-rules.yml: $(grep -o 'SUCCESS.*' <<<"$out")"
else
    echo "$out" | indent
    fail "promtool check rules rejects the installed kleakd-rules.yml"
fi
if wait_for 30 is_state kleakd.service active; then
    pass "kleakd.service is active: the package started it"
else
    fatal "kleakd.service is '$(C 10 systemctl is-active kleakd.service)' after the install, want active"
fi
check "kleakd.socket is active" is_state kleakd.socket active
failed=$(C 10 systemctl --failed --no-legend --plain | awk '{print $1}' | grep kleakd | tr '\n' ' ')
if [ -z "$failed" ]; then pass "no kleakd unit is failed"; else fail "failed units after the install: $failed"; fi
current_run
if line=$(wait_journal "using the query socket passed by systemd" 10); then
    pass "kleakd.socket started first and the daemon took its socket: '${line#*$'\t'}'"
else
    fail "the daemon did not log that it uses the socket passed by systemd"
fi
sock=$(C 10 stat -c '%a %G %F' /run/kleakd/kleakd.sock)
if [ "$sock" = "660 kleakd socket" ]; then
    pass "/run/kleakd/kleakd.sock: mode 0660, group kleakd"
else
    fail "/run/kleakd/kleakd.sock is '$sock', want '660 kleakd socket'"
fi
fragment=$(unit_prop kleakd.service FragmentPath)
if [ "$(C 10 realpath -e "$fragment")" = /usr/lib/systemd/system/kleakd.service ] &&
    C 10 cmp -s "$fragment" "$SOURCE_DIR/kleakd.service"; then
    pass "systemd loads kleakd.service from the package's $fragment"
else
    fail "systemd loads kleakd.service from '$fragment', not the package's /lib/systemd/system/kleakd.service"
fi
if record_daemon_progs; then
    pass "kleakd holds BPF programs (ids $LAST_IDS)"
else
    fail "could not read which BPF programs kleakd holds"
fi

# --- 4: a leak ------------------------------------------------------------------
step 4 "hold 64 pipes open; kleakctl leaks --json; kleakctl report --html"
check_pipe_leak
# The installed kleakctl alone writes the whole page: d3 and the data inline,
# nothing else from the package needed (tests/report opens such a page in Chromium).
if C 30 kleakctl report --html /tmp/kleak-report.html >/dev/null 2>&1 &&
    C 10 grep -q '"function":"alloc_pipe_info"' /tmp/kleak-report.html &&
    C 10 grep -q 'd3={version:"3\.' /tmp/kleak-report.html &&
    ! C 10 grep -q '<script src' /tmp/kleak-report.html; then
    pass "kleakctl report --html wrote one self-contained page naming alloc_pipe_info ($(C 10 stat -c %s /tmp/kleak-report.html) bytes, d3 inline)"
else
    fail "kleakctl report --html did not write a self-contained page naming alloc_pipe_info"
fi
C 20 systemctl stop kleakd-test-pipes.service

# --- 5: versions, man pages, docs, conffile -----------------------------------------
step 5 "versions, man pages, documentation, conffile"
pkg_version=$(C 10 dpkg-query -W -f='${Version}' kleakd)
for tool in kleakctl kleakd; do
    out=$(C 10 "$tool" --version 2>&1)
    if [ "$out" = "$tool $pkg_version" ]; then
        pass "$tool --version: '$out', the package's version"
    else
        fail "$tool --version says '$out', the package is $pkg_version"
    fi
done
out=$(C 20 kleakctl version 2>&1)
if grep -qx "kleakd $pkg_version (protocol .*" <<<"$out"; then
    pass "the running daemon reports the package's version: $(grep '^kleakd ' <<<"$out")"
else
    echo "$out" | indent
    fail "kleakctl version does not show the daemon at version $pkg_version"
fi
for page in "8 kleakd" "1 kleakctl" "5 kleakd.conf"; do
    read -r section name <<<"$page"
    where=$(C 10 man -w "$section" "$name" 2>&1)
    if [ "$where" = "/usr/share/man/man$section/$name.$section.gz" ]; then
        warnings=$(C 20 env MANWIDTH=80 man --warnings "$section" "$name" 2>&1 >/dev/null)
        if [ -z "$warnings" ]; then
            pass "man -w $section $name: $where (renders without warnings)"
        else
            echo "$warnings" | head -n 10 | indent
            fail "man $section $name renders with warnings"
        fi
    else
        fail "man -w $section $name says '$where', want /usr/share/man/man$section/$name.$section.gz"
        C 10 sh -c 'grep -rh "path-exclude" /etc/dpkg/dpkg.cfg.d/ 2>/dev/null' | indent
    fi
done
if C 10 grep -qx /etc/kleakd/kleakd.conf /var/lib/dpkg/info/kleakd.conffiles; then
    pass "/var/lib/dpkg/info/kleakd.conffiles lists /etc/kleakd/kleakd.conf"
else
    fail "/etc/kleakd/kleakd.conf is not in /var/lib/dpkg/info/kleakd.conffiles"
fi
if C 10 cmp -s /etc/kleakd/kleakd.conf "$SOURCE_DIR/config/kleakd.conf"; then
    pass "/etc/kleakd/kleakd.conf is $SOURCE_DIR/config/kleakd.conf"
else
    fail "/etc/kleakd/kleakd.conf differs from $SOURCE_DIR/config/kleakd.conf"
fi
if C 10 test -f /usr/share/doc/kleakd/README.md -a -f /usr/share/doc/kleakd/copyright; then
    pass "/usr/share/doc/kleakd: README.md (uncompressed, as kleakd.service's Documentation= names it) and copyright"
else
    fail "/usr/share/doc/kleakd/README.md or copyright is missing"
fi

# --- 6: upgrade -----------------------------------------------------------------
step 6 "reinstall (an upgrade): kleakd restarts, a local conffile change survives"
pid_before=$(unit_prop kleakd.service MainPID)
ids_before=$LAST_IDS
C 10 sed -i -E 's/"retention":[[:space:]]*60/"retention": 61/' /etc/kleakd/kleakd.conf
if C 10 grep -q '"retention": 61' /etc/kleakd/kleakd.conf; then
    pass "changed snapshots.retention to 61 in /etc/kleakd/kleakd.conf (a local change)"
else
    fail "could not change /etc/kleakd/kleakd.conf"
fi
if out=$(C 180 env DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" 2>&1); then
    pass "dpkg -i $DEB_NAME again (postinst configure with the old version: the upgrade path)"
else
    echo "$out" | tail -n 20 | indent
    fail "reinstalling $DEB_NAME with dpkg -i failed"
fi
wait_for 30 is_state kleakd.service active
pid_after=$(unit_prop kleakd.service MainPID)
if is_state kleakd.service active && [ -n "$pid_after" ] && [ "$pid_after" != 0 ] && [ "$pid_after" != "$pid_before" ]; then
    pass "kleakd.service was restarted by the upgrade (main pid $pid_before -> $pid_after) and is active"
else
    fail "after the upgrade kleakd.service is '$(C 10 systemctl is-active kleakd.service)', main pid $pid_before -> $pid_after: not restarted"
fi
check "kleakd.socket is active after the upgrade" is_state kleakd.socket active
# The upgrade is a restart (dh_installsystemd --restart-after-upgrade): the
# fd store kept the state the old daemon stored on SIGTERM (README "What
# survives what"), and the new one, of the same state format, restored it.
current_run
if line=$(wait_journal "state restored from the clean stop image" 10); then
    pass "the upgrade kept the state: '${line#*$'\t'}'"
else
    fail "after the upgrade kleakd did not restore the state the old one stored"
fi
failed=$(C 10 systemctl --failed --no-legend --plain | awk '{print $1}' | grep kleakd | tr '\n' ' ')
if [ -z "$failed" ]; then pass "no kleakd unit is failed after the upgrade"; else fail "failed units after the upgrade: $failed"; fi
if out=$(C 20 kleakctl version 2>&1) && grep -q '^kleakd ' <<<"$out"; then
    pass "kleakctl reaches the restarted daemon: $(grep '^kleakd ' <<<"$out")"
else
    echo "$out" | indent
    fail "kleakctl cannot reach kleakd after the upgrade"
fi
if C 10 grep -q '"retention": 61' /etc/kleakd/kleakd.conf; then
    pass "the local change to the conffile survived the upgrade"
else
    fail "the upgrade overwrote the local change to /etc/kleakd/kleakd.conf"
fi
record_daemon_progs || fail "could not read which BPF programs the restarted kleakd holds"
# The same package again is the same BPF object and configuration: the new
# daemon adopts the old one's programs from the fd store, attached all along
# (README "What survives what"); a package with another object replaces them.
programs=$(C 20 kleakctl stats --json | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["state"]["programs"])')
gone="" still=""
for id in $ids_before; do
    if bpftool prog show id "$id" >/dev/null 2>&1; then still+="$id "; else gone+="$id "; fi
done
# (Adopted: the attached programs stay, held by their links; the old daemon's
# helpers that no link holds, such as the batch flush, went with it.)
if [ "$programs" = adopted ] && [ -n "$still" ]; then
    pass "the upgrade (the same BPF object) kept the old daemon's attached programs: adopted, ids $still still loaded (gone with it: ${gone:-none})"
elif [ "$programs" = replaced ] && [ -z "$still" ]; then
    pass "the old daemon's programs ($ids_before) were replaced and unloaded; the new one holds $LAST_IDS"
else
    fail "after the upgrade state.programs is '$programs'; old programs still loaded: '$still', gone: '$gone'"
fi

# --- 7: stop --------------------------------------------------------------------
step 7 "systemctl stop kleakd"
if C 60 systemctl stop kleakd.service; then pass "systemctl stop kleakd"; else fail "systemctl stop kleakd failed"; fi
check "kleakd.service is inactive" is_state kleakd.service inactive
left=$(our_progs_left)
if [ -z "$left" ]; then
    pass "none of kleakd's programs (${OUR_PROG_IDS[*]}) is loaded any more"
else
    fail "kleakd's BPF programs $left are still loaded after the stop"
fi

# --- 8: remove ------------------------------------------------------------------
step 8 "apt-get remove kleakd while it runs"
C 60 systemctl start kleakd.service || fail "systemctl start kleakd failed"
record_daemon_progs || fail "could not read which BPF programs kleakd holds"
package_files=$(C 10 dpkg -L kleakd)
if [ -n "$package_files" ]; then
    pass "dpkg -L kleakd: $(wc -l <<<"$package_files") paths"
else
    fail "dpkg -L kleakd lists nothing"
fi
if out=$(C 120 env DEBIAN_FRONTEND=noninteractive apt-get remove -y kleakd 2>&1); then
    pass "apt-get remove -y kleakd"
else
    echo "$out" | tail -n 20 | indent
    fail "apt-get remove -y kleakd failed"
fi
for unit in kleakd.service kleakd.socket; do
    state=$(C 10 systemctl is-active "$unit")
    if [ "$state" = inactive ] || [ "$state" = unknown ]; then
        pass "$unit is stopped ($state)"
    else
        fail "$unit is '$state' after the remove"
    fi
done
left=$(our_progs_left)
if [ -z "$left" ]; then pass "the removed daemon detached its programs ($LAST_IDS)"; else fail "programs $left are still loaded"; fi
status=$(C 10 dpkg-query -W -f='${Status}' kleakd)
if [ "$status" = "deinstall ok config-files" ] && C 10 test -f /etc/kleakd/kleakd.conf -a -d /var/lib/kleakd; then
    pass "removed, not purged: status '$status', /etc/kleakd/kleakd.conf and /var/lib/kleakd kept"
else
    fail "after the remove: status '$status'; conffile $(C 10 test -f /etc/kleakd/kleakd.conf && echo kept || echo gone), /var/lib/kleakd $(C 10 test -d /var/lib/kleakd && echo kept || echo gone)"
fi

# --- 9: purge -------------------------------------------------------------------
step 9 "apt-get purge kleakd"
if out=$(C 120 env DEBIAN_FRONTEND=noninteractive apt-get purge -y kleakd 2>&1); then
    pass "apt-get purge -y kleakd"
else
    echo "$out" | tail -n 20 | indent
    note "apt-get purge failed; trying dpkg --purge"
    if out=$(C 120 dpkg --purge kleakd 2>&1); then pass "dpkg --purge kleakd"; else echo "$out" | indent; fail "dpkg --purge kleakd failed"; fi
fi
status=$(C 10 dpkg-query -W -f='${db:Status-Status}' kleakd 2>/dev/null)
if [ -z "$status" ] || [ "$status" = not-installed ]; then
    pass "dpkg no longer knows kleakd ('${status:-unknown}')"
else
    fail "dpkg-query says kleakd is '$status' after the purge"
fi
# shellcheck disable=SC2086
left=$(paths_left $package_files)
if [ -z "$left" ]; then
    pass "none of the $(wc -l <<<"$package_files") paths dpkg -L listed is left (shared directories aside)"
else
    fail "left after the purge: $(tr '\n' ' ' <<<"$left")"
fi
for d in /etc/kleakd /var/lib/kleakd /run/kleakd; do
    if C 10 test -e "$d"; then fail "$d is still there after the purge"; else pass "no $d"; fi
done
links=$(C 10 sh -c 'find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name "kleakd*" 2>/dev/null')
if [ -z "$links" ]; then
    pass "no kleakd unit symlinks or deb-systemd-helper state left"
else
    fail "left after the purge: $(tr '\n' ' ' <<<"$links")"
fi
C 30 systemctl daemon-reload
load=$(unit_prop kleakd.service LoadState)
if [ "$load" = not-found ]; then pass "systemd no longer finds kleakd.service"; else fail "kleakd.service LoadState is '$load' after the purge"; fi
procs=$(C 10 pgrep -x kleakd)
left=$(our_progs_left)
if [ -z "$procs" ] && [ -z "$left" ]; then
    pass "no kleakd process in the container, and none of its BPF programs (${OUR_PROG_IDS[*]}) is loaded"
else
    fail "after the purge: kleakd processes '$procs', programs still loaded '$left'"
fi
group=$(C 10 getent group kleakd)
[ -n "$group" ] && note "group kleakd stays after the purge, as Debian leaves system groups ($group)"

end_step
finish
