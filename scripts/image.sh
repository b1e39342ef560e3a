#!/usr/bin/env bash
# Builds the ragpool container image without a Docker engine: compiles the release `ragpool`
# binary, stages a root filesystem (the binary, links to it named ragpool-api,
# ragpool-executor and ragpool-operator, the shared libraries `ldd` lists for it, the CA
# bundle, passwd/group with the nonroot user 65532), builds the Containerfile on it with
# buildah and tags it ragpool:<version>. Installs buildah and skopeo (apt-get) when
# they are missing.
#
#   scripts/image.sh [--tag TAG] [--oci-archive FILE] [--check] [--keep-stage DIR]
#
#   --tag TAG           image tag (default: the workspace version, e.g. 0.1.0)
#   --oci-archive FILE  also write the image as an OCI archive (skopeo copy) that
#                       `kind load image-archive` and `ctr images import` accept
#   --check             run every command's --version inside the image as uid 65532, check
#                       the image holds exactly what was staged, report its size, fail past
#                       29 MB (needs root)
#   --keep-stage DIR    stage into DIR and keep it (default: a temporary folder)
#
# CARGO_TARGET_DIR is honoured (default ~/.cache/ragpool/target).
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."
. scripts/lib.sh

# One binary; the components' names are links to it, and it runs as the component it is
# started as.
BINARY=ragpool
LINKS=(ragpool-api ragpool-executor ragpool-operator)
COMMANDS=("$BINARY" "${LINKS[@]}")
MAX_BYTES=29000000
IMAGE_NAME=ragpool
NONROOT=65532
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
tag=$version
archive=""
check=false
stage=""
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --oci-archive) archive=${2:?--oci-archive needs a file}; shift 2 ;;
    --check) check=true; shift ;;
    --keep-stage) stage=${2:?--keep-stage needs a folder}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
# Paths given are relative to where the script was called from.
absolute() { case $1 in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }
[ -n "$archive" ] && archive=$(absolute "$archive")
[ -n "$stage" ] && stage=$(absolute "$stage")
if $check && [ "$(id -u)" -ne 0 ]; then
  echo "--check needs root (it chroots into the image's root filesystem); run it with sudo" >&2
  exit 2
fi

ensure_cargo
ensure_apt_packages buildah buildah skopeo skopeo update-ca-certificates ca-certificates
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ragpool/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
image="localhost/$IMAGE_NAME:$tag"

step() { printf '\n==> %s\n' "$*" >&2; }

# --- compile --------------------------------------------------------------------------
step "cargo build --release ($BINARY)"
started=$(date +%s)
cargo build --release --locked --bin "$BINARY"
echo "release build took $(($(date +%s) - started)) s" >&2

# --- stage the root filesystem ---------------------------------------------------------
if [ -n "$stage" ]; then
  rm -rf "$stage"
  mkdir -p "$stage"
  stage=$(cd "$stage" && pwd)
  keep_stage=true
else
  stage=$(mktemp -d "${TMPDIR:-/tmp}/ragpool-image.XXXXXX")
  keep_stage=false
fi
container=""
mounted=false
cleanup() {
  if [ -n "$container" ]; then
    $mounted && buildah umount "$container" >/dev/null 2>&1
    buildah rm "$container" >/dev/null 2>&1
  fi
  $keep_stage || rm -rf "$stage"
}
trap cleanup EXIT

step "staging the root filesystem in $stage/rootfs"
rootfs=$stage/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$CARGO_TARGET_DIR/release/$BINARY" "$rootfs/usr/local/bin/$BINARY"
for l in "${LINKS[@]}"; do
  ln -s "$BINARY" "$rootfs/usr/local/bin/$l"
done
# The dynamic loader and every library it resolves for the binary, at the paths ldd names
# (the loader's path is the one compiled into the binary).
libraries=$(ldd "$rootfs/usr/local/bin/$BINARY" |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
for lib in $libraries; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cp -L "$CA_BUNDLE" "$rootfs$CA_BUNDLE"
cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:$NONROOT:$NONROOT:nonroot:/nonexistent:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
nonroot:x:$NONROOT:
EOF
# glibc resolves names from /etc/hosts, then DNS (the kubelet mounts both files).
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
cp Containerfile "$stage/Containerfile"
echo "staged: $BINARY, links ${LINKS[*]}, and $(echo "$libraries" | wc -w) libraries ($(echo $libraries))" >&2

# --- build -----------------------------------------------------------------------------
step "buildah bud -t $image"
previous=$(buildah images --quiet --noheading "$image" 2>/dev/null || true)
# The image's creation time is the last commit's, so rebuilding a commit changes nothing.
created=$(git log -1 --format=%ct 2>/dev/null || date +%s)
buildah bud --quiet --layers=false --timestamp "$created" --build-arg "VERSION=$tag" \
  -f "$stage/Containerfile" -t "$image" "$stage" >/dev/null
id=$(buildah images --quiet --noheading "$image")
if [ -n "$previous" ] && [ "$previous" != "$id" ]; then
  buildah rmi "$previous" >/dev/null 2>&1 || true
fi
echo "built $image ($id)" >&2

# --- check -----------------------------------------------------------------------------
if $check; then
  step "checking $image"
  container=$(buildah from --pull-never "$image")
  mnt=$(buildah mount "$container")
  mounted=true
  for b in "${COMMANDS[@]}"; do
    # The image has no shell: run each command straight from its root filesystem as nonroot.
    out=$(chroot --userspec="$NONROOT:$NONROOT" "$mnt" "/usr/local/bin/$b" --version)
    echo "  as $NONROOT: $b --version -> $out" >&2
    case $out in
      *"$version"*) ;;
      *) echo "$b --version does not report $version" >&2; exit 1 ;;
    esac
  done
  # Exactly the staged files, byte for byte, with their modes.
  listing() { (cd "$1" && find . -mindepth 1 -printf '%p %y %m\n' | sort); }
  sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
  if ! diff <(listing "$rootfs") <(listing "$mnt") >&2 || ! diff <(sums "$rootfs") <(sums "$mnt") >&2; then
    echo "the image holds something other than what was staged (diff above: < staged, > image)" >&2
    exit 1
  fi
  echo "  contents: exactly the $(listing "$mnt" | wc -l) staged paths" >&2
  bytes=$(du -sb "$mnt" | cut -f1)
  echo "  size: $((bytes / 1000000)) MB ($bytes bytes) unpacked; buildah reports $(buildah images --noheading --format '{{.Size}}' "$image")" >&2
  echo "    $(du -b "$mnt/usr/local/bin/$BINARY" | cut -f1) bytes  /usr/local/bin/$BINARY" >&2
  # Past the limit the check fails, so growth is a decision, not drift.
  if [ "$bytes" -gt "$MAX_BYTES" ]; then
    echo "the image is over $((MAX_BYTES / 1000000)) MB" >&2
    exit 1
  fi
fi

# --- archive ---------------------------------------------------------------------------
if [ -n "$archive" ]; then
  step "skopeo copy -> oci-archive:$archive"
  rm -f "$archive"
  # A fully qualified name inside the archive: containerd (kind, ctr) imports it as
  # docker.io/library/ragpool:<tag>, which is what the chart's default `ragpool` resolves to.
  skopeo copy --quiet "containers-storage:$image" "oci-archive:$archive:docker.io/library/$IMAGE_NAME:$tag"
  echo "wrote $archive ($(du -b "$archive" | cut -f1) bytes, compressed layers)" >&2
fi
echo "$image"
