#!/usr/bin/env bash
# Download, on this machine (package registries reachable), the wheels the GPU device machine lacks
# (benchmarks/gpu_wheels.txt) into .whl/ (git-ignored) for the device's Python 3.12 on x86-64.
# Then the one device call:   run(command="bash benchmarks/gpu_device.sh", carry=[".whl"], timeout_s=580)
#   PYVER=3.11 bash benchmarks/gpu_wheels.sh /tmp/whl311   # the same set for another Python (a local check)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
pyver="${PYVER:-3.12}"
mkdir -p "$dest"
rm -f "$dest"/*.whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
grep -v '^\s*#' benchmarks/gpu_wheels.txt | grep -v '^\s*$' | while read -r req; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" -d "$dest" "$req" \
    || { echo "gpu_wheels: no wheel of $req for Python $pyver on x86-64; change its pin in benchmarks/gpu_wheels.txt" >&2; exit 1; }
done
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
echo "gpu_wheels: $(ls "$dest"/*.whl | wc -l) wheels, $((total / 1048576)) MiB in $dest (a device call carries at most 64 MiB with the tree)"
