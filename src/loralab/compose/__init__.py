"""Composition of adapters as pure functions over the factor seam (`loralab.analysis.factors`).

* `combine` — the exact weighted sum (``cat``), re-ranked by a small SVD (``svd``), one adapter re-ranked;
* `task_arithmetic` — TIES and DARE on each layer's ΔW, re-factored to a rank;
* `geometry` — cosine, principal angles and sign conflicts between two adapters, with a random baseline;
Reading adapter directories and writing the combined adapter is `loralab.commands.compose`.
"""

from loralab.compose.combine import cat, rerank, svd
from loralab.compose.task_arithmetic import dare, ties

__all__ = ["cat", "dare", "rerank", "svd", "ties"]
