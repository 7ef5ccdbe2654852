#!/usr/bin/env bash
# Builds the kleakd Debian package: kleakd_<version>_<arch>.deb.
#
# usage: packaging/build-deb.sh [OUTPUT_DIR]      (default: build-deb/ in the
#        source tree, which .gitignore covers)
#
# The packaging lives in packaging/debian, not in a top-level debian/: this
# copies the source tree (without .git and build trees) to a staging
# directory, puts packaging/debian there as ./debian, writes debian/changelog
# with the version from CMakeLists.txt's project(kleakd VERSION x.y.z) -- the
# one place the version is set -- and runs `dpkg-buildpackage -b -us -uc`.
# The .deb (and the -dbgsym .deb, .buildinfo and .changes) land in
# OUTPUT_DIR; the last line printed is the .deb's path. The staging directory
# is removed afterwards, whatever happens.
#
# Build dependencies: scripts/install-deps.sh installs them
# (dpkg-buildpackage checks them against debian/control first).
# DEB_BUILD_OPTIONS is honoured; without a parallel= in it, the build uses
# every CPU.
set -euo pipefail

prog=${0##*/}
die() { echo "$prog: $*" >&2; exit 1; }
[ $# -le 1 ] || { echo "usage: $prog [OUTPUT_DIR]" >&2; exit 2; }

SRC=$(cd "$(dirname "$0")/.." && pwd -P)
[ -f "$SRC/CMakeLists.txt" ] && [ -d "$SRC/packaging/debian" ] ||
    die "$SRC is not the kleakd source tree (no CMakeLists.txt or packaging/debian)"
for tool in dpkg-buildpackage dpkg-parsechangelog dh tar; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh"
done

# --- the version: project(kleakd VERSION x.y.z ...) --------------------------------
VERSION=$(sed -n -E 's/^[[:space:]]*project[[:space:]]*\([[:space:]]*kleakd[[:space:]]+VERSION[[:space:]]+([0-9]+(\.[0-9]+)*)([[:space:]].*)?\).*$/\1/p' \
    "$SRC/CMakeLists.txt" | head -n 1)
[ -n "$VERSION" ] || die "no 'project(kleakd VERSION x.y.z ...)' line in $SRC/CMakeLists.txt"

OUT=${1:-$SRC/build-deb}
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd -P)

# --- stage the tree ---------------------------------------------------------------
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/kleakd-deb.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$STAGE"' EXIT
TREE="$STAGE/kleakd-$VERSION"
mkdir "$TREE"
excludes=(--exclude=./.git --exclude=./build --exclude='./build-*' --exclude='./obj-*' --exclude=./debian)
case "$OUT/" in "$SRC"/*) excludes+=(--exclude="./${OUT#"$SRC"/}") ;; esac
tar -C "$SRC" "${excludes[@]}" -cf - . | tar -C "$TREE" -xf -
cp -a "$SRC/packaging/debian" "$TREE/debian"

# --- debian/changelog ---------------------------------------------------------------
# The maintainer is debian/control's; the date is SOURCE_DATE_EPOCH, else the
# last commit's, else now (read-only git queries: nothing in .git changes).
maintainer=$(sed -n 's/^Maintainer:[[:space:]]*//p' "$TREE/debian/control" | head -n 1)
[ -n "$maintainer" ] || die "no Maintainer: in packaging/debian/control"
commit=""
if command -v git >/dev/null && git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
    commit=$(git -C "$SRC" rev-parse --short=12 HEAD 2>/dev/null || true)
    [ -n "${SOURCE_DATE_EPOCH:-}" ] || SOURCE_DATE_EPOCH=$(git -C "$SRC" log -1 --format=%ct 2>/dev/null || true)
fi
[ -n "${SOURCE_DATE_EPOCH:-}" ] || SOURCE_DATE_EPOCH=$(date +%s)
export SOURCE_DATE_EPOCH
{
    echo "kleakd ($VERSION) unstable; urgency=medium"
    echo
    echo "  * kleakd $VERSION, packaged from the kleakd source tree${commit:+ at commit $commit}."
    echo "    The version is CMakeLists.txt's project(kleakd VERSION $VERSION)."
    echo
    echo " -- $maintainer  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$TREE/debian/changelog"
[ "$(cd "$TREE" && dpkg-parsechangelog -S Version)" = "$VERSION" ] ||
    die "the generated debian/changelog does not parse to version $VERSION"

# --- build ----------------------------------------------------------------------------
case " ${DEB_BUILD_OPTIONS:-} " in
    *" parallel="*) ;;
    *) export DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:+$DEB_BUILD_OPTIONS }parallel=$(nproc)" ;;
esac
echo "$prog: building kleakd $VERSION in $TREE (DEB_BUILD_OPTIONS='$DEB_BUILD_OPTIONS')"
(cd "$TREE" && dpkg-buildpackage -b -us -uc) || die "dpkg-buildpackage failed"

arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb="kleakd_${VERSION}_${arch}.deb"
[ -f "$STAGE/$deb" ] || die "dpkg-buildpackage did not produce $deb"
shopt -s nullglob
for f in "$STAGE"/*.deb "$STAGE"/*.ddeb "$STAGE"/*.buildinfo "$STAGE"/*.changes; do
    mv -f "$f" "$OUT/"
done
echo "$prog: built $OUT/$deb"
echo "$OUT/$deb"
