"""Files: safetensors + JSON checkpoints, the run folder, IDX dataset files."""
