"""Published (compression, test error) results on zoo models, to draw a run's own point beside.

``PUBLISHED`` maps a zoo model name to the results papers report for it on one dataset; the run
report (:mod:`secateur.report.run`) and ``bench/pareto.py`` look a run's model up here, so adding a
model's published results is one entry, never a name check in the report. Compression is dense
parameters / remaining parameters (biases included) as each paper counts it; for the methods that
remove whole neurons and filters (``kind="structure"``) it is computed from the published
architecture (see :func:`lenet5_params`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from secateur.registry import Registry


@dataclass(frozen=True)
class PublishedPoint:
    """One published result: who, how much smaller, at what test error (%)."""

    method: str  # e.g. "Han 2015"
    compression: float
    error: float  # test error in %
    kind: str = "weights"  # "weights": single weights removed; "structure": neurons / filters removed
    architecture: str = ""  # the kept widths of a structure result, e.g. "9-18-65-25"


@dataclass(frozen=True)
class Published:
    """A model's published results on one dataset, and the dense error their table starts from."""

    model: str
    dataset: str
    dense_error: float  # the dense model's test error (%) in Han et al. 2015
    points: tuple[PublishedPoint, ...]
    source: str


PUBLISHED: Registry[Published] = Registry("published results")


def lenet5_params(conv1: int, conv2: int, fc_in: int, fc_out: int, classes: int = 10) -> int:
    """Parameters (weights and biases) of LeNet-5-Caffe (5x5 convolutions) kept at these widths:
    ``20-50-800-500`` is the dense model's 431,080."""
    convolutions = (conv1 * 25 + conv1) + (conv2 * conv1 * 25 + conv2)
    return convolutions + (fc_in * fc_out + fc_out) + (fc_out * classes + classes)


def _structure(method: str, widths: tuple[int, int, int, int], error: float) -> PublishedPoint:
    """A LeNet-5 result that removed neurons and filters, its compression from the kept widths."""
    return PublishedPoint(method, lenet5_params(20, 50, 800, 500) / lenet5_params(*widths), error, "structure",
                          "-".join(map(str, widths)))


PUBLISHED.add("lenet300", Published("lenet300", "mnist", 1.64, (
    PublishedPoint("Han 2015", 12, 1.59), PublishedPoint("DNS 2016", 56, 1.99),
    PublishedPoint("Soft weight sharing 2017", 23, 1.94), PublishedPoint("Sparse VD 2017", 68, 1.92)),
    "Han et al. 2015; Guo et al. 2016 (DNS); Ullrich et al. 2017; Molchanov et al. 2017"),
    "LeNet-300-100 on MNIST")
PUBLISHED.add("lenet5", Published("lenet5", "mnist", 0.80, (
    PublishedPoint("Han 2015", 12, 0.77), PublishedPoint("DNS 2016", 111, 0.91),
    PublishedPoint("Soft weight sharing 2017", 200, 0.97), PublishedPoint("Sparse VD 2017", 280, 0.75),
    _structure("L0-sep 2018", (9, 18, 65, 25), 1.0), _structure("BC-GNJ 2017", (8, 13, 88, 13), 1.0),
    _structure("SBP 2017", (3, 18, 284, 283), 0.9)),
    "as lenet300; Louizos et al. 2018 (L0), Louizos et al. 2017 (BC-GNJ), Neklyudov et al. 2017 (SBP)"),
    "LeNet-5-Caffe on MNIST")


def published_for(results: Mapping[str, Any]) -> Published | None:
    """The published results for a run's model and dataset (``results.json``), or None."""
    model = results.get("model")
    name = model.get("name") if isinstance(model, Mapping) else model
    if not isinstance(name, str) or name.lower() not in PUBLISHED:
        return None
    entry = PUBLISHED.get(name)
    return entry if str(results.get("dataset", "")).lower() == entry.dataset else None
