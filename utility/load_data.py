"""Load and validate a multi-modal recommendation dataset.

Two layouts are recognised, by the files present in the dataset folder:

* **json** (MMSSL / PromptMM): ``train.json``, ``val.json``, ``test.json`` map a user-id string
  to a list of 0-based item ids; an optional pickled scipy ``train_mat`` must agree with
  ``train.json``.
* **pickle** (MMSSL / DiffMM builds): ``trnMat.pkl``, ``valMat.pkl``, ``tstMat.pkl`` hold
  pickled scipy sparse users x items matrices.

In both, every ``<modality>_feat.npy`` is a modality with one row per item. Features are cast to
float32 (some published copies are float16, whose sums overflow).

Anything malformed raises :class:`DataError` with a one-line message naming the file.
Oddities that are harmless are warnings: an item listed twice for the same user is kept once.
"""
import json
import os
import pickle
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from utility.errors import DataError, file_error

SPLITS = ("train", "val", "test")
JSON_FILES = {"train": "train.json", "val": "val.json", "test": "test.json"}
PICKLE_FILES = {"train": "trnMat.pkl", "val": "valMat.pkl", "test": "tstMat.pkl"}
FEATURE_SUFFIX = "_feat.npy"
MAX_ID = 2 ** 31 - 1   # ids index int32-addressable tensors


@dataclass
class Dataset:
    """Interactions as binary users x items CSR matrices plus per-modality item features."""

    name: str
    path: str
    layout: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    val: sp.csr_matrix
    test: sp.csr_matrix
    modality_feats: dict = field(default_factory=dict)  # name -> float32 array (n_items, dim)

    @property
    def modality_dims(self):
        return {name: int(x.shape[1]) for name, x in self.modality_feats.items()}

    def summary(self):
        dims = ", ".join(f"{m} {d}" for m, d in self.modality_dims.items())
        cold = int((np.diff(self.train.tocsc().indptr) == 0).sum())
        idle = int((np.diff(self.train.indptr) == 0).sum())
        return (f"{self.name}: {self.n_users} users ({idle} without training items), "
                f"{self.n_items} items ({cold} without training interactions), "
                f"train/val/test {self.train.nnz}/{self.val.nnz}/{self.test.nnz}; modalities: {dims}")


def detect_layout(path):
    """'json' or 'pickle', from the split files present in ``path``."""
    if not os.path.isdir(path):
        raise DataError(f"{path}: dataset folder not found")
    if os.path.exists(os.path.join(path, JSON_FILES["train"])):
        return "json"
    if os.path.exists(os.path.join(path, PICKLE_FILES["train"])):
        return "pickle"
    raise DataError(f"{path}: no dataset found (expected train.json, val.json, test.json "
                    f"or trnMat.pkl, valMat.pkl, tstMat.pkl)")


def load_dataset(path, name=None):
    """Read, validate and return the dataset in folder ``path``."""
    path = os.path.normpath(path)
    name = name or os.path.basename(path)
    layout = detect_layout(path)
    feats = load_modality_features(path)
    if layout == "json":
        files = {s: os.path.join(path, JSON_FILES[s]) for s in SPLITS}
        splits = {s: _read_json_split(files[s]) for s in SPLITS}
        n_items = _check_item_ids(splits, files, feats, path)
        n_users = _check_user_ids(splits, files)
        mats = {s: _pairs_to_csr(*splits[s], n_users, n_items) for s in SPLITS}
        _check_train_mat(os.path.join(path, "train_mat"), mats["train"])
    else:
        files = {s: os.path.join(path, PICKLE_FILES[s]) for s in SPLITS}
        mats = {s: _read_pickled_matrix(files[s]) for s in SPLITS}
        n_users, n_items = mats["train"].shape
        for s in ("val", "test"):
            if mats[s].shape != mats["train"].shape:
                raise file_error(files[s], f"matrix shape {mats[s].shape} differs from "
                                           f"{PICKLE_FILES['train']}'s {mats['train'].shape}")
        for modality, x in feats.items():
            if x.shape[0] != n_items:
                raise file_error(os.path.join(path, modality + FEATURE_SUFFIX),
                                 f"has {x.shape[0]} rows but the interaction matrices have {n_items} items")
    if mats["train"].nnz == 0:
        raise file_error(files["train"], "the training split is empty")
    _check_disjoint(mats, files)
    return Dataset(name=name, path=path, layout=layout, n_users=n_users, n_items=n_items,
                   train=mats["train"], val=mats["val"], test=mats["test"], modality_feats=feats)


