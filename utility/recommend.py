"""Recommendations from a finished run: top-k lists per user, similar items, and an export of the
embeddings for serving elsewhere.

:meth:`Recommender.load` reads a run folder (``config.json`` and ``student.pt`` or ``teacher.pt``) and
the dataset it names, checks that the data is the data the model was trained on, and computes every
user's and item's final embedding once. A score is the inner product of the two, exactly as the
evaluation ranks items (``utility/evaluate.py``), and a user's training items are excluded by default.

    python -m utility.recommend runs/tiktok/RUN --users 3 17 42 --k 20
    python -m utility.recommend RUN --all_users --out top20.csv
    python -m utility.recommend RUN --export serving/ --faiss

New items (docs/cold-start.md): ``--fit_mapper`` fits a content mapper for the run's student and
writes ``mapper.pt`` into the run folder; with ``--new_items`` the student then serves every item
without training interactions from its features, and ``--add_items DIR`` appends items that arrived
after training (their ``<modality>_feat.npy`` rows), without retraining.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from utility.config import TeacherConfig, from_dict
from utility.errors import UserError
from utility.load_data import load_dataset

MODELS = ("student", "teacher")
SCORE_BUDGET = 1 << 26   # float32 scores per block of users (256 MB): 67 users at 10^6 items
ID_MAP = "id_map.json"   # original user / item ids of a built dataset (movielens): {"user": [...], "item": [...]}


@dataclass
class Recommender:
    """Final user and item embeddings of one trained model and the training items of each user."""

    model: str                    # "student" or "teacher"
    user_emb: torch.Tensor        # (n_users, d) float32
    item_emb: torch.Tensor        # (n_items, d) float32
    train: sp.csr_matrix          # users x items: what a user has seen (excluded by default)
    dataset: str
    signature: dict               # n_users, n_items, n_train, modalities: what the model was trained on
    run_dir: str
    id_map: dict = None           # {"user": [original id per id], "item": [...]} when the dataset has one
    new_items: object = None      # the ServingMapper that embeds new items, when they are served
    new_ids: np.ndarray = None    # the items it embeds: those without training interactions, then added ones
    n_added: int = 0              # items added after training (:meth:`add_items`), the last rows

    @property
    def n_mapped(self):
        """Items of the dataset without training interactions, served by the mapper."""
        return 0 if self.new_ids is None else int(self.new_ids.size) - self.n_added

    @property
    def hidden(self):
        """Items kept out of mixed lists: the new ones, when validation did not show them earning a place."""
        return self.new_ids if self.new_items is not None and not self.new_items.promote else None

    @property
    def n_users(self):
        return self.user_emb.shape[0]

    @property
    def n_items(self):
        return self.item_emb.shape[0]

    @classmethod
    def load(cls, run_dir, model="student", device="cpu", data_path=None, new_items=False):
        """The model of ``run_dir`` (its best-validation weights) on the dataset its config names;
        ``data_path`` replaces the config's when the data has moved. ``new_items``: the student's
        items without training interactions get their vectors from the run's ``mapper.pt``."""
        rec, ds = cls._load(run_dir, model, device, data_path)
        if new_items:
            if model != "student":
                raise UserError("new items are served by the student (the teacher has its own content path)")
            rec.serve_new_items(ds)
        return rec

    @classmethod
    def _load(cls, run_dir, model, device, data_path):
        """(Recommender, the dataset)."""
        if model not in MODELS:
            raise UserError(f"model {model!r}: expected one of {', '.join(MODELS)}")
        config = read_config(run_dir)
        ckpt = read_checkpoint(os.path.join(run_dir, f"{model}.pt"), model)
        folder = os.path.join(data_path or config["data_path"], config["dataset"])
        ds = load_dataset(folder, name=config["dataset"])
        signature = dataset_signature(ds)
        if ckpt.get("data") != signature:
            raise UserError(f"{folder}: not the data {os.path.join(run_dir, model + '.pt')} was trained on "
                            f"(checkpoint: {ckpt.get('data')}; folder: {signature})")
        build = load_student if model == "student" else load_teacher
        user, item = final_embeddings(build(ckpt, config, ds, torch.device(device)))
        rec = cls(model, user.float().contiguous(), item.float().contiguous(), ds.train.tocsr(), config["dataset"],
                  signature, run_dir, read_id_map(folder, ds))
        return rec, ds

    def student_binding(self):
        """What a mapper records of the student it was fitted for: its checkpoint's hash and data."""
        with open(os.path.join(self.run_dir, "student.pt"), "rb") as f:
            return dict(sha256=hashlib.sha256(f.read()).hexdigest(), data=self.signature)

    def serve_new_items(self, ds):
        """Replace the rows of the items without training interactions by the run's mapper's vectors."""
        from utility.cold_start import MAPPER_FILE, ServingMapper, items_without_training

        path = os.path.join(self.run_dir, MAPPER_FILE)
        mapper, student = ServingMapper.load(path)
        if student != self.student_binding():
            raise UserError(f"{path}: fitted for another student.pt or other data (fit it again: --fit_mapper)")
        new = items_without_training(ds.train)
        if new.size:
            device = self.item_emb.device
            vectors = mapper.vectors({m: x[new] for m, x in ds.modality_feats.items()}, device)
            self.item_emb[torch.as_tensor(new, device=device)] = vectors
        self.new_items, self.new_ids = mapper, new.astype(np.int64)

    def add_items(self, modality_feats, original_ids=None):
        """Append items that arrived after training, from their features ({modality: (n, dim) rows},
        the dataset's modalities): their vectors from the mapper, no training interactions. Returns
        their ids (n_items, n_items + 1, ...), which every later call ranks with the others."""
        if self.new_items is None:
            raise UserError("adding items needs the content mapper: load with new_items=True (--new_items)")
        vectors = self.new_items.vectors(modality_feats, self.item_emb.device)
        ids = np.arange(self.n_items, self.n_items + vectors.shape[0])
        if original_ids is not None and len(original_ids) != len(ids):
            raise UserError(f"{len(original_ids)} original ids for {len(ids)} new items")
        self.item_emb = torch.cat([self.item_emb, vectors]).contiguous()
        self.train = sp.csr_matrix((self.train.data, self.train.indices, self.train.indptr),
                                   shape=(self.n_users, self.n_items))
        if self.id_map is not None:
            self.id_map = dict(self.id_map, item=list(self.id_map["item"]) + list(
                original_ids if original_ids is not None else [-1] * len(ids)))
        self.n_added += len(ids)
        self.new_ids = np.concatenate([self.new_ids, ids])
        return ids

    def check_users(self, user_ids):
        """int64 tensor of ``user_ids``; an id outside the dataset is a :class:`UserError`."""
        users = torch.as_tensor(np.asarray(user_ids, dtype=np.int64).reshape(-1))
        bad = users[(users < 0) | (users >= self.n_users)]
        if bad.numel():
            raise UserError(f"user {int(bad[0])} is not in {self.dataset} (user ids are 0..{self.n_users - 1})")
        return users

    @torch.no_grad()
    def recommend(self, user_ids, k=20, exclude_seen=True, new_only=False):
        """(ids, scores): numpy (len(user_ids), k) arrays, best first. Where a user has fewer than k
        unseen items, the missing places hold id -1 and score -inf. ``new_only``: rank the new items
        only (those the content mapper serves), as a shelf of new arrivals. Otherwise every item is
        ranked, except new items that the mapper's validation kept out of mixed lists."""
        users = self.check_users(user_ids)
        if new_only and self.new_items is None:
            raise UserError("ranking the new items only needs the content mapper: load with new_items=True "
                            "(--new_items)")
        k = min(k, self.n_items)
        ids, scores = [], []
        for start in range(0, users.numel(), block_size(self.n_items)):
            block = users[start:start + block_size(self.n_items)]
            top_scores, top_ids = self._top(block, k, exclude_seen, new_only)
            ids.append(top_ids)
            scores.append(top_scores)
        if not ids:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return torch.cat(ids).numpy(), torch.cat(scores).numpy()

    def _top(self, users, k, exclude_seen, new_only=False):
        """Top-k (scores, ids) of one block of users, scored as the evaluation scores them."""
        device = self.user_emb.device
        scores = self.user_emb[users.to(device)] @ self.item_emb.T
        if exclude_seen:
            seen = self.train[users.numpy()]
            rows = torch.repeat_interleave(torch.arange(users.numel()), torch.from_numpy(np.diff(seen.indptr)))
            scores[rows.to(device), torch.from_numpy(seen.indices.astype(np.int64)).to(device)] = -torch.inf
        if new_only:
            keep = torch.zeros(self.n_items, dtype=torch.bool, device=device)
            keep[torch.as_tensor(self.new_ids, device=device)] = True
            scores = scores.masked_fill(~keep, -torch.inf)
        elif self.hidden is not None and self.hidden.size:
            scores[:, torch.as_tensor(self.hidden, device=device)] = -torch.inf
        top = torch.topk(scores, k, dim=1)
        ids = top.indices.masked_fill(torch.isneginf(top.values), -1)
        return top.values.cpu(), ids.cpu()

    def iter_all(self, k=20, exclude_seen=True):
        """(users, ids, scores) for every user, in blocks: the full score matrix is never formed."""
        step = block_size(self.n_items)
        for start in range(0, self.n_users, step):
            users = np.arange(start, min(start + step, self.n_users))
            ids, scores = self.recommend(users, k, exclude_seen)
            yield users, ids, scores

    @torch.no_grad()
    def similar_items(self, item_id, k=20):
        """(ids, scores) of the k items whose embeddings have the highest cosine similarity with
        ``item_id``'s (the item itself left out), best first."""
        if not 0 <= int(item_id) < self.n_items:
            raise UserError(f"item {item_id} is not in {self.dataset} (item ids are 0..{self.n_items - 1})")
        unit = torch.nn.functional.normalize(self.item_emb, dim=1)
        sims = unit @ unit[int(item_id)]
        sims[int(item_id)] = -torch.inf
        top = torch.topk(sims, min(k, self.n_items - 1))
        return top.indices.cpu().numpy(), top.values.cpu().numpy()

    def original(self, kind, ids):
        """The original ids of the dataset's ``kind`` ("user" or "item") ids; -1 stays -1."""
        if self.id_map is None:
            raise UserError(f"{self.dataset} has no {ID_MAP}: its ids are the original ones")
        table = np.asarray(self.id_map[kind])
        ids = np.asarray(ids)
        return np.where(ids >= 0, table[np.clip(ids, 0, None)], -1)

    def export(self, out_dir, faiss_index=None):
        """Embeddings (.npy, float32), the training items, the id map and manifest.json written to
        ``out_dir`` (which must not exist or be empty), all at once: a failure leaves nothing there."""
        if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
            raise UserError(f"--export {out_dir}: exists and is not an empty folder (choose a new one)")
        parent = os.path.dirname(os.path.abspath(out_dir))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise UserError(f"--export {out_dir}: cannot write into {parent}")
        if faiss_index is not None:
            faiss = import_faiss()
        tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
        try:
            files = dict(user_embeddings="user_embeddings.npy", item_embeddings="item_embeddings.npy",
                         seen="train_items.npz")
            np.save(os.path.join(tmp, files["user_embeddings"]), self.user_emb.cpu().numpy())
            np.save(os.path.join(tmp, files["item_embeddings"]), self.item_emb.cpu().numpy())
            sp.save_npz(os.path.join(tmp, files["seen"]), self.train.astype(np.float32))
            if self.new_items is not None:
                files["new_items"] = "new_items.npy"
                np.save(os.path.join(tmp, files["new_items"]), self.new_ids)
            if self.id_map is not None:
                files["id_map"] = ID_MAP
                with open(os.path.join(tmp, ID_MAP), "w", encoding="utf-8") as f:
                    json.dump(self.id_map, f)
            if faiss_index is not None:
                files["faiss_index"] = f"items-{faiss_index}.faiss"
                faiss.write_index(build_faiss_index(self.item_emb.cpu().numpy(), faiss_index),
                                  os.path.join(tmp, files["faiss_index"]))
            manifest = dict(model=self.model, dataset=self.dataset, signature=self.signature, n_users=self.n_users,
                            n_items=self.n_items, dimension=int(self.user_emb.shape[1]), dtype="float32",
                            score="dot product: user_embeddings[u] @ item_embeddings.T",
                            rows="row r of user_embeddings.npy is user r of the dataset, of item_embeddings.npy item r",
                            seen="train_items.npz: users x items training interactions (scipy.sparse.load_npz), "
                                 "excluded from a user's recommendations by default",
                            faiss_index=None if faiss_index is None else dict(
                                kind=faiss_index, metric="inner product",
                                **(dict(M=HNSW_NEIGHBOURS, ef_construction=HNSW_EF_CONSTRUCTION)
                                   if faiss_index == "hnsw" else {})),
                            new_items=None if self.new_items is None else dict(
                                mapped=self.n_mapped, added=self.n_added, scale=self.new_items.scale,
                                in_mixed_lists=self.new_items.promote, file="new_items.npy",
                                rows="the items of new_items.npy (those without training interactions, then "
                                     "the last `added` rows) are the content mapper's vectors (mapper.pt); where "
                                     "in_mixed_lists is false, leave them out of lists of all items"),
                            files=files, created_from=os.path.abspath(self.run_dir),
                            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2)
                f.write("\n")
            if os.path.isdir(out_dir):
                os.rmdir(out_dir)
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest


