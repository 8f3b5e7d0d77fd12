"""The short fused Adam/AdamW step updates exactly as torch's own step, and hands back to it where it must."""

from __future__ import annotations

import copy

import pytest
import torch

from kubespeed_trainer.engine import fused_adam


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))


def _optimizer(model: torch.nn.Module, kind: str = "adamw", **kwargs) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, lr=1e-2, betas=(0.9, 0.99), fused=True, **kwargs)


def _pair(kind: str = "adamw", **kwargs):
    """(reference model, optimizer, scheduler), (streamlined model, optimizer, scheduler): equal to start with."""
    out = []
    for short in (False, True):
        model = _model()
        opt = _optimizer(model, kind, **kwargs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        if short:
            assert fused_adam.streamline(opt)
        out.append((model, opt, sched))
    return out


def _grads(model: torch.nn.Module, seed: int, skip: set[int] = frozenset()) -> None:
    gen = torch.Generator().manual_seed(seed)
    for i, p in enumerate(model.parameters()):
        p.grad = None if i in skip else torch.randn(p.shape, generator=gen)


def _step(model, opt, sched, seed: int, scale: float | None = None, skip=frozenset()) -> None:
    _grads(model, seed, skip)
    if scale is not None:
        opt.grad_scale = torch.tensor(scale)
    opt.step()
    sched.step()


def _assert_same(a: torch.nn.Module, oa: torch.optim.Optimizer, b: torch.nn.Module, ob: torch.optim.Optimizer) -> None:
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for key in sa["state"]:
        for name, value in sa["state"][key].items():
            assert torch.equal(value, sb["state"][key][name]), (key, name)


@pytest.mark.parametrize("kind,kwargs", [("adamw", {}), ("adam", {"weight_decay": 0.01}), ("adamw", {"amsgrad": True}),
                                         ("adamw", {"maximize": True})])
def test_the_short_step_updates_bitwise_as_torch_does(kind, kwargs):
    (ma, oa, sa), (mb, ob, sb) = _pair(kind, **kwargs)
    for step in range(12):
        scale = 1.0 + step % 3 if step % 2 else None  # the clip factor folded into the step, some steps
        _step(ma, oa, sa, step, scale)
        _step(mb, ob, sb, step, scale)
    _assert_same(ma, oa, mb, ob)
    assert ob.param_groups[0]["lr"] == oa.param_groups[0]["lr"] != 1e-2


def test_a_step_with_found_inf_is_skipped_as_torch_skips_it():
    (ma, oa, sa), (mb, ob, sb) = _pair()
    for step in range(6):
        for opt in (oa, ob):
            opt.found_inf = torch.tensor(1.0 if step == 3 else 0.0)
        _step(ma, oa, sa, step, scale=2.0)
        _step(mb, ob, sb, step, scale=2.0)
    _assert_same(ma, oa, mb, ob)
    assert all(float(s["step"]) == 5.0 for s in ob.state_dict()["state"].values())


def test_the_short_step_runs_its_own_path_after_the_first(monkeypatch):
    (_, _, _), (mb, ob, sb) = _pair()
    _step(mb, ob, sb, 0)  # torch's step creates the state
    calls = []
    original = torch._fused_adamw_

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "_init_group", lambda *a, **k: pytest.fail("torch's step ran"))
    monkeypatch.setattr(torch, "_fused_adamw_", counting)
    for step in range(1, 4):
        _step(mb, ob, sb, step)
    assert calls == [2, 4] * 3  # one kernel call per group: the 2 matrices, then the 2 biases and the norm's 2


def test_a_parameter_without_a_gradient_is_left_alone_as_torch_leaves_it():
    (ma, oa, sa), (mb, ob, sb) = _pair()
    for step in range(6):
        skip = {1} if step in (2, 3) else set()
        _step(ma, oa, sa, step, skip=skip)
        _step(mb, ob, sb, step, skip=skip)
    _assert_same(ma, oa, mb, ob)
    steps = {float(s["step"]) for s in ob.state_dict()["state"].values()}
    assert steps == {4.0, 6.0}


def test_loading_a_state_dict_mid_run_is_followed():
    (ma, oa, sa), (mb, ob, sb) = _pair()
    for step in range(3):
        _step(ma, oa, sa, step)
        _step(mb, ob, sb, step)
    saved_model, saved = copy.deepcopy(ma.state_dict()), copy.deepcopy(oa.state_dict())
    for step in range(3, 6):
        _step(ma, oa, sa, step)
        _step(mb, ob, sb, step)
    # Both go back to step 3 and train on: the short step must not keep the state it gathered before.
    for model, opt in ((ma, oa), (mb, ob)):
        model.load_state_dict(saved_model)
        opt.load_state_dict(copy.deepcopy(saved))  # load_state_dict adopts the tensors it is given
    for step in range(3, 8):
        _step(ma, oa, sa, step)
        _step(mb, ob, sb, step)
    _assert_same(ma, oa, mb, ob)
    assert all(float(s["step"]) == 8.0 for s in ob.state_dict()["state"].values())


def test_step_hooks_and_closures_still_run():
    (_, _, _), (mb, ob, sb) = _pair()
    _step(mb, ob, sb, 0)
    seen = []
    handle = ob.register_step_post_hook(lambda opt, args, kwargs: seen.append("hook"))
    _step(mb, ob, sb, 1)
    handle.remove()
    assert seen == ["hook"]
    _grads(mb, 2)
    assert ob.step(lambda: torch.tensor(3.0)) == torch.tensor(3.0)


def test_only_fused_adam_family_is_streamlined():
    model = _model()
    assert not fused_adam.streamline(torch.optim.AdamW(model.parameters(), fused=False))
    assert not fused_adam.streamline(torch.optim.SGD(model.parameters(), lr=0.1))
