"""What a model measures: parameters and MACs, per-layer summaries, sensitivity curves, sweeps."""