def fit_run_mapper(run_dir, device="cpu", data_path=None, progress=False):
    """Fit the content mapper for the run's student (:func:`utility.cold_start.fit_serving_mapper`,
    with the run's seed) and write it to the run folder's mapper.pt; returns the ServingMapper."""
    from utility.cold_start import MAPPER_FILE, fit_serving_mapper

    rec, ds = Recommender._load(run_dir, "student", device, data_path)
    if not ds.modality_feats:
        raise UserError(f"{ds.path}: no modality features (*_feat.npy), so new items cannot be embedded")
    seed = int(read_config(run_dir).get("seed", 2024))
    fitted = fit_serving_mapper(ds, rec.user_emb, rec.item_emb, seed, device=torch.device(device), progress=progress)
    fitted.save(os.path.join(run_dir, MAPPER_FILE), rec.student_binding())
    return fitted


def read_item_features(folder, modalities):
    """{modality: rows} of the ``<modality>_feat.npy`` files of new items in ``folder``."""
    if not os.path.isdir(folder):
        raise UserError(f"--add_items {folder}: folder not found")
    feats = {}
    for name in modalities:
        path = os.path.join(folder, f"{name}_feat.npy")
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found (new items need every modality: {', '.join(modalities)})")
        try:
            feats[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable .npy array ({type(e).__name__})") from None
    return feats


# ---------------------------------------------------------------- loading

def read_config(run_dir):
    """The run's config.json, its ``run_dir`` set to the folder it was read from (runs can move);
    a missing or unreadable one is a one-line error."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: run folder not found")
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found (not a run folder)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as JSON ({type(e).__name__})") from None
    missing = [key for key in ("dataset", "data_path", "teacher") if key not in config] if isinstance(config, dict) else []
    if not isinstance(config, dict) or missing:
        raise UserError(f"{path}: not a run's config ({'missing ' + ', '.join(missing) if missing else 'not a JSON object'})")
    return dict(config, run_dir=run_dir)


def read_checkpoint(path, model):
    """The checkpoint dict of ``model`` ("student.pt" holds the student, "teacher.pt" the teacher)."""
    if not os.path.isfile(path):
        hint = " (a --stage teacher run has no student)" if model == "student" else ""
        raise UserError(f"{path}: file not found{hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or model not in ckpt.get("models", {}):
        raise UserError(f"{path}: holds no {model} weights (not a checkpoint written by this program)")
    return ckpt


def dataset_signature(ds):
    """What a checkpoint records of its data (``data`` of the checkpoint dict)."""
    return dict(n_users=ds.n_users, n_items=ds.n_items, n_train=int(ds.train.nnz), modalities=ds.modality_dims)


def read_id_map(folder, ds):
    """The dataset's id_map.json, or None; one whose lengths disagree with the data is an error."""
    path = os.path.join(folder, ID_MAP)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            id_map = json.load(f)
        sizes = (len(id_map["user"]), len(id_map["item"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not an id map ({type(e).__name__}; expected {{\"user\": [...], \"item\": [...]}})") from None
    if sizes != (ds.n_users, ds.n_items):
        raise UserError(f"{path}: maps {sizes[0]} users and {sizes[1]} items; the data has {ds.n_users} and {ds.n_items}")
    return id_map


def load_student(ckpt, config, ds, device):
    """The run's LightGCN student with its best-validation weights, in evaluation mode."""
    from Models import LightGCNStudent
    from utility.graph import sym_norm_blocks, to_torch_csr

    if config.get("student_model_type", "lightgcn") != "lightgcn":
        raise UserError(f"{config['run_dir']}: a {config['student_model_type']} student; only the LightGCN student is served")
    state = ckpt["models"]["student"]
    teacher_cfg = from_dict(TeacherConfig, config["teacher"])
    # the depth chosen on validation (utility/item_item.py); older runs: their student_layers, or the teacher's depth
    older = config.get("student_layers", teacher_cfg.cf_layers)
    n_layers = ckpt.get("results", {}).get("distilled_teacher", {}).get("depth", older)
    norm_ui, norm_iu = (to_torch_csr(m).to(device) for m in sym_norm_blocks(ds.train))
    student = LightGCNStudent(norm_ui, norm_iu, state["user_emb"].shape[1], n_layers).to(device)
    load_weights(student, state, ckpt_name(config, "student"))
    return student.eval()


def load_teacher(ckpt, config, ds, device):
    """The run's teacher (stage 1, best validation) with its graphs, features and hard tokens."""
    from Models import Teacher
    from utility.features import default_cache_dir, item_hard_tokens
    from utility.graph import build_graphs, cached_knn_graphs, knn_tensors

    cfg = from_dict(TeacherConfig, config["teacher"])
    if cfg.knn_k and cfg.use_modalities and config["teacher"].get("knn_on", "ids") != "ids":
        raise UserError(f"{config['run_dir']}: its teacher smooths features over kNN graphs "
                        f"(knn_on = {config['teacher']['knn_on']}), which this version no longer builds")
    cache = default_cache_dir(ds.path, os.path.join(config.get("runs_dir", "runs"), ".cache", config["dataset"]))
    graphs = build_graphs(ds.train, device)
    if cfg.knn_k and cfg.use_modalities:
        graphs.update({name: g.to(device) for name, g in
                       knn_tensors(cached_knn_graphs(ds.modality_feats, cfg.knn_k, cache)).items()})
    tokens = torch.from_numpy(item_hard_tokens(ds.modality_feats, cfg.embed_size, cache)).to(device)
    feats = {m: torch.from_numpy(x).to(device) for m, x in ds.modality_feats.items()}
    teacher = Teacher(graphs, feats, tokens, cfg).to(device)
    load_weights(teacher, ckpt["models"]["teacher"], ckpt_name(config, "teacher"))
    return teacher.eval()


def ckpt_name(config, model):
    return os.path.join(config["run_dir"], f"{model}.pt")


def load_weights(module, state, path):
    """``module.load_state_dict(state)``; weights of another shape are a one-line error."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: its weights do not fit the model its config.json describes "
                        f"({str(e).splitlines()[0]})") from None


@torch.no_grad()
def final_embeddings(model):
    """(user, item) embeddings that a model scores with: the student's propagated tables, the
    teacher's fused e^T (its whole forward pass over graphs and features)."""
    from Models import TeacherOutput

    out = model()
    return (out.user, out.item) if isinstance(out, TeacherOutput) else out


def block_size(n_items):
    """Users scored at once so that one block of scores stays within :data:`SCORE_BUDGET`."""
    return max(1, SCORE_BUDGET // max(1, n_items))


# ---------------------------------------------------------------- faiss

def import_faiss():
    try:
        import faiss
    except ImportError:
        raise UserError("--faiss needs the faiss-cpu package: pip install -r requirements-serve.txt") from None
    return faiss


FAISS_INDEXES = ("flat", "hnsw")
HNSW_NEIGHBOURS = 32     # M: links per node of the HNSW graph
HNSW_EF_CONSTRUCTION = 200


def search_unseen(index, queries, seen, k):
    """(ids, scores) of each query's k best items in a faiss index, a user's seen items (the rows of
    ``seen``, a users x items CSR matrix, one per query) left out: the index is asked for k plus
    the most items any of the queries has seen, and those are dropped. Missing places: id -1."""
    counts = np.diff(seen.indptr)
    fetch = min(index.ntotal, k + int(counts.max(initial=0)))
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
    rows = np.repeat(np.arange(len(ids)), counts)
    keys = np.sort(rows * index.ntotal + seen.indices)
    flat = np.arange(len(ids))[:, None] * index.ntotal + ids
    where = np.minimum(np.searchsorted(keys, flat), max(0, keys.size - 1))
    drop = (ids < 0) | ((keys[where] == flat) if keys.size else False)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]   # kept places first, in the index's order
    ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    missing = np.take_along_axis(drop, order, 1)
    return np.where(missing, -1, ids), np.where(missing, -np.inf, scores).astype(np.float32)


def build_faiss_index(item_emb, kind="flat", hnsw_m=HNSW_NEIGHBOURS, ef_construction=HNSW_EF_CONSTRUCTION):
    """An inner-product faiss index of the items: exact (``flat``) or approximate (``hnsw``, with
    ``hnsw_m`` links per item and a construction breadth of ``ef_construction``)."""
    faiss = import_faiss()
    item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(item_emb.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(item_emb.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise UserError(f"--faiss {kind}: expected one of {', '.join(FAISS_INDEXES)}")
    index.add(item_emb)
    return index


# ---------------------------------------------------------------- the command line

def build_parser():
    p = argparse.ArgumentParser(prog="python -m utility.recommend", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a finished run folder: runs/<dataset>/<timestamp>")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--users", type=int, nargs="+", help="the dataset's user ids")
    who.add_argument("--users_file", help="a file of user ids, separated by white space")
    who.add_argument("--all_users", action="store_true", help="every user, written to --out in blocks")
    p.add_argument("--similar", type=int, nargs="+", metavar="ITEM", help="items most similar to these item ids")
    p.add_argument("--k", type=int, default=20, help="items per list (default 20)")
    p.add_argument("--model", choices=MODELS, default="student")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="what is printed")
    p.add_argument("--out", help="with --all_users: FILE.csv, or FILE.parquet (needs pyarrow)")
    p.add_argument("--include_seen", action="store_true", help="keep a user's training items as candidates")
    p.add_argument("--original_ids", action="store_true", help="also give the dataset's original ids (id_map.json)")
    p.add_argument("--export", metavar="DIR", help="write the embeddings, the id map and manifest.json to DIR")
    p.add_argument("--faiss", nargs="?", const="flat", choices=FAISS_INDEXES,
                   help="with --export: an inner-product faiss index of the items (flat: exact; hnsw: approximate)")
    p.add_argument("--fit_mapper", action="store_true",
                   help="fit the content mapper for the student's new items and write RUN/mapper.pt")
    p.add_argument("--new_items", action="store_true",
                   help="serve the items without training interactions from RUN/mapper.pt")
    p.add_argument("--add_items", metavar="DIR",
                   help="with --new_items: append the items whose <modality>_feat.npy rows are in DIR")
    p.add_argument("--new_only", action="store_true", help="with --new_items: rank the new items only")
    p.add_argument("--data_path", help="where the dataset folder is, when it has moved since the run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def parse_args(argv):
    """The flags; combinations that make no sense are a one-line :class:`UserError`."""
    args = build_parser().parse_args(argv)
    if not any(getattr(args, name) for name in ("users", "users_file", "all_users", "similar", "export", "fit_mapper")):
        raise UserError("nothing to do: give --users, --users_file, --all_users, --similar, --export or --fit_mapper")
    if args.model != "student" and (args.fit_mapper or args.new_items or args.add_items):
        raise UserError("--fit_mapper, --new_items and --add_items are for the student (the teacher has its own "
                        "content path)")
    if (args.add_items or args.new_only) and not args.new_items:
        raise UserError("--add_items and --new_only go with --new_items")
    if args.k < 1:
        raise UserError(f"--k {args.k}: must be at least 1")
    if args.all_users and not args.out:
        raise UserError("--all_users needs --out FILE.csv or FILE.parquet")
    if args.out and not args.all_users:
        raise UserError("--out is for --all_users (other lists are printed)")
    if args.out and not args.out.endswith((".csv", ".parquet")):
        raise UserError(f"--out {args.out}: expected a .csv or .parquet file")
    if args.faiss and not args.export:
        raise UserError("--faiss goes with --export DIR")
    return args


def read_users_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            words = f.read().split()
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        return [int(w) for w in words]
    except ValueError:
        bad = next(w for w in words if not w.lstrip("-").isdigit())
        raise UserError(f"{path}: {bad!r} is not a user id (expected integers separated by white space)") from None


def list_rows(rec, users, ids, scores, original):
    """One dict per (user, rank) of the lists, places without an item left out."""
    rows = []
    orig_users = rec.original("user", users) if original else None
    orig_items = rec.original("item", ids) if original else None
    for r, user in enumerate(users):
        for rank in np.flatnonzero(ids[r] >= 0):
            row = dict(user=int(user), rank=int(rank) + 1, item=int(ids[r, rank]), score=float(scores[r, rank]))
            if original:
                row.update(original_user=int(orig_users[r]), original_item=int(orig_items[r, rank]))
            rows.append(row)
    return rows


def format_lists(rec, users, ids, scores, fmt, original):
    """The lists as a table, JSON ({user id: {"items", "scores"}}) or CSV text."""
    if fmt == "json":
        out = {}
        for r, user in enumerate(users):
            keep = ids[r] >= 0
            entry = dict(items=ids[r][keep].tolist(), scores=[round(float(s), 6) for s in scores[r][keep]])
            if original:
                entry.update(original_user=int(rec.original("user", [user])[0]),
                             original_items=rec.original("item", ids[r][keep]).tolist())
            out[str(int(user))] = entry
        return "{\n" + ",\n".join(f" {json.dumps(user)}: {json.dumps(entry)}" for user, entry in out.items()) + "\n}"
    rows = list_rows(rec, users, ids, scores, original)
    columns = ["user", "rank", "item", "score"] + (["original_user", "original_item"] if original else [])
    if fmt == "csv":
        return "\n".join([",".join(columns)] + [",".join(csv_value(row[c]) for c in columns) for row in rows])
    lines = ["".join(f"{c:>14}" for c in columns)]
    lines += ["".join(f"{row[c]:>14.4f}" if c == "score" else f"{row[c]:>14}" for c in columns) for row in rows]
    return "\n".join(lines)


def csv_value(value):
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_all_users(rec, path, k, exclude_seen, original):
    """Every user's list into ``path`` (.csv or .parquet), block by block, renamed into place at the end."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UserError(f"--out {path}: cannot write into {folder}")
    write = write_parquet if path.endswith(".parquet") else write_csv
    blocks = (block_columns(rec, users, ids, scores, original) for users, ids, scores in
              tqdm(rec.iter_all(k, exclude_seen), desc="users", unit="block", leave=False,
                   total=-(-rec.n_users // block_size(rec.n_items))))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path))
    os.close(fd)
    try:
        rows = write(tmp, blocks, path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return rows


def write_csv(file, blocks, path):
    rows = 0
    with open(file, "w", encoding="utf-8") as f:
        for n, block in enumerate(blocks):
            if n == 0:
                f.write(",".join(block) + "\n")
            np.savetxt(f, np.column_stack([block[c] for c in block]), delimiter=",",
                       fmt=["%.6g" if c == "score" else "%d" for c in block])
            rows += len(block["user"])
    return rows


def write_parquet(file, blocks, path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"--out {path}: parquet needs pyarrow (pip install -r requirements-serve.txt), "
                        "or write .csv") from None
    rows, writer = 0, None
    try:
        for block in blocks:
            table = pa.table(block)
            writer = writer or pq.ParquetWriter(file, table.schema)
            writer.write_table(table)
            rows += len(block["user"])
    finally:
        if writer is not None:
            writer.close()
    return rows


def block_columns(rec, users, ids, scores, original):
    """Columns (user, rank, item, score[, original ids]) of one block's lists, empty places dropped."""
    keep = ids >= 0
    rank = np.broadcast_to(np.arange(1, ids.shape[1] + 1), ids.shape)
    user = np.broadcast_to(users[:, None], ids.shape)
    columns = dict(user=user[keep], rank=rank[keep], item=ids[keep], score=scores[keep].astype(np.float32))
    if original:
        columns.update(original_user=rec.original("user", columns["user"]),
                       original_item=rec.original("item", columns["item"]))
    return columns


def main(argv=None):
    try:
        args = parse_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.fit_mapper:
            fitted = fit_run_mapper(args.run_dir, args.device, args.data_path, progress=True)
            info = fitted.info
            print(f"content mapper: chosen on {info['chosen_on']} (validation Recall@20 "
                  f"{info['val'][str(info['score_weight'])]:.4f}, epoch {info['epoch']}), scale {fitted.scale:g}; new "
                  f"items " + ("shown" if fitted.promote else "not shown") + f" among warm ones (validation gain "
                  f"{info['gain']:+.4f}, standard error {info['gain_se']:.4f}); written to "
                  f"{os.path.join(args.run_dir, 'mapper.pt')}", file=sys.stderr)
            if not any(getattr(args, n) for n in ("users", "users_file", "all_users", "similar", "export")):
                return 0
        rec = Recommender.load(args.run_dir, args.model, args.device, args.data_path, new_items=args.new_items)
        if args.new_items:
            print(f"{rec.n_mapped} items without training interactions served from mapper.pt"
                  + ("" if rec.new_items.promote else "; validation kept new items out of lists of all items "
                     "(--new_only ranks them)"), file=sys.stderr)
        if args.add_items:
            ids = rec.add_items(read_item_features(args.add_items, sorted(rec.new_items.scaler.stats)))
            print(f"added {len(ids)} items from {args.add_items}: ids {ids[0]}..{ids[-1]}" if len(ids) else
                  f"{args.add_items}: no items to add", file=sys.stderr)
        if args.original_ids and rec.id_map is None:
            raise UserError(f"--original_ids: {rec.dataset} has no {ID_MAP}; its ids are the original ones")
        users = args.users or (read_users_file(args.users_file) if args.users_file else None)
        if users is not None:
            ids, scores = rec.recommend(users, args.k, exclude_seen=not args.include_seen, new_only=args.new_only)
            print(format_lists(rec, np.asarray(users), ids, scores, args.format, args.original_ids))
        for item in args.similar or ():
            ids, scores = rec.similar_items(item, args.k)
            print(f"items like {item}: " + ", ".join(f"{i} ({s:.3f})" for i, s in zip(ids, scores)))
        if args.all_users:
            rows = write_all_users(rec, args.out, args.k, not args.include_seen, args.original_ids)
            print(f"{rows} rows ({rec.n_users} users, top {args.k}) written to {args.out}")
        if args.export:
            manifest = rec.export(args.export, args.faiss)
            print(f"exported {manifest['n_users']} users and {manifest['n_items']} items "
                  f"(d = {manifest['dimension']}, {rec.model}) to {args.export}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
