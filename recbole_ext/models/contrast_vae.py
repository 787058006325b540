"""ContrastVAE: Contrastive Variational AutoEncoder for Sequential Recommendation.

Yu Wang, Hengrui Zhang, Zhiwei Liu, Liangwei Yang and Philip S. Yu, CIKM 2022
(official code: github.com/YuWang-1024/ContrastVAE).

A Transformer VAE over the item sequence: causal Transformer encoders for the mean and the
log-variance of a per-position latent, a causal Transformer decoder, tied item embeddings for
the output. Two views of each sequence give two latents; the loss is, per step,

    rec1 + rec2 + beta * (KL1 + KL2) + contrastive_weight * InfoNCE(sum_t z1_t, sum_t z2_t)
    (+ the variational-dropout prior penalty for VA),

with ``beta = min(anneal_cap, step / total_annealing_step)`` per optimizer step, rec a next-item
loss at every real position and InfoNCE cosine with in-batch negatives. ``augmentation`` picks the
second view: ``vanilla`` (one branch, no contrast), ``ma`` (model augmentation: the second latent
is ``mu + Dropout(sigma)``), ``da`` (data augmentation: crop / mask / reorder of the input, latent
``mu + Dropout(sigma)``), ``va`` (variational augmentation: ``mu + sigma * alpha * eps`` with a
learnable ``alpha`` and its variational-dropout prior penalty), ``va_da`` (VA on an augmented
input).

Official-code behaviours. Each is a switch whose YAML default is ``~`` (unset): the principled
behaviour below, unless ``official: true``, which turns every one of them to the official code's
(github.com/YuWang-1024/ContrastVAE, commit 0896025). A switch set explicitly (the model YAML, a
``--config`` file, ``--set``) beats the preset either way; the model writes each switch's
effective value back into the config, so a run's recorded config holds what it computed with.

- ``first_branch_mu_plus_sigma`` (default false): the official first branch uses
  ``z = mu + sigma`` without noise, in training and evaluation; that is not a sample of q(z|x), so
  its KL term does not bound anything and its "reconstruction" is of a shifted mean. Default:
  ``z1 = mu + sigma * eps`` in training and ``mu`` at evaluation, the standard VAE.
- ``da_operations`` (default ``[crop, mask, reorder]``, the paper's description): the official
  data augmentation draws its operator with a bug that leaves only reorder alive; ``[reorder]``
  reproduces it.
- ``da_targets`` (default ``augmented``): the augmented branch predicts the next items of its own
  augmented sequence; ``original`` (official) predicts the original sequence's targets position by
  position, which after a reorder puts some targets into their own input.
- ``share_encoder_pass`` (default true): MA and VA encode the input once and draw both latents
  from it (the views differ in their latent noise, which is what the paper's MA and VA are); the
  official code encodes the same input twice, so its views also differ in encoder dropout.
  ``false`` re-encodes (as one batched call of 2B sequences).
- ``kl_over_padding`` (default false): the KL terms are averaged over the real positions; true
  (official) averages them over all ``MAX_ITEM_LIST_LENGTH`` positions of the padded sequence,
  padding included. The official left padding runs through the network, so its latents are not
  zero and count; and a Beauty sequence holds ~6 real items of 50, so the principled average puts
  ~8x the official KL weight on each real position at the same ``anneal_cap``.
- ``contrast_over_padding`` (default false): the contrastive user vector is the sum of the
  latents over the real positions; true (official) sums them over all ``MAX_ITEM_LIST_LENGTH``
  positions, padding included.
- ``align_positions_right`` (default false): item t of a sequence of n items gets position
  embedding t; true (official, as its left padding gives) gets ``MAX_ITEM_LIST_LENGTH - n + t``,
  so the most recent item always has the last position embedding.
- ``negatives_outside_sequence`` (default false): the BCE loss's negative at a position is
  uniform over the items other than that position's target, drawn anew for each branch; true
  (official) draws it uniform over the items outside the row's sequence (its items and its last
  target) and shares it between the two branches. The official code also excludes the user's
  later items (its validation and test items, which no model here sees) and can draw its [mask]
  token id; those two are not reproduced.
- ``history_score_zero`` (default false): the official evaluation sets the scores of history items
  to 0, not minus infinity, so they can still outrank items with negative scores. The harness's
  ``exclude_history_items: true`` (every leaderboard's protocol, set by the dataset config) gives
  them minus infinity after the model scores, so on a leaderboard the preset cannot score history
  as the official code does. To score history the official way outside a board:
  ``--set exclude_history_items=false --set history_score_zero=true`` (history = the input
  sequence), or ``--set official=true --set exclude_history_items=false`` for the whole preset.

Padding: batches may arrive padded only to their own longest sequence (``accepts_trimmed_batches``)
and the loss does not depend on that width. With ``kl_over_padding`` or ``contrast_over_padding``
the model pads each sequence to ``MAX_ITEM_LIST_LENGTH`` itself, the official way: padding before
the items, padding ids through the item embedding (its row 0 keeps its random initial value, as
the official code's), and the official attention mask, which adds -10000 to the scores of the
keys a query may not see; a padding position sees no real item, so every key gets the same -10000
and it attends to every position, later items included, by its raw scores, as in the official
code. Without those two switches no padding position enters the loss, and the right-padded batch
runs as it comes.
Random draws (latent noise, the dropout on sigma, negatives, augmentations) are made per real
position, or for ``MAX_ITEM_LIST_LENGTH`` columns, so the same seed gives the same loss on a
trimmed batch as on the full one.

Parity: ``benchmarks/contrastvae_parity.py`` runs the official code beside this model with
``official: true`` (same weights, batch and random draws) and compares every loss term
(``results/perf/contrastvae_parity.md``).

Training regime: the paper trains on one full sequence per user with a loss at every position
(``train_regime: users`` in the YAML); the per-position targets are built from ``item_seq``,
``item_length`` and ``POS_ITEM_ID``, so the model is also correct on RecBole's prefix samples.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_ext.layers.contrastive import augment_sequences, info_nce, next_item_targets
from recbole_ext.layers.latent import (
    gaussian_kl,
    kl_weight,
    logit_of_dropout_alpha,
    masked_mean,
    reconstruction_loss,
    sample_negatives_outside,
    variational_dropout_penalty,
)
from recbole_ext.layers.transformer import CausalTransformerEncoder, init_weights

AUGMENTATION_CHOICES = ("vanilla", "ma", "da", "va", "va_da")

# Each official-code switch: (the principled default, the official code's behaviour). A switch
# left unset (~) takes the first unless ``official: true``.
OFFICIAL_SWITCHES: dict[str, tuple[Any, Any]] = {
    "share_encoder_pass": (True, False),
    "da_operations": (["crop", "mask", "reorder"], ["reorder"]),
    "da_targets": ("augmented", "original"),
    "first_branch_mu_plus_sigma": (False, True),
    "history_score_zero": (False, True),
    "kl_over_padding": (False, True),
    "contrast_over_padding": (False, True),
    "align_positions_right": (False, True),
    "negatives_outside_sequence": (False, True),
}

# The official attention mask's value for a key a query may not see. Being finite, it leaves a
# padding position (which sees no real key, so every key gets it) attending to every position.
OFFICIAL_MASKED_SCORE = -10000.0


def resolve_official_switches(config: Any) -> dict[str, Any]:
    """The effective value of every switch of :data:`OFFICIAL_SWITCHES`: the config's where set,
    else the official behaviour under ``official: true`` and the principled default otherwise.
    Each is written back into ``config``, so that the run's recorded config holds it."""
    official = bool(config["official"])
    values = {}
    for key, (default, official_value) in OFFICIAL_SWITCHES.items():
        value = config[key]
        if value is None:
            value = copy.deepcopy(official_value if official else default)
        config[key] = value
        values[key] = value
    return values


