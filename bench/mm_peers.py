"""FREEDOM (Zhou and Shen, ACM MM 2023) and DRAGON (Zhou et al., 2023) inside the harness: multi-modal
peers trained with this project's sampler, evaluator and early stopping, so that their architectures
can be compared with the teacher's with everything else held fixed. Both follow the baseline
toolbox's defaults, which bench/peers.py measures with its own trainer.

FREEDOM:

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

DRAGON:

- No item ID embeddings: in each modality an item is a two-layer network of its raw features
  (d_m -> 256, LeakyReLU, -> 64) and a user a free preference vector. Each modality propagates its
  L2-normalised (users + items) rows on the full symmetric-normalised graph, summing layers 0..2.
- Fusion by concatenation, the users' two halves scaled by a per-user weight pair (softmax at
  initialisation, then free), 128 wide.
- The items gain S applied to their fused vectors (S as in FREEDOM); the users gain a weighted sum of
  their 40 users with most training items in common, weights the softmax of those counts (a user with
  fewer such users repeats some of them at random, drawn each epoch; one with none gains nothing).
- Loss: BPR in base-2 logarithms plus ``reg_weight`` times the mean square of the batch users'
  preference vectors and of the fusion weights.

Both: one uniform negative per positive, drawn by the harness's sampler among all items as for the
teacher and the student (``negatives_from_train=True``: among the items with training interactions
only, as the toolbox draws them), batches of 2,048, Adam at 1e-3, validation Recall@20 after every
epoch (compared at 4 decimals), the best epoch's representations tested once.
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
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from Models import lightgcn_propagate  # noqa: E402
from utility.errors import UserError  # noqa: E402
from utility.graph import knn_neighbours, sym_norm_blocks, to_torch_csr  # noqa: E402
from utility.losses import bpr_loss  # noqa: E402
from utility.sampler import TripleSampler  # noqa: E402
from utility.sparse_ops import spmm  # noqa: E402
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
class PeerConfig:
    """What FREEDOM and DRAGON share: the item-item graph, the training loop and its stopping."""
    embed_size: int = 64           # DRAGON: per modality, so its fused representations are twice as wide
    knn_k: int = 10
    vision_weight: float = 0.1
    ui_layers: int = 2
    reg_weight: float = 1e-3       # FREEDOM: the two modality BPR terms; DRAGON: the L2 penalty
    lr: float = 1e-3
    batch_size: int = 2048
    epochs: int = 1000
    patience: int = 20             # validations without a strict gain (4 decimals) before stopping
    negatives_from_train: bool = False  # True: negatives among the items with training interactions (MMRec's)


@dataclass
class FreedomConfig(PeerConfig):
    dropout: float = 0.9           # fraction of training edges removed each epoch


@dataclass
class DragonConfig(PeerConfig):
    hidden: int = 256              # the item feature network's hidden width
    user_k: int = 40               # neighbours in the user-user graph


# ---------------------------------------------------------------- graphs

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


def graph_blocks(matrix, device):
    ui, iu = sym_norm_blocks(matrix)
    return to_torch_csr(ui).to(device), to_torch_csr(iu).to(device)


def user_neighbours(train, k):
    """(neighbours (n_users, k) int64, counts (n_users, k) float64, degree (n_users,)): each user's k
    users with most training items in common, most first (ties by user id); ``degree`` is how many of
    the k exist (users with fewer have their rows padded with 0s)."""
    r = sp.csr_matrix(train, dtype=np.float64).sign()
    common = (r @ r.T).tocsr()
    common.setdiag(0)
    common.eliminate_zeros()
    n = r.shape[0]
    neighbours, counts = np.zeros((n, k), dtype=np.int64), np.zeros((n, k))
    degree = np.zeros(n, dtype=np.int64)
    for user in range(n):
        cols = common.indices[common.indptr[user]:common.indptr[user + 1]]
        vals = common.data[common.indptr[user]:common.indptr[user + 1]]
        order = np.lexsort((cols, -vals))[:k]
        degree[user] = order.size
        neighbours[user, :order.size], counts[user, :order.size] = cols[order], vals[order]
    return neighbours, counts, degree


def pad_neighbours(neighbours, counts, degree, rng):
    """Rows with fewer than k neighbours filled up: each empty slot takes a copy of a uniformly drawn
    earlier slot of its row (so a neighbour drawn once is likelier to be drawn again). Rows without any
    neighbour are left as they are; their weights are 0."""
    neighbours, counts = neighbours.copy(), counts.copy()
    for slot in range(1, neighbours.shape[1]):
        rows = np.flatnonzero((degree > 0) & (degree <= slot))
        source = (rng.random(rows.size) * slot).astype(np.int64)
        neighbours[rows, slot], counts[rows, slot] = neighbours[rows, source], counts[rows, source]
    return neighbours, counts


def neighbour_weights(counts, degree):
    """The softmax of each row's counts; 0 for users without neighbours."""
    weights = torch.softmax(torch.as_tensor(counts, dtype=torch.float32), dim=1)
    weights[torch.as_tensor(degree == 0)] = 0.0
    return weights


