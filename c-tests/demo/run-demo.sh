#!/usr/bin/env bash
# The demo: make a small ext4 image with mke2fs from a folder, then list it and print a file
# through libuntorn. Exit 77 (skip) when mke2fs is missing.
set -euo pipefail
demo=${1:?usage: run-demo.sh path/to/untorn_demo}
export PATH="$PATH:/sbin:/usr/sbin"
command -v mke2fs >/dev/null || { echo "SKIP: mke2fs not installed (apt-get install e2fsprogs)"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree/docs"
echo "Hello from an ext4 image, read by untorn." > "$work/tree/hello.txt"
printf 'untorn: atomic writes for ext4 images\n' > "$work/tree/docs/README"
head -c 100000 /dev/urandom > "$work/tree/random.bin"
ln -s docs/README "$work/tree/readme-link"
truncate -s 32M "$work/demo.img"
mke2fs -q -F -t ext4 -d "$work/tree" "$work/demo.img"
out=$("$demo" "$work/demo.img" /hello.txt)
echo "$out"
grep -q "Hello from an ext4 image, read by untorn." <<<"$out"
grep -q "random.bin" <<<"$out"
