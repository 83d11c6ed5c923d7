"""The drop-bound search as a Lightning callback (``import lightning``; ``pip install secateur[lightning]``).

    trainer = lightning.Trainer(max_epochs=40, callbacks=[PruningCallback(max_drop=0.5, retrain_epochs=2)])
    trainer.fit(module, train_loader, val_loader)
    callback.result.compression

See :class:`~secateur.integrations.lightning_hooks.LightningPruning` for what happens when.
"""

from __future__ import annotations

from lightning.pytorch import Callback

from secateur.integrations.lightning_hooks import LightningPruning


class PruningCallback(LightningPruning, Callback):
    """:class:`~secateur.integrations.lightning_hooks.LightningPruning` for ``lightning.pytorch.Trainer``."""
