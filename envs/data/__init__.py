"""Data: query pools and where they come from.

- :mod:`envs.data.pools`: the pool records, loading and validation of pool files, image loading;
- :mod:`envs.data.default`: the embedded default benchmark (generated on first use) and scorer;
- :mod:`envs.data.synthetic`: the benchmark's scene generator;
- :mod:`envs.data.adapters`: E-VQA and InfoSeek to pools;
- :mod:`envs.data.kb_index`: the knowledge-base index SEARCH queries.
"""