def load_modality_features(path):
    """Every ``<modality>_feat.npy`` in ``path`` as float32, validated; sorted by modality name."""
    names = sorted(f[: -len(FEATURE_SUFFIX)] for f in os.listdir(path) if f.endswith(FEATURE_SUFFIX))
    if not names:
        raise DataError(f"{path}: no modality features found (expected files named <modality>{FEATURE_SUFFIX}, "
                        f"e.g. image{FEATURE_SUFFIX})")
    feats = {}
    for name in names:
        file = os.path.join(path, name + FEATURE_SUFFIX)
        try:
            x = np.load(file, allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e) or "Object arrays" in str(e):
                raise file_error(file, "holds an object array; expected a numeric (n_items, dim) array") from None
            raise file_error(file, f"not a readable .npy array ({e})") from None
        except Exception as e:  # truncated or foreign files fail in numpy in several ways
            raise file_error(file, f"cannot be read as a .npy array ({type(e).__name__}: {e})") from None
        if x.dtype.kind not in "fiub":
            raise file_error(file, f"has dtype {x.dtype}; expected a numeric array")
        if x.ndim != 2:
            raise file_error(file, f"has {x.ndim} dimensions (shape {x.shape}); expected (n_items, dim)")
        if x.shape[1] == 0:
            raise file_error(file, f"has shape {x.shape}: zero feature columns")
        x = x.astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            raise file_error(file, f"contains {int(bad.sum())} NaN or infinite values "
                                   f"(first in item {int(np.argwhere(bad)[0, 0])})")
        feats[name] = x
    return feats


