"""Learned sparsity: Sparse VD (``sparse-vd``) for weights, L0 hard-concrete gates (``l0``) for neurons / channels."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from secateur.app.cli import main
from secateur.errors import ConfigError
from secateur.io import rundir
from secateur.search.config import PruneConfig
from secateur.search.orchestrator import learning_trainer, prune
from secateur.search.pruner import Context, Learned, Trainer, learn_phase, start_from
from secateur.structured.graph import analyse
from secateur.structured.importance import GROUP_METHODS
from secateur.structured.l0 import (
    BETA,
    GAMMA,
    LOG_ALPHA_INIT,
    PENALTY,
    PHASE,
    ZETA,
    Gates,
    deterministic_gates,
    expected_l0,
    l0_step,
    learn_l0,
    sample_gates,
)
from secateur.structured.plan import build_plan
from secateur.structured.surgery import apply_plan
from secateur.train import TrainConfig, evaluate
from secateur.unstructured.masks import apply_masks, effective
from secateur.unstructured.methods import WEIGHT_METHODS
from secateur.unstructured.variational import (
    K1,
    K2,
    K3,
    LOG_ALPHA_CLIP,
    THRESHOLD,
    kl_approximation,
    layer_kl,
    learn_sparse_vd,
    log_alpha,
    threshold_masks,
)

TARGETS = ("fc1.weight", "fc2.weight", "fc3.weight")


def _true_neg_kl(log_alpha: float, samples: int = 400_000) -> float:
    """-KL(N(θ, alphaθ²) ‖ log-uniform) up to a constant: ½ log alpha - E log|ε|, ε ~ N(1, alpha) (Monte Carlo)."""
    g = torch.Generator().manual_seed(0)
    eps = 1.0 + math.exp(log_alpha / 2) * torch.randn(samples, generator=g, dtype=torch.float64)
    return 0.5 * log_alpha - float(torch.log(eps.abs()).mean())


def test_kl_term_is_molchanovs_approximation_and_tracks_the_true_kl():
    points = torch.tensor([-4.0, -1.0, 0.0, 1.0, 3.0, 6.0])
    expected = [K1 - K1 / (1 + math.exp(-(K2 + K3 * a))) + 0.5 * math.log1p(math.exp(-a)) for a in points.tolist()]
    assert torch.allclose(kl_approximation(points), torch.tensor(expected), atol=1e-6)
    assert float(kl_approximation(torch.tensor(0.0))) == pytest.approx(0.4313, abs=1e-3)
    assert float(kl_approximation(torch.tensor(40.0))) == pytest.approx(0.0, abs=1e-6)  # pure noise: free
    # -KL ≈ k1·sigma(k2 + k3 log alpha) - ½ log(1 + 1/alpha) - k1: off the true -KL by one constant (C = -k1)
    gaps = [_true_neg_kl(a) + float(kl_approximation(torch.tensor(a))) for a in (-2.0, -1.0, 0.0, 1.0, 2.0)]
    assert max(gaps) - min(gaps) < 0.03


def test_fused_layer_kl_has_autograds_value_and_gradient_through_the_clamp():
    g = torch.Generator().manual_seed(0)
    w = (0.05 * torch.randn(40, 30, generator=g, dtype=torch.float64))
    w[0, :4] = 0.0  # a zero weight: log alpha at the floor's large value, clamped (no gradient)
    ls2 = 4.0 * torch.randn(40, 30, generator=g, dtype=torch.float64) - 6.0  # log alpha on both sides of ±8
    la = log_alpha(w, ls2)
    assert bool((la > LOG_ALPHA_CLIP).any()) and bool((la < -LOG_ALPHA_CLIP).any())
    w.requires_grad_()
    ls2.requires_grad_()
    reference = kl_approximation(log_alpha(w, ls2).clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)).sum()
    expected = torch.autograd.grad(3.0 * reference, (w, ls2))
    fused = layer_kl(w, ls2)
    got = torch.autograd.grad(3.0 * fused, (w, ls2))
    assert float(fused) == pytest.approx(float(reference), rel=1e-12)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert float(got[1][0, :4].abs().sum()) == 0.0


def test_methods_are_registered_and_listed(capsys):
    assert "sparse-vd" in WEIGHT_METHODS and WEIGHT_METHODS.get("sparse-vd").learn is not None
    assert "l0" in GROUP_METHODS and GROUP_METHODS.get("l0").learn is not None
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "sparse-vd" in listed and "Molchanov" in listed and "l0" in listed and "Louizos" in listed


def test_learned_methods_refuse_what_they_cannot_do(trained_lenet300, small):
    with pytest.raises(ConfigError, match="gradual"):
        PruneConfig(method="sparse-vd", schedule="gradual").validate()
    with pytest.raises(ConfigError, match="drop ramp_epochs"):
        PruneConfig(method="sparse-vd", ramp_epochs=2).validate()
    with pytest.raises(ConfigError, match="learn epochs and learn penalty apply"):
        PruneConfig(method="han", learn_epochs=3).validate()
    with pytest.raises(ConfigError, match="learn epochs and learn penalty apply"):
        PruneConfig(method="han", learn_penalty=3.0).validate()
    with pytest.raises(ConfigError, match="does not apply to granularity 'kernel'"):
        PruneConfig(method="sparse-vd", granularity="kernel").validate()
    with pytest.raises(ConfigError, match="pass data="):
        prune(copy.deepcopy(trained_lenet300), train=lambda m: None, evaluate=lambda m: 0.5, method="sparse-vd")
    from secateur import prune_weights
    with pytest.raises(ConfigError, match="training phase"):
        prune_weights(copy.deepcopy(trained_lenet300), amount=0.5, method="sparse-vd")


def test_sparse_vd_phase_then_threshold_gives_exact_zeros(trained_lenet300, small):
    trainer = learning_trainer(small, TrainConfig(epochs=1), PruneConfig(method="sparse-vd", learn_epochs=1))
    learned = learn_sparse_vd(trained_lenet300, TARGETS, trainer)
    assert set(learned.scores) == set(TARGETS) and "vd_log_sigma2" not in str(learned.weights.keys())
    model = copy.deepcopy(trained_lenet300)
    assert start_from(model, learned, {}) == {"learned": True}
    assert start_from(model, learned, {"learned": True}) == {"learned": True}  # loaded once only
    assert torch.equal(model.fc1.weight, learned.weights["fc1.weight"])
    masks = threshold_masks(learned)
    apply_masks(model, masks)
    for name in TARGETS:
        w, noisy = effective(model, name), -learned.scores[name] > THRESHOLD
        assert bool(noisy.any()) and torch.all(w[noisy] == 0)
        assert torch.equal(w[~noisy], learned.weights[name][~noisy])
    assert learned.info["kept_at_threshold"] == sum(int(m.sum()) for m in masks.values())


def test_sparse_vd_under_the_search_keeps_the_bound_and_writes_the_run_folder(trained_lenet300, small, tmp_path):
    result = prune(copy.deepcopy(trained_lenet300), data=small, method="sparse-vd", max_drop=1.0, rounds=2,
                   retrain_epochs=1, learn_epochs=1, polish_epochs=0, train_config=TrainConfig(epochs=1),
                   out=tmp_path / "run")
    assert result.results["method"] == "sparse-vd"
    assert result.results["learned"]["epochs"] == 1 and result.results["learned"]["kept_at_threshold"] > 0
    assert result.results["drop"]["val"] <= 1.0
    assert (tmp_path / "run" / rundir.WEIGHTS).exists() and (tmp_path / "run" / "report.md").exists()
    saved = yaml.safe_load((tmp_path / "run" / rundir.CONFIG).read_text())["prune"]
    assert saved["method"] == "sparse-vd" and saved["learn_epochs"] == 1
    _, _, header = rundir.load_round(tmp_path / "run", copy.deepcopy(result.model))
    assert header["learned"] is True  # the rounds started from the learned weights; a resume knows it


def test_cli_and_recipe_run_sparse_vd_and_l0(tmp_path):
    flags = ["--model", "lenet300", "--dataset", "digits", "--epochs", "1", "--rounds", "1", "--retrain-epochs", "1",
             "--polish-epochs", "0", "--learn-epochs", "1", "--max-drop", "50", "--quiet"]
    assert main(["prune", "--method", "sparse-vd", *flags, "--out", str(tmp_path / "vd")]) == 0
    results = json.loads((tmp_path / "vd" / rundir.RESULTS).read_text())
    assert results["method"] == "sparse-vd" and results["rounds"] == 1
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: lenet300\ndataset: digits\nepochs: 1\nrounds: 1\nretrain_epochs: 1\npolish_epochs: 0\n"
                      "granularity: neuron\nmethod: l0\nlearn_epochs: 1\nmax_drop: 50\n")
    assert main(["prune", "--config", str(recipe), "--out", str(tmp_path / "l0"), "--quiet"]) == 0
    results = json.loads((tmp_path / "l0" / rundir.RESULTS).read_text())
    assert results["method"] == "l0" and results["granularity"] == "neuron"


def test_expected_l0_and_test_time_gates_follow_the_hard_concrete_formulas():
    log_alpha = torch.tensor([-6.0, -1.0, 0.0, 1.0, 6.0])
    p = torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))
    assert torch.allclose(expected_l0(log_alpha), p)
    draws = torch.stack([sample_gates(log_alpha, torch.Generator().manual_seed(s)) for s in range(4000)])
    assert torch.allclose((draws > 0).float().mean(0), p, atol=0.03)  # P(z != 0) is the expected L0
    assert float(draws.min()) >= 0 and float(draws.max()) <= 1
    z = deterministic_gates(log_alpha)
    assert torch.equal(z, deterministic_gates(log_alpha))  # deterministic
    assert float(z[0]) == 0.0 and float(z[-1]) == 1.0
    assert float(z[2]) == pytest.approx(0.5 * (ZETA - GAMMA) + GAMMA)


def _gated_cnn() -> tuple[nn.Module, Gates, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(5, 1, 8, 8)
    gates = Gates(model, analyse(model, x[:1]))
    gates.set_log_alpha([torch.linspace(-5, 5, la.numel()) for la in gates.log_alpha])  # closed, half, open
    return model, gates, x


def test_closed_gates_are_removed_physically_and_outputs_equal_the_gated_model():
    model, gates, x = _gated_cnn()
    gates.attach(model)
    model.eval()
    with torch.no_grad():
        gated = model(x)
    gates.detach(model)
    assert not any("l0_log_alpha" in name for name, _ in model.named_parameters())
    before = sum(p.numel() for p in model.parameters())
    gates.fold(model)
    graph = analyse(model, x[:1])
    z = {g.name: v for g, v in zip(gates.groups, gates.values(training=False))}
    assert all(bool((v == 0).any()) for v in z.values())
    apply_plan(model, build_plan(graph, {g.name: z[g.name] > 0 for g in graph.groups}), x[:1])
    assert sum(p.numel() for p in model.parameters()) < before
    assert model[0].out_channels == int((z[graph.groups[0].name] > 0).sum())
    with torch.no_grad():
        assert torch.allclose(model(x), gated, atol=1e-5)


def test_gates_close_within_a_short_phase_at_the_phases_lr():
    """From open (log alpha 3), the penalty alone closes every gate in 700 Adam steps at lr 1e-3 (a
    fraction of one MNIST epoch): at the weights' pace (0.001 a step) they would move 0.7 of the 5.4."""
    _, gates, _ = _gated_cnn()
    gates.set_log_alpha([torch.full_like(la, LOG_ALPHA_INIT) for la in gates.log_alpha])
    assert all(bool((z == 1).all()) for z in gates.values(training=False))
    optimizer = torch.optim.Adam(gates.parameters(), lr=PHASE["lr"])
    for _ in range(700):
        optimizer.zero_grad()
        gates.penalty().backward()
        optimizer.step()
    assert all(bool((z == 0).all()) for z in gates.values(training=False))


