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
