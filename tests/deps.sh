#!/bin/sh
# make deps: installs the Debian packages thinkpipe builds, tests, fuzzes and
# benchmarks with. Idempotent; silent when everything is already installed.
set -eu
PACKAGES="build-essential pkg-config libjq-dev libzstd-dev zlib1g-dev libarchive-dev
libutf8proc-dev libonig-dev libdnnl2 libopenblas0-openmp libopenmpi-dev openmpi-bin libmicrohttpd-dev curl
libcurl4-openssl-dev libssl-dev
jq zstd xz-utils bzip2 lz4 zip tar groff-base man-db clang libclang-rt-14-dev"
missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "make deps: need root to install:$missing" >&2
    echo "run: sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "make deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
