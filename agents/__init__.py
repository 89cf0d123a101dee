"""Policies, the r-GRPO advantage estimator and the glue that connects them to verl."""

from agents.verl import quiet as verl_quiet

verl_quiet.install()
