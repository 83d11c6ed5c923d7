"""The certified drop bound and the dense control: the formula, the fallback order, what data each
decision may see, and the results they leave in results.json."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import secateur.search.certify as certify_mod
import secateur.search.orchestrator as orchestrator
from secateur import PruneConfig, PruningSession, TrainConfig, build_model, fit, load_dataset, prune
from secateur.app.cli import main
from secateur.errors import ConfigError
from secateur.io import rundir
from secateur.io.schemas import ResultsFile
from secateur.search.acceptance import Outcome, paired_se, quantile, upper_bound
from secateur.search.certify import Candidate, certify, split_validation
from secateur.search.reference import BASELINE, CONTROL, stronger
from secateur.zoo.loaders import Loaders

# ----------------------------------------------------------------------------- the bound itself


def pattern(n: int, only_first: int, only_second: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness of two models on ``n`` images: both right except ``only_first`` / ``only_second``."""
    first, second = torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    second[:only_first] = False
    first[only_first:only_first + only_second] = False
    return first, second


def test_upper_bound_matches_a_hand_computation() -> None:
    reference, candidate = pattern(100, 6, 2)  # b = 6, c = 2, n = 100
    bound = upper_bound(reference, candidate, 0.95, tries=3)
    # drop = 100 (6 - 2) / 100 = 4 points; SE = 100 sqrt(8 - 16 / 100) / 100 = 2.8 points
    assert (bound.b, bound.c, bound.n) == (6, 2, 100)
    assert bound.drop == pytest.approx(4.0)
    assert bound.se == pytest.approx(2.8)
    assert bound.z == pytest.approx(2.128045, abs=1e-6)  # Phi^-1(1 - 0.05 / 3)
    assert bound.ucb == pytest.approx(4.0 + 2.128045 * 2.8, abs=1e-5)
    assert quantile(0.95) == pytest.approx(1.644854, abs=1e-6)
    assert paired_se(6, 2, 100) == pytest.approx(2.8)


def model_with(tag: int) -> nn.Module:
    module = nn.Linear(1, 1)
    module.tag = tag  # type: ignore[assignment]
    return module


def test_fallbacks_in_order_at_most_tries_at_the_bonferroni_level() -> None:
    n = 2000
    reference = torch.ones(n, dtype=torch.bool)
    wrong = {0: 40, 1: 30, 2: 2, 3: 0}  # the final candidate and the next fail; the third passes
    seen: list[int] = []

    def evaluate(model: nn.Module) -> torch.Tensor:
        seen.append(model.tag)  # type: ignore[arg-type]
        correct = torch.ones(n, dtype=torch.bool)
        correct[: wrong[model.tag]] = False  # type: ignore[index]
        return correct

    candidates = [Candidate(9 - i, model_with(i), 20.0 - i) for i in range(4)]
    config = PruneConfig(max_drop=0.5, certify=0.5, certify_tries=3)
    chosen, record = certify(candidates, reference, evaluate, config)
    assert chosen == 2 and seen == [0, 1, 2]  # first certified wins; later ones are never evaluated
    assert record["chosen_round"] == 7 and record["certified"]
    assert record["z"] == pytest.approx(quantile(0.95, 3))
    for row, tag in zip(record["candidates"], range(3)):
        b = wrong[tag]
        assert row["ucb"] == pytest.approx(100 * b / n + quantile(0.95, 3) * paired_se(b, 0, n))

    seen.clear()
    chosen, record = certify(candidates, reference, evaluate, PruneConfig(max_drop=0.5, certify=0.5, certify_tries=2))
    assert chosen is None and seen == [0, 1] and not record["certified"]  # at most `tries` candidates
    assert "baseline is returned" in record["message"]


def test_bonferroni_can_refuse_what_a_single_test_would_pass() -> None:
    n = 2000
    reference = torch.ones(n, dtype=torch.bool)
    candidate = torch.ones(n, dtype=torch.bool)
    candidate[:5] = False  # drop 0.25 points, SE about 0.112: z 1.64 passes 0.44, z 2.13 gives 0.49, z 2.5 fails
    one = upper_bound(reference, candidate, 0.95, 1)
    many = upper_bound(reference, candidate, 0.95, 10)
    assert one.ucb <= 0.45 < 0.5 < many.ucb


def test_split_is_disjoint_seeded_and_complete() -> None:
    data = load_dataset("mnist").subset(100, 400, 10)
    search, held = split_validation(data, 0.25, seed=3)
    digests = lambda split: {hashlib.sha1(image.numpy().tobytes()).hexdigest() + str(int(label))  # noqa: E731
                             for image, label in zip(split.images, split.labels)}
    assert len(held) == 100 and len(search.val) == 300
    assert digests(held).isdisjoint(digests(search.val))
    assert len(digests(held) | digests(search.val)) == len(digests(data.val))
    again, _ = split_validation(data, 0.25, seed=3)
    assert torch.equal(again.val.labels, search.val.labels)
    other, _ = split_validation(data, 0.25, seed=4)
    assert not torch.equal(other.val.labels, search.val.labels)
    assert search.test is data.test and search.train is data.train