def user_graph_matrix(neighbours, weights):
    """The user-user graph as a scipy CSR matrix: row a holds each neighbour's weight (a neighbour
    repeated by the padding holds the sum of its copies)."""
    n, k = neighbours.shape
    rows = np.repeat(np.arange(n), k)
    graph = sp.csr_matrix((np.asarray(weights, dtype=np.float64).reshape(-1), (rows, neighbours.reshape(-1))),
                          shape=(n, n))
    graph.sum_duplicates()
    graph.eliminate_zeros()
    return graph.astype(np.float32)


# ---------------------------------------------------------------- the models

class Freedom(nn.Module):
    def __init__(self, ds, vision, text, cfg, device):
        super().__init__()
        d, feats = cfg.embed_size, [ds.modality_feats[vision], ds.modality_feats[text]]
        self.cfg = cfg
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(ds.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(ds.n_items, d)))
        self.feats = nn.ParameterList([nn.Parameter(torch.as_tensor(np.asarray(x), dtype=torch.float32).clone())
                                       for x in feats])
        self.projections = nn.ModuleList([nn.Linear(x.shape[1], d) for x in feats])
        graph = item_item_graph(*feats, cfg.knn_k, cfg.vision_weight)
        self.register_buffer("item_graph", to_torch_csr(graph), persistent=False)
        self.edge_weights, self.coo = edge_keep_weights(ds.train)
        self.keep = (max(1, int(math.floor((1.0 - cfg.dropout) * self.edge_weights.size))) if cfg.dropout > 0
                     else self.edge_weights.size)
        self.device = device
        self.full = graph_blocks(self.coo, device)
        self.pruned = self.full

    def start_epoch(self, rng):
        """Draw this epoch's pruned graph."""
        kept, coo = prune_edges(self.edge_weights, self.keep, rng), self.coo
        self.pruned = graph_blocks(sp.coo_matrix((coo.data[kept], (coo.row[kept], coo.col[kept])), shape=coo.shape),
                                   self.device)

    def forward(self, norm_ui, norm_iu):
        """(user, item) representations on the given user-item graph blocks."""
        user, item = lightgcn_propagate(norm_ui, norm_iu, self.user_emb, self.item_emb, self.cfg.ui_layers)
        return user, item + torch.sparse.mm(self.item_graph, self.item_emb)

    def modality_items(self, items):
        """Each modality's projection of the features of ``items``."""
        return [proj(feats[items]) for feats, proj in zip(self.feats, self.projections)]

    def loss(self, u, i, j):
        user, item = self(*self.pruned)
        zu = user[u]
        loss = bpr_loss((zu * item[i]).sum(1), (zu * item[j]).sum(1))
        if self.cfg.reg_weight:
            for proj_i, proj_j in zip(self.modality_items(i), self.modality_items(j)):
                loss = loss + self.cfg.reg_weight * bpr_loss((zu * proj_i).sum(1), (zu * proj_j).sum(1))
        return loss

    def representations(self):
        """(user, item) representations for ranking: on the full graph."""
        return self(*self.full)


