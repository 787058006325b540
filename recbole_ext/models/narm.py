"""NARM: Li, Ren, Chen, Ren, Lian & Ma, "Neural Attentive Session-based Recommendation", CIKM 2017.
RecBole's implementation, trained on whole sequences by default.

NARM encodes a sequence with a GRU; at the last position t its representation is
``B [c_local; c_global]`` with ``c_global = h_t`` and the local (attentive) context
``c_local = sum_{j <= t} v^T sigmoid(A_1 h_j + A_2 h_t) h_j`` (no softmax, as in the paper and
RecBole).

Training regime (``train_regime``, harness key):

- ``users`` (this model's default): each training row is a window of a user's sequence; the GRU
  runs once over it, and at every real position t the representation above is formed from the
  states j <= t only (causal), with the loss at every real position against its next item (as
  "SASRec+", Klenitskiy & Vasilev, RecSys 2023). The attention of every position over the
  earlier states is a ``[positions, t + 1, H]`` tensor; :class:`CausalLocalContext` computes it
  in chunks of positions (sorted by t, each chunk only as wide as its largest t) of at most
  ``local_attention_chunk`` elements, and its hand-written backward recomputes each chunk instead
  of keeping it, so memory stays bounded on long windows in training too.
- ``interactions``: RecBole's per-prefix regime.

The loss in each regime, and what stays RecBole's (``forward``, ``predict``,
``full_sort_predict``, the parameters' names): :class:`~recbole_ext.layers.whole_sequence.
WholeSequenceLoss`.
"""

from __future__ import annotations

from typing import Any

import torch
from recbole.model.sequential_recommender.narm import NARM as RecBoleNARM

from recbole_ext.layers.whole_sequence import WholeSequenceLoss


def _chunk_attention(
    keys: torch.Tensor,
    queries: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(scores [n, width, H], alpha [n, width], causal [n, width])`` of a chunk of positions."""
    scores = (keys[rows, :width] + queries.unsqueeze(1)).sigmoid_()
    causal = torch.arange(width, device=keys.device) <= positions.unsqueeze(1)
    # v has no bias, so zeroing alpha equals RecBole's zeroing of the masked scores.
    alpha = (scores @ weight) * causal
    return scores, alpha, causal


class CausalLocalContext(torch.autograd.Function):
    """NARM's ``c_local`` at positions ``(rows, positions)``:
    ``sum_{j <= t} (v . sigmoid(keys[b, j] + queries[n])) states[b, j]`` ``[N, H]``.

    ``keys`` (``A_1 h``) and ``states`` (``h``) are ``[B, L, H]``, ``queries`` (``A_2 h_t``)
    ``[N, H]``, ``weight`` (``v``) ``[H]``; ``chunks`` lists ``(start, stop, width)`` slices of
    the positions, each position's t below its chunk's width. The backward pass recomputes every
    chunk's ``[n, width, H]`` scores instead of storing them.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        keys: torch.Tensor,
        states: torch.Tensor,
        queries: torch.Tensor,
        weight: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        chunks: list[tuple[int, int, int]],
    ) -> torch.Tensor:
        context = queries.new_empty(queries.shape)
        for start, stop, width in chunks:
            part = slice(start, stop)
            _, alpha, _ = _chunk_attention(
                keys, queries[part], weight, rows[part], positions[part], width
            )
            values = states[rows[part], :width]
            context[part] = torch.bmm(alpha.unsqueeze(1), values).squeeze(1)
        ctx.save_for_backward(keys, states, queries, weight, rows, positions)
        ctx.chunks = chunks
        return context

    @staticmethod
    def backward(ctx: Any, grad_context: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        keys, states, queries, weight, rows, positions = ctx.saved_tensors
        batch, length, hidden = keys.shape
        # Gradients of the [B, L, H] inputs, flat so that each chunk index-adds its rows.
        grad_keys = keys.new_zeros(batch * length, hidden)
        grad_states = states.new_zeros(batch * length, hidden)
        grad_queries = torch.empty_like(queries)
        grad_weight = torch.zeros_like(weight)
        for start, stop, width in ctx.chunks:
            part = slice(start, stop)
            scores, alpha, causal = _chunk_attention(
                keys, queries[part], weight, rows[part], positions[part], width
            )
            grad = grad_context[part]
            flat = rows[part].unsqueeze(1) * length + torch.arange(width, device=keys.device)
            flat = flat.reshape(-1)
            grad_alpha = torch.bmm(states[rows[part], :width], grad.unsqueeze(2)).squeeze(2)
            grad_alpha = grad_alpha * causal
            grad_states.index_add_(0, flat, (alpha.unsqueeze(2) * grad.unsqueeze(1)).flatten(0, 1))
            grad_weight += torch.einsum("nw,nwh->h", grad_alpha, scores)
            # Through the sigmoid: d sigmoid(x) / dx = s (1 - s).
            grad_scores = grad_alpha.unsqueeze(2) * weight * scores * (1 - scores)
            grad_queries[part] = grad_scores.sum(1)
            grad_keys.index_add_(0, flat, grad_scores.flatten(0, 1))
        return (
            grad_keys.view(batch, length, hidden),
            grad_states.view(batch, length, hidden),
            grad_queries,
            grad_weight,
            None,
            None,
            None,
        )


class NARM(WholeSequenceLoss, RecBoleNARM):
    """RecBole's NARM with a loss at every position under ``train_regime: users``."""

    accepts_trimmed_batches = True  # every computation reads a sequence through its length
    # Elements of one chunk's [positions, width, H] attention tensor (float32: 64 MiB).
    local_attention_chunk = 1 << 24

    def position_outputs(self, item_seq: torch.Tensor, item_len: torch.Tensor) -> torch.Tensor:
        """``[B, L, E]``: NARM's representation at every real position t from the GRU states
        j <= t (zero at padding positions)."""
        gru_out, _ = self.gru(self.emb_dropout(self.item_embedding(item_seq)))
        batch, length, hidden = gru_out.shape
        # Real positions in order of t (then row), so each chunk's keys stop at its largest t.
        t_index, b_index = (
            torch.arange(length, device=item_seq.device).unsqueeze(1) < item_len
        ).nonzero(as_tuple=True)
        c_global = gru_out[b_index, t_index]  # h_t, [N, H]
        per_chunk = max(1, self.local_attention_chunk // (length * hidden))
        stops = [*range(per_chunk, len(t_index), per_chunk), len(t_index)]
        widths = (t_index[torch.tensor(stops, device=t_index.device) - 1] + 1).tolist()
        chunks = list(zip([0, *stops[:-1]], stops, widths, strict=True))
        c_local = CausalLocalContext.apply(
            self.a_1(gru_out),
            gru_out,
            self.a_2(c_global),
            self.v_t.weight[0],
            b_index,
            t_index,
            chunks,
        )
        c_t = self.ct_dropout(torch.cat([c_local, c_global], dim=1))
        output = gru_out.new_zeros(batch, length, self.embedding_size)
        output[b_index, t_index] = self.b(c_t)
        return output
