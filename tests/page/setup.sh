#!/usr/bin/env bash
# Installs what tests/page.rs drives the built-in page with: Debian's Chromium (through apt,
# when /usr/bin/chromium is missing) and playwright-core at the version pinned in
# package-lock.json beside this script, into a cache directory outside the clone
# (TOCTOU_NODE_DIR, default ~/.cache/toctou/node). Idempotent: a second run installs nothing.
# playwright-core is used only to speak to that Chromium; it never downloads a browser.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
node_dir="${TOCTOU_NODE_DIR:-$HOME/.cache/toctou/node}"

if ! command -v chromium >/dev/null 2>&1 && [[ ! -x /usr/bin/chromium ]]; then
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "tests/page/setup.sh: chromium is missing; install Debian's 'chromium' package as root" >&2
    exit 1
  fi
  echo "tests/page/setup.sh: installing chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

command -v node >/dev/null 2>&1 || { echo "tests/page/setup.sh: node (Node.js >= 20) is required" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "tests/page/setup.sh: npm is required" >&2; exit 1; }

mkdir -p "$node_dir"
# Reinstall only when the lockfile changed: the installed tree is exactly the lockfile's.
if ! cmp -s "$here/package-lock.json" "$node_dir/package-lock.json" \
  || [[ ! -f "$node_dir/node_modules/playwright-core/package.json" ]]; then
  cp "$here/package.json" "$here/package-lock.json" "$node_dir/"
  echo "tests/page/setup.sh: npm ci in $node_dir"
  (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
echo "tests/page/setup.sh: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), playwright-core $(node -p "require('$node_dir/node_modules/playwright-core/package.json').version")"
