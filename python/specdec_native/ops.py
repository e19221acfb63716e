"""The core's CPU kernels on numpy arrays (float32 activations; weights packed as float32,
bfloat16, float16, int8 or int4), for tests and for benchmarking the kernels themselves.

    w = ops.PackedWeight(weight_f32, "int8"); y = ops.matmul(x, w)
    ops.paged_attention(q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_last_page_len,
                        custom_mask=None, mask_indptr=None)
"""
import numpy as np

from ._core import ops as _ops

PackedWeight = _ops.PackedWeight
matmul = _ops.matmul
rmsnorm = _ops.rmsnorm
silu_mul = _ops.silu_mul
embedding = _ops.embedding
paged_attention = _ops.paged_attention
processed_probs = _ops.processed_probs
sample = _ops.sample
verify_tree = _ops.verify_tree
philox_uniform = _ops.philox_uniform
philox4x32 = _ops.philox4x32
cpu_isa = _ops.cpu_isa
available_cpu_isas = _ops.available_cpu_isas
set_cpu_isa = _ops.set_cpu_isa
set_num_threads = _ops.set_num_threads
num_threads = _ops.num_threads
measure_read_bandwidth = _ops.measure_read_bandwidth


def rope_inv_freq(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """Inverse RoPE frequencies as Hugging Face computes them (float32)."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def rope(x: np.ndarray, positions: np.ndarray, theta: float = 10000.0, inv_freq=None) -> np.ndarray:
    """Rotate-half RoPE of x [tokens, heads, head_dim] at int32 positions [tokens]."""
    if inv_freq is None:
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise ValueError("x: expected a 3-d float32 array [tokens, heads, head_dim]")
        inv_freq = rope_inv_freq(x.shape[-1], theta)
    return _ops.rope(x, positions, inv_freq)


def tree_mask(prefix: int, parents) -> np.ndarray:
    """The custom_mask rows of draft-tree nodes appended after `prefix` committed tokens
    (parents[i] < i; -1 hangs off the prefix): node i sees the prefix, its ancestors and itself.
    Shape [len(parents), prefix + len(parents)], bool."""
    n = len(parents)
    m = np.zeros((n, prefix + n), bool)
    m[:, :prefix] = True
    for i in range(n):
        j = i
        while j >= 0:
            m[i, prefix + j] = True
            j = parents[j]
    return m
