"""The drop-bound search: the orchestrator, its bracket over strength, acceptance and schedules.

``orchestrator`` runs a pruning run (``secateur.prune``); ``bracket`` decides the next strength;
``acceptance`` decides whether a round is within the bound; ``schedules`` say how one round takes
a model to a strength; ``pruner`` is the protocol every granularity implements.
"""
