#!/usr/bin/env bash
# Build upstream Kubernetes and kubernetes-csi binaries from the Go module
# proxy, for the end-to-end test. `go install module@version` refuses these
# modules (their go.mod has replace directives), so each is built from a
# throw-away wrapper module that requires it at the wanted version, copies its
# require block and its replace lines, and turns its local replaces into the
# published sibling modules at the matching version.
#
#   build-upstream.sh OUTDIR MODULE VERSION PKG...
#
# A PKG written test:IMPORTPATH is a package's test binary (go test -c),
# OUTDIR/<last element>.test: the Kubernetes e2e suite is one.
# The binaries land in OUTDIR (static: CGO_ENABLED=0) with a stamp file
# naming what was built; a second run with the same stamp does nothing.
set -euo pipefail
out=$1 mod=$2 ver=$3; shift 3
pkgs=("$@")
stamp="$out/.stamp-$(echo "$mod@$ver ${pkgs[*]}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
	exit 0
fi
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/hostpath-e2e-wrap.XXXXXX")
trap 'rm -rf "$work"' EXIT

export GOFLAGS=-mod=mod CGO_ENABLED=0
gomod=$(cd "$work" && go mod download -json "$mod@$ver" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[ -f "$gomod" ] || { echo "build-upstream: no go.mod for $mod@$ver" >&2; exit 1; }

# The k8s.io staging modules are published as v0.<minor>.<patch> of
# k8s.io/kubernetes v1.<minor>.<patch>.
stagever=v0.${ver#v1.}
{
	echo "module hostpath-csi.e2e/wrapper"
	echo
	grep '^go ' "$gomod"
	echo
	echo "require $mod $ver"
	# Every require block and single require line, verbatim.
	awk '/^require \($/{inb=1; print; next} inb{print; if ($0==")") {inb=0}; next} /^require /{print}' "$gomod"
	echo "replace ("
	awk -v mod="$mod" -v ver="$ver" -v stagever="$stagever" '
		function emit(lhs, rhs,    n, p) {
			n = split(rhs, p, " ")
			if (p[1] ~ /^\.\/staging\/src\//) { sub(/^\.\/staging\/src\//, "", p[1]); print "\t" lhs " => " p[1] " " stagever; return }
			if (p[1] ~ /^\.\//) {
				# A sibling module in the same repository, e.g. ./client for
				# .../client/v8: the published module at the same version.
				print "\t" lhs " => " lhs " " ver; return
			}
			print "\t" lhs " => " rhs
		}
		/^replace \($/{inb=1; next}
		inb && $0==")" {inb=0; next}
		inb && /=>/ {split($0, a, "=>"); l=a[1]; r=a[2]; gsub(/^[ \t]+|[ \t]+$/, "", l); gsub(/^[ \t]+|[ \t]+$/, "", r); emit(l, r); next}
		/^replace .*=>/ {s=$0; sub(/^replace /, "", s); split(s, a, "=>"); l=a[1]; r=a[2]; gsub(/^[ \t]+|[ \t]+$/, "", l); gsub(/^[ \t]+|[ \t]+$/, "", r); emit(l, r)}
	' "$gomod"
	echo ")"
} >"$work/go.mod"

case $mod in
k8s.io/kubernetes)
	minor=${ver#v1.}; minor=${minor%%.*}
	ldflags="-s -w"
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags="$ldflags -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
	done ;;
*) ldflags="-s -w -X main.version=$ver" ;;
esac

cd "$work"
echo "build-upstream: $mod@$ver: ${pkgs[*]}" >&2
go mod download
bins=() tests=()
for p in "${pkgs[@]}"; do
	case $p in test:*) tests+=("${p#test:}") ;; *) bins+=("$p") ;; esac
done
[ ${#bins[@]} -eq 0 ] || go build -trimpath -ldflags "$ldflags" -o "$out/" "${bins[@]}"
for p in ${tests[@]+"${tests[@]}"}; do
	go test -c -trimpath -ldflags "$ldflags" -o "$out/$(basename "$p").test" "$p"
done
touch "$stamp"
