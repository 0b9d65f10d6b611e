"""FREEDOM (Zhou and Shen, ACM MM 2023) inside the harness: a multi-modal peer trained with this
project's sampler, evaluator and early stopping, so that its architecture can be compared with the
teacher's with everything else held fixed.

The model, as the baseline toolbox runs it (MMRec's defaults, which bench/peers.py measures):

- A frozen item-item graph S from the raw features of two modalities (``vision`` and ``text``): in
  each modality every item keeps its ``knn_k`` most cosine-similar items, itself included, each with
  weight 1/knn_k (a directed, row-stochastic graph); S = w S_vision + (1 - w) S_text, w = 0.1.
- Degree-sensitive edge pruning: at the start of every epoch a fraction ``dropout`` of the training
  edges is removed. The kept edges are drawn without replacement with probability proportional to
  1/sqrt(d_u d_i), so edges between popular nodes go first; the kept graph is normalised with its own
  degrees. Validation and test use the full graph.
- Representations: LightGCN (``ui_layers`` layers, the mean of layers 0..L) on the (pruned) graph,
  and the items gain S e_I, their ID embeddings propagated once over the item-item graph.
- Loss: BPR on the representations plus ``reg_weight`` times a BPR of the user representation
  against each modality's linear projection of the item's features (the feature tables train too).
  One uniform negative per positive, batches of 2,048, Adam at 1e-3, no L2 term.
- Selection: validation Recall@20 after every epoch; the best epoch's embeddings are tested once.
"""
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from Models import lightgcn_propagate  # noqa: E402
from utility.errors import UserError  # noqa: E402
from utility.graph import knn_neighbours, sym_norm_blocks, to_torch_csr  # noqa: E402
from utility.losses import bpr_loss  # noqa: E402
from utility.sampler import TripleSampler  # noqa: E402
from utility.training import EarlyStopping  # noqa: E402


def choose_modalities(modalities, vision, text):
    """(vision, text): the two feature slots of MMRec's multi-modal models, FREEDOM's among them.
    Defaults: 'image' and 'text' where present, else the dataset's modalities in name order."""
    names = sorted(modalities)
    if vision is None:
        vision = "image" if "image" in names else next((m for m in names if m != text), None)
    if text is None:
        text = "text" if "text" in names and vision != "text" else next((m for m in names if m != vision), None)
    for flag, name in (("--vision", vision), ("--text", text)):
        if name not in names:
            raise UserError(f"{flag} {name}: not a modality of the dataset (it has {', '.join(names)})")
    if vision == text:
        raise UserError(f"--vision and --text are both {vision}; MMRec takes two different modalities")
    return vision, text


@dataclass
class FreedomConfig:
    embed_size: int = 64
    knn_k: int = 10
    vision_weight: float = 0.1
    ui_layers: int = 2
    dropout: float = 0.9           # fraction of training edges removed each epoch
    reg_weight: float = 1e-3       # weight of the two modality BPR terms
    lr: float = 1e-3
    batch_size: int = 2048
    epochs: int = 1000
    patience: int = 20             # validations without a strict gain (4 decimals) before stopping


def item_item_graph(vision, text, k, vision_weight):
    """w S_vision + (1 - w) S_text as a scipy CSR matrix: in each modality's S, row i holds 1/k at i
    and at its k - 1 most cosine-similar other items."""
    n = vision.shape[0]
    k = min(k, n)
    total = sp.csr_matrix((n, n), dtype=np.float64)
    for feats, weight in ((vision, vision_weight), (text, 1.0 - vision_weight)):
        cols = np.concatenate([np.arange(n)[:, None], knn_neighbours(feats, k - 1)], axis=1)
        rows = np.repeat(np.arange(n), cols.shape[1])
        total = total + sp.csr_matrix((np.full(rows.size, weight / k), (rows, cols.reshape(-1))), shape=(n, n))
    return total.tocsr().astype(np.float32)


def edge_keep_weights(train):
    """1/sqrt(d_u d_i) of each training edge, in the order of ``train.tocoo()``, and that COO matrix."""
    coo = sp.coo_matrix(sp.csr_matrix(train, dtype=np.float64).sign())
    du = np.asarray(coo.sum(axis=1)).ravel()
    di = np.asarray(coo.sum(axis=0)).ravel()
    return 1.0 / np.sqrt(du[coo.row] * di[coo.col]), coo


