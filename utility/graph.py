"""Normalised interaction graphs, built once from the training matrix with scipy."""
import os
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm


def _inv(x, power=1.0):
    """x ** -power with 0 where x == 0 (users or items without training interactions)."""
    out = np.zeros_like(x, dtype=np.float64)
    nz = x > 0
    out[nz] = x[nz] ** -power
    return out


def sym_norm_adj(train):
    """D^-1/2 A D^-1/2 of the (users + items) bipartite graph, as used by LightGCN.

    The runs propagate on its two blocks (:func:`sym_norm_blocks`); the square matrix is kept as the
    independent reference the equivalence tests compare them with.
    """
    r = sp.csr_matrix(train, dtype=np.float64)
    adj = sp.bmat([[None, r], [r.T, None]], format="csr")
    d = _inv(np.asarray(adj.sum(axis=1)).ravel(), 0.5)
    return (sp.diags(d) @ adj @ sp.diags(d)).tocsr().astype(np.float32)


def sym_norm_blocks(train):
    """The two off-diagonal blocks of :func:`sym_norm_adj`: D_U^-1/2 R D_I^-1/2 and its transpose.

    Propagating on the blocks (users from items, items from users) is the same product as on the
    (users + items) square matrix, without concatenating and splitting the two embedding tables.
    """
    r = sp.csr_matrix(train, dtype=np.float64)
    du = _inv(np.asarray(r.sum(axis=1)).ravel(), 0.5)
    di = _inv(np.asarray(r.sum(axis=0)).ravel(), 0.5)
    block = (sp.diags(du) @ r @ sp.diags(di)).tocsr().astype(np.float32)
    return block, block.T.tocsr()


def mean_adj(train):
    """Row-normalised R (each user's mean over their items) and row-normalised R^T."""
    r = sp.csr_matrix(train, dtype=np.float64)
    user_mean = sp.diags(_inv(np.asarray(r.sum(axis=1)).ravel())) @ r
    item_mean = sp.diags(_inv(np.asarray(r.sum(axis=0)).ravel())) @ r.T.tocsr()
    return user_mean.tocsr().astype(np.float32), item_mean.tocsr().astype(np.float32)


def to_torch_csr(mat):
    """A scipy matrix as a torch sparse CSR tensor (float32).

    Indices are int32 when they fit: the CPU sparse kernels take int32 indices as they are, while
    int64 ones are converted (copied) on every product.
    """
    mat = sp.csr_matrix(mat, dtype=np.float32)
    mat.sort_indices()
    index = np.int32 if max(mat.nnz, *mat.shape) < 2**31 - 1 else np.int64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(mat.indptr.astype(index)),
            torch.from_numpy(mat.indices.astype(index)),
            torch.from_numpy(mat.data),
            size=mat.shape,
            check_invariants=False,
        )


def build_graphs(train, device):
    """Every graph the models propagate on, as torch CSR tensors on ``device``.

    ``norm_ui`` / ``norm_iu``: the blocks of the LightGCN adjacency (:func:`sym_norm_blocks`);
    ``user_mean`` / ``item_mean``: the modality GNN's mean aggregations (:func:`mean_adj`), each with
    its transpose for the backward pass.
    """
    user_mean, item_mean = mean_adj(train)
    norm_ui, norm_iu = sym_norm_blocks(train)
    mats = dict(norm_ui=norm_ui, norm_iu=norm_iu, user_mean=user_mean, user_mean_t=user_mean.T,
                item_mean=item_mean, item_mean_t=item_mean.T)
    return {name: to_torch_csr(m).to(device) for name, m in mats.items()}


KNN_SCORE_BUDGET = 1 << 26   # similarity scores per block (256 MB) when ranking neighbours


def knn_neighbours(feats, k, budget=KNN_SCORE_BUDGET):
    """(n_items, k) int32: each item's k most cosine-similar other items, best first.

    Rows are scored in blocks of about ``budget`` similarities, so no items x items matrix is formed;
    the time is that of the full similarity product, O(n_items^2 * d).
    """
    x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(feats), dtype=torch.float32), dim=1)
    n = x.shape[0]
    k = min(k, n - 1)
    out = np.empty((n, max(k, 0)), dtype=np.int32)
    rows = max(1, min(n, budget // max(1, n)))
    starts = range(0, n if k > 0 else 0, rows)
    for start in tqdm(starts, desc="kNN neighbours", unit="block", leave=False, disable=len(starts) < 8):
        end = min(n, start + rows)
        sims = x[start:end] @ x.T
        sims[torch.arange(end - start), torch.arange(start, end)] = -torch.inf   # not its own neighbour
        out[start:end] = torch.topk(sims, k, dim=1).indices.numpy()
    return out


def knn_graph(neighbours, n_items):
    """D^-1/2 A D^-1/2 of the symmetrised kNN graph (A_ij = 1 when j is among i's neighbours or i
    among j's), as a scipy CSR matrix; symmetric, so it is its own transpose."""
    rows = np.repeat(np.arange(n_items), neighbours.shape[1])
    a = sp.csr_matrix((np.ones(rows.size), (rows, neighbours.reshape(-1))), shape=(n_items, n_items))
    a = a.maximum(a.T).tocsr()
    d = sp.diags(_inv(np.asarray(a.sum(axis=1)).ravel(), 0.5))
    return (d @ a @ d).tocsr().astype(np.float32)


def cached_knn_graphs(modality_feats, k, cache_dir=None):
    """{modality: normalised kNN graph} of each modality's features; the neighbour lists are cached
    in ``cache_dir`` under the features' hash and k (like the PCA tokens)."""
    from utility.features import features_key, save_cached

    graphs = {}
    for name, x in modality_feats.items():
        file = None if cache_dir is None else os.path.join(cache_dir, f"knn_{name}_{features_key(x, k)}.npy")
        neighbours = None
        if file is not None and os.path.exists(file):
            try:
                neighbours = np.load(file, allow_pickle=False)
            except Exception:   # a damaged cache file is rebuilt
                neighbours = None
            if neighbours is not None and (neighbours.shape != (x.shape[0], min(k, x.shape[0] - 1))
                                           or neighbours.min(initial=0) < 0 or neighbours.max(initial=0) >= x.shape[0]):
                neighbours = None
        if neighbours is None:
            neighbours = knn_neighbours(x, k)
            if file is not None:
                save_cached(file, neighbours, "kNN")
        graphs[name] = knn_graph(neighbours, x.shape[0])
    return graphs


def knn_tensors(graphs):
    """The teacher's kNN buffer ``knn_mean``: the average of the modalities' graphs of
    :func:`cached_knn_graphs` (the graph the item ID embeddings are smoothed over), as torch CSR."""
    return {"knn_mean": to_torch_csr((sum(graphs.values()) / len(graphs)).tocsr().astype(np.float32))}
