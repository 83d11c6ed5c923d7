"""Sparse Variational Dropout (Molchanov, Ashukha & Vetrov 2017): the ``sparse-vd`` weight method.

Every target weight θ gets an additive noise variance sigma² (trained as log sigma²), so its dropout
rate is alpha = sigma² / θ² (log alpha = log sigma² - log θ²). A training phase on a copy of the baseline
minimises the data term plus the KL divergence to the log-uniform prior, in Molchanov's
approximation

    KL(alpha) ≈ k1 - k1·sigmoid(k2 + k3·log alpha) + ½·log(1 + 1/alpha),  k1 = 0.63576, k2 = 1.87320, k3 = 1.48695,

with the local reparametrisation trick (each pre-activation sampled from its Gaussian: mean
from θ, variance from sigma² and the squared inputs), the KL weight ramped from 0 to 1 over the
first :data:`RAMP` of the phase, Adam's learning rate decayed linearly to 0 (:data:`PHASE`). The
layers stay plain ``nn.Linear`` / ``nn.Conv2d``: sigma² is a
parameter on the copy and a forward hook adds the noise in training mode, so the learned
means *are* the weights the rounds start from. Weights with large log alpha are noise; the paper
drops those with log alpha > 3 (:data:`THRESHOLD`). Under the search a strength means one global
fraction of the weights, dropped in order of log alpha (highest first), so the search finds the
largest cut within the bound; :func:`threshold_masks` gives the paper's own cut.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from secateur.errors import ConfigError
from secateur.search.pruner import Learned, Step, Trainer
from secateur.unstructured.masks import effective_state_dict
from secateur.unstructured.methods import Level, Masks, keep_largest_globally, weight_method

K1, K2, K3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. 2017, eq. 14
THRESHOLD = 3.0  # log alpha above which a weight is dropped (the paper's)
LOG_SIGMA2_INIT = -10.0  # from a trained baseline: almost no noise at first
LOG_ALPHA_CLIP = 8.0  # |log alpha| in the KL, as in the authors' code (its gradient vanishes beyond)
RAMP = 0.3  # share of the phase over which the KL weight grows from 0 to 1
# the paper's: Adam, lr 1e-3 decayed linearly to 0, batches of 100, no augmentation
BATCH = 100  # the phase's batch size (the paper's)
PHASE = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "lr_schedule": "linear", "batch_size": BATCH,
         "augment": 0}
SIGMA = "vd_log_sigma2"  # the parameter's name on each variational layer


def kl_approximation(log_alpha: torch.Tensor) -> torch.Tensor:
    """Molchanov's approximation of KL(q(w | θ, alpha) ‖ log-uniform prior), per weight."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


