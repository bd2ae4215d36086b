#!/usr/bin/env bash
# Renders the page of a chaos run (`rabbit-once chaos --report FILE.html`) to a PNG with
# headless Chromium (Debian's `chromium`), to look at or to check in a test.
#
#   scripts/render-report.sh FILE.html OUT.png [WIDTH [HEIGHT]]     (default 1200 x 2200)
#
# The page is self-contained (inline SVG and CSS, no script, nothing fetched), so the
# browser runs offline. Exit status 1 if Chromium is missing or writes no image.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 FILE.html OUT.png [WIDTH [HEIGHT]]" >&2
  exit 2
fi
[ -f "$1" ] || { echo "$0: no such page: $1" >&2; exit 1; }
html=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1200}
height=${4:-2200}
# The page's file:// URL, percent-encoded (spaces, '#', '%' in the path).
url=$(python3 -c 'import pathlib, sys; print(pathlib.Path(sys.argv[1]).as_uri())' "$html")

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "$0: chromium is missing (Debian: apt-get install chromium)" >&2
  exit 1
fi

# A profile of its own (runs side by side do not share one), removed at the end.
profile=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$profile" "$log"' EXIT
flags=(--headless --disable-gpu --hide-scrollbars --no-first-run --no-default-browser-check
  --mute-audio --disable-dev-shm-usage --disable-extensions --disable-background-networking --force-device-scale-factor=1
  --user-data-dir="$profile" --window-size="$width,$height" --screenshot="$out")
# Chromium refuses to run as root with its sandbox.
[ "$(id -u)" != 0 ] || flags+=(--no-sandbox)

rm -f "$out"
if ! timeout 90 "$browser" "${flags[@]}" "$url" >"$log" 2>&1 || [ ! -s "$out" ]; then
  echo "$0: chromium wrote no image of $html:" >&2
  cat "$log" >&2
  exit 1
fi
echo "$out"
