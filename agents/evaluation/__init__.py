"""Evaluation: episodes, baselines, reports and pictures.

- :mod:`agents.evaluation.runner`: running policies over a split and the test table;
- :mod:`agents.evaluation.baselines`: FULL, center, random, annotated, oracle, search baselines;
- :mod:`agents.evaluation.gallery`: per-query traces and the gallery figure;
- :mod:`agents.evaluation.dashboard`: decision-collapse dashboard and learning curves;
- :mod:`agents.evaluation.experiments`: multi-seed tables and paired differences.
"""
