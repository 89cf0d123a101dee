"""Qwen-VL policies: model families, prompts, vision inputs, the tiny model and its warm start.

- :mod:`agents.qwen.family`: Qwen2.5-VL / Qwen3-VL box frames and patch sizes;
- :mod:`agents.qwen.prompts`: the prompt and the answer format;
- :mod:`agents.qwen.vision`: how an image is resized and shown;
- :mod:`agents.qwen.tiny`: the tiny Qwen-VL built offline;
- :mod:`agents.qwen.policy`: a checkpoint as an env policy (greedy, the training parser);
- :mod:`agents.qwen.sft`: the supervised warm start (format and where to crop).
"""
