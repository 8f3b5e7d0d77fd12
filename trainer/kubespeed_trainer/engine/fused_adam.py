"""torch's fused Adam/AdamW step without torch.optim's per-step Python around its kernel.

With `fused=True`, `torch.optim.AdamW.step` ends in one kernel call per group
(`torch._fused_adamw_`), but before it, every step, it walks every parameter to
gather its gradient and state, checks each one, groups the lists by device and
dtype, and wraps it all in the profiler's and the hooks' wrapper. On a small
model that Python is as long as the kernel: 1.0 of 2.1 ms a step for the
Shakespeare GPT's 52 tensors on 2 CPU cores. Here the lists of parameters and
state are gathered once and only the gradients are read each step; the kernel
and its arguments are torch's own, so the update is bitwise torch's
(tests/unit/trainer/test_fused_adam.py).

torch's step runs instead whenever the lists could be stale or the case is one
the short path does not cover: before the state exists (it is created at the
first step), a parameter without a gradient (torch skips it), state or groups
replaced (`load_state_dict`), step hooks, a closure, a tensor learning rate,
complex parameters, mixed devices or dtypes in a group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import optimizer as torch_optimizer


@dataclass
class _Group:
    group: dict[str, Any]
    params: list[torch.Tensor]
    exp_avgs: list[torch.Tensor]
    exp_avg_sqs: list[torch.Tensor]
    max_exp_avg_sqs: list[torch.Tensor]
    steps: list[torch.Tensor]


@dataclass
class _Plan:
    state: Any
    param_groups: list[dict[str, Any]]
    groups: list[_Group]

    def current(self, optimizer: torch.optim.Optimizer) -> bool:
        """Still the optimizer's lists: `load_state_dict` replaces the state and the groups, never edits them."""
        return (optimizer.state is self.state and optimizer.param_groups is self.param_groups
                and all(g.params is g.group["params"] for g in self.groups))


def streamline(optimizer: Any) -> bool:
    """Give a fused torch Adam/AdamW the short step; True when it has it."""
    if (not isinstance(optimizer, torch.optim.Adam)
            or not all(group.get("fused") and not group.get("differentiable") for group in optimizer.param_groups)):
        return False
    torch_step: Callable[..., Any] = optimizer.step  # bound, and wrapped by the LR scheduler's step counter
    plan: _Plan | None = None

    def step(closure: Callable[[], Any] | None = None) -> Any:
        nonlocal plan
        if closure is None and not _hooked(optimizer):
            if plan is None or not plan.current(optimizer):
                plan = _plan(optimizer)
            if plan is not None and _run(plan, optimizer):
                # What the LR scheduler's wrapper of the step records, so it does not warn.
                optimizer._opt_called = True
                return None
        plan = None  # torch's step may create state
        return torch_step(closure)

    step._wrapped_by_lr_sched = True  # it calls the scheduler's wrapper, or records what that would
    optimizer.step = step
    return True


def _hooked(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks)


def _plan(optimizer: torch.optim.Optimizer) -> _Plan | None:
    """The lists torch's step would gather, or None where the short path does not apply (yet)."""
    groups = []
    for group in optimizer.param_groups:
        params = group["params"]
        if not params:
            continue
        states = [optimizer.state.get(p) for p in params]
        if any(not s or "exp_avg" not in s for s in states):
            return None
        first = params[0]
        if any(p.device != first.device or p.dtype != first.dtype or torch.is_complex(p) for p in params):
            return None
        if any(s["step"].device != first.device for s in states):
            return None
        amsgrad = group["amsgrad"]
        groups.append(_Group(group, params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                             [s["max_exp_avg_sq"] for s in states] if amsgrad else [], [s["step"] for s in states]))
    return _Plan(optimizer.state, optimizer.param_groups, groups)


def _run(plan: _Plan, optimizer: torch.optim.Optimizer) -> bool:
    """One step through the kernel; False, having changed nothing, where torch's step must run."""
    grads = []
    for g in plan.groups:
        group_grads = [p.grad for p in g.params]
        if any(grad is None or grad.is_sparse or grad.dtype != g.params[0].dtype for grad in group_grads):
            return False
        if isinstance(g.group["lr"], torch.Tensor):
            return False
        grads.append(group_grads)
    grad_scale = getattr(optimizer, "grad_scale", None)
    found_inf = getattr(optimizer, "found_inf", None)
    with torch.no_grad():
        for g, group_grads in zip(plan.groups, grads):
            group = g.group
            device = g.params[0].device
            beta1, beta2 = (float(b) for b in group["betas"])
            scale = None if grad_scale is None else grad_scale.to(device, non_blocking=True)
            inf = None if found_inf is None else found_inf.to(device, non_blocking=True)
            # AdamW is Adam with decoupled weight decay, and so is Adam(decoupled_weight_decay=True).
            kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
            torch._foreach_add_(g.steps, 1)
            kernel(g.params, group_grads, g.exp_avgs, g.exp_avg_sqs, g.max_exp_avg_sqs, g.steps,
                   amsgrad=group["amsgrad"], lr=group["lr"], beta1=beta1, beta2=beta2,
                   weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                   grad_scale=scale, found_inf=inf)
            if inf is not None:
                torch._foreach_sub_(g.steps, [inf] * len(g.steps))
    return True
