"""Pop: rank items by their number of training interactions (the popularity baseline).

RecBole's ``Pop`` (``recbole.model.general_recommender.pop``) with its count fixed: RecBole adds
one per *distinct* item of a training batch, ``item_cnt[item] = item_cnt[item] + 1`` with
repeated indices, so an item seen k times in a batch counts once: popularity is undercounted,
more so with larger batches, and depends on how the seed shuffled them (RecBole issues #1844 and
#2198; on ml-1m test NDCG@10 read 0.0167, 0.0181 and 0.0183 over seeds 0-2). This class counts
every interaction (``index_add_``), so the scores no longer depend on the batches. It shadows
RecBole's Pop in the harness's registry (``bench models`` says so); parameters, other parameters
and scoring are RecBole's.
"""

from __future__ import annotations

from typing import Any

import torch
from recbole.model.general_recommender.pop import Pop as RecBolePop


class Pop(RecBolePop):
    """RecBole's Pop, counting every interaction (module docstring)."""

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        item = interaction[self.ITEM_ID]
        self.item_cnt.index_add_(0, item, torch.ones_like(item).unsqueeze(1))
        self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
        return torch.nn.Parameter(torch.zeros(1)).to(self.device)