class Dragon(nn.Module):
    def __init__(self, ds, vision, text, cfg, device):
        super().__init__()
        d, feats = cfg.embed_size, [ds.modality_feats[vision], ds.modality_feats[text]]
        self.cfg = cfg
        self.alpha = nn.Parameter(torch.softmax(nn.init.xavier_normal_(torch.empty(ds.n_users, 2, 1)), dim=1)[..., 0])
        self.preferences = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(torch.empty(ds.n_users, d)))
                                             for _ in feats])
        self.item_nets = nn.ModuleList([nn.Sequential(nn.Linear(x.shape[1], cfg.hidden), nn.LeakyReLU(0.01),
                                                      nn.Linear(cfg.hidden, d)) for x in feats])
        for index, x in enumerate(feats):
            self.register_buffer(f"feat{index}", torch.as_tensor(np.asarray(x), dtype=torch.float32), persistent=False)
        graph = item_item_graph(*feats, cfg.knn_k, cfg.vision_weight)
        self.register_buffer("item_graph", to_torch_csr(graph), persistent=False)
        self.graph = graph_blocks(sp.csr_matrix(ds.train, dtype=np.float64).sign(), device)
        self.neighbours, self.counts, self.degree = user_neighbours(ds.train, cfg.user_k)
        self.device = device
        self.user_graph = None

    def start_epoch(self, rng):
        """Pad the user-user graph's short rows afresh."""
        neighbours, counts = pad_neighbours(self.neighbours, self.counts, self.degree, rng)
        graph = user_graph_matrix(neighbours, neighbour_weights(counts, self.degree).numpy())
        self.user_graph = (to_torch_csr(graph).to(self.device), to_torch_csr(graph.T).to(self.device))

    def forward(self):
        users, items = [], []
        for index, (preference, net) in enumerate(zip(self.preferences, self.item_nets)):
            item = F.normalize(net(getattr(self, f"feat{index}")), dim=1)
            user, item = lightgcn_propagate(*self.graph, F.normalize(preference, dim=1), item, self.cfg.ui_layers)
            scale = self.cfg.ui_layers + 1          # the layers' sum, not their mean
            users.append(self.alpha[:, index:index + 1] * user * scale)
            items.append(item * scale)
        user, item = torch.cat(users, dim=1), torch.cat(items, dim=1)
        user = user + spmm(*self.user_graph, user)
        return user, item + torch.sparse.mm(self.item_graph, item)

    def loss(self, u, i, j):
        user, item = self()
        zu = user[u]
        loss = bpr_loss((zu * item[i]).sum(1), (zu * item[j]).sum(1)) / math.log(2)
        penalty = sum(p[u].pow(2).mean() for p in self.preferences) + self.alpha.pow(2).mean()
        return loss + self.cfg.reg_weight * penalty

    def representations(self):
        return self()


PEERS = {"FREEDOM": (Freedom, FreedomConfig), "DRAGON": (Dragon, DragonConfig)}


# ---------------------------------------------------------------- training

def train_peer(name, ds, vision, text, cfg, val_eval, test_eval, metric="recall@20", seed=2024, device="cpu",
               log=print):
    """Train the peer ``name`` (a key of ``PEERS``) on ``ds`` with the modalities ``vision`` and ``text``;
    returns the run's record: best epoch, epochs run, validation metrics of the best epoch, its test
    metrics (tested once), seconds."""
    start = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PEERS[name][0](ds, vision, text, cfg, device).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = TripleSampler(ds.train, seed, cfg.negatives_from_train)
    stopper, best, epoch = EarlyStopping(cfg.patience), None, 0
    for epoch in range(1, cfg.epochs + 1):
        model.start_epoch(rng)
        model.train()
        users, pos, neg, _ = sampler.epoch()
        losses = []
        for s in range(0, users.size, cfg.batch_size):
            batch = (torch.as_tensor(a[s:s + cfg.batch_size], dtype=torch.int64, device=device) for a in (users, pos, neg))
            loss = model.loss(*batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        if not np.isfinite(losses).all():
            raise FloatingPointError(f"{name}: non-finite loss at epoch {epoch}")
        model.eval()
        with torch.no_grad():
            user, item = model.representations()
        val = val_eval(lambda us: user[us] @ item.T)
        if stopper.update(round(val[metric], 4), epoch):
            best = (user, item, val)
        log(f"{name} epoch {epoch:4d} | loss {np.mean(losses):.4f} | val {metric} {val[metric]:.4f}"
            f"{' *' if stopper.best_epoch == epoch else ''}")
        if stopper.should_stop:
            break
    user, item, val = best
    test = test_eval(lambda us: user[us] @ item.T)
    return dict(seed=seed, best_epoch=stopper.best_epoch, epochs_run=epoch, val=val, test=test,
                seconds=time.time() - start)
