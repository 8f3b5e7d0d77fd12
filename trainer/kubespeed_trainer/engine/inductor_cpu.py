"""How TorchInductor compiles a training model for the CPU: a C++ wrapper, and linear layers' bias adds left to the kernels that follow.

Both trim what a compiled CPU step spends beyond its arithmetic, and both are
what TorchInductor already has but leaves off on a CPU (an option, and a pass
it runs only on a GPU):

- The wrapper: a compiled graph is a list of calls (allocate a buffer, run a
  kernel or a GEMM, check a stride, free a buffer). In Python that list costs
  about a microsecond a line, some 800 lines for each step of a 4-layer GPT,
  which is a few percent of a small model's step on one core. Written in C++
  (`cpp_wrapper`), the same list costs a few seconds more of compiling once.
- The bias add: `nn.Linear` lowers to `addmm(bias, x, W)`, and Inductor fuses an
  `mm` and a following `add` back into `addmm` on a CPU (it unfuses them on a GPU,
  `unfuse_bias_add_to_pointwise`). MKL's addmm first copies the broadcast bias
  into its freshly allocated output, a pass over memory that no cache holds,
  about 0.5 ms for a [768, 512] output on one core of a shared VM, and then
  reads it back. The pass below runs after Inductor's own pattern passes and
  splits each addmm into `mm` and `add`, so the add joins the pointwise kernel
  that reads the output anyway (a GELU, a residual add, a layout copy).

A user's `TORCHINDUCTOR_CPP_WRAPPER` is left as they set it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

CPP_WRAPPER_ENV = "TORCHINDUCTOR_CPP_WRAPPER"

aten = torch.ops.aten


class UnfuseBiasAdd(CustomGraphPass):
    """Each `addmm(bias, a, b)` (beta and alpha 1, a 1-D or row bias, float32 or 64) becomes `mm(a, b) + bias` in a post-grad graph."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.find_nodes(op="call_function", target=aten.addmm.default)):
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                continue
            bias, a, b = node.args[:3]
            if not _is_row_bias(bias, node):
                continue
            with graph.inserting_before(node):
                product = graph.call_function(aten.mm.default, (a, b))
                total = graph.call_function(aten.add.Tensor, (product, bias))
            product.meta.update(node.meta)
            total.meta.update(node.meta)
            node.replace_all_uses_with(total)
            graph.erase_node(node)

    def uuid(self) -> bytes | None:
        # Part of the FX graph cache's key: a change to this file compiles again rather than load the old kernels.
        return get_hash_for_files((__file__,))


def _is_row_bias(bias: object, node: torch.fx.Node) -> bool:
    """A bias that broadcasts along rows ([N] or [1, N]) of a float32 or float64 output: the add that `addmm` would do.

    Half precision keeps its addmm: there the bias joins the float32 accumulator
    before the one rounding, where a separate add would round the product first.
    """
    if not isinstance(bias, torch.fx.Node):
        return False
    value, out = bias.meta.get("val"), node.meta.get("val")
    if not isinstance(value, torch.Tensor) or not isinstance(out, torch.Tensor):
        return False
    if out.dtype not in (torch.float32, torch.float64) or value.dtype != out.dtype:
        return False
    return value.dim() == 1 or (value.dim() == 2 and value.shape[0] == 1)


def settings(environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """TorchInductor's config for compiling a training model on the CPU."""
    chosen = {"post_grad_custom_post_pass": UnfuseBiasAdd()}
    if CPP_WRAPPER_ENV not in environ:
        chosen["cpp_wrapper"] = True
    return chosen


def apply() -> None:
    """Set `settings()` on TorchInductor's config for this process; models compile lazily, at their first call, with it."""
    import torch._inductor.config as inductor_config

    for name, value in settings().items():
        setattr(inductor_config, name, value)