@dataclass
class SequenceView:
    """One view of a batch as the network sees it.

    Right-padded as the batch comes (``mask`` None: causal attention suffices), or, when the
    padding counts in the loss, left-padded to ``MAX_ITEM_LIST_LENGTH`` with the official
    attention mask.
    """

    items: torch.Tensor  # [B, W] item ids, 0 on padding
    lengths: torch.Tensor  # [B]
    targets: torch.Tensor  # [B, W] the next item at each real position, 0 elsewhere
    valid: torch.Tensor  # [B, W] bool, the real positions
    positions: torch.Tensor  # [W] or [B, W] position-embedding indices
    mask: torch.Tensor | None  # [B, 1, W, W] additive attention mask, or None (causal)

    def cat(self, other: SequenceView) -> SequenceView:
        """This view and ``other`` stacked along the batch (for one batched network call)."""
        positions = self.positions  # one [W] row serves both views alike
        if self.positions.dim() == 2 or other.positions.dim() == 2:
            positions = torch.cat(
                [view.positions.expand(view.items.shape) for view in (self, other)]
            )
        masks = None if self.mask is None else torch.cat([self.mask, other.mask])
        return SequenceView(
            torch.cat([self.items, other.items]),
            torch.cat([self.lengths, other.lengths]),
            torch.cat([self.targets, other.targets]),
            torch.cat([self.valid, other.valid]),
            positions,
            masks,
        )


