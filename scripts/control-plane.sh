#!/usr/bin/env bash
# Provides kube-apiserver, kube-controller-manager and etcd for the operator's integration tests and
# prints the folder that holds them (controller-runtime's KUBEBUILDER_ASSETS convention).
#
# 1. KUBEBUILDER_ASSETS already names a folder with kube-apiserver and etcd: use it.
# 2. A cached build exists under ~/.cache/syncrelay/kubernetes-1.20.2: use it.
# 3. Otherwise build Kubernetes 1.20.2 from Debian bookworm's source package (no other download is
#    reachable here), with the reflect2 fix from docs in ../shared/design/test-infrastructure.md,
#    and cache the result outside the checkout.
set -euo pipefail

log() { echo "control-plane: $*" >&2; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

CACHE="${SYNCRELAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/syncrelay}"
ASSETS="$CACHE/kubernetes-1.20.2/bin"
if [[ -x "$ASSETS/kube-apiserver" && -x "$ASSETS/kube-controller-manager" && -x "$ASSETS/etcd" ]]; then
  echo "$ASSETS"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
need=()
command -v go >/dev/null || need+=(golang-go)
command -v rsync >/dev/null || need+=(rsync)
command -v make >/dev/null || need+=(make)
[[ -x /usr/bin/etcd ]] || need+=(etcd-server)
[[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]] || need+=(golang-github-modern-go-reflect2-dev)
if (( ${#need[@]} )); then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq "${need[@]}" >&2
fi

WORK="$CACHE/kubernetes-1.20.2/work"
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/sources"
cat > "$WORK/apt/sources/bookworm-src.sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
APT=(apt-get -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$WORK/apt/sources"
     -o "Dir::State::Lists=$WORK/apt/lists" -o Debug::NoLocking=1)
cd "$WORK"
if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
  log "downloading Debian's kubernetes source package"
  "${APT[@]}" update -qq >&2
  "${APT[@]}" source --download-only kubernetes >&2
fi
SRCDIR="$WORK/src"
if [[ ! -d "$SRCDIR/cmd/kube-apiserver" ]]; then
  rm -rf "$SRCDIR" && mkdir -p "$SRCDIR"
  tar -xzf kubernetes_*.orig.tar.gz -C "$SRCDIR" --strip-components=1
  # reflect2 1.0.1 crashes under Go >= 1.18; Debian's 1.0.2 source replaces it.
  rm -rf "$SRCDIR/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$SRCDIR/vendor/github.com/modern-go/reflect2"
  rm -f "$SRCDIR/vendor/github.com/modern-go/reflect2/go.mod"
  sed -i 's#github.com/modern-go/reflect2 v1.0.1#github.com/modern-go/reflect2 v1.0.2#g' "$SRCDIR/vendor/modules.txt" "$SRCDIR/go.mod"
fi
log "building kube-apiserver and kube-controller-manager (several minutes on 2 cores)"
mkdir -p "$SRCDIR/.go/src/k8s.io"
ln -sfn "$SRCDIR" "$SRCDIR/.go/src/k8s.io/kubernetes"
(
  cd "$SRCDIR/.go/src/k8s.io/kubernetes"
  export GOPATH="$SRCDIR/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=on
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
)
mkdir -p "$ASSETS"
cp "$SRCDIR/_output/bin/kube-apiserver" "$SRCDIR/_output/bin/kube-controller-manager" "$ASSETS/"
ln -sfn /usr/bin/etcd "$ASSETS/etcd"
# The source tree is large; keep only the binaries.
rm -rf "$SRCDIR"
log "cached in $ASSETS"
echo "$ASSETS"
