"""Helpers shared by the structured-pruning tests (not a test module)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from secateur.structured import Plan, analyse, apply_plan, plan_pruning
from secateur.structured.splits import parse_size_key
from secateur.structured.tracker import split_param_key


def zero_pruned(model: nn.Module, plan: Plan) -> None:
    """Zero every output channel the plan removes (filters, biases, norm scales and shifts, and
    the removed slices of single parameters it names, such as a layer scale)."""
    with torch.no_grad():
        for path, keep in plan.keep_out.items():
            if parse_size_key(path) is not None:
                continue  # a split's part: its channels are zeroed where they are produced
            if split_param_key(path) is not None:
                target, dim = split_param_key(path)
                owner, _, name = target.rpartition(".")
                t = getattr(model.get_submodule(owner), name)
                gone = torch.ones(t.shape[dim], dtype=torch.bool)
                gone[keep] = False
                t.index_fill_(dim, gone.nonzero().reshape(-1), 0)
                continue
            m = model.get_submodule(path)
            if type(m).__name__ == "Conv1D":  # Hugging Face's Linear stored (in, out)
                gone = torch.ones(m.weight.shape[1], dtype=torch.bool)
                gone[keep] = False
                m.weight[:, gone] = 0
                m.bias[gone] = 0
                continue
            # in_proj: MultiheadAttention's rows; q / k / v_bias: timm EVA's packed qkv biases
            for name in ("weight", "bias", "in_proj_weight", "in_proj_bias", "q_bias", "k_bias", "v_bias"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor):
                    gone = torch.ones(t.shape[0], dtype=torch.bool)
                    gone[keep] = False
                    t[gone] = 0


@contextmanager
def kept_layer_norms(model: nn.Module, plan: Plan) -> Iterator[None]:
    """While active, each LayerNorm of ``model`` the plan prunes normalises over its kept channels
    only, and outputs 0 at the removed ones: with :func:`zero_pruned`, the model a pruned one equals."""
    kept = {id(m.weight): torch.tensor(keep) for path, keep in plan.keep_out.items()
            if split_param_key(path) is None and parse_size_key(path) is None
            and isinstance(m := model.get_submodule(path), nn.LayerNorm) and m.weight is not None}
    original = F.layer_norm

    def layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        k = kept.get(id(weight))
        if k is None:
            return original(x, shape, weight, bias, eps)
        y = torch.zeros_like(x)
        y[..., k] = original(x[..., k], (len(k),), weight[k], None if bias is None else bias[k], eps)
        return y

    F.layer_norm = layer_norm
    try:
        yield
    finally:
        F.layer_norm = original


def calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Give BatchNorm realistic running statistics (as in a trained model), then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def equivalence(model: nn.Module, x: torch.Tensor, ratio: float = 0.5, seed: int = 0,
                **kw) -> tuple[nn.Module, Plan, float, float]:
    """Prune a zeroed copy; returns (pruned, plan, max |diff|, max |reference output|).

    The reference is the model with the removed channels zeroed and its pruned LayerNorms over
    the kept channels (:func:`kept_layer_norms`): what a pruned model equals exactly.
    """
    calibrate_bn(model, x)
    graph = analyse(model, x[:1], **{k: v for k, v in kw.items() if k in ("ignore", "attention")})
    opts = {k: v for k, v in kw.items() if k not in ("ignore", "attention")}
    opts.setdefault("method", "random")
    plan = plan_pruning(model, graph, ratio=ratio, generator=torch.Generator().manual_seed(seed), **opts)
    zero_pruned(model, plan)
    with torch.no_grad(), kept_layer_norms(model, plan):
        ref = model(x)
    pruned = apply_plan(copy.deepcopy(model), plan, x[:1])
    with torch.no_grad():
        out = pruned(x)
    return pruned, plan, (out - ref).abs().max().item(), ref.abs().max().item()


def assert_equivalent(diff: float, scale: float) -> None:
    """Within 1e-5 absolutely and (for tiny outputs) 1e-4 relative to the output scale."""
    assert diff <= 1e-5, diff
    assert diff <= 1e-4 * scale or diff <= 1e-7, (diff, scale)


def train_step(model: nn.Module, x: torch.Tensor, num_classes: int = 10) -> None:
    """One SGD step must run and change the weights."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), torch.arange(len(x)) % num_classes)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
