"""Evaluation against the gold: paired samples, curves, statistics, the report (stages evaluate and report)."""
