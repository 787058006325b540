"""HybridContrastVAE: a ContrastVAE whose two views come from two different encoders.

This project's own model, built on ContrastVAE (Wang et al., CIKM 2022) and SLIME4Rec's slide
filter mixer (Du et al., ICDE 2023). Branch 1 encodes the sequence with causal Transformers
(global dependencies), branch 2 with slide filter mixers (local and frequency patterns); each
gives a per-position posterior, the two latents are contrasted (InfoNCE, cosine, in-batch
negatives, on the latent summed over real positions) and decoded by one shared causal
Transformer decoder:

    rec1 + rec2 + beta * (KL1 + KL2) + contrastive_weight * InfoNCE(sum_t z1_t, sum_t z2_t)

``latent`` selects the posterior family:

- ``gaussian``: ``z = mu + sigma * eps`` (separate mean and log-variance encoders per branch, as
  ContrastVAE), prior N(0, I); evaluation uses the mean.
- ``dirichlet``: concentrations ``softplus(h) + 0.01`` from one encoder per branch,
  ``z ~ Dir(alpha)`` by ``Dirichlet.rsample`` (implicit reparameterisation), prior
  ``Dir(dirichlet_prior)``, KL in closed form; evaluation uses the posterior mean. Simplex vectors
  have entries near 1 / H, so the decoder sees ``H * z`` (mean entry 1).
  The question it asks: does the Dirichlet's bounded, sparse latent resist posterior collapse
  (``kl1`` / ``kl2`` -> 0 in ``last_loss_terms``) better than the Gaussian?
  ``dirichlet_contrast`` picks what the contrastive term sees of a Dirichlet latent (the decoder
  always gets ``H * z``): ``logratio`` (default) the centred log-ratios ``log z - mean_k log z_k``
  at each position, summed over real positions as above; ``simplex`` the sum of ``H * z`` itself.
  ``H * z`` is all-positive, so the two branches' vectors have cosines in [0, 1] and the logits
  only span [0, 1 / temperature] of the [-1 / T, 1 / T] a cosine allows; the log-ratios are
  centred, so their cosines take either sign. Gaussian latents ignore the setting.

The filter mixer here is *causal* (``causal=True`` in the layer): the loss is taken at every
position, and SLIME4Rec's circular filter would show position t the items after it. The causal
form applies the same learned frequency kernel as a linear convolution over the past only.

Each branch has its own input augmentation (``branch{1,2}_augmentation``: ``none``, ``crop``,
``mask``, ``reorder`` or ``random``, one of the three per sequence) and its own dropout; an
augmented branch predicts the next items of its augmented sequence. ``eval_branch`` picks what
scores at evaluation: ``1`` (the Transformer branch's mean, as ContrastVAE), ``2`` or ``mean``
(the average of the two branches' means). Loss terms and both KLs are in ``last_loss_terms``.

``branches`` builds the ablation against each branch alone: ``"1"`` (a Transformer VAE) or ``"2"``
(a filter-mixer VAE) trains that branch with the same embeddings, decoder and KL schedule and no
contrastive term (there is no second view), scores with it, and builds no parameters for the
other; ``both`` (default) is the hybrid.
Train with ``train_regime: users`` (the whole sequence, a loss at every position).

Padding: batches may arrive padded only to their own longest sequence
(``accepts_trimmed_batches``). The latents are drawn at the real positions only (the padded
ones get zero, which the causal decoder never carries back to a real position) and the
augmentations draw for ``MAX_ITEM_LIST_LENGTH`` columns, so a seed gives the same terms whatever
the batch's width, up to the dropout masks.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_ext.layers.contrastive import (
    AUGMENTATIONS,
    augment_sequences,
    info_nce,
    next_item_targets,
)
from recbole_ext.layers.filter_mixer import FilterMixerEncoder
from recbole_ext.layers.latent import (
    LATENTS,
    dirichlet_concentration,
    dirichlet_kl,
    dirichlet_mean,
    dirichlet_sample,
    gaussian_kl,
    gaussian_sample,
    kl_weight,
    reconstruction_loss,
)
from recbole_ext.layers.transformer import CausalTransformerEncoder, init_weights

BRANCH_AUGMENTATIONS = ("none", "random", *AUGMENTATIONS)
DIRICHLET_CONTRASTS = ("logratio", "simplex")


class HybridContrastVAE(SequentialRecommender):
    """Transformer branch + filter-mixer branch, one decoder; see the module docstring."""

    input_type = InputType.POINTWISE
    accepts_trimmed_batches = True  # right padding; draws made per real position (docstring)

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        hidden = self.hidden_size = config["hidden_size"]
        self.latent = config["latent"]
        if self.latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}, not {self.latent!r}")
        self.dirichlet_contrast = config["dirichlet_contrast"]
        if self.dirichlet_contrast not in DIRICHLET_CONTRASTS:
            raise ValueError(
                f"dirichlet_contrast must be one of {DIRICHLET_CONTRASTS}, "
                f"not {self.dirichlet_contrast!r}"
            )
        self.augmentations = (config["branch1_augmentation"], config["branch2_augmentation"])
        for aug in self.augmentations:
            if aug not in BRANCH_AUGMENTATIONS:
                raise ValueError(f"branch augmentations must be in {BRANCH_AUGMENTATIONS}")
        self.branches = str(config["branches"])
        if self.branches not in ("both", "1", "2"):
            raise ValueError(f"branches must be both, 1 or 2, not {self.branches!r}")
        self.eval_branch = str(config["eval_branch"])
        if self.eval_branch not in ("1", "2", "mean"):
            raise ValueError("eval_branch must be 1, 2 or mean")
        if self.branches != "both":
            self.eval_branch = self.branches  # a lone branch scores with itself
        self.active_branches = (1, 2) if self.branches == "both" else (int(self.branches),)
        self.contrastive_weight = config["contrastive_weight"]
        self.temperature = config["temperature"]
        self.anneal_cap = config["anneal_cap"]
        self.total_annealing_step = config["total_annealing_step"]
        self.dirichlet_prior = config["dirichlet_prior"]
        self.rec_loss = config["rec_loss"]
        self.crop_eta = config["crop_eta"]
        self.mask_gamma = config["mask_gamma"]
        self.reorder_beta = config["reorder_beta"]
        eps = config["layer_norm_eps"]

        self.mask_token = self.n_items  # extra embedding row, never scored
        self.item_embedding = nn.Embedding(self.n_items + 1, hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
        self.branch_dropout = nn.ModuleList(
            [nn.Dropout(config["branch1_dropout"]), nn.Dropout(config["branch2_dropout"])]
        )
        transformer = partial(
            CausalTransformerEncoder,
            config["n_layers"],
            hidden,
            config["n_heads"],
            config["inner_size"],
        )
        mixer = partial(
            FilterMixerEncoder,
            n_layers=config["filter_n_layers"],
            hidden_size=hidden,
            max_len=self.max_seq_length,
            inner_size=config["inner_size"],
            hidden_dropout=config["branch2_dropout"],
            filter_dropout=config["branch2_filter_dropout"],
            filter_mixer=config["filter_mixer"],
            dynamic_ratio=config["dynamic_ratio"],
            slide_mode=config["slide_mode"],
            layer_norm_eps=eps,
            causal=True,
        )
        branch1 = partial(transformer, config["branch1_dropout"], config["attn_dropout_prob"], eps)
        # Gaussian: mean and log-variance encoders; Dirichlet: one concentration encoder.
        # A lone-branch ablation builds no parameters for the other branch.
        heads = {b: self._heads if b in self.active_branches else 0 for b in (1, 2)}
        self.encoder1 = nn.ModuleList([branch1() for _ in range(heads[1])])
        self.encoder2 = nn.ModuleList([mixer() for _ in range(heads[2])])
        self.decoder = transformer(config["hidden_dropout_prob"], config["attn_dropout_prob"], eps)
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.long))
        self.last_loss_terms: dict[str, float] = {}
        self.apply(partial(init_weights, std=config["initializer_range"]))

    @property
    def _heads(self) -> int:
        return 2 if self.latent == "gaussian" else 1

    @property
    def item_weight(self) -> torch.Tensor:
        return self.item_embedding.weight[: self.n_items]

    # --- encoders ---------------------------------------------------------------------------
    def _embed(self, item_seq: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        emb = self.item_embedding(item_seq) + self.position_embedding(positions)
        return self.embedding_norm(emb)

    def encode(
        self, branch: int, item_seq: torch.Tensor, item_len: torch.Tensor
    ) -> list[torch.Tensor]:
        """Posterior parameters of one branch (1 or 2): ``[mu, logvar]`` or ``[raw alpha]``."""
        emb = self.branch_dropout[branch - 1](self._embed(item_seq))
        if branch == 1:
            return [enc(emb) for enc in self.encoder1]
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        valid = (positions < item_len.unsqueeze(1)).unsqueeze(-1).to(emb.dtype)
        return [enc(emb, valid) for enc in self.encoder2]

    def _sample(
        self, params: list[torch.Tensor], valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder input ``[B, L, H]``, zero at the padded positions; the KL of each real
        position ``[N]``), drawn at the real positions (``valid`` ``[B, L]``) only."""
        rows, cols = valid.nonzero(as_tuple=True)
        real = [p[rows, cols] for p in params]
        if self.latent == "gaussian":
            mu, logvar = real
            z, kl = gaussian_sample(mu, logvar), gaussian_kl(mu, logvar)
        else:
            alpha = dirichlet_concentration(real[0])
            z = dirichlet_sample(alpha) * self.hidden_size
            kl = dirichlet_kl(alpha, self.dirichlet_prior)
        return params[0].new_zeros(params[0].shape).index_put((rows, cols), z), kl

    def _mean(self, params: list[torch.Tensor]) -> torch.Tensor:
        if self.latent == "gaussian":
            return params[0]
        return dirichlet_mean(dirichlet_concentration(params[0])) * self.hidden_size

    def contrast_view(self, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """A sequence's vector ``[B, H]`` for the contrastive term from the decoder input ``z``
        ``[B, L, H]``: summed over the real positions (``valid`` ``[B, L]``), as centred
        log-ratios for a Dirichlet latent under ``dirichlet_contrast: logratio``."""
        if self.latent == "dirichlet" and self.dirichlet_contrast == "logratio":
            # The scale H of the decoder input cancels: clr(H z) = clr(z).
            log_z = torch.log(z.clamp_min(torch.finfo(z.dtype).tiny))
            z = log_z - log_z.mean(dim=-1, keepdim=True)
        return (z * valid.unsqueeze(-1)).sum(dim=1)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """The decoder's output at the last real position from the posterior mean(s)."""
        if self.eval_branch == "mean":
            z = 0.5 * (
                self._mean(self.encode(1, item_seq, item_seq_len)[:1])
                + self._mean(self.encode(2, item_seq, item_seq_len)[:1])
            )
        else:
            branch = int(self.eval_branch)
            z = self._mean(self.encode(branch, item_seq, item_seq_len)[:1])
        return self.gather_indexes(self.decoder(z), item_seq_len - 1)

    # --- training ---------------------------------------------------------------------------
    def _branch_input(
        self,
        branch: int,
        item_seq: torch.Tensor,
        item_len: torch.Tensor,
        pos_items: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input, lengths, next-item targets) of one branch."""
        aug = self.augmentations[branch - 1]
        if aug == "none":
            return item_seq, item_len, next_item_targets(item_seq, item_len, pos_items)
        operations = list(AUGMENTATIONS) if aug == "random" else [aug]
        out = augment_sequences(
            item_seq,
            item_len,
            pos_items,
            operations,
            self.mask_token,
            self.crop_eta,
            self.mask_gamma,
            self.reorder_beta,
            width=self.max_seq_length,
        )
        return out.items, out.lengths, out.targets

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        beta = kl_weight(int(self.anneal_step), self.total_annealing_step, self.anneal_cap)
        if self.training:
            self.anneal_step += 1

        zs, kls, recs, users = [], [], [], []
        views = [self._branch_input(b, item_seq, item_len, pos_items) for b in self.active_branches]
        for branch, (seq, lens, _) in zip(self.active_branches, views, strict=True):
            valid = positions < lens.unsqueeze(1)
            z, kl = self._sample(self.encode(branch, seq, lens), valid)
            zs.append(z)
            kls.append(kl.sum() / max(kl.numel(), 1))  # mean over real positions
            users.append(self.contrast_view(z, valid))
        # One decoder call for all branches.
        outputs = self.decoder(torch.cat(zs)).chunk(len(zs))
        for output, (_, lens, targets) in zip(outputs, views, strict=True):
            valid = positions < lens.unsqueeze(1)
            recs.append(
                reconstruction_loss(output, targets, valid, self.item_weight, self.rec_loss)
            )
        terms = {}
        for branch, rec, kl in zip(self.active_branches, recs, kls, strict=True):
            terms[f"rec{branch}"], terms[f"kl{branch}"] = rec, kl
        total = sum(recs) + beta * sum(kls)
        if len(users) == 2:
            terms["contrastive"] = info_nce(users[0], users[1], self.temperature, "cos")
            total = total + self.contrastive_weight * terms["contrastive"]
        terms["total"] = total
        values = torch.stack(list(terms.values())).detach().float().tolist()
        self.last_loss_terms = {**dict(zip(terms, values, strict=True)), "beta": beta}
        return total

    # --- evaluation -------------------------------------------------------------------------
    def predict(self, interaction: Any) -> torch.Tensor:
        output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (output * self.item_embedding(interaction[self.ITEM_ID])).sum(dim=-1)

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return output @ self.item_weight.T
