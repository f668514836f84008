#!/usr/bin/env bash
# Cross-compiles grok1's tests for aarch64 and runs them under qemu's
# user-mode emulator, so that the NEON kernels (crates/grok1/src/backend/cpu/
# arch/arm/) are checked against the scalar ones, bit for bit, and the model
# against the golden fixtures, on an x86-64 machine.
#
# Debian 12 only, as root (apt). rustup's toolchain here has no aarch64
# standard library and cannot fetch one, so this builds with Debian's own
# rustc for Debian 12 (the `rustc-web` package, from bookworm-security) and
# that rustc's aarch64 standard library, taken from its arm64 package into
# target/aarch64-cross/ (the system's architectures are left alone); the
# cross linker and qemu come from Debian too.
#
# Usage: scripts/test-aarch64.sh [cargo test arguments, default: the kernel,
# attention and golden tests]
set -euo pipefail
cd "$(dirname "$0")/.."

cache=target/aarch64-cross
mirror=http://deb.debian.org/debian-security
mkdir -p "$cache"

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
dpkg-query -W rustc-web >/dev/null 2>&1 || need+=(rustc-web)
if [ ${#need[@]} -gt 0 ]; then
    echo "test-aarch64: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The arm64 package of the standard library of the installed rustc-web, as
# the archive's index names it (empty if that version has left the archive).
std_package() {
    curl -fsS "$mirror/dists/bookworm-security/main/binary-arm64/Packages.xz" | xz -dc |
        awk -v v="$1" '/^Package: /{p=$2} /^Version: /{ver=$2}
            /^Filename: /{if (p == "libstd-rust-web-dev" && ver == v) print $2}'
}

version=$(dpkg-query -W -f='${Version}' rustc-web)
sysroot="$PWD/$cache/sysroot-$version"
if [ ! -d "$sysroot/lib/rustlib/aarch64-unknown-linux-gnu/lib" ]; then
    echo "test-aarch64: fetching the aarch64 standard library of rustc $version"
    file=$(std_package "$version")
    if [ -z "$file" ]; then
        # An older rustc-web than the archive's: take the archive's.
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web >/dev/null
        version=$(dpkg-query -W -f='${Version}' rustc-web)
        sysroot="$PWD/$cache/sysroot-$version"
        file=$(std_package "$version")
    fi
    if [ -z "$file" ]; then
        echo "test-aarch64: no libstd-rust-web-dev $version for arm64 in $mirror" >&2
        exit 1
    fi
    curl -fsS -o "$cache/std.deb" "$mirror/$file"
    rm -rf "$cache/std"
    dpkg-deb -x "$cache/std.deb" "$cache/std"
    mkdir -p "$sysroot/lib/rustlib"
    cp -r "$cache/std/usr/lib/rustlib/aarch64-unknown-linux-gnu" "$sysroot/lib/rustlib/"
fi

export RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR=target/aarch64
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# Warnings fail the build, as clippy -D warnings does on x86-64 (clippy
# itself cannot lint for this target here).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="--sysroot $sysroot -D warnings"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
"$RUSTC" --version
if [ $# -eq 0 ]; then
    set -- -p grok1 --test kernels --test block_kernels --test attention --test golden
fi
cargo test --profile cross-test --locked --target aarch64-unknown-linux-gnu "$@"
