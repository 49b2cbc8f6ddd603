#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, not crds/samples/) into the Helm chart's crds/.
#
#   hack/sync-chart-crds.sh           copy (run after regenerating crds/ from the models)
#   hack/sync-chart-crds.sh --check   exit 1 and name the files that differ; copy nothing
#
# The chart ships a copy rather than a link: `helm package` and chart repositories need
# real files inside the chart folder.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
source_dir="$root/crds"
chart_dir="$root/charts/h2ogpt-operator/crds"

shopt -s nullglob
sources=("$source_dir"/*.yaml)
[ ${#sources[@]} -gt 0 ] || { echo "sync-chart-crds: no CRD in $source_dir (generate it first)" >&2; exit 1; }

if [ "${1:-}" = "--check" ]; then
  drift=0
  for src in "${sources[@]}"; do
    dst="$chart_dir/$(basename "$src")"
    if ! cmp -s "$src" "$dst"; then
      echo "sync-chart-crds: $dst differs from $src" >&2
      drift=1
    fi
  done
  for dst in "$chart_dir"/*.yaml; do
    [ -e "$source_dir/$(basename "$dst")" ] || { echo "sync-chart-crds: $dst has no source in crds/" >&2; drift=1; }
  done
  [ $drift -eq 0 ] || { echo "run hack/sync-chart-crds.sh to copy them" >&2; exit 1; }
  exit 0
fi

mkdir -p "$chart_dir"
for dst in "$chart_dir"/*.yaml; do
  [ -e "$source_dir/$(basename "$dst")" ] || rm -f "$dst"
done
for src in "${sources[@]}"; do
  cp "$src" "$chart_dir/"
  echo "copied $(basename "$src") into charts/h2ogpt-operator/crds/"
done
