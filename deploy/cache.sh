# Where built binaries and fetched jars are kept, outside the repo, so a warm machine never
# rebuilds: ${CIVIC_CACHE_DIR:-~/.cache/civic-iot}. Sourced by stack.sh, influxdb/build.sh
# and bench/telegraf.sh (one place for the path).
civic_cache_dir() { echo "${CIVIC_CACHE_DIR:-$HOME/.cache/civic-iot}"; }
