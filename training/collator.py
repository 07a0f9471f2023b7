"""Corpus rows → model inputs: the training-time twin of :class:`~modeling_txfm.TxFMProcessor`.

A corpus row stores a sample sparsely (``gene_index``: sorted vocabulary positions of its non-zero
genes, ``counts``: their counts) and names its gene panel by ``profile_id``. Per sample the collator

1. library-size normalises over the stored genes, x̃_g = ln(1 + c_g·(L/Σc)) — exactly the processor's
   arithmetic (float64, then float32), so training and inference see the same numbers;
2. draws K = min(``num_visible_genes``, |P|) genes uniformly without replacement from the profile P
   (zeros included) — by ``argpartition`` of uniform scores, the processor's ``random_columns``;
3. returns ``gene_ids``/``values``/``attention_mask`` [B, K_max] and the dense loss inputs
   ``targets``/``profiled_mask`` [B, G] (unmeasured genes are masked out, not zeros).

Randomness: each sample's draw comes from its own generator, ``np.random.default_rng(key)``, where
``key`` names the draw (seed, split, epoch, corpus row). Why per sample and not one generator per
batch: the draw is then a pure function of *which* sample is seen *when*, so (a) DataLoader workers
need no shared generator state, (b) resuming at a data position reproduces the draws exactly with
nothing extra to checkpoint, and (c) one process with batch 2b sees exactly the draws that two
processes with batch b see. Per gene there is no Python loop; per sample there is one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

#: Tags that keep the random streams of the training and validation draws apart.
TRAIN_TAG, VALIDATION_TAG = 0, 1


@dataclass
class RaggedRows:
    """A batch of corpus rows in CSR form: row i owns ``gene_index[offsets[i]:offsets[i+1]]``."""

    offsets: np.ndarray  # [B+1] int64
    gene_index: np.ndarray  # [nnz] int64 vocabulary positions
    counts: np.ndarray  # [nnz] counts (> 0)
    profile_id: np.ndarray  # [B] int64

    def __len__(self) -> int:
        return len(self.profile_id)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> RaggedRows:
        """From a ``pyarrow.Table`` of corpus rows, without touching rows one by one."""
        genes = table.column("gene_index").combine_chunks()
        counts = table.column("counts").combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(genes), 0).to_numpy(zero_copy_only=False)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(
            offsets=offsets,
            gene_index=genes.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False),
            counts=counts.flatten().to_numpy(zero_copy_only=False),
            profile_id=table.column("profile_id").to_numpy().astype(np.int64, copy=False),
        )

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence]) -> RaggedRows:
        """From a dict of columns (``{"gene_index": [[...], ...], "counts": ..., "profile_id": ...}``)."""
        genes = [np.asarray(g, dtype=np.int64) for g in columns["gene_index"]]
        lengths = np.array([len(g) for g in genes], dtype=np.int64)
        offsets = np.zeros(len(genes) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        empty = np.zeros(0, dtype=np.int64)
        return cls(
            offsets=offsets,
            gene_index=np.concatenate(genes) if genes else empty,
            counts=np.concatenate([np.asarray(c) for c in columns["counts"]]) if genes else empty,
            profile_id=np.asarray(columns["profile_id"], dtype=np.int64),
        )


class TxFMCollator:
    """Builds TxFM training inputs from :class:`RaggedRows`; see the module docstring.

    Args:
        profiles: ``profile_id`` → sorted vocabulary positions that the profile's source measured.
        vocab_size: G, the model's vocabulary size.
        num_visible_genes: K.
        library_size: L.
    """

    def __init__(
        self,
        profiles: Mapping[int, np.ndarray],
        vocab_size: int,
        num_visible_genes: int,
        library_size: float = 1e5,
    ):
        if not profiles:
            raise ValueError("The corpus has no gene profiles (profiles.json is empty)")
        self.vocab_size = int(vocab_size)
        self.num_visible_genes = int(num_visible_genes)
        self.library_size = float(library_size)
        ids = sorted(int(p) for p in profiles)
        self.profiles = {p: np.asarray(profiles[p], dtype=np.int64) for p in ids}
        for pid, genes in self.profiles.items():
            if len(genes) == 0:
                raise ValueError(f"profile {pid} has no genes")
            if genes.max() >= self.vocab_size or genes.min() < 0:
                raise ValueError(f"profile {pid} names vocabulary positions outside [0, {self.vocab_size})")
            if np.any(np.diff(genes) <= 0):
                raise ValueError(f"profile {pid} positions must be sorted and unique")
        # One mask row per profile: the [B, G] profiled mask is then a single gather.
        self._row_of_profile = {pid: row for row, pid in enumerate(ids)}
        self._profile_masks = np.zeros((len(ids), self.vocab_size), dtype=bool)
        for pid, genes in self.profiles.items():
            self._profile_masks[self._row_of_profile[pid], genes] = True

    def __call__(self, rows: RaggedRows, keys: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """``keys[i]`` seeds sample i's visible-gene draw (a tuple of non-negative ints)."""
        batch = len(rows)
        if len(keys) != batch:
            raise ValueError(f"{len(keys)} draw keys for {batch} rows")
        try:
            profile_rows = np.array([self._row_of_profile[int(p)] for p in rows.profile_id], dtype=np.int64)
        except KeyError as error:
            raise ValueError(f"row with unknown profile_id {error.args[0]} (not in profiles.json)") from None

        # 1. targets: x̃ = ln(1 + c·(L/Σc)) at the stored (non-zero) genes, 0 at the other profiled genes
        lengths = np.diff(rows.offsets)
        row_of_entry = np.repeat(np.arange(batch), lengths)
        totals = np.bincount(row_of_entry, weights=rows.counts, minlength=batch)  # float64
        scale = np.divide(self.library_size, totals, out=np.zeros(batch), where=totals > 0)
        values64 = np.log1p(rows.counts * scale[row_of_entry])
        targets = np.zeros((batch, self.vocab_size), dtype=np.float32)
        targets[row_of_entry, rows.gene_index] = values64
        profiled_mask = self._profile_masks[profile_rows]  # [B, G] copy

        # 2. visible genes: K of the profile, uniform without replacement, one seeded draw per sample
        chosen: list[np.ndarray] = []
        for i in range(batch):
            profile = self.profiles[int(rows.profile_id[i])]
            k = min(self.num_visible_genes, len(profile))
            scores = np.random.default_rng([int(v) for v in keys[i]]).random((1, len(profile)))
            columns = np.sort(np.argpartition(scores, k - 1, axis=1)[:, :k], axis=1)[0]
            chosen.append(profile[columns])

        # 3. pad to the batch's largest K
        width = max(len(c) for c in chosen)
        gene_ids = np.zeros((batch, width), dtype=np.int64)
        attention_mask = np.zeros((batch, width), dtype=np.int64)
        for i, genes in enumerate(chosen):
            gene_ids[i, : len(genes)] = genes
            attention_mask[i, : len(genes)] = 1
        values = np.take_along_axis(targets, gene_ids, axis=1) * attention_mask
        return {
            "gene_ids": torch.from_numpy(gene_ids),
            "values": torch.from_numpy(values.astype(np.float32, copy=False)),
            "attention_mask": torch.from_numpy(attention_mask),
            "targets": torch.from_numpy(targets),
            "profiled_mask": torch.from_numpy(profiled_mask),
        }


def masked_gene_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B, G] True for profiled genes the encoder did *not* see (what reconstruction is judged on)."""
    # scatter_add, not scatter: padding points at gene 0 and must not overwrite a real visible gene 0
    shown = torch.zeros(batch["profiled_mask"].shape, dtype=torch.int64, device=batch["gene_ids"].device)
    shown.scatter_add_(1, batch["gene_ids"], batch["attention_mask"].long())
    return batch["profiled_mask"] & (shown == 0)
