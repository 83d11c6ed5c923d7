"""The noise-aware acceptance rule: paired standard error of a validation drop."""

from __future__ import annotations

import math

import pytest
import torch

from secateur.search.acceptance import Outcome, discordant, margin, paired_se, within


def vectors(n: int, b: int, c: int, both_wrong: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline / candidate correctness with ``b`` baseline-only and ``c`` candidate-only hits."""
    base, cand = torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    cand[:b] = False
    base[b:b + c] = False
    base[b + c:b + c + both_wrong] = cand[b + c:b + c + both_wrong] = False
    return base, cand


def test_discordant_counts_only_the_examples_that_changed_answer():
    base, cand = vectors(5000, b=25, c=20, both_wrong=30)
    assert discordant(base, cand) == (25, 20)
    with pytest.raises(ValueError):
        discordant(base, cand[:10])


def test_paired_se_matches_the_mcnemar_formula():
    # 100 * sqrt(b + c - (b - c)^2 / n) / n, in accuracy points
    assert paired_se(25, 20, 5000) == pytest.approx(100 * math.sqrt(45 - 25 / 5000) / 5000)
    assert paired_se(25, 20, 5000) == pytest.approx(0.13416, abs=1e-4)
    assert paired_se(0, 0, 5000) == 0.0  # identical answers: no uncertainty about the difference
    assert paired_se(3, 0, 0) == 0.0


def test_margin_is_confidence_times_paired_se_and_zero_without_per_example_results():
    base, cand = vectors(5000, b=25, c=20)
    baseline, candidate = Outcome.of(base), Outcome.of(cand)
    assert baseline.accuracy == 1.0 - 20 / 5000 and candidate.accuracy == 1.0 - 25 / 5000
    assert margin(baseline, candidate, 1.5) == pytest.approx(1.5 * paired_se(25, 20, 5000))
    assert margin(baseline, candidate, 0.0) == 0.0
    assert margin(baseline, Outcome.of(candidate.accuracy), 1.0) == 0.0  # a bare accuracy: plain rule
    assert Outcome.of(0.98) == Outcome(0.98)


def test_a_drop_within_the_plain_bound_fails_once_its_margin_is_added():
    base, cand = vectors(5000, b=25, c=20)  # drop 0.1 points exactly, SE 0.134
    drop = 100 * (Outcome.of(base).accuracy - Outcome.of(cand).accuracy)
    assert drop == pytest.approx(0.1)
    assert within(drop, 0.1)  # the plain rule: exactly at the bound counts as within
    assert not within(drop, 0.1, margin(Outcome.of(base), Outcome.of(cand), 1.0))
    # a candidate that changed few answers is judged almost as tightly as by the plain rule
    base, cand = vectors(5000, b=1, c=0)
    assert within(0.02, 0.1, margin(Outcome.of(base), Outcome.of(cand), 1.0))
