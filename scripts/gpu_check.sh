#!/usr/bin/env bash
# The GPU check: decisive evidence from a briefly lent CUDA machine, in one command that surely finishes.
#
#   bash scripts/gpu_wheels.sh                       # where there is internet: fills .whl/
#   bash scripts/gpu_check.sh [--out DIR]            # on the GPU machine (.whl/ carried beside the repo)
#   bash scripts/gpu_check.sh --rehearse [--out DIR] # every stage on the CPU (cpu for cuda), < 2 min
#
# Stages, in order of value, each a separate process under its own `timeout` (scripts/gpu_stages.py),
# so a crash or hang loses that stage only. The limits add up to 435 s (worst case ~7.9 min with
# timeout's 5 s grace to SIGKILL each); about 3-5 min are expected:
#   wheels    10 s  unpack .whl/*.whl for array-api-compat/-strict where they do not import (never online)
#   probe     15 s  can CuPy use a GPU? if not (and not --rehearse): exit 3, saying why in summary.txt
#   versions  30 s  nvidia-smi, CuPy, CUDA runtime/driver, NVRTC, cuBLAS, NCCL, torch, portablenn info
#   cli       75 s  portablenn train --device cuda, the same with --cuda-graph, parity --devices cpu,cuda
#   parity    60 s  fast/generic/graph kernels x SGD/momentum/Adam x float32/float64 against NumPy
#   bench     90 s  one MNIST-shaped epoch per variant, interleaved, against PyTorch CUDA eager; targets;
#                   then 64 stacked members against one model (#20), then jax:cuda
#   pytest   120 s  pytest -m gpu tests (fails if CuPy is usable but every gpu test skipped)
#   nccl      35 s  a one-rank NCCL communicator and allreduce (raw, portablenn's, mpiexec -n 1 train)
#
# Output: at most 8 files in one folder (--out DIR, else $OUT, else out/gpu-check/ in the repo):
#   summary.txt (written first; a line per stage as it ends: name, PASS/FAIL/SKIP/TIMEOUT, seconds,
#   detail), machine.txt (wheels, probe, versions), cli.txt, parity.txt, bench.txt, bench.json,
#   pytest.txt, nccl.txt.
# Exit: 0 when no stage FAILed or TIMEOUTed, 1 otherwise, 3 when CuPy cannot use a GPU (not --rehearse),
# 2 for bad arguments.
# Options for the tests: --stages a,b (wheels and probe always run), --limit NAME=SECONDS (lower only).
# Environment: PYTHON (default python3; --rehearse prefers .venv/bin/python when there is one).
set -uo pipefail

usage() { sed -n '2,6p' "$0"; }

rehearse=0 out_dir="" only=""
declare -A limit_override=()
while [ $# -gt 0 ]; do
  case $1 in
    --rehearse) rehearse=1 ;;
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }; out_dir=$2; shift ;;
    --out=*) out_dir=${1#--out=} ;;
    --stages) [ $# -ge 2 ] || { echo "gpu_check.sh: --stages needs a list" >&2; exit 2; }; only=",$2,"; shift ;;
    --limit) [[ ${2:-} =~ ^[a-z]+=[0-9]+$ ]] || { echo "gpu_check.sh: --limit NAME=SECONDS" >&2; exit 2; }
             limit_override[${2%%=*}]=${2#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out_dir=${out_dir:-${OUT:-$repo/out/gpu-check}}
if ! mkdir -p "$out_dir" || ! out_dir=$(cd "$out_dir" && pwd); then
  echo "gpu_check.sh: cannot use $out_dir" >&2
  exit 2
fi
cd "$repo" || exit 2

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ "$rehearse" = 1 ] && [ -x .venv/bin/python ]; then PY=$repo/.venv/bin/python
else PY=python3
fi
if [ "$rehearse" = 1 ]; then DEV=cpu bench_size=(--rounds 2 --rows 6000); else DEV=cuda bench_size=(--rounds 15); fi

site=$(mktemp -d "${TMPDIR:-/tmp}/portablenn-site.XXXXXX") || exit 2
trap 'rm -rf "$site"' EXIT
tf32_note=""
[ -n "${CUPY_TF32:-}" ] && tf32_note=" (CUPY_TF32=$CUPY_TF32 was set: unset, TF32 stays off)"
unset CUPY_TF32
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg

revision() {  # the commit, and whether the tree differs from it; the GPU machine's copy may have no .git
  local head
  head=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null) || { echo "(not a git checkout)"; return; }
  git -C "$repo" diff --quiet HEAD 2>/dev/null && echo "$head" || echo "$head + local changes"
}

