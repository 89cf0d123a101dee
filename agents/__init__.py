"""Policies, the r-GRPO advantage estimator and the glue that connects them to verl."""
