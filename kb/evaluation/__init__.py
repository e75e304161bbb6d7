"""Evaluation: gold references, metrics and reports (used by ``kb eval`` and the scripts in evals/)."""
