#!/usr/bin/env bash
# Provides Kubernetes 1.20.2 server binaries and etcd and prints the folder that holds them
# (controller-runtime's KUBEBUILDER_ASSETS convention).
#
#   control-plane.sh          kube-apiserver, kube-controller-manager, etcd (the operator's tests)
#   control-plane.sh --all    the above plus kube-scheduler, kubelet, kube-proxy (scripts/cluster.sh)
#
# 1. KUBEBUILDER_ASSETS already names a folder with every wanted binary: use it.
# 2. A cached build exists under ${SYNCRELAY_CACHE:-~/.cache/syncrelay}/kubernetes-1.20.2/bin: use it.
# 3. Otherwise build the missing ones, in one make call, from Debian bookworm's Kubernetes source
#    package (no other download is reachable here), with the reflect2 fix and the kubelet OOM-score
#    patch described in ../shared/design/test-infrastructure.md, and cache the binaries outside the
#    checkout (the source tree is deleted afterwards; build/pause/linux/pause.c is kept beside bin/
#    for scripts/cluster.sh's pause image).
set -euo pipefail

log() { echo "control-plane: $*" >&2; }

WANT=(kube-apiserver kube-controller-manager)
if [[ "${1:-}" == "--all" ]]; then
  WANT+=(kube-scheduler kubelet kube-proxy)
elif [[ -n "${1:-}" ]]; then
  echo "usage: $0 [--all]" >&2
  exit 2
fi

has_all() {
  local dir="$1" b
  [[ -x "$dir/etcd" ]] || return 1
  for b in "${WANT[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && has_all "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

CACHE="${SYNCRELAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/syncrelay}"
ASSETS="$CACHE/kubernetes-1.20.2/bin"
if has_all "$ASSETS"; then
  echo "$ASSETS"
  exit 0
fi
MISSING=()
for b in "${WANT[@]}"; do [[ -x "$ASSETS/$b" ]] || MISSING+=("$b"); done

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
  # This VM kind's root lacks CAP_SYS_RESOURCE, so no process may set a negative oom_score_adj and
  # runc fails every pod whose pause or Guaranteed container asks for -998/-997. Use 0 instead
  # (memory limits still apply through the cgroup). Only kubelet's packages are touched.
  sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' "$SRCDIR/pkg/kubelet/dockershim/docker_sandbox.go"
  sed -i 's/guaranteedOOMScoreAdj int = -997/guaranteedOOMScoreAdj int = 0/' "$SRCDIR/pkg/kubelet/qos/policy.go"
  grep -q 'defaultSandboxOOMAdj int = 0' "$SRCDIR/pkg/kubelet/dockershim/docker_sandbox.go"
  grep -q 'guaranteedOOMScoreAdj int = 0' "$SRCDIR/pkg/kubelet/qos/policy.go"
fi
log "building ${MISSING[*]} (several minutes on 2 cores; about 10 for all five)"
mkdir -p "$SRCDIR/.go/src/k8s.io"
ln -sfn "$SRCDIR" "$SRCDIR/.go/src/k8s.io/kubernetes"
(
  cd "$SRCDIR/.go/src/k8s.io/kubernetes"
  export GOPATH="$SRCDIR/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=on
  make WHAT="${MISSING[*]/#/cmd/}" >&2
)
mkdir -p "$ASSETS"
for b in "${MISSING[@]}"; do cp "$SRCDIR/_output/bin/$b" "$ASSETS/"; done
ln -sfn /usr/bin/etcd "$ASSETS/etcd"
mkdir -p "$CACHE/kubernetes-1.20.2/pause"
cp "$SRCDIR/build/pause/linux/pause.c" "$CACHE/kubernetes-1.20.2/pause/pause.c"
# The source tree is large; keep only the binaries.
rm -rf "$SRCDIR"
log "cached in $ASSETS"
echo "$ASSETS"
