"""The CUDA extension: built wherever nvcc is found (SPECDEC_CUDA=AUTO), imported only where a GPU
is present. Its ops are checked against the CPU ops; without a GPU those tests skip."""
import importlib.util
import os
import shutil

import numpy as np
import pytest

from specdec_native import cuda, ops

needs_gpu = pytest.mark.skipif(cuda.gpu_count() == 0, reason="no CUDA GPU on this machine")


@pytest.mark.skipif(shutil.which("nvcc") is None or os.environ.get("SPECDEC_CUDA") == "OFF",
                    reason="nvcc not found: the CUDA extension is not built")
def test_cuda_extension_is_built_where_nvcc_exists():
    spec = importlib.util.find_spec("specdec_native._cuda")
    assert spec is not None and spec.origin and os.path.getsize(spec.origin) > 0


def test_no_gpu_means_cpu_only():
    if cuda.gpu_count() == 0:
        assert cuda.extension() is None and not cuda.cuda_available()
    else:
        assert cuda.extension() is not None


@needs_gpu
def test_cuda_rmsnorm_matches_cpu():
    ext = cuda.extension()
    rng = np.random.default_rng(0)
    for m, d in [(1, 64), (7, 576), (33, 1536), (2, 4097)]:
        x = rng.standard_normal((m, d), dtype=np.float32)
        w = rng.standard_normal(d, dtype=np.float32)
        np.testing.assert_allclose(ext.rmsnorm(x, w, 1e-5), ops.rmsnorm(x, w, 1e-5), rtol=1e-5, atol=1e-5)


@needs_gpu
def test_cuda_rmsnorm_rejects_bad_shapes():
    ext = cuda.extension()
    with pytest.raises(ValueError, match="hidden size"):
        ext.rmsnorm(np.zeros((2, 8), np.float32), np.zeros(7, np.float32), 1e-5)