def _read_json_split(file):
    """(users, items) int64 arrays of one JSON split: {"user id": [item ids]}."""
    if not os.path.exists(file):
        raise file_error(file, "file not found")
    try:
        with open(file, "r", encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise file_error(file, f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(file, f"cannot be read ({e})") from None
    if not isinstance(obj, dict):
        raise file_error(file, f"expected a JSON object mapping user ids to item lists, got {type(obj).__name__}")
    users, items, duplicates = [], [], 0
    for key, value in obj.items():
        try:
            user = int(key)
        except ValueError:
            raise file_error(file, f"user id {key!r} is not an integer") from None
        if user < 0:
            raise file_error(file, f"user id {user} is negative")
        if user >= MAX_ID:
            raise file_error(file, f"user id {user} is out of range")
        if not isinstance(value, list):
            raise file_error(file, f"user {key}: expected a list of item ids, got {type(value).__name__}")
        if not all(type(i) is int for i in value):
            bad = next(i for i in value if type(i) is not int)
            raise file_error(file, f"user {key}: item id {bad!r} is not an integer")
        if value and max(value) >= MAX_ID:
            raise file_error(file, f"user {key}: item id {max(value)} is out of range")
        row = np.asarray(value, dtype=np.int64)
        if row.size and row.min() < 0:
            raise file_error(file, f"user {key}: item id {int(row.min())} is negative")
        unique = np.unique(row)
        duplicates += row.size - unique.size
        users.append(np.full(unique.size, user, dtype=np.int64))
        items.append(unique)
    if duplicates:
        warnings.warn(f"{file}: {duplicates} repeated items within users' lists were kept once")
    if not users:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(users), np.concatenate(items)


def _check_item_ids(splits, files, feats, path):
    """n_items: the feature row count, which the largest item id + 1 must equal."""
    rows = {m: x.shape[0] for m, x in feats.items()}
    first = next(iter(rows))
    for m, r in rows.items():
        if r != rows[first]:
            raise file_error(os.path.join(path, m + FEATURE_SUFFIX),
                             f"has {r} rows but {first}{FEATURE_SUFFIX} has {rows[first]}")
    n_items = rows[first]
    largest = -1
    for s, (_, items) in splits.items():
        if items.size:
            top = int(items.max())
            if top >= n_items:
                raise file_error(files[s], f"item id {top} is out of range: the features have {n_items} rows "
                                           f"(ids 0..{n_items - 1})")
            largest = max(largest, top)
    if largest + 1 != n_items:
        raise file_error(os.path.join(path, first + FEATURE_SUFFIX),
                         f"has {n_items} rows but the largest item id in the splits is {largest}; "
                         f"the row count must equal the number of items")
    return n_items


def _check_user_ids(splits, files):
    """n_users: the largest user id + 1; ids must be (nearly) contiguous."""
    distinct = np.unique(np.concatenate([u for u, _ in splits.values()]))
    n_users = int(distinct[-1]) + 1 if distinct.size else 0
    if n_users > 4 * distinct.size + 1000:
        worst = max(SPLITS, key=lambda s: int(splits[s][0].max()) if splits[s][0].size else -1)
        raise file_error(files[worst], f"user id {n_users - 1} is out of range: only {distinct.size} distinct "
                                       f"users; re-index users as 0..n_users-1")
    return n_users


def _pairs_to_csr(users, items, n_users, n_items):
    data = np.ones(users.size, dtype=np.float32)
    return sp.csr_matrix((data, (users, items)), shape=(n_users, n_items))


def _read_pickled_matrix(file):
    if not os.path.exists(file):
        raise file_error(file, "file not found")
    try:
        with open(file, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # old scipy module paths in the pickle
            mat = pickle.load(f)
    except Exception as e:  # unpickling can fail in many ways; all mean the same to the user
        raise file_error(file, f"cannot be unpickled ({type(e).__name__}: {e})") from None
    if not sp.issparse(mat):
        raise file_error(file, f"expected a pickled scipy sparse matrix, got {type(mat).__name__}")
    if mat.ndim != 2:
        raise file_error(file, f"expected a 2-d users x items matrix, got shape {mat.shape}")
    mat = sp.csr_matrix(mat)
    mat.eliminate_zeros()
    if mat.nnz and not np.isfinite(mat.data).all():
        raise file_error(file, "contains NaN or infinite entries")
    mat.sum_duplicates()
    mat.data = np.ones_like(mat.data, dtype=np.float32)
    return mat.astype(np.float32)


def _check_train_mat(file, train):
    """An optional pickled ``train_mat`` beside train.json must hold the same interactions."""
    if not os.path.exists(file):
        return
    other = _read_pickled_matrix(file)
    if other.shape[0] < train.shape[0] or other.shape[1] < train.shape[1]:
        raise file_error(file, f"shape {other.shape} is smaller than train.json's {train.shape}")
    if other.shape != train.shape:
        extra = other[train.shape[0]:].nnz + other[:, train.shape[1]:].nnz
        other = other[: train.shape[0], : train.shape[1]]
    else:
        extra = 0
    differ = abs(other - train).nnz + extra
    if differ:
        raise file_error(file, f"disagrees with train.json in {differ} interactions "
                               f"({other.nnz + extra} vs {train.nnz})")


def _check_disjoint(mats, files):
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = mats[a].multiply(mats[b]).tocoo()
        if both.nnz:
            u, i = int(both.row[0]), int(both.col[0])
            raise file_error(files[b], f"{both.nnz} interactions also appear in {os.path.basename(files[a])} "
                                       f"(e.g. user {u}, item {i}); the splits must be disjoint")
