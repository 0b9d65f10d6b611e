"""Tiny datasets written in both layouts, for tests."""
import json
import os
import pickle

import numpy as np
import scipy.sparse as sp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the real Tiktok copy, for the tests that use it (they skip when it is absent); see README, "Tests"
REAL_TIKTOK = os.environ.get("PROMPTMM_TIKTOK", "")


def tiny_splits(n_users=30, n_items=40, seed=0):
    """Per-user disjoint train/val/test lists with an item-cluster structure the features reveal."""
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, 4, size=n_items)
    train, val, test = {}, {}, {}
    for u in range(n_users):
        liked = np.flatnonzero(clusters == u % 4)
        others = np.flatnonzero(clusters != u % 4)
        items = np.concatenate([rng.choice(liked, size=min(6, liked.size), replace=False),
                                rng.choice(others, size=2, replace=False)])
        rng.shuffle(items)
        train[str(u)] = sorted(int(i) for i in items[:-2])
        val[str(u)] = [int(items[-2])]
        test[str(u)] = [int(items[-1])]
    # make sure the largest item id appears somewhere so n_items is exact
    if not any(n_items - 1 in v for v in train.values()):
        train["0"] = sorted(set(train["0"]) | {n_items - 1} - set(val["0"]) - set(test["0"]))
    feats = {
        "image": (np.eye(4)[clusters] * 2 + rng.normal(0, 0.3, (n_items, 4))).astype(np.float32),
        "text": np.concatenate([np.eye(4)[clusters], rng.normal(0, 1, (n_items, 12))], 1).astype(np.float32),
    }
    return train, val, test, feats


def write_json_dataset(path, train, val, test, feats):
    os.makedirs(path, exist_ok=True)
    for name, split in (("train", train), ("val", val), ("test", test)):
        with open(os.path.join(path, f"{name}.json"), "w") as f:
            json.dump(split, f)
    for name, x in feats.items():
        np.save(os.path.join(path, f"{name}_feat.npy"), x)
    return path


def split_matrix(split, n_users, n_items):
    rows = [int(u) for u, items in split.items() for _ in items]
    cols = [i for items in split.values() for i in items]
    return sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_items))


def write_pickle_dataset(path, train, val, test, feats, n_users, n_items):
    os.makedirs(path, exist_ok=True)
    for name, split in (("trnMat", train), ("valMat", val), ("tstMat", test)):
        with open(os.path.join(path, f"{name}.pkl"), "wb") as f:
            pickle.dump(split_matrix(split, n_users, n_items), f)
    for name, x in feats.items():
        np.save(os.path.join(path, f"{name}_feat.npy"), x.astype(np.float16))
    return path


def tiny_model_inputs(token_size=8, train_matrix=None):
    """(graphs, feature tensors, PCA hard tokens) of the tiny dataset, as the models take them;
    ``train_matrix`` replaces its training matrix (e.g. with an item nobody trained on)."""
    import torch

    from utility.features import item_hard_tokens
    from utility.graph import build_graphs
    train, _, _, feats = tiny_splits()
    mat = split_matrix(train, 30, 40).tocsr() if train_matrix is None else train_matrix
    graphs = build_graphs(mat, torch.device("cpu"))
    tokens = torch.from_numpy(item_hard_tokens(feats, token_size))
    return graphs, {m: torch.from_numpy(x) for m, x in feats.items()}, tokens
