"""The Lightning callback for the ``pytorch_lightning`` import name (``pytorch_lightning.Trainer``).

The same hooks as :mod:`secateur.integrations.lightning`; a trainer accepts only callbacks of
its own package, hence the second module.
"""

from __future__ import annotations

from pytorch_lightning import Callback

from secateur.integrations.lightning_hooks import LightningPruning


class PruningCallback(LightningPruning, Callback):
    """:class:`~secateur.integrations.lightning_hooks.LightningPruning` for ``pytorch_lightning.Trainer``."""
