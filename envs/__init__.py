"""The RegionRerank Gymnasium environment, its action wrappers, data loading and scorers.

Importing ``envs`` registers ``RegionRerank-v0``; ``gym.make("envs:RegionRerank-v0")``
imports it for you.
"""

import gymnasium as gym

gym.register(id="RegionRerank-v0", entry_point="envs.factory:make_env")
