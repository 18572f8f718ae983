# Sourced by the device_*.sh scripts: the GPU machine's environment for one call.
# $OUT exists; wheels carried in .whl/ (the packages the machine lacks: zstandard, datasketch,
# langdetect, pylatexenc; `bash benchmarks/device_check.sh --fetch-wheels` fetches them here) are
# installed into /tmp/site; the repository and /tmp/site are on PYTHONPATH; Python output is unbuffered.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
