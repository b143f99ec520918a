#!/usr/bin/env bash
# Replaces what lies between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in FILE with standard input, so that
# generated sections (bench table, critest totals) are never typed by hand. Fails when the markers are missing.
#
# Usage: hack/readme-section.sh NAME FILE < CONTENT
set -euo pipefail
name=${1:?usage: hack/readme-section.sh NAME FILE < CONTENT}
file=${2:?usage: hack/readme-section.sh NAME FILE < CONTENT}
begin="<!-- $name:begin -->" end="<!-- $name:end -->"
if ! grep -qxF "$begin" "$file" || ! grep -qxF "$end" "$file"; then
	echo "readme-section: $file has no '$begin' ... '$end' lines" >&2
	exit 1
fi
content=$(mktemp)
new=$(mktemp)
trap 'rm -f "$content" "$new"' EXIT
cat >"$content"
awk -v begin="$begin" -v end="$end" -v content="$content" '
	$0 == begin { print; while ((getline line < content) > 0) print line; skip = 1; next }
	$0 == end { skip = 0 }
	!skip { print }
' "$file" >"$new"
cat "$new" >"$file"