def test_learn_penalty_scales_the_l0_penalty_and_reaches_the_trainer(small):
    model, gates, x = _gated_cnn()
    gates.attach(model)
    y = torch.zeros(len(x), dtype=torch.long)
    torch.manual_seed(1)
    base = l0_step(gates, 100)(model, x, y)
    torch.manual_seed(1)
    cross_entropy = F.cross_entropy(model(x), y)
    torch.manual_seed(1)
    tripled = l0_step(gates, 100, 3.0)(model, x, y)
    assert float(tripled - cross_entropy) == pytest.approx(3 * float(base - cross_entropy), rel=1e-5)
    assert float(base - cross_entropy) == pytest.approx(PENALTY * float(gates.penalty()) / 100, rel=1e-5)
    config = PruneConfig(method="l0", granularity="neuron", learn_penalty=3.0).validate()
    assert learning_trainer(small, TrainConfig(epochs=1), config).penalty == 3.0


def test_l0_phase_trains_the_gates_and_folds_them(trained_lenet300, small):
    trainer = learning_trainer(small, TrainConfig(epochs=1), PruneConfig(method="l0", granularity="neuron",
                                                                         learn_epochs=1))
    learned = learn_l0(trained_lenet300, TARGETS, trainer, input_shape=(1, 28, 28))
    assert set(learned.scores) == {"fc1", "fc2"}
    model = copy.deepcopy(trained_lenet300)
    start_from(model, learned, {})
    assert not any("l0_log_alpha" in k for k in learned.weights)
    closed = learned.scores["fc1"] == 0
    assert torch.all(model.fc1.weight[closed] == 0) and torch.all(model.fc1.bias[closed] == 0)
    assert evaluate(model, small) > 0.5


