#!/usr/bin/env bash
# Build scripts/vcsim/main.go (govmomi's vCenter simulator, from Debian's golang-github-vmware-govmomi-dev)
# into build/vcsim/vcsim, offline. Idempotent: rebuilt only when the Go source changes. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
src=scripts/vcsim/main.go
out=build/vcsim
bin=$out/vcsim
stamp=$out/.source-$(sha256sum "$src" | cut -c1-16)
if [ -x "$bin" ] && [ -f "$stamp" ]; then echo "$PWD/$bin"; exit 0; fi
command -v go >/dev/null || { echo "vcsim: go is missing: apt-get install golang-go golang-github-vmware-govmomi-dev" >&2; exit 1; }
[ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ] || {
  echo "vcsim: govmomi is missing: apt-get install golang-github-vmware-govmomi-dev" >&2; exit 1; }
mkdir -p "$out/gopath/src/metavmm-vcsim"
cp "$src" "$out/gopath/src/metavmm-vcsim/main.go"
(cd "$out/gopath/src/metavmm-vcsim" && GO111MODULE=off GOPATH="$PWD/../..:/usr/share/gocode" GOPROXY=off \
  GOCACHE="$PWD/../../../cache" go build -o ../../../vcsim.new .) >&2
mv "$out/vcsim.new" "$bin"
rm -f "$out"/.source-*
touch "$stamp"
echo "$PWD/$bin"