def test_the_stronger_reference_is_chosen() -> None:
    assert stronger(Outcome(0.90), Outcome(0.91)) == CONTROL
    assert stronger(Outcome(0.91), Outcome(0.90)) == BASELINE
    assert stronger(Outcome(0.91), Outcome(0.91)) == BASELINE  # a tie keeps the baseline


# ----------------------------------------------------------------------------- runs with callables (instant)


class Toy(nn.Module):
    """A Linear layer and a ``skill`` the toy evaluators read (polish raises it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(40, 40)
        self.register_buffer("skill", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def sparsity(model: nn.Module) -> float:
    return float((model.fc.weight == 0).float().mean())


def scored(model: nn.Module, n: int = 4000) -> torch.Tensor:
    """Right on the first 3600 + 8 skill images, minus those lost beyond 60% sparsity."""
    right = 3600 + int(8 * float(model.skill)) - int(n * 0.02 * max(0.0, sparsity(model) - 0.6) / 0.4)
    correct = torch.zeros(n, dtype=torch.bool)
    correct[:right] = True
    return correct


def train(model: nn.Module) -> None:
    with torch.no_grad():
        model.fc.bias.add_(1e-3)


def polisher(step: float):
    def polish(model: nn.Module) -> None:
        train(model)
        model.skill += step
    return polish


def toy_prune(tmp_path: Path | None = None, **options):
    options = {"rounds": 5, "max_drop": 0.5, "polish": polisher(0.0), **options}
    return prune(Toy(), train=train, evaluate=scored, input_shape=(40,),
                 out=None if tmp_path is None else tmp_path / "run", **options)


def test_failed_certification_falls_back_to_the_next_most_compressed_round() -> None:
    calls: list[float] = []

    def certify_evaluate(model: nn.Module) -> torch.Tensor:
        calls.append(sparsity(model))
        correct = torch.ones(3000, dtype=torch.bool)
        if len(calls) == 2:  # the reference is call 1; the final candidate (call 2) is made to fail
            correct[:300] = False
        return correct

    result = toy_prune(certify_evaluate=certify_evaluate)
    accepted = [row for row in result.history if row["feasible"]]
    assert len(accepted) >= 2, result.history
    cert = result.results["certification"]
    assert calls[0] == 0.0 and calls[1] > calls[2] > 0  # reference, then most compressed first
    assert [row["certified"] for row in cert["candidates"]] == [False, True]
    assert cert["chosen_round"] == accepted[-2]["round"] == result.results["chosen_round"]
    assert result.compression == pytest.approx(accepted[-2]["compression"])
    assert sparsity(result.model) == pytest.approx(calls[2])


def test_no_candidate_certified_returns_the_baseline() -> None:
    def harsh(model: nn.Module) -> torch.Tensor:
        correct = torch.ones(3000, dtype=torch.bool)
        if sparsity(model) > 0:
            correct[:100] = False
        return correct

    result = toy_prune(certify_evaluate=harsh, certify_tries=2)
    cert = result.results["certification"]
    assert not cert["certified"] and len(cert["candidates"]) == 2
    assert result.compression == 1.0 and result.results["chosen_round"] is None
    assert sparsity(result.model) == 0.0


@pytest.mark.parametrize(("step", "used"), [(1.0, CONTROL), (-1.0, BASELINE)])
def test_dense_control_is_the_reference_when_stronger(step: float, used: str) -> None:
    result = toy_prune(dense_control=True, polish=polisher(step), polish_epochs=0)
    reference = result.results["reference"]
    assert reference["used"] == used
    assert reference["control"]["val"]["accuracy"] == pytest.approx((3600 + 8 * step) / 4000)
    reference_accuracy = max(0.9, (3600 + 8 * step) / 4000)
    assert result.results["baseline"]["val"]["accuracy"] == pytest.approx(0.9)  # the baseline's own
    assert result.results["drop"]["val"] == pytest.approx(
        100 * (reference_accuracy - result.results["pruned"]["val"]["accuracy"]))
    first = result.history[0]  # every round was judged against the reference
    assert first["drop"] == pytest.approx(100 * (reference_accuracy - first["val_accuracy"]))


def test_without_a_control_the_results_say_so() -> None:
    reference = toy_prune(rounds=1).results["reference"]
    assert reference["used"] == BASELINE and reference["control"] is None
    assert "no dense control was run" in reference["note"]


# ----------------------------------------------------------------------------- impossible combinations


def one_line(match: str, call, *args, **kwargs) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        call(*args, **kwargs)
    assert "\n" not in str(caught.value)


def test_impossible_combinations_are_one_line_errors(tmp_path: Path) -> None:
    data = load_dataset("mnist").subset(200, 100, 50)
    loaders = Loaders(train=data.train, val=data.val, num_classes=10)
    model = build_model("lenet300")
    one_line("certify splits a secateur Dataset.*Loaders", prune, model, data=loaders, certify=0.5)
    one_line("certify splits a secateur Dataset.*callables", prune, Toy(), train=train, evaluate=scored,
             input_shape=(40,), certify=0.5)
    one_line("your evaluate= scores images of its own", prune, model, data=data, evaluate=scored, certify=0.5)
    one_line("drop certify or certify_evaluate", prune, Toy(), train=train, evaluate=scored, input_shape=(40,),
             certify=0.5, certify_evaluate=scored)
    one_line("certify_tries applies to a certified run", prune, model, data=data, certify_tries=5)
    one_line("certify must be a share", prune, model, data=data, certify=1.0)
    one_line("dense_control gives the baseline the polish's training", prune, Toy(), train=train,
             evaluate=scored, input_shape=(40,), dense_control=True)
    one_line("certify_evaluate returned an accuracy", prune, Toy(), train=train, evaluate=scored,
             input_shape=(40,), rounds=1, certify_evaluate=lambda m: 0.9)
    one_line("option certify needs secateur.prune", PruningSession, Toy(), scored, certify=0.5)
    one_line("leaves 0 to certify", prune, model, data=data.subset(val=1), certify=0.1)


def test_cli_flags_and_their_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = capsys.readouterr().out
    assert "--certify" in text and "--dense-control" in text and "--certify-tries" in text
    try:
        code = main(["prune", "--model", "lenet300", "--certify", "1.5", "--out", "x"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and "expected a number in [0, 1)" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- a tiny end-to-end run on MNIST


def test_certification_images_and_the_test_set_stay_out_of_the_search(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    data = load_dataset("mnist").subset(1000, 800, 300)
    model = build_model("lenet300", input_shape=data.input_shape, num_classes=10)
    recipe = TrainConfig(epochs=1, lr=0.05, batch_size=64)
    fit(model, data, recipe, progress=False)
    events: list[tuple[str, frozenset[str]]] = []

    def digests(split) -> frozenset[str]:
        return frozenset(hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in split.images)

    def instrumented(phase: str, real):
        def call(model, data_, split="val", **kwargs):
            events.append((phase, digests(getattr(data_, split))))
            return real(model, data_, split, **kwargs)
        return call

    monkeypatch.setattr(orchestrator, "correctness", instrumented("search", orchestrator.correctness))
    monkeypatch.setattr(certify_mod, "correctness", instrumented("certify", certify_mod.correctness))
    monkeypatch.setattr(orchestrator, "evaluate_on", instrumented("test", orchestrator.evaluate_on))
    result = prune(model, data=data, train_config=recipe, max_drop=3.0, rounds=2, retrain_epochs=1,
                   polish_epochs=1, certify=0.5, dense_control=True, out=tmp_path / "run")

    phases = [phase for phase, _ in events]
    held = digests(split_validation(data, 0.5, 0)[1])
    search = frozenset().union(*(d for p, d in events if p == "search"))
    certified = frozenset().union(*(d for p, d in events if p == "certify"))
    assert phases.count("certify") >= 2 and phases.count("search") >= 3  # reference + candidate(s); rounds
    assert certified == held and search.isdisjoint(held)  # rounds never saw a certification image
    assert search | held == digests(data.val)
    assert max(i for i, p in enumerate(phases) if p == "search") < phases.index("certify")  # used once, at the end
    assert min(i for i, p in enumerate(phases) if p == "test") > max(i for i, p in enumerate(phases) if p == "certify")

    results = rundir.read_results(tmp_path / "run")  # checked against io/schemas.py's ResultsFile
    ResultsFile.model_validate(results)
    assert results == result.results | {"bytes": results["bytes"]}
    cert, drop = results["certification"], results["drop"]
    assert cert["images"] == 400 and cert["search_images"] == 400 and cert["reference"] == results["reference"]["used"]
    assert set(drop) == {"val", "test", "certified", "certified_ucb"}
    if cert["certified"]:
        row = cert["candidates"][-1]
        assert drop["certified_ucb"] == pytest.approx(row["ucb"])
        assert row["ucb"] <= 3.0 + 1e-9
        assert math.isfinite(drop["certified"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Certification" in report and "drops measured against" in report