def test_l0_under_the_search_removes_neurons(trained_lenet5, small, tmp_path):
    result = prune(copy.deepcopy(trained_lenet5), data=small, granularity="channel", method="l0", max_drop=5.0,
                   rounds=1, retrain_epochs=1, learn_epochs=1, polish_epochs=0, train_config=TrainConfig(epochs=1),
                   out=tmp_path / "run")
    assert result.results["compression"] > 1.0 and result.results["drop"]["val"] <= 5.0
    assert result.model.conv1.out_channels < 20
    assert result.results["learned"]["channels"] == {"conv1": 20, "conv2": 50, "fc1": 500}
    _, _, header = rundir.load_round(tmp_path / "run", copy.deepcopy(trained_lenet5))
    assert header["learned"] is True


def test_sparse_vd_order_keeps_the_baselines_weights(trained_lenet300, small):
    from secateur.unstructured.variational import learn_order

    trainer = learning_trainer(small, TrainConfig(epochs=1), PruneConfig(method="sparse-vd-order", learn_epochs=1))
    learned = learn_order(trained_lenet300, TARGETS, trainer)
    assert learned.weights == {} and set(learned.scores) == set(TARGETS)
    model = copy.deepcopy(trained_lenet300)
    assert start_from(model, learned, {}) == {"learned": True}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), trained_lenet300.parameters()))


