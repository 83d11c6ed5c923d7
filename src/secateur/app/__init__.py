"""The command line and the name-based workflows behind it (baseline -> prune -> report), and the demo."""
