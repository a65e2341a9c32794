# Shared setup of the bench scripts that run gatehouse behind the backend of bench/compare.sh.
# Sourced, not run: `. bench/common.sh` from the repository's top folder, under `set -euo
# pipefail`. It defines:
#   bench_workdir PREFIX    makes the scratch folder `work` and the process list `pids`, and
#                           stops every listed process and removes `work` when the script ends
#   bench_install CMD=PKG…  installs each Debian package PKG whose command CMD is missing
#   build_proxies           builds gatehouse and the bare proxy (examples/bare_proxy.rs) and
#                           copies both into `$work/bin`
#   free_port               prints a free TCP port on 127.0.0.1
#   start_backend [CPUS]    starts the backend nginx (bench/backend-nginx.conf.in) under
#                           `taskset -c CPUS` when given, and sets `backend_port`
#   gatehouse_config PORT ADMIN_PORT FILE
#                           writes bench/gatehouse-compare.yaml.in with its routes only
#   wait_for_http URL       waits up to 60 s until a GET of URL succeeds

bench_workdir() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  # nginx workers run as an unprivileged user and must read the backend's /big file from here.
  chmod 755 "$work"
  pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

bench_install() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build_proxies() {
  .ci/prereqs
  # Two builds, because building an example turns on the features that the dev-dependencies
  # request. The binary built alone is the gatehouse that `cargo build --release` ships.
  cargo build --release --quiet --bin gatehouse
  cargo build --release --quiet --example bare_proxy
  local target_dir=${CARGO_TARGET_DIR:-target}
  mkdir "$work/bin"
  # Copies, so that another build into the same directory cannot replace them mid-run.
  cp "$target_dir/release/gatehouse" "$target_dir/release/examples/bare_proxy" "$work/bin/"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_backend() {
  local pin=()
  [ -n "${1:-}" ] && pin=(taskset -c "$1")
  backend_port=$(free_port)
  mkdir "$work/backend"
  head -c $((64 * 1024)) /dev/urandom > "$work/backend/big"
  chmod 644 "$work/backend/big"
  sed -e "s|@DIR@|$work/backend|g" -e "s|@PORT@|$backend_port|g" bench/backend-nginx.conf.in \
    > "$work/backend/nginx.conf"
  "${pin[@]}" nginx -c "$work/backend/nginx.conf" -p "$work/backend" -g 'daemon off;' \
    2> "$work/backend/stderr" &
  pids+=($!)
}

gatehouse_config() {
  sed -e "s|@PORT@|$1|g" -e "s|@ADMIN_PORT@|$2|g" -e "s|@BACKEND_PORT@|$backend_port|g" \
    -e '/^  # @FILLER_ROUTES@$/d' bench/gatehouse-compare.yaml.in > "$3"
}

wait_for_http() {
  local _
  for _ in $(seq 1 600); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "error: no successful response from $1 within 60 s" >&2
  return 1
}
