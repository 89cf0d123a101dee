"""Policies, the r-GRPO advantage estimator and the glue that connects them to verl."""

from agents import verl_quiet

verl_quiet.install()
