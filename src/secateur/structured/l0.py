"""L0 hard-concrete gates (Louizos, Welling & Kingma 2018): the ``l0`` neuron / channel method.

Every prunable group of coupled channels (:mod:`secateur.structured.graph`) gets one gate per
channel, z = min(1, max(0, s·(ζ - gamma) + gamma)) with s = sigmoid((log u - log(1 - u) + log alpha) / β),
u ~ U(0, 1), β = 2/3, gamma = -0.1, ζ = 1.1 (the paper's). A training phase on a copy of the
baseline minimises the cross-entropy plus λ · Σ cost · P(z ≠ 0) / examples, where
P(z ≠ 0) = sigmoid(log alpha - β·log(-gamma / ζ)) is the expected L0 norm and a channel's cost is the
number of weights attached to it (so a gate on a wide filter costs more). At test time the gate
is deterministic, z = min(1, max(0, sigmoid(log alpha)·(ζ - gamma) + gamma)), and is folded into the
layer that produces the channel (its rows and bias; the norm layer's scale and shift when the
group has one), so a closed gate leaves a channel whose weights are exactly zero. The search
then removes channels physically with the existing surgery, lowest gated norm first: the closed
gates go first, exactly (a zero channel contributes nothing when the activation maps 0 to 0).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from secateur.analysis.metrics import zero_input
from secateur.errors import ConfigError
from secateur.search.pruner import Learned, Step, Trainer
from secateur.structured.graph import DependencyGraph, Group, Member, analyse
from secateur.structured.importance import _accumulate, group_method
from secateur.unstructured.masks import effective_state_dict

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # Louizos et al. 2018
LOG_ALPHA_INIT = 3.0  # from a trained baseline: every gate open (test-time z = 1) at first
PENALTY = 0.1  # λ: per weight attached to a channel, per training example
# Gates learn GATE_LR times faster than the weights: Adam moves a parameter by about lr a step, and
# a gate starting open (log alpha 3) closes below log alpha -2.4 (test-time z = 0), 5400 steps at
# the phase's lr 1e-3, more than a short phase has (5 epochs of MNIST at batch 64 under the cosine
# schedule: about 2150 lr-steps). log alpha = GATE_LR · θ, θ the trained parameter.
GATE_LR = 10.0
GATE = "l0_log_alpha_"  # the gates' parameter names on their first site during the phase
PHASE = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "lr_schedule": "cosine"}  # the paper's Adam


def expected_l0(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z ≠ 0) of each hard-concrete gate: sigmoid(log alpha - β·log(-gamma / ζ))."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def deterministic_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    """The deterministic test-time gates: min(1, max(0, sigmoid(log alpha)·(ζ - gamma) + gamma))."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def sample_gates(log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gates drawn from the hard-concrete distribution (differentiable in log alpha)."""
    u = torch.rand(log_alpha.shape, generator=generator).to(log_alpha.device).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _channel_dim(module: nn.Module) -> int:
    """The output axis that holds the channels (last for Linear / LayerNorm, 1 otherwise)."""
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1


def _sites(group: Group) -> list[Member]:
    """Where a group's gates multiply: its norm layers if it has any, else its producing layers."""
    norms = [m for m in group.members if m.role == "norm"]
    return norms or [m for m in group.members if m.role == "out"]


def _costs(model: nn.Module, group: Group) -> torch.Tensor:
    """Weights attached to each channel of ``group`` (its filters, its input columns, its norm params)."""
    def per(member: Member) -> torch.Tensor | None:
        w = getattr(model.get_submodule(member.module), "weight", None)
        if not isinstance(w, torch.Tensor):
            return None
        size = w.numel() // w.shape[1 if member.role == "in" else 0] if member.role != "norm" else 1
        return torch.full((w.shape[1 if member.role == "in" else 0],), float(size))

    return _accumulate(group, per).float()