def prune_edges(weights, keep, rng):
    """Indices of ``keep`` edges drawn without replacement with probability proportional to ``weights``
    (the Gumbel top-k form of successive weighted draws)."""
    keys = np.log(weights) - np.log(-np.log(rng.random(weights.size)))
    return np.argpartition(-keys, keep - 1)[:keep] if keep < weights.size else np.arange(weights.size)


class Freedom(nn.Module):
    def __init__(self, n_users, n_items, vision, text, item_graph, cfg):
        super().__init__()
        d = cfg.embed_size
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, d)))
        self.feats = nn.ParameterList([nn.Parameter(torch.as_tensor(np.asarray(x), dtype=torch.float32).clone())
                                       for x in (vision, text)])
        self.projections = nn.ModuleList([nn.Linear(x.shape[1], d) for x in (vision, text)])
        self.register_buffer("item_graph", item_graph, persistent=False)
        self.ui_layers = cfg.ui_layers

    def forward(self, norm_ui, norm_iu):
        """(user, item) representations on the given user-item graph blocks."""
        user, item = lightgcn_propagate(norm_ui, norm_iu, self.user_emb, self.item_emb, self.ui_layers)
        return user, item + torch.sparse.mm(self.item_graph, self.item_emb)

    def modality_items(self, items):
        """Each modality's projection of the features of ``items``."""
        return [proj(feats[items]) for feats, proj in zip(self.feats, self.projections)]


def graph_blocks(matrix, device):
    ui, iu = sym_norm_blocks(matrix)
    return to_torch_csr(ui).to(device), to_torch_csr(iu).to(device)


def train_freedom(ds, vision, text, cfg, val_eval, test_eval, metric="recall@20", seed=2024, device="cpu",
                  log=print):
    """Train on ``ds`` with the modalities ``vision`` and ``text``; returns the run's record: best epoch,
    epochs run, validation metrics of the best epoch, its test metrics (tested once), seconds."""
    start = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    feats = ds.modality_feats
    graph = item_item_graph(feats[vision], feats[text], cfg.knn_k, cfg.vision_weight)
    model = Freedom(ds.n_users, ds.n_items, feats[vision], feats[text], to_torch_csr(graph), cfg).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = TripleSampler(ds.train, seed)
    weights, coo = edge_keep_weights(ds.train)
    keep = max(1, int(math.floor((1.0 - cfg.dropout) * weights.size))) if cfg.dropout > 0 else weights.size
    full = graph_blocks(coo, device)
    stopper, best, epoch = EarlyStopping(cfg.patience), None, 0
    for epoch in range(1, cfg.epochs + 1):
        kept = prune_edges(weights, keep, rng)
        pruned = graph_blocks(sp.coo_matrix((coo.data[kept], (coo.row[kept], coo.col[kept])), shape=coo.shape), device)
        model.train()
        users, pos, neg, _ = sampler.epoch()
        losses = []
        for s in range(0, users.size, cfg.batch_size):
            u, i, j = (torch.as_tensor(a[s:s + cfg.batch_size], dtype=torch.int64, device=device)
                       for a in (users, pos, neg))
            user, item = model(*pruned)
            zu = user[u]
            loss = bpr_loss((zu * item[i]).sum(1), (zu * item[j]).sum(1))
            if cfg.reg_weight:
                for proj_i, proj_j in zip(model.modality_items(i), model.modality_items(j)):
                    loss = loss + cfg.reg_weight * bpr_loss((zu * proj_i).sum(1), (zu * proj_j).sum(1))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        if not np.isfinite(losses).all():
            raise FloatingPointError(f"FREEDOM: non-finite loss at epoch {epoch}")
        model.eval()
        with torch.no_grad():
            user, item = model(*full)
        val = val_eval(lambda us: user[us] @ item.T)
        if stopper.update(round(val[metric], 4), epoch):
            best = (user, item, val)
        log(f"FREEDOM epoch {epoch:4d} | loss {np.mean(losses):.4f} | val {metric} {val[metric]:.4f}"
            f"{' *' if stopper.best_epoch == epoch else ''}")
        if stopper.should_stop:
            break
    user, item, val = best
    test = test_eval(lambda us: user[us] @ item.T)
    return dict(seed=seed, best_epoch=stopper.best_epoch, epochs_run=epoch, val=val, test=test,
                seconds=time.time() - start)
