"""The verl wing: everything that connects the env and r-GRPO to verl 0.9.1.

One module per concern:

- :mod:`agents.verl.settings`: what a verl rollout episode needs (:class:`LoopSettings`) and
  the agent-loop config file that carries it to verl's workers;
- :mod:`agents.verl.agent_loop`: the agent loop (one RegionRerank episode per sample);
- :mod:`agents.verl.groups`: a query's rollouts in one worker, for decision balancing;
- :mod:`agents.verl.plugin`: the ``rgrpo`` advantage estimator and trainers registered with verl;
- :mod:`agents.verl.config`: the run's settings (:class:`VerlArgs`) and the composition of
  verl's Hydra config from them;
- :mod:`agents.verl.data`: the parquet export of query pools for verl's dataset;
- :mod:`agents.verl.launch`: launching ``verl.trainer.main_ppo`` and summarizing its metrics;
- :mod:`agents.verl.cpu`: the CPU platform, engines and rollout that run verl's real trainer
  without a GPU;
- :mod:`agents.verl.quiet`: log filters for messages verl prints about unused engines.

Importing this package imports nothing from verl; each module imports what it needs.
"""
