"""How TorchInductor compiles for the CPU: linear layers' bias adds left out of addmm, and the C++ wrapper."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten


@pytest.fixture
def inductor_cpu(tmp_path, monkeypatch):
    """The module, imported with Inductor's cache in tmp_path: importing Inductor writes its cache directory into
    the environment, where processes this one starts later (the trainer tests' ranks) would find it."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    from kubespeed_trainer.engine import inductor_cpu

    return inductor_cpu


@pytest.mark.parametrize(
    "name, bias_shape, kwargs, dtype, unfused",
    [
        ("a linear layer's bias", (6,), {}, torch.float32, True),
        ("a bias held as one row", (1, 6), {}, torch.float32, True),
        ("in float64", (6,), {}, torch.float64, True),
        ("a full matrix is not a bias", (4, 6), {}, torch.float32, False),
        ("a scaled product", (6,), {"alpha": 2.0}, torch.float32, False),
        ("a scaled bias", (6,), {"beta": 0.5}, torch.float32, False),
        ("bf16 adds the bias before rounding", (6,), {}, torch.bfloat16, False),
    ],
)
def test_addmm_with_a_row_bias_becomes_mm_and_add_with_the_same_result(name, bias_shape, kwargs, dtype, unfused, inductor_cpu):
    torch.manual_seed(0)
    bias, a, b = torch.randn(bias_shape, dtype=dtype), torch.randn(4, 5, dtype=dtype), torch.randn(5, 6, dtype=dtype)
    module = make_fx(lambda bias, a, b: aten.addmm.default(bias, a, b, **kwargs), tracing_mode="fake")(bias, a, b)
    inductor_cpu.UnfuseBiasAdd()(module.graph)
    module.recompile()
    targets = [node.target for node in module.graph.nodes if node.op == "call_function"]
    assert targets == ([aten.mm.default, aten.add.Tensor] if unfused else [aten.addmm.default]), name
    torch.testing.assert_close(module(bias, a, b), aten.addmm.default(bias, a, b, **kwargs))


def test_the_cpp_wrapper_is_on_unless_the_user_set_it(inductor_cpu):
    assert inductor_cpu.settings({})["cpp_wrapper"] is True
    for chosen in ("0", "1"):
        assert "cpp_wrapper" not in inductor_cpu.settings({inductor_cpu.CPP_WRAPPER_ENV: chosen})
    assert isinstance(inductor_cpu.settings({})["post_grad_custom_post_pass"], inductor_cpu.UnfuseBiasAdd)


def mlp_step(settings: dict | None) -> tuple[torch.Tensor, list[torch.Tensor], list[str]]:
    """One step of a small MLP, compiled under `settings` (eagerly for None): its output, gradients and
    generated code (forward, backward; none when eager)."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(32, 8))
    x = torch.randn(24, 16)

    def step(forward):
        out = forward(x)
        out.square().sum().backward()
        return out

    if settings is None:
        return step(model), [p.grad for p in model.parameters()], []
    torch._dynamo.reset()
    try:
        with torch._inductor.config.patch(settings):
            out, code = run_and_get_code(step, torch.compile(model))
    finally:
        torch._dynamo.reset()
    return out, [p.grad for p in model.parameters()], code


def test_a_compiled_mlp_calls_no_addmm_and_computes_what_the_eager_one_does(inductor_cpu):
    # Without the pass Inductor fuses each linear layer's mm and bias add into one addmm call on a CPU.
    _, _, fused = mlp_step({"cpp_wrapper": True})
    assert fused[0].count("aoti_torch_cpu_addmm_out") == 2
    out, grads, code = mlp_step(inductor_cpu.settings({}))
    forward, backward = code
    assert "addmm_out" not in forward and forward.count("aoti_torch_cpu_mm_out") == 2
    assert "addmm_out" not in backward
    expected, expected_grads, _ = mlp_step(None)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
