"""When a pruned round counts as within the drop bound: a noise-aware acceptance rule.

The drop bound is judged on a finite validation split (MNIST: 5,000 images, so 0.1 points
is 5 images), and the search tries up to 15 candidates against that same split. A plain
rule ``drop <= max_drop`` then keeps whichever candidate happened to be lucky on the split:
on LeNet-300 it accepted a 36.6x model at exactly 0.10 validation points whose test error
was 0.17 points above the baseline's.

The rule here asks for the bound to hold with confidence instead: a round is accepted only
if ``drop + confidence * SE <= max_drop``, where SE is the standard error of the accuracy
difference between the baseline and the candidate *on the same images* (paired, as in
McNemar's test). With ``b`` images only the baseline gets right, ``c`` only the candidate
gets right and ``n`` images in all, the difference in points is ``100 (b - c) / n`` and

    SE = 100 * sqrt(b + c - (b - c)^2 / n) / n.

Pairing matters: the two models agree on almost every image, so SE depends on how many
images changed answer (a few dozen), not on the accuracy itself. A candidate that changed
few answers is judged almost as precisely as by the plain rule; one that churned many
answers needs a clear lead. ``confidence = 0`` is the plain rule.

Needs per-example correctness; evaluators that return a bare accuracy get the plain rule.

**The certified bound** (``certify``, :mod:`secateur.search.certify`). The rule above is a
guard, not a guarantee: every round is judged on the same *search* images and the search keeps
the best-looking model, so its validation drop is biased low. With ``certify = f`` a share
``f`` of the validation split is held out (a seeded draw, disjoint from the search part) and
touched once, after the search, polish and dense control are done. The final candidate, then
at most ``certify_tries - 1`` fallbacks (the next most compressed accepted rounds, as saved),
are each compared with the reference model on those images, and the first whose one-sided
upper confidence bound

    UCB = drop + z * SE,  z = Phi^-1(1 - alpha / k),  alpha = 1 - certify_level,  k = certify_tries,

(``drop`` and ``SE`` the paired difference and standard error above, in points) is at most
``max_drop`` is returned. ``k`` is fixed before any certification image is looked at, so
the Bonferroni split ``alpha / k`` holds however many tries are actually spent.

What is guaranteed, exactly: *conditional on everything the search did* (the training data and
seeds, the search images, hence the candidates, their order and the reference model, all fixed
before the certification images are used), *with probability at least* ``certify_level`` *over
the draw of the certification images*, the returned pruned model's true drop, i.e. the reference's
accuracy minus its own on the distribution the validation images were drawn from (for secateur's
datasets: a seeded share of the official training set, so the *training* distribution), is at
most ``max_drop``. Caveats, honestly: the bound uses the normal approximation to the paired
difference (Wald; accurate when dozens of images change answer, optimistic with only a handful
of discordant pairs); the certification images are a sample without replacement from a finite
pool, treated as independent draws; and a test set from another source (MNIST's test writers)
may differ in distribution, so its drop is not covered. When no candidate certifies, the
baseline itself is returned (drop 0 against itself by definition) with a message saying so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

from secateur.arguments import shown
from secateur.errors import ConfigError

TOLERANCE = 1e-9  # float slack so that a drop of exactly max_drop counts as within


@dataclass(frozen=True)
class Outcome:
    """One evaluation: accuracy (a fraction) and, when known, per-example correctness."""

    accuracy: float
    correct: torch.Tensor | None = None  # bool, one entry per validation example

    @classmethod
    def of(cls, value: float | torch.Tensor | Outcome, source: str = "evaluate") -> Outcome:
        """Wrap what an evaluator returned: an accuracy in [0, 1], or a 1-D bool correctness vector.

        Anything else (a percentage, NaN, a string, a float vector) is a one-line ConfigError
        naming ``source`` (the callable) and what it returned.
        """
        if isinstance(value, Outcome):
            return value
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if value.dim() != 1 or value.dtype != torch.bool or value.numel() == 0:
                raise _returned(source, f"a {str(value.dtype).removeprefix('torch.')} tensor of shape "
                                        f"{tuple(value.shape)}")
            correct = value.detach().to("cpu", torch.bool)
            return cls(int(correct.sum()) / correct.numel(), correct)
        return cls(_accuracy(value, source))


def _accuracy(value: object, source: str) -> float:
    """A returned accuracy as a float; a bool, an int, a numpy scalar or a 0-d tensor will do."""
    if isinstance(value, (str, bytes)) or getattr(value, "ndim", 0) != 0:
        raise _returned(source, shown(value))
    try:
        accuracy = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _returned(source, shown(value)) from None
    if not 0.0 <= accuracy <= 1.0:  # NaN fails too
        raise _returned(source, repr(accuracy) + (" (a percentage?)" if 1 < accuracy <= 100 else ""))
    return accuracy


def _returned(source: str, what: str) -> ConfigError:
    return ConfigError(f"{source} returned {what}; expected a fraction in [0, 1] or a 1-D bool tensor "
                       "of per-example correctness")


def discordant(baseline: torch.Tensor, candidate: torch.Tensor) -> tuple[int, int]:
    """``(b, c)``: examples only the baseline gets right, and only the candidate gets right."""
    if baseline.shape != candidate.shape:
        raise ValueError(f"per-example results differ in length: {tuple(baseline.shape)} vs {tuple(candidate.shape)}")
    return int((baseline & ~candidate).sum()), int((~baseline & candidate).sum())


def paired_se(b: int, c: int, n: int) -> float:
    """Standard error, in accuracy points, of the paired accuracy difference ``100 (b - c) / n``."""
    if n <= 0:
        return 0.0
    return 100.0 * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n


def margin(baseline: Outcome, candidate: Outcome, confidence: float) -> float:
    """Points to add to the observed drop: ``confidence`` paired standard errors (0 if unknown)."""
    if confidence <= 0 or baseline.correct is None or candidate.correct is None:
        return 0.0
    b, c = discordant(baseline.correct, candidate.correct)
    return confidence * paired_se(b, c, baseline.correct.numel())


def within(drop: float, max_drop: float, margin_points: float = 0.0) -> bool:
    """Whether a drop (in points) plus its margin stays within the bound."""
    return drop + margin_points <= max_drop + TOLERANCE


def quantile(level: float, tries: int = 1) -> float:
    """``z`` of a one-sided bound at ``level``, Bonferroni-split over ``tries`` (``Phi^-1(1 - alpha / k)``)."""
    if not 0 < level < 1 or tries < 1:
        raise ValueError(f"level must be in (0, 1) and tries >= 1, got {level} and {tries}")
    return NormalDist().inv_cdf(1.0 - (1.0 - level) / tries)


@dataclass(frozen=True)
class Bound:
    """A paired drop on one set of images: the point estimate and its one-sided upper bound, in points."""

    drop: float
    ucb: float
    se: float
    z: float
    b: int  # images only the reference gets right
    c: int  # images only the candidate gets right
    n: int


def upper_bound(reference: torch.Tensor, candidate: torch.Tensor, level: float, tries: int = 1) -> Bound:
    """The paired normal (Wald) upper bound of the drop ``reference - candidate`` at ``level`` / ``tries``.

    ``reference`` and ``candidate`` are per-example correctness (bool) on the same images.
    """
    b, c = discordant(reference, candidate)
    n = reference.numel()
    drop = 100.0 * (b - c) / n if n else 0.0
    se, z = paired_se(b, c, n), quantile(level, tries)
    return Bound(drop, drop + z * se, se, z, b, c, n)