class Gates(nn.Module):
    """One hard-concrete gate per channel of every group, applied to ``model`` by forward hooks.

    A pre-hook on the model draws the gates once per forward pass (training mode) or takes the
    test-time values (eval mode); a hook on every site multiplies its output channels.
    """

    def __init__(self, model: nn.Module, graph: DependencyGraph) -> None:
        super().__init__()
        self.groups = list(graph.groups)
        self.theta = nn.ParameterList([nn.Parameter(torch.full((g.size,), LOG_ALPHA_INIT / GATE_LR))
                                       for g in self.groups])
        self.costs = torch.cat([_costs(model, g) for g in self.groups]) if self.groups else torch.zeros(0)
        self._current: list[torch.Tensor] = []
        self._handles: list[Any] = []

    @property
    def log_alpha(self) -> list[torch.Tensor]:
        """Every group's log alpha (GATE_LR · θ)."""
        return [GATE_LR * theta for theta in self.theta]

    @torch.no_grad()
    def set_log_alpha(self, values: list[torch.Tensor]) -> None:
        """Set every group's log alpha (θ = values / GATE_LR)."""
        for theta, value in zip(self.theta, values):
            theta.copy_(value / GATE_LR)

    def values(self, training: bool) -> list[torch.Tensor]:
        """Every group's gates: drawn (training) or deterministic (eval)."""
        return [sample_gates(la) if training else deterministic_gates(la) for la in self.log_alpha]

    def penalty(self) -> torch.Tensor:
        """Σ cost · P(z ≠ 0) over every gate (the expected number of weights kept)."""
        kept = torch.cat([expected_l0(la) for la in self.log_alpha])
        return (kept * self.costs.to(kept.device)).sum()

    def attach(self, model: nn.Module) -> None:
        """Hook the gates into ``model`` and put their log alpha among its parameters, so an optimiser
        built from ``model.parameters()`` trains them (both undone by :meth:`detach`)."""
        def draw(module: nn.Module, args: object) -> None:
            self._current = self.values(module.training)

        self._handles.append(model.register_forward_pre_hook(draw))
        for index, group in enumerate(self.groups):
            model.get_submodule(_sites(group)[0].module).register_parameter(f"{GATE}{index}", self.theta[index])
            for site in _sites(group):
                self._handles.append(model.get_submodule(site.module).register_forward_hook(
                    self._gate_hook(index, site)))

    def _gate_hook(self, index: int, site: Member) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
            z = self._current[index][site.channel.to(output.device)]
            dim = _channel_dim(module) % output.dim()
            factor = torch.ones(output.shape[dim], device=output.device, dtype=output.dtype)
            factor = factor.index_put((site.positions.to(output.device),), z.to(output.dtype))
            shape = [1] * output.dim()
            shape[dim] = -1
            return output * factor.view(shape)

        return hook

    def detach(self, model: nn.Module) -> None:
        """Remove the hooks and the gate parameters from ``model``."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for index, group in enumerate(self.groups):
            delattr(model.get_submodule(_sites(group)[0].module), f"{GATE}{index}")

    @torch.no_grad()
    def fold(self, model: nn.Module) -> None:
        """Multiply every site's weight rows and bias by its test-time gates (the gated model, hook-free)."""
        for group, z in zip(self.groups, self.values(training=False)):
            for site in _sites(group):
                module = model.get_submodule(site.module)
                for name in ("weight", "bias"):
                    p = getattr(module, name, None)
                    if isinstance(p, torch.Tensor):
                        shape = [-1] + [1] * (p.dim() - 1)
                        p[site.positions] *= z[site.channel].view(shape).to(p.device, p.dtype)


def _check_sites(model: nn.Module, graph: DependencyGraph) -> None:
    for group in graph.groups:
        for site in _sites(group):
            if not isinstance(getattr(model.get_submodule(site.module), "weight", None), torch.Tensor):
                raise ConfigError(f"l0 gates fold into {site.module}'s weight, and it has none (e.g. a norm layer "
                                  "without affine parameters); use another method or ignore= that layer")


def l0_step(gates: Gates, examples: int, penalty: float = 1.0) -> Step:
    """The training step: cross-entropy + λ · expected weights kept / examples (λ = PENALTY · ``penalty``)."""
    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y) + penalty * PENALTY * gates.penalty() / examples

    return step


def learn_l0(baseline: nn.Module, targets: tuple[str, ...], trainer: Trainer, *, input_shape: tuple[int, ...],
             ignore: tuple[str, ...] = (), attention: str = "heads") -> Learned:
    """The training phase: gates trained with the network on a copy, then folded into its weights.

    ``scores`` are each group's test-time gates (the groups of the baseline's architecture).
    """
    model = copy.deepcopy(baseline)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    graph = analyse(model, zero_input(model, input_shape, 1, device), ignore=ignore, attention=attention)
    _check_sites(model, graph)
    gates = Gates(model, graph)
    gates.attach(model)
    trainer.fit(model, l0_step(gates, trainer.examples, trainer.penalty), dict(PHASE))
    gates.detach(model)
    gates.fold(model)
    z = {g.name: v.detach().cpu() for g, v in zip(gates.groups, gates.values(training=False))}
    weights = {k: v.detach().cpu().clone() for k, v in effective_state_dict(model).items()}
    open_gates = {name: int((v > 0).sum()) for name, v in z.items()}
    return Learned(weights, z, {"epochs": trainer.epochs, "open": open_gates,
                                "channels": {g.name: g.size for g in gates.groups}})


@group_method("l0", needs=("learned",), learn=learn_l0)
def l0(model: nn.Module, graph: DependencyGraph, **_: Any) -> dict[str, torch.Tensor]:
    """Louizos et al. 2018: hard-concrete L0 gates trained first, folded in; closed gates go first, then the weakest."""
    def per(member: Member) -> torch.Tensor | None:
        if member.role == "in":
            return None
        m = model.get_submodule(member.module)
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor):
            return None
        rows = w.detach().reshape(w.shape[0], -1).pow(2).sum(1)
        b = getattr(m, "bias", None)
        return rows + b.detach().pow(2) if isinstance(b, torch.Tensor) else rows

    return {g.name: _accumulate(g, per).sqrt() for g in graph.groups}
