#!/usr/bin/env bash
# A one-node Kubernetes 1.20.2 cluster with real containers on this machine, for the real-pods tests.
# Must run as root (Docker, iptables, mounts, sysctls). Facts and flags: ../shared/design/
# test-infrastructure.md, section "Real pods". Everything is built here: nothing can be pulled.
#
#   cluster.sh prepare         Idempotent, cached under ${SYNCRELAY_CACHE:-~/.cache/syncrelay}:
#                              apt packages (docker.io, containernetworking-plugins, dnsmasq-base,
#                              socat, conntrack, debootstrap, iptables, gcc/libc6-dev); kube-apiserver,
#                              -controller-manager, -scheduler, kubelet, kube-proxy through
#                              scripts/control-plane.sh --all (kubelet with the OOM-score patch);
#                              and in Docker's image store: the pause image k8s.gcr.io/pause:3.2 (from
#                              the Kubernetes tree's pause.c) and the Dockerfile's base images
#                              gcr.io/distroless/cc-debian12:nonroot (assembled from bookworm .debs:
#                              glibc, libgcc, libstdc++, libssl3, CA certificates, tzdata, user nonroot
#                              65532) and rust:1.95-bookworm (debootstrap bookworm + this machine's Rust
#                              toolchain, which must be 1.95.x). Starts dockerd for the image steps and
#                              stops it again if it was not running.
#   cluster.sh images          Only the image part of prepare.
#   cluster.sh up <statedir>   Starts dockerd (unless one runs), bridge cni0 10.244.0.1/24, etcd,
#                              kube-apiserver (https://10.244.0.1:6443), controller-manager, scheduler,
#                              kubelet, kube-proxy, dnsmasq as cluster DNS on 10.244.0.1 and an agent
#                              that keeps DNS in step with Services/Endpoints and provisions `local` PVs
#                              (StorageClass "local", the default) per claim. Writes
#                              <statedir>/kubeconfig (admin) and returns once the node is Ready.
#                              Runs `prepare` first. Host state it changes is recorded in <statedir>.
#   cluster.sh down <statedir> Stops all of the above (dockerd only if up started it), removes the
#                              pods' containers, unmounts the kubelet's directory, removes the
#                              KUBE-*/CNI-* iptables chains, the netfilter tables and the kubepods/docker
#                              cgroups that were not there before, and cni0 if up created it, restores
#                              the sysctls (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops,
#                              route_localnet, ip_forward, bridge-nf-call-*), then deletes <statedir>.
#                              Safe to run on a half-started or already-stopped cluster.
#   cluster.sh env <statedir>  Prints KUBECONFIG=... and DOCKER=... for `eval`.
#
# Binaries: KUBEBUILDER_ASSETS may name a folder with all of etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy (see control-plane.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${SYNCRELAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/syncrelay}"
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
PROVISIONER=syncrelay.io/cluster-sh-local
# Host state the cluster changes (kubelet, kube-proxy, the bridge plugin); saved by up, restored by down.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.conf.all.route_localnet
         net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

log() { echo "cluster: $(date +%T) $*" >&2; }
die() { echo "cluster: error: $*" >&2; exit 1; }

