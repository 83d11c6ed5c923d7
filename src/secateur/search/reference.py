"""The reference every drop is measured against: the baseline, or a dense control when it is stronger.

The final polish retrains the pruned model at length (as many epochs as the baseline had), so a
pruned model may beat its own baseline because the baseline was under-trained, not because
pruning helps. ``dense_control`` gives a copy of the dense baseline *the polish's training* (the
same callable: same recipe, epochs and seed, from the baseline's weights; not the rounds' short
retraining on top) and, when it scores higher on the search images, makes it the reference of
every round's acceptance, the polish, the certification and the reported drops. The choice uses
the search images only, never the certification or test images.
"""

from __future__ import annotations

import copy

from torch import nn

from secateur.errors import ConfigError
from secateur.search.acceptance import Outcome
from secateur.search.pruner import Retrain

BASELINE, CONTROL = "baseline", "control"
NO_CONTROL = "no dense control was run (dense_control off): drops are against the baseline"


def check_control(enabled: bool, polish: Retrain | None) -> None:
    """A dense control needs the polish's training to give the baseline (one line otherwise)."""
    if enabled and polish is None:
        raise ConfigError("dense_control gives the baseline the polish's training, and this run has none: set "
                          "polish_epochs > 0 (with data=) or pass polish=, or drop dense_control")


def train_control(baseline: nn.Module, polish: Retrain) -> nn.Module:
    """A copy of the dense baseline given the polish's training."""
    control = copy.deepcopy(baseline)
    polish(control)
    return control


def stronger(baseline: Outcome, control: Outcome) -> str:
    """:data:`CONTROL` if it is more accurate on the search images than the baseline, else :data:`BASELINE`."""
    return CONTROL if control.accuracy > baseline.accuracy else BASELINE


def note(used: str, baseline: Outcome, control: Outcome | None) -> str:
    """One line saying which reference the drops use, and why."""
    if control is None:
        return NO_CONTROL
    verdict = "stronger" if used == CONTROL else "not stronger"
    return (f"dense control {100 * control.accuracy:.2f}% vs baseline {100 * baseline.accuracy:.2f}% on the search "
            f"images: {verdict}; drops are against the {used}")
