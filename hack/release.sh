#!/usr/bin/env bash
# The release's publishing steps, each a `make` target that .github/workflows/release.yml calls;
# the build itself is `make images`, the same as on a developer's machine.
#
#   hack/release.sh push-arch ARCH     push each built image as :<version>-<ARCH>       (make release-push-arch)
#   hack/release.sh manifest ARCH...   join the per-arch tags into :<version>, write each image's
#                                      digest to dist/images.txt                          (make release-manifest)
#   hack/release.sh sign               cosign keyless signature and an SPDX SBOM attestation (syft)
#                                      on each digest of dist/images.txt                  (make release-sign)
#   hack/release.sh chart              helm package the chart into dist/ (runs anywhere) (make chart-package)
#   hack/release.sh push-chart         helm push dist/h2ogpt-operator-<version>.tgz to oci://<registry>/charts
#
# The version is pyproject.toml's (hack/version.py); a release tag must agree with it (the workflow
# runs `hack/version.py check --tag`). Environment:
#   IMAGE_REGISTRY   the images' repository prefix (default ghcr.io/h2ogpt-platform)
#   CHART_REGISTRY   where the chart goes (default oci://$IMAGE_REGISTRY/charts)
#   RELEASE_DIST     where packages and digests are written (default dist/)
#   CHART_PUSH_ARGS  more `helm push` arguments (e.g. --plain-http for a registry on loopback)
#   IMAGE_BUILDER    docker | podman (default: docker when it answers, else podman)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
registry="${IMAGE_REGISTRY:-ghcr.io/h2ogpt-platform}"
chart_registry="${CHART_REGISTRY:-oci://$registry/charts}"
names=(operator api weaviate llamacpp)
dist="${RELEASE_DIST:-$root/dist}"

die() { echo "hack/release.sh: $*" >&2; exit 1; }
version() { python3 "$root/hack/version.py"; }
builder() {
  if [ -n "${IMAGE_BUILDER:-}" ]; then echo "$IMAGE_BUILDER"
  elif command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then echo docker
  else echo podman; fi
}
helm_bin() { if [ -x "$root/.bin/helm" ]; then echo "$root/.bin/helm"; else command -v helm || die "no helm"; fi; }

push_arch() {
  local arch="$1" v b name
  v="$(version)"; b="$(builder)"
  for name in "${names[@]}"; do
    "$b" tag "$registry/h2ogpt-$name:$v" "$registry/h2ogpt-$name:$v-$arch"
    "$b" push "$registry/h2ogpt-$name:$v-$arch"
  done
}

# A manifest list per image over the per-arch tags; the digest it gets is what is signed.
manifest() {
  [ $# -gt 0 ] || die "manifest needs the architectures (amd64 arm64)"
  local v b name arch refs digest
  v="$(version)"; b="$(builder)"
  mkdir -p "$dist"
  : >"$dist/images.txt"
  for name in "${names[@]}"; do
    refs=()
    for arch in "$@"; do refs+=("$registry/h2ogpt-$name:$v-$arch"); done
    if [ "$b" = docker ]; then
      docker buildx imagetools create --tag "$registry/h2ogpt-$name:$v" "${refs[@]}"
      digest="$(docker buildx imagetools inspect "$registry/h2ogpt-$name:$v" --format '{{json .Manifest.Digest}}' | tr -d '"')"
    else
      podman manifest rm "$registry/h2ogpt-$name:$v" >/dev/null 2>&1 || true
      podman manifest create "$registry/h2ogpt-$name:$v" "${refs[@]/#/docker://}"
      podman manifest push --digestfile "$dist/digest" "$registry/h2ogpt-$name:$v"
      digest="$(cat "$dist/digest")"
    fi
    [[ "$digest" == sha256:* ]] || die "no digest for $registry/h2ogpt-$name:$v"
    echo "$registry/h2ogpt-$name@$digest" >>"$dist/images.txt"
  done
  cat "$dist/images.txt"
}

# Keyless: cosign takes the workflow's OIDC identity (id-token: write); the signature and the
# attestation live in the registry beside the image.
sign() {
  [ -s "$dist/images.txt" ] || die "no dist/images.txt: run 'make release-manifest' first"
  local ref sbom
  while read -r ref; do
    sbom="$dist/sbom-$(basename "${ref%@*}").spdx.json"
    syft "$ref" -o "spdx-json=$sbom"
    cosign sign --yes "$ref"
    cosign attest --yes --type spdxjson --predicate "$sbom" "$ref"
  done <"$dist/images.txt"
}

chart() {
  local v
  v="$(version)"
  mkdir -p "$dist"
  "$(helm_bin)" lint --strict "$root/charts/h2ogpt-operator"
  "$(helm_bin)" package "$root/charts/h2ogpt-operator" --destination "$dist"
  [ -f "$dist/h2ogpt-operator-$v.tgz" ] || die "helm package wrote no h2ogpt-operator-$v.tgz (Chart.yaml's version disagrees?)"
  cp "$root"/crds/*.yaml "$dist/"
  echo "hack/release.sh: dist/h2ogpt-operator-$v.tgz and the CRDs in dist/"
}

push_chart() {
  local v
  v="$(version)"
  [ -f "$dist/h2ogpt-operator-$v.tgz" ] || die "no dist/h2ogpt-operator-$v.tgz: run 'make chart-package' first"
  # shellcheck disable=SC2086  # split on purpose: a list of flags
  "$(helm_bin)" push "$dist/h2ogpt-operator-$v.tgz" "$chart_registry" ${CHART_PUSH_ARGS:-}
}

command="${1:-}"
shift || true
case "$command" in
  push-arch) [ $# -eq 1 ] || die "push-arch ARCH"; push_arch "$1" ;;
  manifest) manifest "$@" ;;
  sign) sign ;;
  chart) chart ;;
  push-chart) push_chart ;;
  *) die "usage: hack/release.sh push-arch ARCH | manifest ARCH... | sign | chart | push-chart" ;;
esac
