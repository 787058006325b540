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

Official-code behaviours, each one switch away (defaults are the principled behaviour):

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
- ``history_score_zero`` (default false): the official evaluation sets the scores of history items
  to 0, not minus infinity, so they can still outrank items with negative scores. The harness's
  ``exclude_history_items`` gives them minus infinity (and overrides this); to reproduce the
  official protocol set ``exclude_history_items: false`` and ``history_score_zero: true`` (history
  = the input sequence).
- ``share_encoder_pass`` (default true): MA and VA encode the input once and draw both latents
  from it (the views differ in their latent noise, which is what the paper's MA and VA are); the
  official code encodes the same input twice, so its views also differ in encoder dropout.
  ``false`` re-encodes (as one batched call of 2B sequences).

Also deliberate: KL terms are averaged and latents summed over real positions only (the official
code includes the padding), and sampled negatives are uniform over items other than the target
(the official draws outside the user's whole sequence).

Training regime: the paper trains on one full sequence per user with a loss at every position
(``train_regime: users`` in the YAML); the per-position targets are built from ``item_seq``,
``item_length`` and ``POS_ITEM_ID``, so the model is also correct on RecBole's prefix samples.
"""

from __future__ import annotations

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
    variational_dropout_penalty,
)
from recbole_ext.layers.transformer import CausalTransformerEncoder, init_weights

AUGMENTATION_CHOICES = ("vanilla", "ma", "da", "va", "va_da")


class ContrastVAE(SequentialRecommender):
    """ContrastVAE; see the module docstring for the options and their defaults."""

    input_type = InputType.POINTWISE

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
        self.da_operations = list(config["da_operations"])
        self.da_targets = config["da_targets"]
        self.crop_eta = config["crop_eta"]
        self.mask_gamma = config["mask_gamma"]
        self.reorder_beta = config["reorder_beta"]
        self.share_encoder_pass = config["share_encoder_pass"]
        self.first_branch_mu_plus_sigma = config["first_branch_mu_plus_sigma"]
        self.history_score_zero = config["history_score_zero"]
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

    # --- building blocks -------------------------------------------------------------------
    def embed(self, item_seq: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        emb = self.item_embedding(item_seq) + self.position_embedding(positions)
        return self.embedding_dropout(self.embedding_norm(emb))

    def encode(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position posterior mean and log-variance, ``[B, L, H]`` each."""
        emb = self.embed(item_seq)
        return self.encoder_mu(emb), self.encoder_logvar(emb)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """The decoder's output at the last real position, from the first branch's mean."""
        emb = self.embed(item_seq)
        z = self.encoder_mu(emb)
        if self.first_branch_mu_plus_sigma:
            z = z + torch.exp(0.5 * self.encoder_logvar(emb))
        return self.gather_indexes(self.decoder(z), item_seq_len - 1)

    @property
    def item_weight(self) -> torch.Tensor:
        return self.item_embedding.weight[: self.n_items]

    # --- training --------------------------------------------------------------------------
    def _second_view(
        self,
        item_seq: torch.Tensor,
        item_len: torch.Tensor,
        pos_items: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(augmented input or None, its targets, its validity mask)."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        if self.augmentation not in ("da", "va_da"):
            return None, targets, positions < item_len.unsqueeze(1)
        aug = augment_sequences(
            item_seq,
            item_len,
            pos_items,
            self.da_operations,
            self.mask_token,
            self.crop_eta,
            self.mask_gamma,
            self.reorder_beta,
        )
        valid = positions < aug.lengths.unsqueeze(1)
        aug_targets = aug.targets if self.da_targets == "augmented" else targets * valid
        return aug.items, aug_targets, valid

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        batch, length = item_seq.shape
        valid1 = torch.arange(length, device=item_seq.device) < item_len.unsqueeze(1)
        targets1 = next_item_targets(item_seq, item_len, pos_items)
        beta = kl_weight(int(self.anneal_step), self.total_annealing_step, self.anneal_cap)
        if self.training:
            self.anneal_step += 1

        if self.augmentation == "vanilla":
            mu, logvar = self.encode(item_seq)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            rec1 = reconstruction_loss(
                self.decoder(z), targets1, valid1, self.item_weight, self.rec_loss
            )
            kl1 = masked_mean(gaussian_kl(mu, logvar), valid1)
            total = rec1 + beta * kl1
            self._record(rec1=rec1, kl1=kl1, total=total, beta=beta)
            return total

        seq2, targets2, valid2 = self._second_view(item_seq, item_len, pos_items, targets1)
        if seq2 is not None or not self.share_encoder_pass:
            # Both views in one batched encoder call.
            mu, logvar = self.encode(torch.cat([item_seq, item_seq if seq2 is None else seq2]))
            mu1, mu2 = mu.chunk(2)
            logvar1, logvar2 = logvar.chunk(2)
        else:
            mu1, logvar1 = self.encode(item_seq)
            mu2, logvar2 = mu1, logvar1
        sigma1, sigma2 = torch.exp(0.5 * logvar1), torch.exp(0.5 * logvar2)
        if self.first_branch_mu_plus_sigma:
            z1 = mu1 + sigma1
        else:
            z1 = mu1 + sigma1 * torch.randn_like(sigma1)
        extra = {}
        penalty = torch.zeros((), device=item_seq.device)
        if self.augmentation in ("va", "va_da"):
            alpha = torch.sigmoid(self.va_logit_alpha)
            z2 = mu2 + sigma2 * alpha * torch.randn_like(sigma2)
            penalty = variational_dropout_penalty(alpha)
            extra = {"va_alpha": alpha, "va_penalty": penalty}
        else:  # ma, da: dropout on the standard deviation
            z2 = mu2 + F.dropout(sigma2, p=self.reparam_dropout, training=True)

        out1, out2 = self.decoder(torch.cat([z1, z2])).chunk(2)
        rec1 = reconstruction_loss(out1, targets1, valid1, self.item_weight, self.rec_loss)
        rec2 = reconstruction_loss(out2, targets2, valid2, self.item_weight, self.rec_loss)
        kl1 = masked_mean(gaussian_kl(mu1, logvar1), valid1)
        kl2 = masked_mean(gaussian_kl(mu2, logvar2), valid2)
        user1 = (z1 * valid1.unsqueeze(-1)).sum(dim=1)
        user2 = (z2 * valid2.unsqueeze(-1)).sum(dim=1)
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
        # One device-to-host transfer for all terms.
        values = torch.stack([terms[n].detach().float().reshape(()) for n in names]).tolist()
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
            scores = scores.scatter(1, item_seq, 0.0)
        return scores
