"""Evaluation: implicit-reward metrics on pairs, generation-based metrics, diagnostics."""
