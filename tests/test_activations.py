"""benchmarks/bench_activations.py: its kernel models equal the reference ops, its byte count is exact on
a case worked by hand, and at the 1p36b shapes `selective` keeps what its policy says (per layer, worked
out from the shapes) for under 5% more FLOPs, while `full` keeps one hidden state per layer."""

from dataclasses import replace

import pytest
import torch

from benchmark_modules import load_benchmark
from megasci.model import get_config
from megasci.ops.attention import attention_reference
from megasci.ops.rmsnorm import rms_norm_reference
from megasci.ops.swiglu import swiglu_reference

bench = load_benchmark("bench_activations")


def test_kernel_models_equal_the_reference_ops_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.allclose(bench._rms_norm(x, w), rms_norm_reference(x, w))
    assert torch.autograd.gradcheck(lambda a, b: bench._rms_norm(a, b), (x, w))
    gate, up = (torch.randn(3, 7, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    assert torch.allclose(bench._SwiGLUModel.apply(gate, up), swiglu_reference(gate, up))
    assert torch.autograd.gradcheck(bench._SwiGLUModel.apply, (gate, up))
    q, k, v = (torch.randn(2, 6, 3, 4, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    assert torch.allclose(bench._attention(q, k, v), attention_reference(q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: bench._attention(a, b, c), (q, k, v))


def test_retained_bytes_of_a_linear_and_relu_by_hand():
    """relu keeps its output for backward, the linear keeps x (made before the forward: not counted) and
    its weight (a parameter): exactly the relu output, 4 x 16 float32, remains."""
    layer = torch.nn.Linear(8, 16, bias=False)
    x = torch.randn(4, 8)
    retained, out = bench.retained_activation_bytes(lambda: torch.relu(layer(x)), layer)
    assert retained == 4 * 16 * 4
    del out


def per_layer(mode, cfg, seq):
    """Bytes per token and FLOPs of one more block, at micro-batch 1 on the meta device."""
    rows = {
        n: next(
            r
            for r in bench.measure(replace(cfg, n_layers=n), "meta", torch.bfloat16, seq, 1, modes=("none", mode))
            if r["mode"] == mode
        )
        for n in (2, 3)
    }
    return (rows[3]["retained_bytes"] - rows[2]["retained_bytes"]) / seq, rows[3]["flops"] - rows[2]["flops"]


@pytest.fixture(scope="module")
def layers_1p36b():
    cfg, seq = get_config("1p36b"), 768
    with bench.kernel_models():
        return cfg, {mode: per_layer(mode, cfg, seq) for mode in ("none", "selective", "full")}


def test_full_keeps_one_hidden_state_per_layer(layers_1p36b):
    cfg, layers = layers_1p36b
    assert layers["full"][0] == 2 * cfg.hidden_size  # the block's bf16 input


def test_selective_keeps_its_policys_tensors_and_saves_a_third_for_little_compute(layers_1p36b):
    cfg, layers = layers_1p36b
    h, kv, f = cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_hidden_size
    # bf16: block input, q k v (matmul outputs), attention output, gate and up; fp32 log-sum-exp per head
    assert layers["selective"][0] == 2 * (h + h + 2 * kv + h + 2 * f) + 4 * cfg.n_heads
    assert layers["selective"][0] <= 0.70 * layers["none"][0]
    extra = layers["selective"][1] / layers["none"][1] - 1
    assert 0 < extra < 0.05
    assert layers["full"][1] / layers["none"][1] - 1 > 0.2  # full reruns the whole block forward


def test_kernel_models_are_backends_only_inside_their_context():
    from megasci import ops

    assert all(bench.KERNEL_MODEL not in ops.available_backends(op) for op in ("rms_norm", "swiglu", "attention"))
    with bench.kernel_models():
        assert ops.get_backend("attention") == bench.KERNEL_MODEL
    assert ops.get_backend("attention") != bench.KERNEL_MODEL
    assert bench.KERNEL_MODEL not in ops.available_backends("attention")
