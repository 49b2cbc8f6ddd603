#!/usr/bin/env bash
# The chart README's "Parameters" tables, generated from values.yaml's `## @param`/`## @section`
# lines by Bitnami's readme-generator-for-helm (the maintained tool for this annotation style;
# hack/tools.sh installs it from npm into the tools cache).
#
#   hack/chart-readme.sh           rewrite the tables in charts/h2ogpt-operator/README.md (make generate)
#   hack/chart-readme.sh --check   exit 1 when they differ from values.yaml; write nothing (make lint)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
chart="$root/charts/h2ogpt-operator"
generator="$root/.bin/readme-generator"
[ -x "$generator" ] || { echo "hack/chart-readme.sh: no readme-generator in .bin/: run 'bash hack/tools.sh readme-generator'" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$chart/README.md" "$work/README.md"
# It reports each value it reads on stdout: shown only when it fails (a value without @param).
if ! "$generator" --values "$chart/values.yaml" --readme "$work/README.md" >"$work/log" 2>&1; then
  grep -E 'ERROR' "$work/log" >&2 || cat "$work/log" >&2
  echo "hack/chart-readme.sh: every value in values.yaml needs a '## @param' line ([object] for a map documented whole)" >&2
  exit 1
fi

if [ "${1:-}" = "--check" ]; then
  cmp -s "$work/README.md" "$chart/README.md" && exit 0
  diff -u "$chart/README.md" "$work/README.md" | head -n 40 >&2 || true
  echo "hack/chart-readme.sh: charts/h2ogpt-operator/README.md's values tables are stale: run 'make generate'" >&2
  exit 1
fi
cp "$work/README.md" "$chart/README.md"
echo "hack/chart-readme.sh: wrote the values tables into charts/h2ogpt-operator/README.md"
