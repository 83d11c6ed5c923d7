"""The drop-bound search inside other training loops, as trainer callbacks (optional extras).

Each callback drives a :class:`~secateur.search.session.PruningSession` from its trainer's
epochs (:mod:`secateur.integrations.rounds`), with the trainer's own devices, strategy and
optimizer, and evaluates on the trainer's validation data unless given ``evaluate=``:

- :mod:`secateur.integrations.lightning`: ``PruningCallback`` for ``lightning`` (``pip install
  secateur[lightning]``); :mod:`secateur.integrations.pytorch_lightning` for the
  ``pytorch_lightning`` import name;
- :mod:`secateur.integrations.huggingface`: ``PruningCallback`` for the ``transformers``
  ``Trainer`` (``pip install secateur[hf]``).

Importing this package imports neither framework; each module imports its own.
"""
