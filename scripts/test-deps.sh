#!/usr/bin/env bash
# Installs what the test suites need on a Debian machine (the network-namespace
# lab in e2e/ above all). Idempotent and silent when everything is present;
# runs `apt-get update` only when something is missing.
set -euo pipefail

# ip, ping, nft, conntrack, iperf3, sysctl, wg (the wireguard-go reference benchmark);
# etcd for the real kube-apiserver of kube/kubetest (built by scripts/build-kube.sh).
packages=(iproute2 iputils-ping nftables conntrack iperf3 procps wireguard-tools etcd-server)
# Kubernetes nodes in kubehost/ and e2e/: containerd (with ctr and the runc
# shim) runs the pods through runc; the CNI plugins (/usr/lib/cni) wire pods to
# the node's bridge; busybox-static is the only binary in the hand-written
# images (kubehost/ociimage: the pause and busybox images, as nothing can be
# pulled here); kube-proxy and kubelet program iptables.
packages+=(containerd runc containernetworking-plugins busybox-static iptables)
# Headless browser for the web UI tests (ui/uitest, driven with chromedp).
packages+=(chromium)
# curl: the managed-Kubernetes e2e probes kubelet, API server and etcd without credentials.
packages+=(curl)
# openssl: the user-access e2e checks that wg1 devices get no TLS from members-only listeners.
packages+=(openssl)
# dig: the node resolver's e2e asks it as a user's tools would.
packages+=(dnsutils)

missing=()
for p in "${packages[@]}"; do
	if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]]; then
		missing+=("$p")
	fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
	echo "test-deps: missing ${missing[*]}; run this script as root" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null; then
	echo "test-deps: missing ${missing[*]} and no apt-get to install them" >&2
	exit 1
fi
echo "test-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
	cat "$log" >&2
	exit 1
fi
