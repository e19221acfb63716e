#!/usr/bin/env bash
# The first GPU run of issue 6, prepared to fit one device-machine lease (about 12 minutes on an
# H100/H200 with 16 cores): build the package there with nvcc, run every GPU test, memcheck the
# kernels' tests, then the benchmarks. Logs and JSON go to $OUT (the device tool's output folder;
# /tmp/gpu_out elsewhere). Each stage's exit status is in $OUT/status.txt; a failing stage does
# not stop the later ones.
#
#   bash bench/gpu_session.sh            # everything
#   STAGES="build tests" bash bench/gpu_session.sh
#
# With a 15-minute device budget (machine start included) and 10 minutes per command, run it as
# two back-to-back calls on the warm machine: STAGES="build tests", then STAGES="bench sanitizer"
# (the build stays in place while the machine is warm). Each stage's timeout bounds it.
#
# Needs on the machine: python3 with numpy, safetensors, tokenizers, torch, transformers,
# pytest, scikit-build-core, pybind11, cmake, ninja, nvcc (the device image has them all; gguf
# is not needed for these stages, hence --no-deps).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STAGES=${STAGES:-"build tests sanitizer bench"}
ARCH=${SPECDEC_CUDA_ARCH:-90}  # one architecture keeps the build short; CI builds 80 and 90
GPU_TESTS="tests/test_cuda.py tests/test_cuda_ops.py tests/test_cuda_attention.py tests/test_cuda_model.py"

stage() {  # stage NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/status.txt"
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
stage build 400 env SPECDEC_CUDA=ON SKBUILD_CMAKE_DEFINE="CMAKE_CUDA_ARCHITECTURES=$ARCH" \
  python3 -m pip install --no-build-isolation --no-deps -v .
stage tests 240 python3 -m pytest -q -p no:cacheprovider $GPU_TESTS
stage sanitizer 300 compute-sanitizer --tool memcheck --error-exitcode 1 \
  python3 -m pytest -q -p no:cacheprovider -x tests/test_cuda_ops.py tests/test_cuda_attention.py \
  tests/test_cuda_model.py -k "not chi_square and not follows and not large_vocab"
stage bench 300 bash -c "python3 bench/bench_cuda_attention.py --batch 1,8,32 --context 512,4096,32768 \
  --out $OUT/cuda_attention.json && python3 bench/bench_cuda_e2e.py --shape qwen1.5b --tokens 128 \
  --out $OUT/cuda_e2e.json && python3 bench/bench_cuda_e2e.py --shape qwen1.5b --dtype int8 --tokens 128 \
  --out $OUT/cuda_e2e_int8.json && python3 bench/bench_cuda_e2e.py --shape qwen1.5b --dtype int4 --tokens 128 \
  --out $OUT/cuda_e2e_int4.json"
cat "$OUT/status.txt"