# The Docker client that matches the daemon: Debian's (its BuildKit client works without buildx).
docker_cli() {
  if [[ -n "${DOCKER:-}" ]]; then echo "$DOCKER"
  elif [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker
  else command -v docker; fi
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (Docker, iptables, mounts, sysctls)"; }

install_packages() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
  command -v socat >/dev/null || need+=(socat)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v iptables >/dev/null || need+=(iptables)
  command -v gcc >/dev/null || need+=(gcc)
  [[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || need+=(libc6-dev)
  command -v openssl >/dev/null || need+=(openssl)
  command -v python3 >/dev/null || need+=(python3)
  command -v kubectl >/dev/null || need+=(kubernetes-client)
  if (( ${#need[@]} )); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${need[@]}" >&2
  fi
}

# dockerd without its own iptables rules, bridge or forwarding (the pods use CNI; image builds use
# --network=host), so that stopping it leaves the host's firewall as it was.
DOCKERD_FLAGS=(--iptables=false --ip-masq=false --ip-forward=false --bridge=none
               --exec-opt native.cgroupdriver=cgroupfs --storage-driver=overlay2)
docker_running() { "$(docker_cli)" info >/dev/null 2>&1; }
# start_dockerd <dir>: starts dockerd unless one answers; records its pid in <dir>/dockerd.pid.
start_dockerd() {
  local dir="$1"
  docker_running && return 0
  mkdir -p "$dir"
  log "starting dockerd"
  setsid dockerd "${DOCKERD_FLAGS[@]}" >"$dir/dockerd.log" 2>&1 &
  echo $! >"$dir/dockerd.pid"
  local i
  for i in $(seq 1 60); do docker_running && return 0; sleep 1; done
  die "dockerd did not start; see $dir/dockerd.log"
}
stop_pidfile() { # stop_pidfile <pidfile> [name]: SIGTERM, then SIGKILL after 10 s
  local f="$1" pid i
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "${2:-$pid} did not stop on SIGTERM within 10 s: SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

kube_bin() {
  ASSETS="$(bash "$HERE/control-plane.sh" --all)"
}

image_exists() { "$(docker_cli)" image inspect "$1" >/dev/null 2>&1; }

build_pause_image() {
  image_exists k8s.gcr.io/pause:3.2 && return 0
  local src="$CACHE/kubernetes-1.20.2/pause/pause.c" tmp
  if [[ ! -f "$src" ]]; then
    # Binaries came from KUBEBUILDER_ASSETS or an older cache: take pause.c from the source tarball.
    local tarball
    tarball=$(ls "$CACHE"/kubernetes-1.20.2/work/kubernetes_*.orig.tar.gz 2>/dev/null | head -1)
    [[ -n "$tarball" ]] || die "no pause.c: run scripts/control-plane.sh once without KUBEBUILDER_ASSETS"
    mkdir -p "$(dirname "$src")"
    tar -xzOf "$tarball" kubernetes-1.20.2/build/pause/linux/pause.c >"$src"
  fi
  log "building k8s.gcr.io/pause:3.2 from pause.c"
  tmp=$(mktemp -d)
  gcc -Os -static -Wall -Werror -DVERSION=v3.2-syncrelay -o "$tmp/pause" "$src"
  strip "$tmp/pause"
  tar -C "$tmp" -c pause | "$(docker_cli)" import --change 'ENTRYPOINT ["/pause"]' - k8s.gcr.io/pause:3.2 >/dev/null
  rm -rf "$tmp"
}

# gcr.io/distroless/cc-debian12:nonroot, assembled the way distroless does it: package contents
# extracted without maintainer scripts, the CA bundle concatenated, passwd/group with nonroot 65532.
build_runtime_image() {
  local name=gcr.io/distroless/cc-debian12:nonroot
  image_exists "$name" && return 0
  log "assembling $name from bookworm packages"
  local work root p
  work=$(mktemp -d)
  root="$work/root"
  mkdir -p "$root" "$work/debs"
  chmod 755 "$work" "$work/debs" # apt-get download drops privileges to _apt
  (cd "$work/debs" && apt-get download -qq base-files netbase tzdata ca-certificates libc6 libgcc-s1 \
     libgomp1 libstdc++6 libssl3 >&2)
  for p in "$work"/debs/*.deb; do dpkg-deb -x "$p" "$root"; done
  # Drop what a distroless image lacks: docs, man pages, locales, the maintainer helpers.
  rm -rf "${root:?}"/usr/share/{doc,man,info,lintian,locale} "${root:?}"/usr/sbin "${root:?}"/sbin \
         "${root:?}"/usr/bin "${root:?}"/bin "${root:?}"/usr/lib/x86_64-linux-gnu/gconv "${root:?}"/etc/update-motd.d
  mkdir -p "$root"/etc/ssl/certs "$root"/tmp "$root"/home/nonroot "$root"/root "$root"/var/lib
  find "$root"/usr/share/ca-certificates -name '*.crt' | sort | xargs cat >"$root"/etc/ssl/certs/ca-certificates.crt
  chmod 1777 "$root"/tmp
  chown 65532:65532 "$root"/home/nonroot
  cat >"$root"/etc/passwd <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root"/etc/group <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
  tar -C "$root" --numeric-owner -c . | "$(docker_cli)" import \
    --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    - "$name" >/dev/null
  rm -rf "$work"
}

# rust:<version>-bookworm like the official image: CARGO_HOME=/usr/local/cargo,
# RUSTUP_HOME=/usr/local/rustup, a C toolchain; the Rust toolchain is this machine's.
build_rust_image() {
  local version name sysroot
  version=$(rustc --version | awk '{print $2}')
  name="rust:${version%.*}-bookworm"
  grep -q "^FROM $name " "$HERE/../Dockerfile" \
    || die "this machine's Rust is $version but the Dockerfile's build stage is not $name"
  image_exists "$name" && return 0
  sysroot=$(rustc --print sysroot)
  local rootfs="$CACHE/images/bookworm-build"
  if [[ ! -f "$rootfs/.complete" ]]; then
    log "debootstrap bookworm for $name (a few minutes)"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    debootstrap --variant=minbase \
      --include=ca-certificates,gcc,g++,libc6-dev,make,pkg-config,git,curl,xz-utils \
      bookworm "$rootfs" http://deb.debian.org/debian >"$CACHE/images/debootstrap.log" 2>&1 \
      || die "debootstrap failed; see $CACHE/images/debootstrap.log"
    chroot "$rootfs" apt-get clean
    rm -rf "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/usr/share/{doc,man,info}
    touch "$rootfs/.complete"
  fi
  # Trust what this machine trusts (a site's own CAs, e.g. of an HTTPS-intercepting egress proxy),
  # so cargo inside `docker build` reaches crates.io as it does on the host.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates in $rootfs failed"
  fi
  log "building $name from the bookworm root filesystem and $sysroot"
  local tc="$version-x86_64-unknown-linux-gnu" overlay t
  overlay=$(mktemp -d)
  mkdir -p "$overlay/usr/local/rustup/toolchains/$tc" "$overlay/usr/local/cargo/bin"
  tar -C "$sysroot" --exclude=./share/doc -c . | tar -C "$overlay/usr/local/rustup/toolchains/$tc" -x
  for t in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
    if [[ -x "$overlay/usr/local/rustup/toolchains/$tc/bin/$t" ]]; then
      ln -s "../../rustup/toolchains/$tc/bin/$t" "$overlay/usr/local/cargo/bin/$t"
    fi
  done
  # Only the new paths from the overlay: an image layer may not name a path twice.
  tar --numeric-owner -c -C "$rootfs" --exclude=./.complete . -C "$overlay" usr/local/rustup usr/local/cargo | "$(docker_cli)" import \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV RUST_VERSION=$version" --change 'WORKDIR /' --change 'CMD ["bash"]' \
    - "$name" >/dev/null
  rm -rf "$overlay"
}

cmd_prepare() {
  need_root
  install_packages
  local t0=$SECONDS
  kube_bin
  log "kubernetes binaries in $ASSETS ($((SECONDS - t0)) s)"
  prepare_images
}

prepare_images() {
  local t0 tmpstate
  tmpstate=$(mktemp -d)
  # Stop the dockerd started here (if any) however this ends.
  # shellcheck disable=SC2064 # expanded now on purpose: tmpstate is local
  trap "stop_pidfile '$tmpstate/dockerd.pid'; rm -rf '$tmpstate'" EXIT
  start_dockerd "$tmpstate"
  t0=$SECONDS; build_pause_image; log "pause image ($((SECONDS - t0)) s)"
  t0=$SECONDS; build_runtime_image; log "runtime base image ($((SECONDS - t0)) s)"
  t0=$SECONDS; build_rust_image; log "build base image ($((SECONDS - t0)) s)"
  stop_pidfile "$tmpstate/dockerd.pid"
  rm -rf "$tmpstate"
  trap - EXIT
}

# ---------------------------------------------------------------------------------------------- up

start_bg() { # start_bg <name> <cmd...>: runs in its own session, logs and pid in $STATE
  local name="$1"; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name.pid"
}

wait_for() { # wait_for <seconds> <what> <cmd...>
  local secs="$1" what="$2" i; shift 2
  for ((i = 0; i < secs * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what not ready after ${secs}s; logs in $STATE/logs"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

kubeconfig() { # kubeconfig <file> <token>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://$NODE_IP:6443", certificate-authority: "$STATE/pki/ca.crt"}
users:
- name: user
  user: {token: "$2"}
contexts:
- name: local
  context: {cluster: local, user: user, namespace: default}
current-context: local
EOF
}

cmd_up() {
  need_root
  STATE="$(mkdir -p "$1" && cd "$1" && pwd)"
  if [[ -f "$STATE/up" ]]; then
    log "already up ($STATE)"
    return 0
  fi
  mkdir -p "$STATE"/{logs,pids,pki,etcd,kubelet,cni/conf,cni/cache,cni/ipam,dns,pv}
  # Host state to restore on down: sysctls, which netfilter tables exist.
  if [[ ! -f "$STATE/sysctl.saved" ]]; then
    local k
    for k in "${SYSCTLS[@]}"; do
      sysctl -n "$k" >/dev/null 2>&1 && echo "$k=$(sysctl -n "$k")"
    done >"$STATE/sysctl.saved"
    if command -v nft >/dev/null; then nft list tables >"$STATE/nft-tables.saved" 2>/dev/null || true; fi
  fi
  docker_running || { start_dockerd "$STATE"; mv "$STATE/dockerd.pid" "$STATE/pids/dockerd.pid"; mv "$STATE/dockerd.log" "$STATE/logs/"; }
  cmd_prepare
  local t0=$SECONDS
  NODE="$(hostname | tr '[:upper:]' '[:lower:]')"
  echo "$NODE" >"$STATE/node-name"


  if ! ip link show cni0 >/dev/null 2>&1; then
    ip link add cni0 type bridge
    touch "$STATE/created-cni0"
  fi
  ip addr replace "$NODE_IP/24" dev cni0
  ip link set cni0 up
  # Pod → Service → pod on the same bridge needs the bridged replies to pass conntrack.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1

  # Credentials: static tokens, a service-account key pair; the apiserver makes its serving cert.
  local admin_token node_token proxy_token sched_token cm_token
  admin_token=$(openssl rand -hex 16); node_token=$(openssl rand -hex 16); proxy_token=$(openssl rand -hex 16)
  sched_token=$(openssl rand -hex 16); cm_token=$(openssl rand -hex 16)
  cat >"$STATE/pki/tokens.csv" <<EOF
$admin_token,admin,admin,"system:masters"
$node_token,system:node:$NODE,node,"system:nodes"
$proxy_token,system:kube-proxy,kube-proxy
$sched_token,system:kube-scheduler,kube-scheduler
$cm_token,system:kube-controller-manager,kube-controller-manager
EOF
  openssl genrsa -out "$STATE/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$STATE/pki/sa.key" -pubout -out "$STATE/pki/sa.pub" 2>/dev/null
  # A CA and a serving certificate for the apiserver (names and IPs a client in or outside uses).
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=syncrelay-test-ca" \
    -keyout "$STATE/pki/ca.key" -out "$STATE/pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$STATE/pki/apiserver.key" -out "$STATE/pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s,IP:10.0.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$NODE_IP" >"$STATE/pki/apiserver.ext"
  openssl x509 -req -in "$STATE/pki/apiserver.csr" -CA "$STATE/pki/ca.crt" -CAkey "$STATE/pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$STATE/pki/apiserver.ext" -out "$STATE/pki/apiserver.crt" 2>/dev/null
  # The apiserver's client certificate towards the kubelet (logs, exec, port-forward).
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$STATE/pki/kubelet-client.key" -out "$STATE/pki/kubelet-client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$STATE/pki/client.ext"
  openssl x509 -req -in "$STATE/pki/kubelet-client.csr" -CA "$STATE/pki/ca.crt" -CAkey "$STATE/pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$STATE/pki/client.ext" -out "$STATE/pki/kubelet-client.crt" 2>/dev/null
  kubeconfig "$STATE/kubeconfig" "$admin_token"
  kubeconfig "$STATE/pki/kubelet.kubeconfig" "$node_token"
  kubeconfig "$STATE/pki/proxy.kubeconfig" "$proxy_token"
  kubeconfig "$STATE/pki/scheduler.kubeconfig" "$sched_token"
  kubeconfig "$STATE/pki/cm.kubeconfig" "$cm_token"
  export KUBECONFIG="$STATE/kubeconfig"

  local etcd_client etcd_peer
  etcd_client=$(free_port); etcd_peer=$(free_port)
  start_bg etcd "$ASSETS/etcd" --data-dir "$STATE/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer" --name default
  start_bg kube-apiserver "$ASSETS/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 --insecure-port 0 \
    --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --client-ca-file "$STATE/pki/ca.crt" \
    --token-auth-file "$STATE/pki/tokens.csv" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --kubelet-preferred-address-types InternalIP \
    --kubelet-client-certificate "$STATE/pki/kubelet-client.crt" --kubelet-client-key "$STATE/pki/kubelet-client.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$STATE/pki/sa.pub" --service-account-signing-key-file "$STATE/pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true
  wait_for 60 kube-apiserver kubectl get --raw /readyz
  log "apiserver ready ($((SECONDS - t0)) s)"

  start_bg kube-controller-manager "$ASSETS/kube-controller-manager" \
    --kubeconfig "$STATE/pki/cm.kubeconfig" --leader-elect=false \
    --use-service-account-credentials=true --service-account-private-key-file "$STATE/pki/sa.key" \
    --root-ca-file "$STATE/pki/ca.crt" --cluster-cidr 10.244.0.0/16 \
    --bind-address 127.0.0.1 --secure-port 0 --port 0
  start_bg kube-scheduler "$ASSETS/kube-scheduler" \
    --kubeconfig "$STATE/pki/scheduler.kubeconfig" --leader-elect=false --secure-port 0 --port 0

  # Pod network: the bridge plugin on cni0 with host-local IPAM, port maps, and the firewall
  # plugin so forwarded pod traffic is accepted whatever the FORWARD policy.
  cat >"$STATE/cni/conf/10-syncrelay.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "syncrelay",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "$SERVICE_CIDR"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall", "backend": "iptables"}
  ]
}
EOF
  : >"$STATE/resolv.conf"
  start_bg kubelet "$ASSETS/kubelet" \
    --kubeconfig "$STATE/pki/kubelet.kubeconfig" --hostname-override "$NODE" \
    --container-runtime=docker --docker-endpoint unix:///var/run/docker.sock \
    --cgroup-driver=cgroupfs --fail-swap-on=false --pod-infra-container-image=k8s.gcr.io/pause:3.2 \
    --network-plugin=cni --cni-bin-dir=/usr/lib/cni --cni-conf-dir="$STATE/cni/conf" \
    --cni-cache-dir="$STATE/cni/cache" --cluster-dns="$NODE_IP" --cluster-domain=cluster.local \
    --resolv-conf="$STATE/resolv.conf" \
    --node-ip="$NODE_IP" --address="$NODE_IP" --read-only-port=0 --healthz-bind-address=127.0.0.1 \
    --authentication-token-webhook=false --anonymous-auth=false --client-ca-file "$STATE/pki/ca.crt" \
    --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --root-dir "$STATE/kubelet" --image-gc-high-threshold 100 --image-gc-low-threshold 99 \
    --eviction-hard 'memory.available<100Mi,nodefs.available<1%,imagefs.available<1%'
  start_bg kube-proxy "$ASSETS/kube-proxy" \
    --kubeconfig "$STATE/pki/proxy.kubeconfig" --hostname-override "$NODE" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" --bind-address "$NODE_IP" \
    --nodeport-addresses "$POD_CIDR" --conntrack-max-per-core 0 \
    --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249
  start_bg dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --hostsdir="$STATE/dns" \
    --listen-address="$NODE_IP" --bind-interfaces --local=/cluster.local/ --log-facility=- \
    --user=root --pid-file="$STATE/dnsmasq.pid"
  start_bg agent python3 "$HERE/cluster-agent.py" --state "$STATE" --node "$NODE" \
    --provisioner "$PROVISIONER"

  kubectl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: $PROVISIONER
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
  wait_for 120 "node $NODE" kubectl wait --for=condition=Ready "node/$NODE" --timeout=1s
  # The service-account token controller must have made the default namespace's token before pods
  # can be created there.
  wait_for 60 "default service account" kubectl get serviceaccount default -o jsonpath='{.secrets[0].name}'
  # Everything started must still run (a bad flag makes a component exit at once).
  local f
  for f in "$STATE"/pids/*.pid; do
    kill -0 "$(cat "$f")" 2>/dev/null \
      || die "$(basename "$f" .pid) exited: $(tail -3 "$STATE/logs/$(basename "$f" .pid).log")"
  done
  touch "$STATE/up"
  log "node $NODE Ready ($((SECONDS - t0)) s); KUBECONFIG=$STATE/kubeconfig"
}

# -------------------------------------------------------------------------------------------- down

cmd_down() {
  need_root
  [[ -d "$1" ]] || { log "no state in $1: nothing to stop"; return 0; }
  STATE="$(cd "$1" && pwd)"
  local name
  # SIGTERM to all components at once (the kubelet first, so it starts no more containers), then
  # each gets what is left of 10 s before SIGKILL.
  for name in kubelet agent dnsmasq kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [[ -f "$STATE/pids/$name.pid" ]] && kill "$(cat "$STATE/pids/$name.pid")" 2>/dev/null || true
  done
  for name in kubelet agent dnsmasq kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop_pidfile "$STATE/pids/$name.pid" "$name"
  done
  # The pods' containers (dockershim names them k8s_*); their network namespaces go with them.
  if docker_running; then
    local ids
    ids=$("$(docker_cli)" ps -aq --filter 'name=^/k8s_' || true)
    [[ -n "$ids" ]] && "$(docker_cli)" rm -f $ids >/dev/null 2>&1 || true
  fi
  if [[ -f "$STATE/pids/dockerd.pid" ]]; then
    stop_pidfile "$STATE/pids/dockerd.pid"
    local cg
    for cg in /sys/fs/cgroup/*/docker; do
      [[ -d "$cg" ]] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
  fi
  # The kubelet bind-mounts its root dir onto itself and mounts the pods' volumes below it.
  local m
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
    awk -v d="$STATE/kubelet" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
  # kube-proxy --cleanup needs ipset; remove the chains directly (kubelet's KUBE-FIREWALL drops
  # non-loopback traffic to 127/8 otherwise).
  local ipt table
  for ipt in iptables ip6tables; do
    command -v "$ipt-save" >/dev/null || continue
    for table in filter nat mangle; do
      # Every line naming a KUBE-*/CNI-* chain (declaration, rule in it, jump to it) is ours.
      if "$ipt-save" -t "$table" 2>/dev/null | grep -qE 'KUBE-|CNI-'; then
        "$ipt-save" -t "$table" | grep -vE 'KUBE-|CNI-' | "$ipt-restore" \
          || log "could not clean $ipt $table"
      fi
    done
  done
  # Netfilter tables that only the cluster's rules created (empty now).
  if [[ -f "$STATE/nft-tables.saved" ]]; then
    local t
    while IFS= read -r t; do
      grep -qxF "$t" "$STATE/nft-tables.saved" || nft "delete $t" 2>/dev/null || true
    done < <(nft list tables 2>/dev/null | grep -E '^table ip6? (filter|nat|mangle|raw)$')
  fi
  if [[ -f "$STATE/created-cni0" ]]; then ip link del cni0 2>/dev/null || true; fi
  if [[ -f "$STATE/sysctl.saved" ]]; then
    while IFS= read -r m; do sysctl -qw "$m" 2>/dev/null || log "could not restore $m"; done <"$STATE/sysctl.saved"
  fi
  # Empty QoS cgroups the kubelet made.
  local cg
  for cg in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$cg" ]] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  rm -rf "$STATE"
  log "down"
}

case "${1:-}" in
  prepare) cmd_prepare ;;
  images) need_root; install_packages; prepare_images ;;
  up) [[ -n "${2:-}" ]] || die "usage: $0 up <statedir>"; cmd_up "$2" ;;
  down) [[ -n "${2:-}" ]] || die "usage: $0 down <statedir>"; cmd_down "$2" ;;
  env) [[ -n "${2:-}" ]] || die "usage: $0 env <statedir>"; echo "export KUBECONFIG=$(cd "$2" && pwd)/kubeconfig DOCKER=$(docker_cli)" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
esac
