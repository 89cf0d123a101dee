"""Scorers: the frozen image-text re-rankers the env ranks candidates with.

- :mod:`envs.scorers.openclip`: the scorer protocol and its checks, the embedding cache and the open_clip scorer;
- :mod:`envs.scorers.huggingface`: transformers dual encoders behind the same protocol.
"""
