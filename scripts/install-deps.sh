#!/usr/bin/env bash
# Installs what the tests need beyond crates: Node packages for the JS tests now; Debian packages
# (Chromium, Xvfb, WebKitGTK, gnome-keyring) as later stages need them. Idempotent and quiet on a
# warm machine: apt runs only when a needed command or library is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: "command-or-file:package". Add lines here as tests grow.
apt_needs=(
  "node:nodejs"
  "npm:npm"
  "pkg-config:pkg-config"
  "openssl:openssl"
  "python3:python3"
  "git:git"
  "/usr/bin/chromium:chromium"
  # The desktop app (src-tauri) builds against WebKitGTK; its tests drive the real window under
  # Xvfb over WebDriver and use a real Secret Service keychain.
  "/usr/include/webkitgtk-4.1:libwebkit2gtk-4.1-dev"
  "/usr/include/xdo.h:libxdo-dev"
  "/usr/include/openssl/ssl.h:libssl-dev"
  "/usr/include/libayatana-appindicator3-0.1:libayatana-appindicator3-dev"
  "/usr/include/librsvg-2.0:librsvg2-dev"
  "/usr/include/dbus-1.0:libdbus-1-dev"
  "Xvfb:xvfb"
  "xauth:xauth"
  "WebKitWebDriver:webkit2gtk-driver"
  "gnome-keyring-daemon:gnome-keyring"
  "dbus-run-session:dbus-daemon"
  "dbus-send:dbus-bin"
  "dbus-launch:dbus-x11"
  "secret-tool:libsecret-tools"
  # The cloud runner's command sandbox (bash, later hooks and MCP servers).
  "bwrap:bubblewrap"
  "curl:curl"
  "/bin/kill:procps"
  # The mirror benchmark measures against `rsync -a`.
  "rsync:rsync"
)
missing=()
# Every package of the full runtime image (deploy/packages.txt), so tests run the toolchains the
# cloud copy has.
while read -r pkg image; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  [[ "$image" == all || "$image" == full ]] || continue
  # A command of the package's name from elsewhere (e.g. NodeSource's nodejs, which carries npm)
  # counts: installing Debian's over it would conflict.
  command -v "$pkg" >/dev/null 2>&1 && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < deploy/packages.txt
for entry in "${apt_needs[@]}"; do
  probe="${entry%%:*}"
  pkg="${entry#*:}"
  if [[ "$probe" == /* ]]; then
    [[ -e "$probe" ]] || missing+=("$pkg")
  else
    command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The Node and Python installs below are independent and mostly wait on the package caches, so
# they run side by side; each prints only on failure, and any failure fails this script.
pids=()
in_background() { "$@" & pids+=($!); }

npm_ci() { # dir: its node_modules exactly as locked, when missing or older than the lock
  local dir=$1
  if [[ ! -d $dir/node_modules ]] || [[ $dir/package-lock.json -nt $dir/node_modules ]]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) && touch "$dir/node_modules"
  fi
}

# Debian's python3 needs python3-venv for the venvs below; a pyenv or upstream build has it
# built in. Installed before anything runs in the background.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends python3-venv
fi

venv_with() { # venv requirements stamp
  local venv=$1 req=$2 stamp=$3
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv" || return 1
  if [[ ! -e $stamp ]] || [[ $req -nt $stamp ]]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" && touch "$stamp"
  fi
}

# The JS interop tests; the web view (ui/) and its browser tests (playwright-core driving
# Debian's Chromium; never `npx playwright install`); and the official clients the LLM gateway
# is tested with: the Claude Code CLI (npm, as locked) and the Anthropic Python SDK (pinned, in
# a venv next to it).
for dir in tests/js ui tests/browser tests/gateway; do
  in_background npm_ci "$dir"
done
# Python test tools (deployment linters; see scripts/requirements-test.txt) in .venv.
in_background venv_with .venv scripts/requirements-test.txt .venv/.installed
in_background venv_with tests/gateway/.venv tests/gateway/requirements.txt tests/gateway/.venv/.installed
failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
if ((failed)); then
  echo "install-deps: a Node or Python install failed (see above)" >&2
  exit 1
fi

# The desktop window's WebDriver suite (tests/desktop): tauri-driver sits between the test and
# WebKitWebDriver (webkit2gtk-driver above) and starts the app.
if ! command -v tauri-driver >/dev/null 2>&1; then
  cargo install tauri-driver --version 2.1.0 --locked
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found; tests will run with cargo test"
fi
