#!/usr/bin/env bash
# Fill .whl/ (repo root, git-ignored) with exactly the pure-Python wheels the lent GPU machine lacks:
# array-api-compat and array-api-strict, pinned. Run it where there is internet (PyPI), before
# scripts/gpu_check.sh, and carry .whl/ beside the repo; gpu_check.sh unpacks them there, offline.
# Idempotent: a wheel already present is kept, other versions of these packages and anything else
# in .whl/ are removed. Prints what .whl/ holds.
#
# The pins are the versions the test suite runs with here; both support NumPy 2.x and CPython 3.12
# (the GPU machine's), and are py3-none-any wheels, so the target's Python version is only a filter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PINS=(array-api-compat==1.16.0 array-api-strict==2.6.1)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

mkdir -p .whl
wanted=()
for pin in "${PINS[@]}"; do
  name=${pin%%==*} version=${pin#*==}
  file_prefix="${name//-/_}-${version}-"
  if ! compgen -G ".whl/${file_prefix}*.whl" > /dev/null; then
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip download -q --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation py --abi none --platform any -d .whl "$pin"
  fi
  found=$(compgen -G ".whl/${file_prefix}*.whl" | head -n 1)
  case $found in
    *-none-any.whl) wanted+=("$(basename "$found")") ;;
    *) echo "gpu_wheels.sh: no pure-Python wheel for $pin in .whl/ ($found)" >&2; exit 1 ;;
  esac
done

for file in .whl/*; do
  base=$(basename "$file")
  keep=0
  for w in "${wanted[@]}"; do [ "$base" = "$w" ] && keep=1; done
  if [ "$keep" = 0 ]; then echo "removed .whl/$base (not one of the pinned wheels)"; rm -rf -- "$file"; fi
done

echo ".whl/ holds (carry it beside the repo to the GPU machine):"
for w in "${wanted[@]}"; do
  printf '  %-45s %8s bytes  sha256 %s\n' "$w" "$(wc -c < ".whl/$w")" "$(sha256sum ".whl/$w" | cut -c1-16)"
done
