"""The RegionRerank Gymnasium environment, its action wrappers, data loading and scorers.

Importing ``envs`` registers ``RegionRerank-v0``; ``gym.make("envs:RegionRerank-v0")``
imports it for you. It also makes forked child processes run torch on one thread
(:mod:`envs.threads`), so async vector envs work with every start method.
"""

import gymnasium as gym

import envs.threads  # noqa: F401  (registers the fork handler before any env forks)

gym.register(id="RegionRerank-v0", entry_point="envs.factory:make_env")
