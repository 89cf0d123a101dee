"""A re-ranker of your own, wrapped to the Scorer protocol (envs/scorers/openclip.py) in under 30 lines.

    python recipes/evaluate.py --scorer.model examples.custom_scorer:HistogramScorer --scorer.options bins 6
"""

import numpy as np

from envs.data.pools import load_image
from envs.scorers.openclip import l2_normalize


class HistogramScorer:
    """Images as square-rooted joint RGB histograms (``bins`` per channel; Hellinger kernel); a
    candidate is its image's, cached by path. Batch-invariant: a row depends on its image only."""

    def __init__(self, bins: int = 4, side: int = 64):
        self.bins, self.side, self.name, self._cache = bins, side, f"rgb-histogram-{bins}x{side}", {}

    def embed_images(self, images):
        pixels = [np.asarray(im.convert("RGB").resize((self.side, self.side))).reshape(-1, 3) for im in images]
        rows = [np.histogramdd(p, bins=self.bins, range=[(0, 256)] * 3)[0].ravel() for p in pixels]
        return l2_normalize(np.sqrt(np.array(rows, np.float64).reshape(len(images), self.bins**3)))

    def candidate_embeddings(self, pool):
        if any(c.image is None for c in pool.candidates):
            raise ValueError(f"HistogramScorer scores candidate images; query {pool.query_id!r} has a text-only candidate")
        new = sorted({c.image for c in pool.candidates} - self._cache.keys())
        self._cache.update(zip(new, self.embed_images([load_image(path) for path in new])))
        return np.stack([self._cache[c.image] for c in pool.candidates])