def _counting_learn(calls: list) -> object:
    """A stand-in phase: counts its calls, returns fixed weights and scores."""
    def learn(baseline, targets, trainer, **extra):
        calls.append(trainer.epochs)
        return Learned({"fc1.weight": torch.full((2, 2), 3.0)}, {t: torch.arange(4.0) for t in targets},
                       {"epochs": trainer.epochs})
    return learn


def _context(out, epochs: int = 1, penalty: float = 1.0, data: str = "mnist") -> Context:
    trainer = Trainer(lambda *a: None, 100, epochs, lambda batch: 10, penalty, 0, data)
    return Context(TARGETS, (1, 28, 28), lambda m: 1.0, None, out, trainer)


def test_a_run_folder_keeps_the_learned_phase_and_reuses_it_only_for_the_same_settings(trained_lenet300, tmp_path):
    calls: list = []
    learn = _counting_learn(calls)
    first = learn_phase("m", learn, trained_lenet300, TARGETS, _context(tmp_path))
    again = learn_phase("m", learn, trained_lenet300, TARGETS, _context(tmp_path))
    assert calls == [1]  # read back, not trained again
    assert torch.equal(again.weights["fc1.weight"], first.weights["fc1.weight"]) and again.info == {"epochs": 1}
    assert all(torch.equal(again.scores[t], first.scores[t]) for t in TARGETS)
    learn_phase("m", learn, trained_lenet300, TARGETS, _context(tmp_path, epochs=2))  # other epochs: trained
    learn_phase("other", learn, trained_lenet300, TARGETS, _context(tmp_path, epochs=2))  # other method
    changed = copy.deepcopy(trained_lenet300)
    with torch.no_grad():
        changed.fc3.bias.add_(1.0)
    learn_phase("other", learn, changed, TARGETS, _context(tmp_path, epochs=2))  # other baseline
    assert calls == [1, 2, 2, 2]
    learn_phase("other", learn, changed, TARGETS, _context(tmp_path, epochs=2, data="fashion-mnist"))  # other data
    assert calls == [1, 2, 2, 2, 2]
    (tmp_path / f"{rundir.LEARNED}.safetensors").write_bytes(b"not a safetensors file")
    learn_phase("other", learn, changed, TARGETS, _context(tmp_path, epochs=2))  # unreadable: trained again
    learn_phase("m", learn, trained_lenet300, TARGETS, _context(None))  # no run folder: nothing kept
    assert calls == [1, 2, 2, 2, 2, 2, 1]


