# Shared by scripts/*.sh: install what the project needs on Debian/Ubuntu, or say what is
# missing.

ensure_apt_packages() {
  # ensure_apt_packages <command> <package> [<command> <package> ...]
  local missing=()
  while [ $# -gt 0 ]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    shift 2
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]} (install them with your package manager)" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "missing: the Rust toolchain (cargo). Install it from https://rustup.rs and re-run." >&2
    return 1
  fi
}

ensure_python_venv() {
  # ensure_python_venv <name> <requirement>... : prints the path of a virtualenv under
  # ~/.cache/ragpool holding exactly these pinned requirements, (re)creating it when they
  # changed. Installs Debian's python3-venv when the venv module is missing.
  local name=$1
  shift
  # Callers use $(...), where `set -e` does not reach: every failure returns explicitly.
  ensure_apt_packages python3 python3 >&2 || return 1
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing python3-venv with apt-get" >&2
    $sudo apt-get update -qq >&2 || return 1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null || return 1
  fi
  local venv=${XDG_CACHE_HOME:-$HOME/.cache}/ragpool/venv-$name
  local wanted="$*"
  if [ "$(cat "$venv/.requirements" 2>/dev/null || true)" != "$wanted" ]; then
    echo "installing $wanted into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2 || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2 || { rm -rf "$venv"; return 1; }
    echo "$wanted" >"$venv/.requirements"
  fi
  echo "$venv"
}

link_on_path() {
  # link_on_path <binary>: links the binary into cargo's bin folder (on PATH wherever rustup
  # installed cargo), so `ragpool submit ...` works from any shell. Leaves a real file of that
  # name alone (e.g. from `cargo install`).
  local bin=$1 name dir
  name=$(basename "$bin")
  dir=${CARGO_HOME:-$HOME/.cargo}/bin
  mkdir -p "$dir"
  if [ -e "$dir/$name" ] && [ ! -L "$dir/$name" ]; then
    echo "$name: keeping $dir/$name (not a link made here); this build is $bin" >&2
    return 0
  fi
  ln -sfn "$(cd "$(dirname "$bin")" && pwd)/$name" "$dir/$name"
  case ":$PATH:" in
    *":$dir:"*) echo "$name: on PATH as $dir/$name -> $bin" >&2 ;;
    *) echo "$name: linked $dir/$name -> $bin; add $dir to PATH to call it as '$name'" >&2 ;;
  esac
}

# Prints a free TCP port on the loopback interface.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for WHAT COMMAND…: waits up to ~10 s for COMMAND to succeed; names WHAT if it never does.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "timed out waiting for $what" >&2
  return 1
}

# start_scratch_redis DIR: a throwaway redis-server (no persistence) on a free loopback port,
# its files and log in DIR. Sets redis_port and redis_pid; the caller stops it.
start_scratch_redis() {
  local dir=$1
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly no \
    --daemonize no >"$dir/redis.log" 2>&1 &
  redis_pid=$!
  wait_for "redis-server on port $redis_port" redis-cli -p "$redis_port" ping \
    || { cat "$dir/redis.log" >&2; return 1; }
}

# scratch_workdir NAME: sets work to a new temporary directory and, on exit, stops the
# processes whose pids are in api_pid and redis_pid (when set) and removes the directory.
scratch_workdir() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/ragpool-$1.XXXXXX")
  redis_pid=""
  api_pid=""
  trap stop_scratch EXIT
}

stop_scratch() {
  [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$work"
}

# component_binaries [BIN_DIR]: sets bin to a folder holding ragpool-api and ragpool-executor:
# BIN_DIR when given, else a cargo build's (CARGO_TARGET_DIR, default ~/.cache/ragpool/target).
component_binaries() {
  if [ $# -ge 1 ]; then
    bin=$(cd "$1" && pwd)
  else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ragpool/target}"
    (cd "$(dirname "${BASH_SOURCE[0]}")/.." && cargo build -q -p ragpool-api -p ragpool-executor --bins)
    bin=$CARGO_TARGET_DIR/debug
  fi
  local b
  for b in ragpool-api ragpool-executor; do
    [ -x "$bin/$b" ] || { echo "missing $bin/$b" >&2; return 2; }
  done
}

# start_scratch_api [NAME=VALUE ...]: starts $bin/ragpool-api against the scratch Redis
# (start_scratch_redis) on a free loopback port, with these extra environment variables, its
# log in $work/api.log, and waits until it is ready. Sets api_port and api_pid.
start_scratch_api() {
  api_port=$(free_port)
  env "$@" RAGPOOL_REDIS_URL="redis://127.0.0.1:$redis_port" \
    RAGPOOL_LISTEN="127.0.0.1:$api_port" RAGPOOL_LOG=info \
    "$bin/ragpool-api" >"$work/api.log" 2>&1 &
  api_pid=$!
  wait_for "ragpool-api on port $api_port" curl -fsS "http://127.0.0.1:$api_port/readyz" \
    || { cat "$work/api.log" >&2; return 1; }
}
