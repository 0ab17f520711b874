#!/usr/bin/env bash
# Build influxd (InfluxDB OSS 2.7) from the Go module proxy, once per version.
#
# Prints the path of the binary. The binary is cached outside the repo under
# ${CIVIC_CACHE_DIR:-~/.cache/civic-iot}/influxd-<version>/ so a warm machine
# never rebuilds. A cold build compiles libflux (Rust) through InfluxData's
# pkg-config wrapper, which runs cargo against crates.io: expect 10-20 minutes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(awk '/github.com\/influxdata\/influxdb\/v2 v/ {print $2; exit}' "$here/go.mod")
. "$here/../cache.sh"
cache=$(civic_cache_dir)
out="$cache/influxd-$version"
if [[ -x "$out/influxd" ]]; then
  echo "$out/influxd"
  exit 0
fi
command -v go >/dev/null || { echo "influxdb build: 'go' not found on PATH" >&2; exit 1; }
command -v cargo >/dev/null || { echo "influxdb build: 'cargo' not found on PATH (libflux is Rust)" >&2; exit 1; }
mkdir -p "$out/bin"
log="$out/build.log"
echo "influxdb build: building influxd $version (log: $log)" >&2
(
  cd "$here"
  # libflux is found through pkg-config; InfluxData's wrapper builds it with cargo.
  go build -o "$out/bin/pkg-config" github.com/influxdata/pkg-config
  # flux pins Rust 1.72 in rust-toolchain.toml; rustup cannot fetch toolchains here,
  # so use the machine's stable toolchain (RUSTUP_TOOLCHAIN overrides the file).
  # flux-core denies warnings, and newer rustc has new lints: cap them at warnings for
  # every crate, host builds included (RUSTFLAGS skips those when --target is given).
  cat >"$out/bin/rustc-cap-lints" <<'WRAP'
#!/bin/sh
rustc=$1; shift
case " $* " in *" --cap-lints"*) exec "$rustc" "$@" ;; esac
exec "$rustc" "$@" --cap-lints=warn
WRAP
  chmod +x "$out/bin/rustc-cap-lints"
  RUSTC_WRAPPER="$out/bin/rustc-cap-lints" RUSTUP_TOOLCHAIN=${CIVIC_RUST_TOOLCHAIN:-stable} PATH="$out/bin:$PATH" go build -trimpath \
    -ldflags "-s -w -X main.version=$version" -o "$out/influxd.tmp" .
  mv "$out/influxd.tmp" "$out/influxd"
) >"$log" 2>&1 || { echo "influxdb build: failed, see $log" >&2; tail -20 "$log" >&2; exit 1; }
echo "$out/influxd"
