#!/usr/bin/env bash
# Builds kube-testenv (a real etcd + kube-apiserver for the tests, see main.go) and prints the
# path of the binary. Built once per version of the sources: the binary is cached under
# $PORTICO_KUBE_CACHE (default /var/tmp/portico-kube) by a hash of go.mod, go.sum, the Go
# sources, this script and the Go version, so a second call is instant. Go's own build and
# module caches (GOCACHE, GOMODCACHE) stay at their defaults and persist on the machine; a cold
# build takes several minutes on two cores.
#
# build.sh --check builds nothing: it prints the path if the cached binary matches the sources,
# else says what to run and fails (the tests use it, so they never run a stale build).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${PORTICO_KUBE_CACHE:-/var/tmp/portico-kube}
go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
[ -x "$go" ] || { echo "build.sh: Go not found (set GO or PATH); /usr/local/go/bin/go expected" >&2; exit 1; }

hash=$(cd "$here" && { "$go" version; cat build.sh go.mod go.sum ./*.go; } | sha256sum | cut -c1-16)
bin="$cache/kube-testenv-$hash"
link="$cache/kube-testenv"

if [ "${1:-}" = "--check" ]; then
  if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
  fi
  echo "kube-testenv is missing or older than tests/kube/: run tests/kube/build.sh (tests/setup does)" >&2
  exit 1
fi

mkdir -p "$cache"
# One build at a time (tests/setup and a developer may both ask).
exec 9>"$cache/.lock"
flock 9
if [ ! -x "$bin" ]; then
  k8s=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
  minor=$(echo "$k8s" | cut -d. -f2)
  pkg=k8s.io/component-base/version
  # The release's version, so /version and kubectl report it (and not v0.0.0-master).
  ldflags="-X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  echo "build.sh: building kube-testenv ($k8s) into $bin; the first build takes minutes" >&2
  start=$(date +%s)
  # go.sum is complete and committed: a build never edits the checkout (-mod=readonly).
  (cd "$here" && GOFLAGS="-mod=readonly -buildvcs=false" "$go" build -ldflags "$ldflags" -o "$bin.tmp" .)
  mv "$bin.tmp" "$bin"
  echo "build.sh: built in $(( $(date +%s) - start )) s" >&2
  # Older builds are not needed any more.
  find "$cache" -maxdepth 1 -name 'kube-testenv-*' ! -name "kube-testenv-$hash" -delete
fi
ln -sfn "$bin" "$link"
echo "$link"
