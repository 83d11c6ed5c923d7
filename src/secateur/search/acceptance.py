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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
