#!/usr/bin/env bash
# The one command for a lent GPU device machine (its image has PyTorch, not this project's storage stack):
# installs the carried wheels (.whl/, from benchmarks/gpu_wheels.sh) into /tmp/site, puts them and this
# checkout on PYTHONPATH, prints the environment, then runs benchmarks/gpu_check.py with the arguments given.
# What comes back under $OUT: gpu_check_results.md (the table for benchmarks/RESULTS.md), gpu_check.log
# (everything printed), environment.txt.
#   here:    bash benchmarks/gpu_wheels.sh
#   device:  run(command="bash benchmarks/gpu_device.sh", carry=[".whl"], timeout_s=580)
# Exit status: gpu_check.py's (0 every step ran, 1 a step failed), 2 when the set-up itself failed.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
out="${OUT:-/tmp/gpu_device_out}"
site="${GPU_SITE:-/tmp/site}"
mkdir -p "$out"
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "gpu_device: no wheels in .whl/; run 'bash benchmarks/gpu_wheels.sh' here and carry '.whl'" >&2
  exit 2
fi
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  "${wheels[@]}" || { echo "gpu_device: installing .whl/ into $site failed (above)" >&2; exit 2; }
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" - <<'PY' 2>&1 | tee "$out/environment.txt"
import platform, importlib
print("python", platform.python_version(), platform.machine())
for name in ("torch", "torchvision", "transformers", "numpy", "zarr", "numcodecs", "lmdb", "faiss", "crc32c",
             "PIL", "timm", "torch_geometric"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')} from {getattr(m, '__file__', '?')}")
    except Exception as e:  # report every missing part at once, then gpu_check fails on the first it needs
        print(f"{name} MISSING ({type(e).__name__}: {e})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_device: the environment report failed (above)" >&2; exit 2; }
"$py" benchmarks/gpu_check.py --out "$out/gpu_check_results.md" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
