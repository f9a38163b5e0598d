"""Which attention heads a layer keeps, GQA-aware: one by one from scores, or as sets from ``head_gram``.

With GQA (query head h reads KV head h // (heads / kv_heads)), query heads are pruned evenly inside each KV group,
or whole groups go. :func:`select_heads` ranks by score; :func:`select_heads_joint` removes the set whose joint
error (the sum of ``head_gram``'s block over the removed heads) is smallest, as derived in
``helpers.importance.activation``'s docstring.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ._surgery import top_indices

__all__ = ["EXHAUSTIVE_LIMIT", "select_heads", "removal_error", "select_heads_joint"]


def select_heads(scores: Tensor, num_key_value_heads: int, num_heads: int, num_kv: int) -> tuple[Tensor, Tensor]:
    """GQA-aware choice for one layer: ``scores`` [heads] -> (kept query heads [num_heads], kept KV heads
    [num_kv]). Whole KV groups are ranked by summed query-head score; inside each kept group the
    ``num_heads // num_kv`` best query heads stay."""
    per_group = scores.numel() // num_key_value_heads
    grouped = scores.float().view(num_key_value_heads, per_group)  # query head h is in group h // per_group
    groups = top_indices(grouped.sum(1), num_kv)
    queries = [g * per_group + top_indices(grouped[g], num_heads // num_kv) for g in groups.tolist()]
    return torch.cat(queries), groups


EXHAUSTIVE_LIMIT = 4096  # subsets tried one by one up to this many; beyond, greedy backward elimination


def removal_error(gram: Tensor, removed: list[int]) -> float:
    """Joint error of removing the units ``removed``: the sum of ``gram``'s [removed, removed] block (gram [n, n],
    e.g. one layer of ``Importance.head_gram``, whose module docstring derives it)."""
    return float(gram[removed][:, removed].sum()) if removed else 0.0


def _keep_subset(gram: Tensor, keep: int) -> list[int]:
    """The ``keep`` units (of gram [n, n]) whose removed complement R has the smallest sum(gram[R, R]).

    Every subset when there are at most EXHAUSTIVE_LIMIT of them, else greedy backward elimination: remove, one at
    a time, the unit whose removal adds the least to the error of the units already removed."""
    n = gram.shape[0]
    units = list(range(n))
    if math.comb(n, keep) <= EXHAUSTIVE_LIMIT:
        best = min(itertools.combinations(units, keep),
                   key=lambda kept: removal_error(gram, [u for u in units if u not in kept]))
        return list(best)
    removed: list[int] = []
    while len(removed) < n - keep:
        alive = [u for u in units if u not in removed]
        removed.append(min(alive, key=lambda u: removal_error(gram, removed + [u])))
    return [u for u in units if u not in removed]


def select_heads_joint(gram: Tensor, num_key_value_heads: int, num_heads: int, num_kv: int) -> tuple[Tensor, Tensor]:
    """GQA-aware choice of heads as sets, for one layer: ``gram`` [heads, heads] (``Importance.head_gram``) ->
    (kept query heads [num_heads], kept KV heads [num_kv]), as :func:`select_heads` returns them.

    KV groups: the kept ``num_kv`` groups minimise the joint error of all query heads in the removed groups
    (group gram = the [per_group, per_group] blocks summed). Then inside each kept group, the kept
    ``num_heads // num_kv`` query heads minimise the joint error of the group's removed heads."""
    per_group = gram.shape[0] // num_key_value_heads
    g = gram.double().view(num_key_value_heads, per_group, num_key_value_heads, per_group)
    groups = _keep_subset(g.sum((1, 3)), num_kv)
    queries = [grp * per_group + torch.tensor(_keep_subset(g[grp, :, grp, :], num_heads // num_kv)) for grp in groups]
    return torch.cat(queries), torch.tensor(groups)
