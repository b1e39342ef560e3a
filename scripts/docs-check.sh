#!/usr/bin/env bash
# Checks every link in README.md, CHANGELOG.md, docs/, bench/ and charts/ Markdown with
# markdown-link-check (npm, pinned): relative links must name a file that exists and a
# `#fragment` within the same file a heading it has. Links to other sites are not fetched
# (the check runs offline). Installs npm with apt-get and the checker into ~/.cache when
# missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
MLC_VERSION=3.14.2

ensure_apt_packages npm npm node nodejs

node_dir=${XDG_CACHE_HOME:-$HOME/.cache}/ragpool/node-mlc
installed=$(node -p "require('$node_dir/node_modules/markdown-link-check/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$MLC_VERSION" ]; then
  echo "installing markdown-link-check $MLC_VERSION into $node_dir" >&2
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --silent "markdown-link-check@$MLC_VERSION"
fi

config=$(mktemp)
trap 'rm -f "$config"' EXIT
cat > "$config" <<'JSON'
{"ignorePatterns": [{"pattern": "^https?://"}, {"pattern": "^mailto:"}]}
JSON

cd "$root"
failed=0
while IFS= read -r file; do
  if ! out=$("$node_dir/node_modules/.bin/markdown-link-check" -q -c "$config" "$file" 2>&1); then
    printf '%s\n' "$out"
    failed=1
  fi
done < <(git ls-files '*.md' ':!:**/node_modules/**')
[ "$failed" = 0 ] || { echo "docs: dead links (above)" >&2; exit 1; }
echo "docs: every link resolves"
