#!/usr/bin/env bash
# Builds the `cascade` container image FROM scratch, without pulling anything.
#
#   deploy/build-image.sh [--release|--debug] [--binary PATH] [--tag NAME] [--no-strip] [--with-faketime]
#
# It builds the binary with cargo (release by default; --binary takes one already built),
# prepares a build context holding exactly the binary, the shared libraries `ldd` lists for it,
# the dynamic loader and a few files glibc reads, and runs `docker build` with the root
# Dockerfile. Honours CARGO_TARGET_DIR. The image is tagged cascade:latest unless --tag says
# otherwise; its size is printed at the end. --with-faketime (fault tests only) adds Debian's
# libfaketime at the host's path and labels the image `cascade.faketime=<path>`, so
# cascade-chaos can preload it to step a node's wall clock; nothing preloads it by default.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
profile=release
binary=
tag=cascade:latest
strip=1
faketime=
faketime_lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1

while [ $# -gt 0 ]; do
    case "$1" in
        --release) profile=release ;;
        --debug) profile=debug ;;
        --binary) binary=$2; shift ;;
        --tag) tag=$2; shift ;;
        --no-strip) strip=0 ;;
        --with-faketime) faketime=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$binary" ]; then
    target_dir=${CARGO_TARGET_DIR:-$repo/target}
    if [ "$profile" = release ]; then
        (cd "$repo" && cargo build --release -p cascade-server --bin cascade)
    else
        (cd "$repo" && cargo build -p cascade-server --bin cascade)
    fi
    binary=$target_dir/$profile/cascade
fi
[ -x "$binary" ] || { echo "no executable at $binary" >&2; exit 1; }

ctx=$(mktemp -d "${TMPDIR:-/tmp}/cascade-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/data" "$root/tmp"
chmod 1777 "$root/tmp"

cp "$binary" "$root/usr/local/bin/cascade"
if [ "$strip" = 1 ]; then
    # Debug info is most of a Rust binary's size; symbols stay, so panics still name functions.
    strip --strip-debug "$root/usr/local/bin/cascade"
fi

# Every library the dynamic loader will map, at the path ldd resolved it to, plus the loader
# itself (listed by ldd as a bare absolute path). `cp -L` copies the file a symlink names, so the
# image holds real files at the paths the binary asks for.
ldd_out=$(ldd "$binary" 2>&1 || true)
if echo "$ldd_out" | grep -q 'not a dynamic executable\|statically linked'; then
    echo "static binary: no libraries to copy"
else
    if echo "$ldd_out" | grep -q 'not found'; then
        echo "ldd cannot resolve every library:" >&2
        echo "$ldd_out" >&2
        exit 1
    fi
    echo "$ldd_out" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $1 ~ /^\// { print $1 }' | sort -u | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
        echo "library: $lib"
    done
fi

label=()
if [ -n "$faketime" ]; then
    [ -e "$faketime_lib" ] || { echo "--with-faketime: $faketime_lib is missing (apt-get install libfaketime)" >&2; exit 1; }
    # Its own needs (libc, libm) are the binary's, copied above.
    mkdir -p "$root$(dirname "$faketime_lib")"
    cp -L "$faketime_lib" "$root$faketime_lib"
    echo "library: $faketime_lib (for fault tests; not preloaded)"
    label=(--label "cascade.faketime=$faketime_lib")
fi

# glibc reads these: user and group names (the image runs as 65532), and where host names
# come from (Docker provides /etc/hosts and /etc/resolv.conf at run time).
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
cascade:x:65532:65532:cascade:/data:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
cascade:x:65532:
GROUP
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"

# /data must belong to the image's user (65532); the owners are written into the tar, which the
# Dockerfile ADDs (ADD keeps a local tar's owners), so this works without root on the host.
tar -C "$root" --numeric-owner --owner=0 --group=0 --exclude=./data -cf "$ctx/rootfs.tar" .
tar -C "$root" --numeric-owner --owner=65532 --group=65532 -rf "$ctx/rootfs.tar" ./data
rm -rf "$root"
cp "$repo/Dockerfile" "$ctx/Dockerfile"

docker build "${label[@]}" -t "$tag" "$ctx"
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "built $tag: $((size / 1024 / 1024)) MiB ($size bytes)"
