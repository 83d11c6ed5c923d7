"""The certified drop bound: validation images held out of the search, used once at the end.

``certify = f`` splits the validation data into a *search* part (every round's acceptance, the
polish, the choice of reference) and a *certification* part of share ``f``, drawn by a seeded
permutation. After the search, the final candidate and then at most ``certify_tries - 1``
fallbacks (the next most compressed accepted rounds) are compared with the reference on the
certification images; the first whose one-sided upper bound
(:func:`secateur.search.acceptance.upper_bound`, at level ``1 - alpha / certify_tries``) is within
``max_drop`` is returned, else the baseline. What this guarantees is stated in
:mod:`secateur.search.acceptance`.

Per-example correctness on the held-out images comes from secateur's own data (``data=`` a
:class:`~secateur.zoo.data.Dataset`: the split is made here) or from the caller's
``certify_evaluate(model)`` (a 1-D bool tensor on images ``evaluate`` never scores).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from secateur.errors import ConfigError
from secateur.search.acceptance import Outcome, quantile, upper_bound, within
from secateur.search.config import PruneConfig
from secateur.search.pruner import Evaluate
from secateur.train import correctness
from secateur.zoo.data import Dataset, Split
from secateur.zoo.loaders import Loaders

SPLIT_SEED = 7_919  # offset of the certification split's seed, away from the data's and the rounds'
BOUND = "paired normal (Wald) one-sided upper bound, Bonferroni-split over the tries"


def split_validation(data: Dataset, share: float, seed: int = 0) -> tuple[Dataset, Split]:
    """``(data with the search part as its val, the certification part)``: disjoint, seeded, orders kept."""
    n = len(data.val)
    held = round(share * n)
    if not 1 <= held < n:
        raise ConfigError(f"certify {share} of {n} validation images leaves {held} to certify and {n - held} to "
                          "search; both need at least one: choose another share or more validation data")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + SPLIT_SEED))
    cert, search = order[:held].sort().values, order[held:].sort().values
    return dataclasses.replace(data, val=_part(data.val, search)), _part(data.val, cert)


def _part(split: Split, indices: torch.Tensor) -> Split:
    """The examples of ``split`` at ``indices`` (its normalisation kept)."""
    return dataclasses.replace(split, images=split.images[indices], labels=split.labels[indices])


def certification_setup(config: PruneConfig, data: Dataset | Loaders | None, evaluate: Evaluate | None,
                        certify_evaluate: Evaluate | None) -> tuple[Dataset | Loaders | None, Evaluate | None]:
    """``(the data the search uses, the certification evaluator or None)``; impossible combinations refused."""
    if certify_evaluate is not None:
        if config.certify:
            raise ConfigError("certify_evaluate= scores your own held-out images, so certify (a share of secateur's "
                              "validation split) does not apply; drop certify or certify_evaluate")
        return data, certify_evaluate
    if not config.certify:
        _check_unused(config)
        return data, None
    if not isinstance(data, Dataset):
        what = "your Loaders" if isinstance(data, Loaders) else "train= / evaluate= callables"
        raise ConfigError(f"certify splits a secateur Dataset's validation split, which {what} do not give; pass "
                          "certify_evaluate= (per-example correctness on images evaluate never scores) instead")
    if evaluate is not None:
        raise ConfigError("certify splits secateur's validation split, but your evaluate= scores images of its own; "
                          "drop evaluate=, or hold images out yourself and pass certify_evaluate= with certify=0")
    search, held = split_validation(data, config.certify, config.seed)
    held_data = dataclasses.replace(data, val=held)
    return search, lambda model: correctness(model, held_data, "val")


def _check_unused(config: PruneConfig) -> None:
    """certify_tries / certify_level set without certification: a one-line error, not silence."""
    defaults = PruneConfig()
    for name in ("certify_tries", "certify_level"):
        if getattr(config, name) != getattr(defaults, name):
            raise ConfigError(f"{name} applies to a certified run; set certify (e.g. 0.5) or drop {name}")


@dataclass
class Candidate:
    """A model that may be certified: its round, whether it is the polished one, and its compression."""

    round: int
    model: nn.Module
    compression: float
    polished: bool = False


def certified_outcome(evaluate: Evaluate, model: nn.Module, count: int | None = None) -> torch.Tensor:
    """``evaluate(model)`` as per-example correctness (an accuracy cannot be certified: one line)."""
    outcome = Outcome.of(evaluate(model), "certify_evaluate")
    if outcome.correct is None:
        raise ConfigError("certify_evaluate returned an accuracy; certification needs a 1-D bool tensor of "
                          "per-example correctness on the held-out images")
    if count is not None and outcome.correct.numel() != count:
        raise ConfigError(f"certify_evaluate returned {outcome.correct.numel()} per-example results, but {count} "
                          "for the reference; it must score the same held-out images every call")
    return outcome.correct


def certify(candidates: Sequence[Candidate], reference: torch.Tensor, evaluate: Evaluate,
            config: PruneConfig) -> tuple[int | None, dict]:
    """Try ``candidates`` in order (at most ``certify_tries``); the index of the first certified, and the record.

    Each try is judged at level ``1 - (1 - certify_level) / certify_tries``; the first whose upper
    bound is within ``max_drop`` wins and no later one is evaluated.
    """
    tries = config.certify_tries
    rows, chosen = [], None
    for index, candidate in enumerate(candidates[:tries]):
        bound = upper_bound(reference, certified_outcome(evaluate, candidate.model, reference.numel()),
                            config.certify_level, tries)
        ok = within(bound.ucb, config.max_drop)
        rows.append({"round": candidate.round, "polished": candidate.polished, "compression": candidate.compression,
                     "drop": bound.drop, "ucb": bound.ucb, "se": bound.se, "only_reference": bound.b,
                     "only_candidate": bound.c, "certified": ok})
        if ok:
            chosen = index
            break
    return chosen, _record(rows, chosen, reference.numel(), config)


def _record(rows: list[dict], chosen: int | None, images: int, config: PruneConfig) -> dict:
    """``results.json``'s ``certification``."""
    winner = rows[chosen] if chosen is not None else None
    if winner is not None:
        message = (f"certified: round {winner['round']} ({winner['compression']:.1f}x), "
                   f"drop {winner['drop']:+.2f} pts, {100 * config.certify_level:g}% upper bound "
                   f"{winner['ucb']:+.2f} <= {config.max_drop:g}")
    elif rows:
        message = (f"no candidate certified within {config.max_drop:g} pts after {len(rows)} tries: "
                   "the baseline is returned")
    else:
        message = "no pruned candidate to certify: the baseline is returned"
    return {"level": config.certify_level, "tries": config.certify_tries,
            "z": quantile(config.certify_level, config.certify_tries), "bound": BOUND, "images": images,
            "candidates": rows, "certified": winner is not None,
            "chosen_round": None if winner is None else winner["round"],
            "drop": None if winner is None else winner["drop"], "ucb": None if winner is None else winner["ucb"],
            "message": message}
