#!/usr/bin/env bash
# On a CUDA machine: every test (the `gpu` ones included, on CuPy) and the GPU benchmark, in one go.
# Offline machines: carry pure-Python wheels in .whl/ (array-api-compat, array-api-strict); they are
# installed to a temporary site dir first. Make them where there is internet, e.g.
#   pip download --no-deps -d .whl array-api-compat array-api-strict && echo /.whl/ >> .git/info/exclude
# Results go to $OUT (or docs/gpu-run/).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-docs/gpu-run}
mkdir -p "$out"
if ! python3 -c "import array_api_compat, array_api_strict" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/portablenn-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/portablenn-site:${PYTHONPATH:-}
  else
    python3 -m pip install -q array-api-compat array-api-strict || exit 1
  fi
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } 2>&1 | tee "$out/machine.txt"
python3 -m portablenn info 2>&1 | tee "$out/info.txt"
# every gpu test skips (and pytest passes) where CuPy cannot use the GPU: that must not read as a pass
python3 -c "from portablenn import backend; dev, why = backend.probe('cuda'); print('cuda:', why or 'usable');
raise SystemExit(dev is None)" 2>&1 | tee -a "$out/machine.txt"; cuda_rc=${PIPESTATUS[0]}
python3 -m pytest -q -ra -m gpu tests 2>&1 | tee "$out/pytest-gpu.txt"; gpu_rc=${PIPESTATUS[0]}
python3 -m pytest -q -ra tests 2>&1 | tee "$out/pytest-all.txt"; all_rc=${PIPESTATUS[0]}
python3 scripts/bench.py --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"; bench_rc=${PIPESTATUS[0]}
echo "cuda usable rc=$cuda_rc, gpu tests rc=$gpu_rc, all tests rc=$all_rc, bench rc=$bench_rc" | tee -a "$out/machine.txt"
[ "$cuda_rc" -eq 0 ] && [ "$gpu_rc" -eq 0 ] && [ "$all_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