class ContrastVAE(SequentialRecommender):
    """ContrastVAE; see the module docstring for the options and their defaults."""

    input_type = InputType.POINTWISE
    # The loss and the scores do not depend on how far a batch is padded (tested).
    accepts_trimmed_batches = True

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.augmentation = config["augmentation"]
        if self.augmentation not in AUGMENTATION_CHOICES:
            raise ValueError(f"augmentation must be one of {AUGMENTATION_CHOICES}")
        self.contrastive_weight = config["contrastive_weight"]
        self.temperature = config["temperature"]
        self.reparam_dropout = config["reparam_dropout"]
        self.anneal_cap = config["anneal_cap"]
        self.total_annealing_step = config["total_annealing_step"]
        self.rec_loss = config["rec_loss"]
        self.crop_eta = config["crop_eta"]
        self.mask_gamma = config["mask_gamma"]
        self.reorder_beta = config["reorder_beta"]
        switches = resolve_official_switches(config)
        self.share_encoder_pass = bool(switches["share_encoder_pass"])
        self.da_operations = list(switches["da_operations"])
        self.da_targets = switches["da_targets"]
        if self.da_targets not in ("augmented", "original"):
            raise ValueError(
                f"da_targets must be 'augmented' or 'original', not {self.da_targets!r}"
            )
        self.first_branch_mu_plus_sigma = bool(switches["first_branch_mu_plus_sigma"])
        self.history_score_zero = bool(switches["history_score_zero"])
        self.kl_over_padding = bool(switches["kl_over_padding"])
        self.contrast_over_padding = bool(switches["contrast_over_padding"])
        self.align_positions_right = bool(switches["align_positions_right"])
        self.negatives_outside_sequence = bool(switches["negatives_outside_sequence"])
        eps = config["layer_norm_eps"]

        # Row n_items is the [mask] token of the mask augmentation; it is never scored.
        self.mask_token = self.n_items
        self.item_embedding = nn.Embedding(self.n_items + 1, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.embedding_norm = nn.LayerNorm(self.hidden_size, eps=eps)
        self.embedding_dropout = nn.Dropout(config["hidden_dropout_prob"])
        transformer = partial(
            CausalTransformerEncoder,
            config["n_layers"],
            self.hidden_size,
            config["n_heads"],
            config["inner_size"],
            config["hidden_dropout_prob"],
            config["attn_dropout_prob"],
            eps,
        )
        self.encoder_mu = transformer()
        self.encoder_logvar = transformer()
        self.decoder = transformer()
        if self.augmentation in ("va", "va_da"):
            init = logit_of_dropout_alpha(config["va_init_dropout"])
            self.va_logit_alpha = nn.Parameter(torch.tensor(init))
        # Optimizer steps so far, for KL annealing; a buffer so that checkpoints resume it.
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))
        self.last_loss_terms: dict[str, float] = {}
        self.apply(partial(init_weights, std=config["initializer_range"]))

    @property
    def pads_to_max_length(self) -> bool:
        """Whether padding positions count in the loss (so the model pads to the full length)."""
        return self.kl_over_padding or self.contrast_over_padding

    # --- building blocks -------------------------------------------------------------------
    def position_ids(self, lengths: torch.Tensor, width: int, left: bool = False) -> torch.Tensor:
        """Position-embedding index of each column of a right- (or ``left``-) padded batch:
        item t of n gets t, or ``max_seq_length - n + t`` under ``align_positions_right``.
        Padding columns get the indices the items do not use."""
        columns = torch.arange(width, device=lengths.device)
        if not left and not self.align_positions_right:
            return columns
        shift = (self.max_seq_length - lengths).unsqueeze(1)
        item_index = columns - shift if left else columns.expand(len(lengths), width)
        if self.align_positions_right:
            item_index = item_index + shift
        return item_index % self.max_seq_length

    def view(
        self, items: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, padded: bool
    ) -> SequenceView:
        """The network's view of a right-padded batch: as it is, or (``padded``) left-padded to
        ``max_seq_length`` with the official attention mask."""
        if not padded:
            width = items.shape[1]
            valid = torch.arange(width, device=items.device) < lengths.unsqueeze(1)
            return SequenceView(
                items, lengths, targets, valid, self.position_ids(lengths, width), None
            )
        width = self.max_seq_length
        source = torch.arange(width, device=items.device) - (width - lengths).unsqueeze(1)
        valid = source >= 0
        index = source.clamp(min=0)
        items = items.gather(1, index) * valid
        targets = targets.gather(1, index) * valid
        # The official mask: a query sees the real keys up to itself; the others get -10000.
        causal = torch.ones(width, width, dtype=torch.bool, device=items.device).tril()
        visible = causal & valid.unsqueeze(1)
        mask = torch.zeros(
            visible.shape, dtype=self.position_embedding.weight.dtype, device=items.device
        )
        mask = mask.masked_fill(~visible, OFFICIAL_MASKED_SCORE).unsqueeze(1)
        return SequenceView(
            items, lengths, targets, valid, self.position_ids(lengths, width, left=True), mask
        )

    def embed(self, item_seq: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if positions is None:
            positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        emb = self.item_embedding(item_seq) + self.position_embedding(positions)
        return self.embedding_dropout(self.embedding_norm(emb))

    def run(
        self, network: CausalTransformerEncoder, x: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        return network(x, attn_mask=mask)

    def encode(
        self,
        item_seq: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position posterior mean and log-variance, ``[B, L, H]`` each."""
        emb = self.embed(item_seq, positions)
        return self.run(self.encoder_mu, emb, mask), self.run(self.encoder_logvar, emb, mask)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """The decoder's output at the last real position, from the first branch's mean.

        The right-padded batch as it comes: no real position sees padding, so padding to the
        full length would not change it."""
        emb = self.embed(item_seq, self.position_ids(item_seq_len, item_seq.shape[1]))
        z = self.encoder_mu(emb)
        if self.first_branch_mu_plus_sigma:
            z = z + torch.exp(0.5 * self.encoder_logvar(emb))
        return self.gather_indexes(self.decoder(z), item_seq_len - 1)

    @property
    def item_weight(self) -> torch.Tensor:
        return self.item_embedding.weight[: self.n_items]

    # --- random draws (one place each, so that a parity check can feed its own) ------------
    def standard_normal(self, like: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """N(0, I) noise shaped like ``like``: at every position (``valid`` None), or only at the
        ``valid`` ones (zero elsewhere), so that the draws do not depend on the batch's width."""
        if valid is None:
            return torch.randn_like(like)
        noise = torch.zeros_like(like)
        noise[valid] = torch.randn_like(like[valid])
        return noise

    def dropout_sigma(self, sigma: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """The MA / DA second view's dropout on the standard deviation (``reparam_dropout``), at
        every position or only at the ``valid`` ones (zero elsewhere), as ``standard_normal``."""
        if valid is None:
            return F.dropout(sigma, p=self.reparam_dropout, training=True)
        dropped = torch.zeros_like(sigma)
        dropped[valid] = F.dropout(sigma[valid], p=self.reparam_dropout, training=True)
        return dropped

    def shared_negatives(
        self, item_seq: torch.Tensor, pos_items: torch.Tensor, width: int
    ) -> torch.Tensor | None:
        """``negatives_outside_sequence``: one negative per column ``[B, width]`` (shared by the
        branches), outside the row's items and its last target; None: each branch's
        reconstruction loss draws its own."""
        if not self.negatives_outside_sequence or self.rec_loss != "bce":
            return None
        exclude = torch.cat([item_seq, pos_items.unsqueeze(1)], dim=1)
        # max_seq_length columns whatever the batch's width: trimming keeps the draws.
        draws = sample_negatives_outside(exclude, self.n_items, self.max_seq_length)
        return draws[:, :width]

    # --- training --------------------------------------------------------------------------
    def _second_view(
        self,
        item_seq: torch.Tensor,
        item_len: torch.Tensor,
        pos_items: torch.Tensor,
        targets: torch.Tensor,
        first: SequenceView,
    ) -> SequenceView:
        """The second branch's input: the first's for MA / VA, an augmented one for DA."""
        if self.augmentation not in ("da", "va_da"):
            return first
        aug = augment_sequences(
            item_seq,
            item_len,
            pos_items,
            self.da_operations,
            self.mask_token,
            self.crop_eta,
            self.mask_gamma,
            self.reorder_beta,
            width=self.max_seq_length,
        )
        if self.da_targets == "augmented":
            aug_targets = aug.targets
        else:
            in_view = torch.arange(item_seq.shape[1], device=item_seq.device)
            aug_targets = targets * (in_view < aug.lengths.unsqueeze(1))
        return self.view(aug.items, aug.lengths, aug_targets, self.pads_to_max_length)

    def _reconstruction(
        self, output: torch.Tensor, view: SequenceView, negatives: torch.Tensor | None
    ) -> torch.Tensor:
        chosen = None if negatives is None else negatives[view.valid]
        return reconstruction_loss(
            output, view.targets, view.valid, self.item_weight, self.rec_loss, negatives=chosen
        )

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor, view: SequenceView) -> torch.Tensor:
        kl = gaussian_kl(mu, logvar)
        # kl_over_padding: the view is max_seq_length wide, so the mean is over all positions.
        return kl.mean() if self.kl_over_padding else masked_mean(kl, view.valid)

    def _user_vector(self, z: torch.Tensor, view: SequenceView) -> torch.Tensor:
        if self.contrast_over_padding:  # the view is max_seq_length wide
            return z.sum(dim=1)
        return (z * view.valid.unsqueeze(-1)).sum(dim=1)

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        beta = kl_weight(int(self.anneal_step), self.total_annealing_step, self.anneal_cap)
        if self.training:
            self.anneal_step += 1
        padded = self.pads_to_max_length
        targets = next_item_targets(item_seq, item_len, pos_items)
        view1 = self.view(item_seq, item_len, targets, padded)
        negatives = self.shared_negatives(item_seq, pos_items, view1.items.shape[1])
        # Noise everywhere on the full-length view (the padding counts), else at real positions.
        noise_at1 = None if padded else view1.valid

        if self.augmentation == "vanilla":
            mu, logvar = self.encode(view1.items, view1.positions, view1.mask)
            z = mu + torch.exp(0.5 * logvar) * self.standard_normal(mu, noise_at1)
            rec1 = self._reconstruction(self.run(self.decoder, z, view1.mask), view1, negatives)
            kl1 = self._kl(mu, logvar, view1)
            total = rec1 + beta * kl1
            self._record(rec1=rec1, kl1=kl1, total=total, beta=beta)
            return total

        view2 = self._second_view(item_seq, item_len, pos_items, targets, view1)
        noise_at2 = None if padded else view2.valid
        if view2 is not view1 or not self.share_encoder_pass:
            both = view1.cat(view2)  # both views in one batched encoder call
            mu, logvar = self.encode(both.items, both.positions, both.mask)
            mu1, mu2 = mu.chunk(2)
            logvar1, logvar2 = logvar.chunk(2)
        else:
            mu1, logvar1 = self.encode(view1.items, view1.positions, view1.mask)
            mu2, logvar2 = mu1, logvar1
        sigma1, sigma2 = torch.exp(0.5 * logvar1), torch.exp(0.5 * logvar2)
        if self.first_branch_mu_plus_sigma:
            z1 = mu1 + sigma1
        else:
            z1 = mu1 + sigma1 * self.standard_normal(sigma1, noise_at1)
        extra = {}
        penalty = torch.zeros((), device=item_seq.device)
        if self.augmentation in ("va", "va_da"):
            alpha = torch.sigmoid(self.va_logit_alpha)
            z2 = mu2 + sigma2 * alpha * self.standard_normal(sigma2, noise_at2)
            penalty = variational_dropout_penalty(alpha)
            extra = {"va_alpha": alpha, "va_penalty": penalty}
        else:  # ma, da: dropout on the standard deviation
            z2 = mu2 + self.dropout_sigma(sigma2, noise_at2)

        decoder_mask = None if view1.mask is None else torch.cat([view1.mask, view2.mask])
        out1, out2 = self.run(self.decoder, torch.cat([z1, z2]), decoder_mask).chunk(2)
        rec1 = self._reconstruction(out1, view1, negatives)
        rec2 = self._reconstruction(out2, view2, negatives)
        kl1 = self._kl(mu1, logvar1, view1)
        kl2 = self._kl(mu2, logvar2, view2)
        user1, user2 = self._user_vector(z1, view1), self._user_vector(z2, view2)
        contrastive = info_nce(user1, user2, self.temperature, "cos")
        total = rec1 + rec2 + beta * (kl1 + kl2) + self.contrastive_weight * contrastive + penalty
        self._record(
            rec1=rec1,
            rec2=rec2,
            kl1=kl1,
            kl2=kl2,
            contrastive=contrastive,
            total=total,
            beta=beta,
            **extra,
        )
        return total

    def _record(self, beta: float, **terms: torch.Tensor) -> None:
        names = list(terms)
        # One device-to-host transfer for all terms, in float64 (a float64 model keeps its digits).
        values = torch.stack([terms[n].detach().double().reshape(()) for n in names]).tolist()
        self.last_loss_terms = {**dict(zip(names, values, strict=True)), "beta": beta}

    # --- evaluation ------------------------------------------------------------------------
    def predict(self, interaction: Any) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        test_item = interaction[self.ITEM_ID]
        output = self.forward(item_seq, interaction[self.ITEM_SEQ_LEN])
        scores = (output * self.item_embedding(test_item)).sum(dim=-1)
        if self.history_score_zero:
            seen = (item_seq == test_item.unsqueeze(1)).any(dim=1)
            scores = scores.masked_fill(seen, 0.0)
        return scores

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        output = self.forward(item_seq, interaction[self.ITEM_SEQ_LEN])
        scores = output @ self.item_weight.T
        if self.history_score_zero:
            seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, item_seq, True)
            seen[:, 0] = False  # the padding id is no history (however far the batch is padded)
            scores = scores.masked_fill(seen, 0.0)
        return scores