def test_a_resumed_sparse_vd_run_reads_its_phase_back(trained_lenet300, small, tmp_path, monkeypatch):
    options = {"data": small, "method": "sparse-vd", "max_drop": 1.0, "rounds": 3, "retrain_epochs": 1,
               "learn_epochs": 1, "polish_epochs": 0, "train_config": TrainConfig(epochs=1)}

    def dying(row):
        if row["round"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        prune(copy.deepcopy(trained_lenet300), out=tmp_path / "run", on_round=dying, **options)
    assert (tmp_path / "run" / f"{rundir.LEARNED}.safetensors").is_file()
    phases: list = []  # a phase that runs is saved: count the saves
    monkeypatch.setattr(rundir, "save_learned", lambda *a, **k: phases.append(1))
    resumed = prune(copy.deepcopy(trained_lenet300), out=tmp_path / "run", resume=True, **options)
    assert phases == [] and len(resumed.history) == 3  # the kept phase, not a second one
    assert resumed.results["learned"]["epochs"] == 1
    found = rundir.find_output(tmp_path / "run")
    rundir.remove_output(tmp_path / "run", found)
    assert not (tmp_path / "run" / "state").exists()  # the phase is among the files the run owns


def test_the_phase_key_names_the_data_and_recipe_but_not_the_device(small):
    from secateur.search.orchestrator import phase_data
    from secateur.train import TrainConfig

    recipe = TrainConfig()
    assert phase_data(small, recipe) == phase_data(small, recipe.replace(device="cpu", epochs=3))
    assert phase_data(small, recipe) != phase_data(small, recipe.replace(lr=0.01))
    assert phase_data(small, recipe).startswith(small.name)
