#!/usr/bin/env bash
# Builds the Kubernetes binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl) from the k8s.io/kubernetes Go
# module (not a prebuilt download) for the tests that need a real API server
# or real nodes (kube/, agent/, kubehost/, e2e/). The build happens in a
# throwaway module in a cache directory outside the repository, once: when all
# the binaries exist the script exits at once. Prints the directory holding
# the binaries.
#
# k8s.io/kubernetes is not meant to be used as a module: its go.mod requires
# every staging module (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 and
# replaces them with ./staging paths, which do not apply to a dependant. The
# throwaway module therefore pins each of those v0.0.0 requirements to the
# matching published v0.X.Y with replace lines, generated from that go.mod.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
STAGING_VERSION=v0.${K8S_VERSION#v1.}
CACHE=${RUNOS_CACHE:-$HOME/.cache/runos-test}
DIR=$CACHE/kube-$K8S_VERSION
BIN=$DIR/bin
GO=${GO:-go}
CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

# A cache from an older version of this script holds only some of the
# binaries; any one missing rebuilds them all (one go build shares the work).
built() {
	local c
	for c in "${CMDS[@]}"; do
		[[ -x $BIN/$c ]] || return 1
	done
}

if built; then
	echo "$BIN"
	exit 0
fi

mkdir -p "$DIR/src" "$BIN"
cd "$DIR/src"
# Only one build at a time (make test from two shells).
exec 9>"$DIR/.lock"
flock 9
if built; then
	echo "$BIN"
	exit 0
fi

echo "build-kube: building ${CMDS[*]} $K8S_VERSION in $DIR (takes several minutes, once)" >&2
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
gomod=$($GO mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
if [[ -z $gomod || ! -f $gomod ]]; then
	echo "build-kube: cannot download the go.mod of k8s.io/kubernetes@$K8S_VERSION" >&2
	exit 1
fi
staging=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u)
if [[ -z $staging ]]; then
	echo "build-kube: found no v0.0.0 staging requirements in $gomod" >&2
	exit 1
fi
{
	echo "module runos.test/kubebuild"
	echo
	echo "go 1.24.0"
	echo
	for m in $staging; do
		echo "replace $m => $m $STAGING_VERSION"
	done
} >go.mod
rm -f go.sum
$GO get "k8s.io/kubernetes@$K8S_VERSION" >&2
# -trimpath and no VCS stamping: the binaries only serve tests. The version
# is stamped so the server reports what it is.
minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
tmp=$(mktemp -d "$DIR/out.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
pkgs=()
for c in "${CMDS[@]}"; do
	pkgs+=("k8s.io/kubernetes/cmd/$c")
done
# One invocation: the packages they share compile once.
$GO build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}" >&2
for c in "${CMDS[@]}"; do
	mv "$tmp/$c" "$BIN/"
done
echo "build-kube: done" >&2
echo "$BIN"
