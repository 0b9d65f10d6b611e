"""New items (item cold start): a content mapper that gives the ID-only student an embedding for
items nobody has interacted with, the content baselines it is measured against, and the rankings
that measure them (docs/cold-start.md).

The mapper is a two-layer MLP from an item's modality features (each modality standardised, then
scaled to equal weight) to the student's item embedding. It is distilled on warm items, in the
spirit of ALDI (SIGIR 2023): its vectors regress the student's item embeddings, and its scores for
sampled users follow the student's score distribution over the batch's items. Its epoch and loss
weights are chosen on the validation-cold items only. The student then serves warm items from its
table and items without training interactions from the mapper, without retraining
(:func:`fit_serving_mapper`, :class:`ServingMapper`; new items enter lists of all items only when
validation shows them earning places there); or, as :class:`ColdBlend`, from the mapper's scores
blended with content-kNN's (the similarity of an item's content to the user's training items'), the
blend's weight chosen on the validation-cold items.
"""
import json
import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utility.errors import DataError, UserError, file_error
from utility.evaluate import RankingEvaluator, dot_scores

COLD_FILE = "cold_items.json"
KS = (20,)


# ---------------------------------------------------------------- data

def read_cold_items(path, n_items):
    """{"val": ids, "test": ids} of an item-cold dataset folder, validated against ``n_items``."""
    file = os.path.join(path, COLD_FILE)
    if not os.path.isfile(file):
        raise DataError(f"{file}: file not found; not an item-cold dataset (python -m data.prepare item-cold "
                        f"--src DIR --out DIR writes one)")
    try:
        with open(file, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise file_error(file, f"cannot be read as JSON ({e})") from None
    if not isinstance(obj, dict) or set(obj) != {"val", "test"}:
        raise file_error(file, 'expected {"val": [item ids], "test": [item ids]}')
    cold = {}
    for split, items in obj.items():
        if not isinstance(items, list) or not items or not all(type(i) is int for i in items):
            raise file_error(file, f'"{split}" must be a non-empty list of integer item ids')
        ids = np.asarray(items, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= n_items:
            raise file_error(file, f'"{split}": item ids must lie in 0..{n_items - 1}')
        cold[split] = np.unique(ids)
    if np.intersect1d(cold["val"], cold["test"]).size:
        raise file_error(file, "the validation and test cold items overlap")
    return cold


def items_without_training(train):
    """Item ids without a training interaction: the items the student cannot score."""
    return np.flatnonzero(np.diff(sp.csc_matrix(train).indptr) == 0)


@dataclass(frozen=True)
class ContentScaler:
    """How item features become the mapper's input: each modality's columns standardised with the
    mean and sd of the warm items (a new item must not shift them), then scaled by 1/sqrt(dim), so
    that every modality weighs the same whatever its width; modalities concatenated in name order.
    Fitted once, it turns the feature rows of items that arrive later into the same input."""

    stats: dict   # modality -> (mean, sd): float64 arrays of the modality's width; sd 0 replaced by 1

    @classmethod
    def fit(cls, modality_feats, fit_items):
        stats = {}
        for name in sorted(modality_feats):
            x = np.asarray(modality_feats[name], dtype=np.float64)[fit_items]
            sd = x.std(0)
            stats[name] = (x.mean(0), np.where(sd > 0, sd, 1.0))
        return cls(stats)

    def transform(self, modality_feats):
        """(n, sum of dims) float32 of the rows of ``modality_feats`` ({modality: (n, dim) array}); a
        missing modality, a wrong width or unequal row counts is a :class:`UserError`."""
        if set(modality_feats) != set(self.stats):
            raise UserError(f"new items need the features {sorted(self.stats)} (got {sorted(modality_feats)})")
        blocks, rows = [], set()
        for name, (mean, sd) in self.stats.items():
            x = np.asarray(modality_feats[name], dtype=np.float64)
            if x.ndim != 2 or x.shape[1] != mean.size:
                raise UserError(f"{name} features of new items: expected (n, {mean.size}) rows, got shape {x.shape}")
            if not np.isfinite(x).all():
                raise UserError(f"{name} features of new items: not all finite")
            rows.add(x.shape[0])
            blocks.append((x - mean) / sd / np.sqrt(mean.size))
        if len(rows) > 1:
            raise UserError(f"new items: the modalities give different numbers of rows ({sorted(rows)})")
        return np.hstack(blocks).astype(np.float32)

    def to_dict(self):
        return {name: dict(mean=mean.tolist(), sd=sd.tolist()) for name, (mean, sd) in self.stats.items()}

    @classmethod
    def from_dict(cls, obj):
        return cls({name: (np.asarray(v["mean"], np.float64), np.asarray(v["sd"], np.float64))
                    for name, v in sorted(obj.items())})


def content_features(modality_feats, fit_items):
    """(n_items, sum of dims) float32: every item's mapper input, scaled by :class:`ContentScaler`
    fitted on the ``fit_items`` rows (the warm items)."""
    return ContentScaler.fit(modality_feats, fit_items).transform(modality_feats)


# ---------------------------------------------------------------- the mapper

class ContentMapper(nn.Module):
    """Item content -> the student's item embedding: Linear -> GELU -> Linear."""

    def __init__(self, in_dim, out_dim, hidden=256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, content):
        return self.net(content)


def mapper_loss(mapped, target, users, score_weight, temperature=1.0):
    """{"emb": mean squared error of the mapped against the target item embeddings (per element),
    "score": tau^2 KL(softmax(target scores / tau) || softmax(mapped scores / tau)) over the batch's
    items, averaged over the sampled ``users``} and their weighted sum "loss".

    The score term is the rating-distribution alignment: a user's scores of the mapped items should
    rank and spread like the student's own scores of those items."""
    emb = F.mse_loss(mapped, target)
    terms = {"emb": emb}
    loss = emb
    if score_weight:
        target_logp = F.log_softmax(users @ target.T / temperature, dim=1)
        mapped_logp = F.log_softmax(users @ mapped.T / temperature, dim=1)
        score = temperature ** 2 * F.kl_div(mapped_logp, target_logp, log_target=True, reduction="batchmean")
        terms["score"] = score
        loss = loss + score_weight * score
    terms["loss"] = loss
    return terms


@dataclass(frozen=True)
class MapperConfig:
    """The mapper's width and training; ``score_weight`` and the epoch are chosen on validation."""

    hidden: int = 256
    score_weight: float = 1.0
    temperature: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_items: int = 256
    batch_users: int = 256
    max_epochs: int = 200
    patience: int = 10          # epochs without a better validation score before stopping
    seed: int = 2024


def fit_mapper(content, user_emb, item_emb, warm_items, active_users, validate, cfg=MapperConfig(), progress=False):
    """Train a :class:`ContentMapper` on the ``warm_items`` rows of ``content`` -> ``item_emb``.

    Each step takes a batch of warm items and ``batch_users`` users drawn from ``active_users``.
    ``validate(mapper) -> float`` (higher is better) is called after every epoch; the best epoch's
    weights are returned with the history: (mapper, best_epoch, [(epoch, loss, score), ...])."""
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    mapper = ContentMapper(content.shape[1], item_emb.shape[1], cfg.hidden).to(content.device)
    optimizer = torch.optim.AdamW(mapper.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = torch.as_tensor(warm_items, dtype=torch.int64)
    active = torch.as_tensor(active_users, dtype=torch.int64)
    best, best_epoch, best_state, history = -np.inf, 0, None, []
    epochs = tqdm(range(1, cfg.max_epochs + 1), desc="content mapper", disable=not progress)
    for epoch in epochs:
        mapper.train()
        order = warm[torch.randperm(warm.numel(), generator=generator)]
        total = 0.0
        for start in range(0, order.numel(), cfg.batch_items):
            items = order[start:start + cfg.batch_items].to(content.device)
            users = active[torch.randint(active.numel(), (cfg.batch_users,), generator=generator)].to(content.device)
            terms = mapper_loss(mapper(content[items]), item_emb[items], user_emb[users], cfg.score_weight,
                                cfg.temperature)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            total += terms["loss"].item() * items.numel()
        mapper.eval()
        with torch.no_grad():
            score = float(validate(mapper))
        history.append((epoch, total / order.numel(), score))
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in mapper.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:
            break
    mapper.load_state_dict(best_state)
    mapper.eval()
    return mapper, best_epoch, history


@torch.no_grad()
def serve_with_mapper(item_emb, mapper, content, new_items, scale=1.0):
    """The student's item table with the rows of ``new_items`` replaced by the mapper's vectors times
    ``scale``. A regression shrinks its vectors towards the mean, and so their scores against warm
    items' in one ranking; the scale (chosen on validation) undoes that and leaves any ranking
    among new items alone."""
    table = item_emb.clone()
    new = torch.as_tensor(new_items, dtype=torch.int64, device=item_emb.device)
    table[new] = scale * mapper(content[new])
    return table


# ---------------------------------------------------------------- serving new items from a run

MAPPER_FILE = "mapper.pt"          # written into a run folder by ``python -m utility.recommend RUN --fit_mapper``
MAPPER_FORMAT = 1
SCORE_WEIGHTS = (0.0, 1.0, 10.0)   # the score-alignment weights tried; chosen on validation
SERVING_SCALES = (1.0, 0.5, 1.25, 1.5, 1.75, 2.0, 3.0)   # the new items' scale among warm items, chosen on validation
HELD_OUT_SHARE = 0.1               # warm items held out to choose the mapper on, in a dataset without cold items


def choice_items(ds, warm_items, seed):
    """(items the mapper is chosen on, items it is fitted on, how). An item-cold dataset has its
    validation-cold items. Any other dataset has no new item with validation interactions, so a
    seeded share of the warm items that have some is held out of the mapper's training and
    stands in for new items."""
    if os.path.isfile(os.path.join(ds.path, COLD_FILE)):
        return read_cold_items(ds.path, ds.n_items)["val"], warm_items, "validation-cold items"
    with_val = np.intersect1d(warm_items, np.flatnonzero(np.diff(sp.csc_matrix(ds.val).indptr) > 0))
    n_held = int(round(HELD_OUT_SHARE * warm_items.size))
    if with_val.size < 2 or n_held < 1 or warm_items.size - n_held < 2:
        raise UserError(f"{ds.path}: too few items with validation interactions to choose a content mapper on")
    held = np.sort(np.random.default_rng(seed).choice(with_val, min(n_held, with_val.size), replace=False))
    return held, np.setdiff1d(warm_items, held), f"{held.size} warm items held out of the mapper's training"


def choose_scale(evaluator, scored, warm_only, scales):
    """The scale of new items among warm ones, and whether to show them among warm ones at all.

    ``scored(scale)`` and ``warm_only`` are score_fns over every item on ``evaluator``'s ranking. The
    scale is the best by Recall@20; new items are promoted (``promote``) only when its gain over the
    warm-only ranking exceeds one standard error of the per-user gains (the one-standard-error
    rule: the simpler choice, no new items, unless the data show more than noise). Returns dict(scale,
    promote, gain, se, val ({scale: recall@20}), warm_only (its recall@20))."""
    per_scale = {s: evaluator.per_user(scored(s), ("recall@20",))["recall@20"] for s in scales}
    base = evaluator.per_user(warm_only, ("recall@20",))["recall@20"]
    scale = max(scales, key=lambda s: per_scale[s].mean())
    gains = per_scale[scale] - base
    gain = float(gains.mean()) if gains.size else 0.0
    se = float(gains.std(ddof=1) / np.sqrt(gains.size)) if gains.size > 1 else float("inf")
    return dict(scale=float(scale), promote=bool(gain > se), gain=gain, se=se,
                val={str(s): float(v.mean()) for s, v in per_scale.items()}, warm_only=float(base.mean()))


@dataclass
class ServingMapper:
    """A fitted content mapper, ready to give new items the student's embeddings: the scaler of
    the features, the network, and the scale of its vectors among warm items."""

    mapper: ContentMapper
    scaler: ContentScaler
    scale: float
    promote: bool       # new items shown among warm ones (validation showed a gain), else only among themselves
    info: dict          # what was chosen, on which items, and the validation scores

    @torch.no_grad()
    def vectors(self, modality_feats, device="cpu"):
        """(n, d) student item embeddings of the rows of ``modality_feats`` ({modality: (n, dim)})."""
        content = torch.from_numpy(self.scaler.transform(modality_feats)).to(device)
        return self.scale * self.mapper.to(device)(content)

    def save(self, path, student):
        """Write to ``path`` (atomically), bound to ``student``: {"sha256", "data"} of its checkpoint."""
        from utility.run_io import save_checkpoint
        net = self.mapper.net
        save_checkpoint(dict(format=MAPPER_FORMAT, state=self.mapper.state_dict(), in_dim=net[0].in_features,
                             hidden=net[0].out_features, out_dim=net[2].out_features, scaler=self.scaler.to_dict(),
                             scale=self.scale, promote=self.promote, info=self.info, student=student), path)

    @classmethod
    def load(cls, path):
        """(ServingMapper, the student it is bound to); an unreadable file is a one-line error."""
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found (python -m utility.recommend RUN --fit_mapper writes it)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
            if obj.get("format") != MAPPER_FORMAT:
                raise ValueError(f"format {obj.get('format')!r}")
            mapper = ContentMapper(obj["in_dim"], obj["out_dim"], obj["hidden"])
            mapper.load_state_dict(obj["state"])
            scaler = ContentScaler.from_dict(obj["scaler"])
        except Exception as e:
            raise UserError(f"{path}: not a content mapper written by this program ({type(e).__name__})") from None
        return cls(mapper.eval(), scaler, float(obj["scale"]), bool(obj["promote"]), obj["info"]), obj["student"]


def fit_chosen_mapper(ds, user_emb, item_emb, content, fit_items, chosen_on, score_weight, seed, device="cpu",
                      progress=False):
    """(mapper, best epoch, its Recall@20): a :class:`ContentMapper` fitted on ``fit_items``, its epoch
    chosen by Recall@20 among the ``chosen_on`` items on their validation interactions."""
    evaluator = cold_evaluator(ds.val, chosen_on, KS, device)
    chosen_content = content[torch.as_tensor(chosen_on, device=device)]
    active_users = np.flatnonzero(np.diff(sp.csr_matrix(ds.train).indptr) > 0)
    mapper, epoch, history = fit_mapper(content, user_emb, item_emb, fit_items, active_users,
                                        lambda m: evaluator(dot_scores(user_emb, m(chosen_content)))["recall@20"],
                                        MapperConfig(score_weight=score_weight, seed=seed), progress)
    return mapper, epoch, history[epoch - 1][2]


def fit_serving_mapper(ds, user_emb, item_emb, seed, score_weights=SCORE_WEIGHTS, scales=SERVING_SCALES,
                       device="cpu", progress=False):
    """The content mapper for the student (``user_emb``, ``item_emb``) on dataset ``ds``, every
    choice on validation (docs/cold-start.md): for each score weight a mapper fitted on the warm
    items, its epoch chosen by Recall@20 among the :func:`choice_items` on their validation
    interactions; the weight likewise; then, on the whole validation split with every item without
    training interactions (and every held-out item) served by the mapper, the scale of its vectors
    among warm items and whether to show new items there at all (:func:`choose_scale`)."""
    new_items = items_without_training(ds.train)
    warm_items = np.setdiff1d(np.arange(ds.n_items), new_items)
    chosen_on, fit_items, how = choice_items(ds, warm_items, seed)
    scaler = ContentScaler.fit(ds.modality_feats, warm_items)
    content = torch.from_numpy(scaler.transform(ds.modality_feats)).to(device)
    fits = {}
    for weight in score_weights:
        mapper, epoch, val = fit_chosen_mapper(ds, user_emb, item_emb, content, fit_items, chosen_on, weight, seed,
                                               device, progress)
        fits[weight] = dict(mapper=mapper, epoch=epoch, val=val)
    weight = max(score_weights, key=lambda w: fits[w]["val"])
    mapper = fits[weight]["mapper"]
    served_items = np.union1d(new_items, chosen_on)
    choice = choose_scale(RankingEvaluator(ds.val, [ds.train], KS, device),
                          lambda s: dot_scores(user_emb, serve_with_mapper(item_emb, mapper, content, served_items, s)),
                          masked_scores(user_emb, item_emb, served_items), scales)
    info = dict(chosen_on=how, n_chosen_on=int(chosen_on.size), n_fitted_on=int(fit_items.size), score_weight=weight,
                epoch=fits[weight]["epoch"], seed=seed, val={str(w): f["val"] for w, f in fits.items()},
                scale_val=choice["val"], warm_only_val=choice["warm_only"], gain=choice["gain"], gain_se=choice["se"])
    return ServingMapper(mapper, scaler, choice["scale"], choice["promote"], info)


@dataclass(frozen=True)
class ColdBlend:
    """New items scored by the mapper and content-kNN together:
    (1 - weight) * <e_u, g(x_i)> + weight * ratio * knn(u, i).

    ``ratio`` (the sd of the mapper's scores over the sd of kNN's, on the validation cold ranking)
    puts the two in the same units, so that ``weight`` says how much each counts; weight 0 is the
    mapper alone. kNN reads a user's training items at serving time, as an item-to-item retriever
    does; the mapper needs only the user's embedding."""

    weight: float
    ratio: float

    def cold_scores(self, mapper_fn, knn_fn):
        """score_fn over the same candidates as ``mapper_fn`` and ``knn_fn``."""
        if not self.weight:
            return mapper_fn
        return lambda users: (1 - self.weight) * mapper_fn(users) + self.weight * self.ratio * knn_fn(users)

    def mixed_scores(self, user_emb, item_emb, mapper, content, new_items, knn_fn, scale=1.0):
        """score_fn over every item: the student's scores for warm items, the blend times ``scale``
        for ``new_items``; ``knn_fn`` scores the ``new_items`` in that order."""
        table = serve_with_mapper(item_emb, mapper, content, new_items, scale * (1 - self.weight))
        new = torch.as_tensor(new_items, dtype=torch.int64, device=item_emb.device)

        def score_fn(users):
            scores = user_emb[users] @ table.T
            if self.weight:
                scores[:, new] += scale * self.weight * self.ratio * knn_fn(users).to(scores.device)
            return scores
        return score_fn


def blend_weight_scores(ds, user_emb, item_emb, content, items, fit_items, knn_how, score_weight, seed, weights,
                        device="cpu"):
    """{weight: validation Recall@20} of :class:`ColdBlend` among ``items`` (the validation-cold
    items), every item scored by a mapper that was not chosen on it. The served mapper's own
    validation score is the best of many epochs on these very items, which flatters it against
    content-kNN (whose choice is one of two) and so favours weight 0. Here the items fall into two
    seeded folds; each fold is scored by a mapper (``score_weight``, fitted on ``fit_items``) whose
    epoch was chosen on the other fold, with its own unit ratio; each weight's Recall@20 is the
    folds' mean weighted by their users."""
    order = np.random.default_rng([seed, 2]).permutation(np.asarray(items))
    folds = (np.sort(order[: order.size // 2]), np.sort(order[order.size // 2:]))
    totals, n_users = dict.fromkeys(weights, 0.0), 0
    for scored, chosen_on in (folds, folds[::-1]):
        mapper, _, _ = fit_chosen_mapper(ds, user_emb, item_emb, content, fit_items, chosen_on, score_weight, seed,
                                         device)
        evaluator = cold_evaluator(ds.val, scored, KS, device)
        with torch.no_grad():
            mapper_fn = dot_scores(user_emb, mapper(content[torch.as_tensor(scored, device=device)]))
        knn_fn = content_knn_scores(ds.train, content.cpu(), scored, knn_how)
        n = int(evaluator.users.numel())
        if not n:
            continue
        ratio = score_ratio(mapper_fn, knn_fn, evaluator.users)
        for w in weights:
            totals[w] += n * evaluator(ColdBlend(w, ratio).cold_scores(mapper_fn, knn_fn))["recall@20"]
        n_users += n
    return {w: totals[w] / max(1, n_users) for w in weights}


def score_ratio(mapper_fn, knn_fn, users):
    """sd of the mapper's scores over sd of kNN's for ``users`` (a tensor of ids): the
    :class:`ColdBlend` ratio. 1 when kNN's scores do not vary."""
    knn_sd = float(knn_fn(users).std())
    return float(mapper_fn(users).std()) / knn_sd if knn_sd > 0 else 1.0


# ---------------------------------------------------------------- baselines

def content_knn_scores(train, content, candidates, how):
    """score_fn(users) -> (users, candidates): how similar each candidate item's content is to the
    user's training items' content, by cosine; ``how`` "mean" or "max" over the training items.
    A user without training items scores every candidate 0."""
    unit = F.normalize(torch.as_tensor(content), dim=1)
    sims = unit @ unit[torch.as_tensor(candidates, dtype=torch.int64)].T      # (n_items, n_candidates)
    train = sp.csr_matrix(train)
    if how == "mean":
        counts = np.maximum(np.diff(train.indptr), 1)
        profile = sp.diags(1.0 / counts) @ train

        def score_fn(users):
            rows = profile[users.cpu().numpy()].tocoo()
            out = torch.zeros(len(users), sims.shape[1])
            out.index_add_(0, torch.as_tensor(rows.row, dtype=torch.int64),
                           torch.as_tensor(rows.data, dtype=torch.float32)[:, None] * sims[rows.col])
            return out
    elif how == "max":
        def score_fn(users):
            rows = train[users.cpu().numpy()].tocoo()
            index = torch.as_tensor(rows.row, dtype=torch.int64)[:, None].expand(-1, sims.shape[1])
            out = torch.full((len(users), sims.shape[1]), -torch.inf)
            out.scatter_reduce_(0, index, sims[rows.col], reduce="amax")
            return torch.where(torch.isinf(out), torch.zeros_like(out), out)
    else:
        raise ValueError(f"content_knn_scores: how must be 'mean' or 'max', got {how!r}")
    return score_fn


def popularity_tie_break_scores(train, candidates, seed):
    """score_fn: the candidates' training popularity, ties broken by a fixed random order. Cold
    items all have popularity 0, so among them this is a random ranking."""
    popularity = np.asarray(sp.csr_matrix(train).sum(axis=0)).ravel()[candidates]
    order = np.random.default_rng(seed).random(len(candidates))
    scores = torch.as_tensor(popularity + 0.5 * order, dtype=torch.float32)
    return lambda users: scores.repeat(len(users), 1)


def random_scores(n_candidates, seed):
    """score_fn: independent uniform scores for every user and candidate (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    return lambda users: torch.rand(len(users), n_candidates, generator=generator)


# ---------------------------------------------------------------- rankings

def cold_evaluator(truth, cold_items, ks=KS, device="cpu"):
    """Ranking among the ``cold_items`` only: users with a held-out interaction with one of them,
    every cold item a candidate, nothing excluded (no cold item was ever trained on). Its
    score_fn returns (users, len(cold_items)) scores."""
    truth = sp.csr_matrix(truth)[:, cold_items]
    return RankingEvaluator(truth, [], ks, device)


def cold_scores(user_emb, item_emb, cold_items):
    """score_fn of an embedding model over the cold items only."""
    return dot_scores(user_emb, item_emb[torch.as_tensor(cold_items, dtype=torch.int64, device=item_emb.device)])


def masked_scores(user_emb, item_emb, masked_items):
    """score_fn over all items with ``masked_items`` scored -inf (a model that never shows them)."""
    mask = torch.zeros(item_emb.shape[0], dtype=torch.bool, device=item_emb.device)
    mask[torch.as_tensor(masked_items, dtype=torch.int64, device=item_emb.device)] = True
    return lambda users: (user_emb[users] @ item_emb.T).masked_fill(mask, -torch.inf)


def evaluate_per_user(evaluator, score_fn, names=("recall@20", "ndcg@20")):
    """{"users": ids, name: per-user values, "mean": {name: mean}} of one model on one ranking."""
    per_user = evaluator.per_user(score_fn, names)
    per_user["mean"] = {name: float(per_user[name].mean()) if per_user[name].size else 0.0 for name in names}
    return per_user