summary=$out_dir/summary.txt
t0=$(date +%s.%N)
for name in machine.txt cli.txt parity.txt bench.txt bench.json pytest.txt nccl.txt; do  # a previous run's
  rm -f "$out_dir/$name"
done
{
  mode="device cuda"; [ "$rehearse" = 1 ] && mode="REHEARSAL on the cpu"
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname 2>/dev/null || echo '?'): $mode"
  echo "# python $PY; repo $repo at $(revision)$tf32_note"
  echo "# stage    status  seconds  detail"
} > "$summary"
cat "$summary"

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# run_stage NAME LIMIT FILE COMMAND...: COMMAND (plus --budget) under `timeout -k 5 LIMIT`, its output
# appended to FILE, then one line in summary.txt. The stage's status comes from its exit code (0 PASS,
# 77 SKIP, 124/137 TIMEOUT, else FAIL), the detail from its last "RESULT: " line. Sets $status.
failures=0
run_stage() {
  local name=$1 limit=$2 file=$out_dir/$3 began start rc detail
  shift 3
  status="" stage_rc=""
  if [ -n "$only" ] && [ "$name" != wheels ] && [ "$name" != probe ] && [[ $only != *",$name,"* ]]; then
    return 0
  fi
  if [ -n "${limit_override[$name]:-}" ] && [ "${limit_override[$name]}" -lt "$limit" ]; then
    limit=${limit_override[$name]}
  fi
  printf '\n===== stage %s (limit %s s) %s =====\n' "$name" "$limit" "$(date -u +%H:%M:%S)" >> "$file"
  start=$(wc -l < "$file")
  began=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" --budget $((limit > 8 ? limit - 3 : limit)) >> "$file" 2>&1 < /dev/null
  rc=$?
  stage_rc=$rc
  detail=$(tail -n +"$((start + 1))" "$file" | grep -a '^RESULT: ' | tail -n 1 | cut -d' ' -f3-)
  case $rc in
    0) status=PASS ;;
    77) status=SKIP ;;
    124|137) status=TIMEOUT; detail="over its limit of ${limit} s: ${detail:-no result}; see $(basename "$file")" ;;
    *) status=FAIL
       if [ -z "$detail" ]; then  # it ended without a RESULT line: its last words
         detail="exit $rc: $(tail -n +"$((start + 1))" "$file" | grep -a -v '^\s*$' | tail -n 1 | cut -c1-160)"
       fi ;;
  esac
  case $status in FAIL|TIMEOUT) failures=$((failures + 1)) ;; esac
  printf '%-8s %-7s %6s   %s\n' "$name" "$status" "$(elapsed "$began")" "$detail" | tee -a "$summary"
  return 0
}

stages=("$PY" scripts/gpu_stages.py)
run_stage wheels 10 machine.txt "${stages[@]}" wheels --target "$site"
if [ -n "$(ls -A "$site" 2>/dev/null)" ]; then export PYTHONPATH=$site:$PYTHONPATH; fi

run_stage probe 15 machine.txt "${stages[@]}" probe --device "$DEV"
# exit 3 (not rehearsing): no GPU (3), no answer in time, or a crash; a probe FAIL (1: the GPU works but
# portablenn does not import, e.g. no wheels) goes on, for what works without it (versions, raw NCCL)
if [ "$rehearse" = 0 ] && [ "$stage_rc" != 0 ] && [ "$stage_rc" != 1 ]; then
  echo "# exit 3 after $(elapsed "$t0") s: CuPy cannot use a GPU here (probe $status); no other stage was run" \
    | tee -a "$summary"
  exit 3
fi

run_stage versions 30 machine.txt "${stages[@]}" versions --device "$DEV"
run_stage cli 75 cli.txt "${stages[@]}" cli --device "$DEV"
run_stage parity 60 parity.txt "${stages[@]}" parity --device "$DEV"
run_stage bench 90 bench.txt "${stages[@]}" bench --device "$DEV" --json "$out_dir/bench.json" "${bench_size[@]}"
run_stage pytest 120 pytest.txt "${stages[@]}" pytest --device "$DEV"
run_stage nccl 35 nccl.txt "${stages[@]}" nccl --device "$DEV"

code=$((failures > 0 ? 1 : 0))
echo "# done in $(elapsed "$t0") s: $failures stage(s) FAIL or TIMEOUT; exit $code" | tee -a "$summary"
exit "$code"
