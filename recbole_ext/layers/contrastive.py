"""Contrastive losses and sequence augmentations for contrastive sequential recommenders.

- :func:`info_nce`: NT-Xent / InfoNCE over two views with in-batch negatives (SimCLR; the form
  ContrastVAE, DuoRec and SLIME4Rec use).
- :func:`augment_sequences`: crop, mask and reorder (CL4SRec's operators, used by ContrastVAE's
  data augmentation), vectorised over a right-padded batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("crop", "mask", "reorder")


def info_nce(
    view_a: torch.Tensor, view_b: torch.Tensor, temperature: float, similarity: str = "cos"
) -> torch.Tensor:
    """Symmetric InfoNCE between ``view_a[i]`` and ``view_b[i]``, ``[B, D]`` each.

    Each of the 2B representations is classified against the 2B - 1 others (itself excluded):
    its partner in the other view is the positive, the other 2B - 2 are negatives.
    ``similarity``: ``cos`` (cosine, ContrastVAE) or ``dot`` (DuoRec / SLIME4Rec).
    """
    batch = view_a.shape[0]
    z = torch.cat([view_a, view_b], dim=0)
    if similarity == "cos":
        z = F.normalize(z, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'cos' or 'dot', not {similarity!r}")
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    labels = torch.arange(2 * batch, device=z.device).roll(batch)
    return F.cross_entropy(logits, labels)


def next_item_targets(
    item_seq: torch.Tensor, item_len: torch.Tensor, pos_items: torch.Tensor
) -> torch.Tensor:
    """The next item at every position of a right-padded batch, 0 on padding.

    Position t's target is ``item_seq[t + 1]``; position ``item_len - 1``'s is ``pos_items``.
    """
    full = _with_target(item_seq, item_len, pos_items)
    length = item_seq.shape[1]
    valid = torch.arange(length, device=item_seq.device) < item_len.unsqueeze(1)
    return full[:, 1:] * valid


def _with_target(
    item_seq: torch.Tensor, item_len: torch.Tensor, pos_items: torch.Tensor
) -> torch.Tensor:
    """``[B, L + 1]``: the sequence with its target written at position ``item_len``."""
    batch, length = item_seq.shape
    positions = torch.arange(length, device=item_seq.device)
    full = item_seq.new_zeros(batch, length + 1)
    full[:, :length] = item_seq * (positions < item_len.unsqueeze(1))
    full.scatter_(1, item_len.unsqueeze(1), pos_items.unsqueeze(1))
    return full


@dataclass
class AugmentedBatch:
    """Augmented sequences, right-padded.

    ``targets`` are the next items *in the augmented order*: each augmented sequence is treated as
    a sequence of its own (a masked position's own item is still its predecessor's target; the
    last position's target is the item after the last original position it covers).
    """

    items: torch.Tensor  # [B, L]
    lengths: torch.Tensor  # [B]
    targets: torch.Tensor  # [B, L]


def augment_sequences(
    item_seq: torch.Tensor,
    item_len: torch.Tensor,
    pos_items: torch.Tensor,
    operations: Sequence[str],
    mask_token: int,
    crop_eta: float = 0.6,
    mask_gamma: float = 0.3,
    reorder_beta: float = 0.6,
    width: int | None = None,
) -> AugmentedBatch:
    """Apply one operation drawn uniformly from ``operations`` to each sequence.

    - crop: keep a random contiguous ``max(1, floor(eta n))`` items, moved to the front;
    - mask: replace ``floor(gamma n)`` random items by ``mask_token``;
    - reorder: shuffle a random contiguous window of ``floor(beta n)`` items.

    ``width`` (e.g. the maximum sequence length): draw the per-position random numbers for this
    many columns and use the first ``L``, so that a batch padded only to its own longest sequence
    gets the same augmentations, under the same seed, as the same batch padded to ``width``.
    """
    unknown = set(operations) - set(AUGMENTATIONS)
    if unknown or not operations:
        raise ValueError(f"augmentations must be a non-empty subset of {AUGMENTATIONS}")
    batch, length = item_seq.shape
    device = item_seq.device
    lengths = item_len.clamp(min=1)
    positions = torch.arange(length, device=device).unsqueeze(0)
    full = _with_target(item_seq, lengths, pos_items)
    draw_width = max(width or length, length)

    def per_position_uniform() -> torch.Tensor:
        return torch.rand(batch, draw_width, device=device)[:, :length]

    choice = torch.randint(len(operations), (batch,), device=device)
    # src[b, t]: the original position shown at augmented position t.
    src = positions.expand(batch, length).clone()
    new_len = lengths.clone()
    masked = torch.zeros(batch, length, dtype=torch.bool, device=device)
    for k, op in enumerate(operations):
        rows = choice == k
        if op == "crop":
            keep = (lengths * crop_eta).floor().long().clamp(min=1)
            start = (torch.rand(batch, device=device) * (lengths - keep + 1)).floor().long()
            src = torch.where(
                rows.unsqueeze(1), (start.unsqueeze(1) + positions).clamp(max=length - 1), src
            )
            new_len = torch.where(rows, keep, new_len)
        elif op == "mask":
            n_mask = (lengths * mask_gamma).floor().long()
            noise = per_position_uniform().masked_fill(positions >= lengths.unsqueeze(1), 2.0)
            rank = noise.argsort(dim=1).argsort(dim=1)
            masked |= rows.unsqueeze(1) & (rank < n_mask.unsqueeze(1))
        else:  # reorder
            window = (lengths * reorder_beta).floor().long()
            start = (torch.rand(batch, device=device) * (lengths - window + 1)).floor().long()
            inside = (positions >= start.unsqueeze(1)) & (positions < (start + window).unsqueeze(1))
            # Sort keys: outside the window its own index; inside, a random point of the window.
            key = torch.where(
                inside,
                start.unsqueeze(1) + per_position_uniform() * window.unsqueeze(1),
                positions.float(),
            )
            src = torch.where(rows.unsqueeze(1), key.argsort(dim=1), src)
    valid = positions < new_len.unsqueeze(1)
    real = full.gather(1, src) * valid
    items = torch.where(masked & valid, torch.full_like(real, mask_token), real)
    last_src = torch.where(valid, src, -1).amax(dim=1)
    last_target = full.gather(1, (last_src + 1).unsqueeze(1))
    targets = torch.cat([real[:, 1:], real.new_zeros(batch, 1)], dim=1)
    targets.scatter_(1, (new_len - 1).unsqueeze(1), last_target)
    return AugmentedBatch(items=items, lengths=new_len, targets=targets * valid)