def log_alpha(weight: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """log alpha = log sigma² - log θ² (θ² floored so that a zero weight has a large, finite log alpha)."""
    return log_sigma2 - torch.log(weight.pow(2) + 1e-8)


def _noise_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    """Local reparametrisation: add N(0, x² · sigma²) to the layer's mean output (training mode only)."""
    if not module.training:
        return output
    variance = torch.exp(getattr(module, SIGMA))
    x2 = inputs[0].pow(2)
    # a conv's variance has the conv's own geometry
    var = module._conv_forward(x2, variance, None) if isinstance(module, nn.Conv2d) else F.linear(x2, variance)
    # normal_ on a fresh tensor: half the time of randn_like on CPU (the noise of a conv's every output is
    # most of a LeNet-5 step); the std's sqrt and the sum fused in place
    noise = torch.empty_like(output).normal_()
    return torch.addcmul(output, var.add(1e-8).sqrt_(), noise)


def _variational_layers(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear | nn.Conv2d]:
    """Target name -> its Linear / Conv2d module (the weights Sparse VD learns a noise for)."""
    layers: dict[str, nn.Linear | nn.Conv2d] = {}
    for name in targets:
        path, _, leaf = name.rpartition(".")
        module = model.get_submodule(path)
        if leaf == "weight" and isinstance(module, (nn.Linear, nn.Conv2d)):
            layers[name] = module
    if not layers:
        raise ConfigError("sparse-vd needs Linear or Conv2d weights among the targets")
    return layers


def make_variational(model: nn.Module, targets: tuple[str, ...]) -> tuple[dict[str, nn.Linear | nn.Conv2d], list]:
    """Give each target layer of ``model`` a log sigma² parameter and the noise hook (in place)."""
    layers = _variational_layers(model, targets)
    handles = []
    for module in layers.values():
        module.register_parameter(SIGMA, nn.Parameter(torch.full_like(module.weight, LOG_SIGMA2_INIT)))
        handles.append(module.register_forward_hook(_noise_hook))
    return layers, handles


class _ClippedKL(torch.autograd.Function):
    """Sum over a layer of the clipped KL of log alpha(θ, log sigma²), its gradient computed in the forward.

    The same value and gradient as autograd through :func:`log_alpha`, the clamp and
    :func:`kl_approximation`, in a third of the elementwise passes and with no graph: on an
    MLP the KL over every weight, every step, was most of a Sparse VD step's time.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor,
                log_sigma2: torch.Tensor) -> torch.Tensor:
        square = weight.pow(2).add_(1e-8)
        la = log_sigma2 - square.log()
        inside = la.abs().le_(LOG_ALPHA_CLIP)  # 1 where the clamp lets the gradient through, else 0
        la.clamp_(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)
        gate = torch.sigmoid(la.mul(K3).add_(K2))  # sigmoid(k2 + k3 log alpha)
        s = torch.sigmoid(la)  # softplus(-la) = -log s, its derivative -sigmoid(-la) = s - 1
        total = (K1 * la.numel() - K1 * gate.sum() - 0.5 * s.log().sum())
        # dKL/d log alpha = -k1 k3 g (1 - g) - (1 - s) / 2, zero where the clamp is active
        grad = gate.mul_(gate.sub(1.0)).mul_(K1 * K3).add_(s.sub_(1.0), alpha=0.5).mul_(inside)
        ctx.save_for_backward(grad, weight, square)
        return total

    @staticmethod
    def backward(ctx: Any, *outputs: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        grad, weight, square = ctx.saved_tensors
        upstream = grad * outputs[0]
        # d log alpha / d log sigma² = 1, d log alpha / dθ = -2θ / (θ² + 1e-8)
        return upstream * weight.mul(-2.0).div_(square), upstream


def layer_kl(weight: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """Sum of :func:`kl_approximation` of the clipped log alpha of one layer (fused value and gradient)."""
    return _ClippedKL.apply(weight, log_sigma2)


def kl_total(layers: Mapping[str, nn.Linear | nn.Conv2d]) -> torch.Tensor:
    """The summed KL term of every variational layer (log alpha clipped as in the authors' code)."""
    return torch.stack([layer_kl(m.weight, getattr(m, SIGMA)) for m in layers.values()]).sum()


def elbo_step(layers: Mapping[str, nn.Linear | nn.Conv2d], examples: int, ramp_steps: int,
              penalty: float = 1.0) -> Step:
    """The training step: mean cross-entropy + (ramped) KL / examples, the per-example negative ELBO
    (the KL times ``penalty``: 1 is the ELBO's)."""
    counter = {"step": 0}

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = penalty * min(1.0, counter["step"] / max(ramp_steps, 1))
        counter["step"] += 1
        return F.cross_entropy(model(x), y) + weight * kl_total(layers) / examples

    return step


def learn_sparse_vd(baseline: nn.Module, targets: tuple[str, ...], trainer: Trainer) -> Learned:
    """The training phase: variational copy of ``baseline``, trained on the ELBO; its means and log alpha.

    ``scores`` are -log alpha (higher = keep); targets without a variational layer keep +inf.
    """
    model = copy.deepcopy(baseline)
    layers, handles = make_variational(model, targets)
    ramp = int(RAMP * trainer.epochs * trainer.steps_per_epoch(BATCH))
    trainer.fit(model, elbo_step(layers, trainer.examples, ramp, trainer.penalty), dict(PHASE))
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        alphas = {name: log_alpha(m.weight, getattr(m, SIGMA)).detach().cpu() for name, m in layers.items()}
        for m in layers.values():
            delattr(m, SIGMA)
        weights = {k: v.detach().cpu().clone() for k, v in effective_state_dict(model).items()}
    scores = {name: -alphas[name] if name in alphas else torch.full_like(weights[name], float("inf"))
              for name in targets}
    kept = sum(int((a <= THRESHOLD).sum()) for a in alphas.values())
    total = sum(a.numel() for a in alphas.values())
    return Learned(weights, scores, {"epochs": trainer.epochs, "kept_at_threshold": kept, "weights": total})


def threshold_masks(learned: Learned, threshold: float = THRESHOLD) -> Masks:
    """The paper's cut: keep the weights with log alpha <= ``threshold`` (score -log alpha >= -threshold)."""
    return {name: score >= -threshold for name, score in learned.scores.items()}


@weight_method("sparse-vd", scope="global", needs=("learned",), learn=learn_sparse_vd)
def sparse_vd_masks(weights: Mapping[str, torch.Tensor], level: Level, *, learned: Learned | None = None,
                    **_: object) -> Masks:
    """Molchanov et al. 2017 (Sparse VD): a training phase learns each weight's dropout log alpha; highest go first."""
    if learned is None:
        raise ConfigError("sparse-vd drops the weights its training phase found noisy: run it through "
                          "secateur.prune / secateur prune with data (a fixed amount has no training phase)")
    keep = keep_largest_globally({name: learned.scores[name].to(w.device) for name, w in weights.items()}, level)
    return {name: keep[name] & (w != 0) for name, w in weights.items()}


def learn_order(baseline: nn.Module, targets: tuple[str, ...], trainer: Trainer) -> Learned:
    """Sparse VD's phase for its order alone: the rounds start from the baseline's own weights.

    The learned means lose accuracy to the noise they were trained under (on LeNet-300, 0.3 to 0.5
    validation points that three-epoch rounds did not win back), so under a tight bound the
    baseline's weights, cut in the learned log alpha order, can be the better start.
    """
    learned = learn_sparse_vd(baseline, targets, trainer)
    return Learned({}, learned.scores, {**learned.info, "start": "baseline weights"})


@weight_method("sparse-vd-order", scope="global", needs=("learned",), learn=learn_order)
def sparse_vd_order_masks(weights: Mapping[str, torch.Tensor], level: Level, *, learned: Learned | None = None,
                          **_: object) -> Masks:
    """Sparse VD's learned log alpha order applied to the baseline's weights (rounds start from them)."""
    return sparse_vd_masks(weights, level, learned=learned)
