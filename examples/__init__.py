"""Examples of extending region-rerank (not part of the installed package; import them from
the repository root, e.g. ``--scorer.model examples.custom_scorer:HistogramScorer``)."""
