"""The CPU backend: a small policy and its trainer with verl's estimators.

- :mod:`agents.local.policy`: the CNN + bag-of-words policy;
- :mod:`agents.local.trainer`: the grounding warm start, the r-GRPO loop, metrics and plots.
"""
