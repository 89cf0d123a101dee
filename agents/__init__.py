"""Policies, the r-GRPO advantage estimator and the glue that connects them to verl.

Importing ``agents`` changes nothing process-wide: the filters for verl's start-up
messages (:mod:`agents.verl.quiet`) are installed by what runs verl (its plug-in hook and
the CPU platform module, loaded in every verl process, and :func:`agents.verl.launch.launch`).
"""
