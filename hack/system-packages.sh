#!/usr/bin/env bash
# Installs the Debian packages the tests drive as real components, when they are missing:
#   chromium     the Gradio UI test runs headless Chromium through Playwright
#   podman       builds the images without a Docker engine (hack/images.sh, --isolation=chroot)
#   debootstrap  makes the local Debian base image where no registry is reachable
#   iptables, conntrack   kube-proxy's Service routing on the real node (hack/localcluster.py)
#   ipset                 kube-router's NetworkPolicy enforcement there
#   busybox-static        the pause and helper images the real node runs (hack/node-images.sh)
#   libseccomp-dev, pkg-config   runc's seccomp support, built with cgo (hack/tools.sh)
# Idempotent: does nothing when every command is already there.
set -euo pipefail

declare -A package_for=([chromium]=chromium [podman]=podman [debootstrap]=debootstrap
  [iptables]=iptables [conntrack]=conntrack [ipset]=ipset [busybox]=busybox-static [pkg-config]=pkg-config)
missing=()
for cmd in "${!package_for[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/bin/$cmd" ] || missing+=("${package_for[$cmd]}")
done
[ -f /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "hack/system-packages.sh: missing ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "hack/system-packages.sh: missing ${missing[*]}; run 'apt-get install ${missing[*]}' as root" >&2; exit 1; }
  sudo=sudo
fi
echo "Installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
