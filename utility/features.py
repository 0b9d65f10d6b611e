"""PCA hard tokens (METHOD stage 1, step 1), cached beside the data.

Each modality's features are reduced to ``dim`` columns by PCA and standardised (zero mean,
unit variance per column; components at the level of rounding noise, as in a rank-deficient
modality, are zeroed); the item hard token is the mean over modalities. A modality with
fewer than ``dim`` columns keeps all its components and is zero-padded. The per-modality
projection is cached in ``cache_dir`` under a key made of the features' hash and ``dim``, so a
change of either invalidates it; an unreadable or inconsistent cache file is rebuilt with a
warning.
"""
import hashlib
import os
import warnings

import numpy as np

from utility.run_io import atomic_write

CACHE_VERSION = 2   # 2: components at the rounding-noise level are zeroed instead of standardised

# A component is kept only when its std exceeds both RELATIVE_TOL times the largest component's std
# and the rounding noise of the input itself (NOISE_EPS_FACTOR * eps of its dtype * the largest
# root-mean-square of a column: each entry is known to within eps/2 of its magnitude, and a large
# common offset, which centring removes, still sets that rounding).
# Below that it is rounding noise of a rank-deficient modality, not a direction of the data, and
# standardising it would turn the noise into a unit-variance token.
RELATIVE_TOL = 1e-6
NOISE_EPS_FACTOR = 8.0


def features_key(x, dim):
    h = hashlib.sha1()
    h.update(f"v{CACHE_VERSION}|{x.shape}|{x.dtype}|{dim}|".encode())
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()[:16]


ROW_BLOCK = 1 << 16   # rows of a feature matrix converted to float64 at a time


def _row_blocks(x):
    """float64 copies of consecutive row blocks of ``x`` (never the whole matrix at once); a copy
    even when ``x`` is float64, so that centring a block in place leaves ``x`` alone."""
    for start in range(0, x.shape[0], ROW_BLOCK):
        yield start, np.array(x[start:start + ROW_BLOCK], dtype=np.float64)


def _noise_floor(x, sq_sums=None):
    """Std below which a projection of ``x`` cannot be told from the rounding of its entries."""
    x = np.asarray(x)
    eps = np.finfo(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64).eps
    if x.size == 0:
        return 0.0
    if sq_sums is None:
        sq_sums = sum(np.square(block).sum(axis=0) for _, block in _row_blocks(x))
    rms = np.sqrt(sq_sums / x.shape[0])
    return NOISE_EPS_FACTOR * eps * float(rms.max())


def pca_reduce(x, dim):
    """Standardised projections of ``x`` on its top ``dim`` principal components (float32).

    Computed from the covariance matrix in float64 (cheap for the feature widths of this field),
    with each component's sign fixed so that its largest loading is positive: same input, same
    output, on any machine. Components whose std is at the rounding-noise level (see
    ``RELATIVE_TOL``) are set to zero, like the padding of a narrow modality.

    The matrix is read in row blocks (``ROW_BLOCK``): sums, then the covariance of the centred
    rows, then the projections, so the float64 working copy is one block, whatever the item count.
    """
    x = np.asarray(x)
    n, width = x.shape
    k = min(dim, width)
    sums, sq_sums = np.zeros(width), np.zeros(width)
    for _, block in _row_blocks(x):
        sums += block.sum(axis=0)
        sq_sums += np.square(block).sum(axis=0)
    floor = _noise_floor(x, sq_sums)
    mean = sums / max(1, n)
    cov = np.zeros((width, width))
    for _, block in _row_blocks(x):
        block -= mean
        cov += block.T @ block
    cov /= max(1, n - 1)
    eigval, eigvec = np.linalg.eigh(cov)
    components = eigvec[:, ::-1][:, :k]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(k)])
    components *= np.where(signs == 0, 1.0, signs)
    out = np.zeros((n, dim), dtype=np.float32)
    z_sums, z_sq_sums = np.zeros(k), np.zeros(k)
    for start, block in _row_blocks(x):
        block -= mean
        z = block @ components
        z_sums += z.sum(axis=0)
        z_sq_sums += np.square(z).sum(axis=0)
        out[start:start + len(block), :k] = z
    z_mean = z_sums / max(1, n)
    std = np.sqrt(np.maximum(z_sq_sums / max(1, n) - np.square(z_mean), 0.0))
    keep = std > max(RELATIVE_TOL * (float(std.max()) if k else 0.0), floor)
    scale = np.where(keep, 1.0 / np.where(keep, std, 1.0), 0.0).astype(np.float32)
    for start in range(0, n, ROW_BLOCK):
        out[start:start + ROW_BLOCK, :k] *= scale
    return out


def _load_cached(file, shape):
    try:
        z = np.load(file, allow_pickle=False)
    except Exception as e:  # a truncated or foreign file: rebuild it
        warnings.warn(f"{file}: unreadable PCA cache ({type(e).__name__}); rebuilding it")
        return None
    if z.shape != shape or z.dtype != np.float32 or not np.isfinite(z).all():
        warnings.warn(f"{file}: PCA cache has the wrong shape or values; rebuilding it")
        return None
    return z


def save_cached(file, array, what):
    """Write a cache file atomically; a folder that cannot be written only costs a warning."""
    folder = os.path.dirname(file)
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write(file, lambda f: np.save(f, array))
    except OSError as e:
        warnings.warn(f"{folder}: cannot write the {what} cache ({e.strerror}); continuing without it")


def item_hard_tokens(modality_feats, dim, cache_dir=None):
    """Mean over modalities of each modality's standardised PCA projection: (n_items, dim)."""
    reduced = []
    for name, x in modality_feats.items():
        z = None
        if cache_dir is not None:
            file = os.path.join(cache_dir, f"pca_{name}_{features_key(x, dim)}.npy")
            if os.path.exists(file):
                z = _load_cached(file, (x.shape[0], dim))
        if z is None:
            z = pca_reduce(x, dim)
            if cache_dir is not None:
                save_cached(file, z, "PCA")
        reduced.append(z)
    return np.mean(reduced, axis=0).astype(np.float32)


def default_cache_dir(dataset_path, fallback):
    """``<dataset>/.cache`` when the dataset folder is writable, else ``fallback``."""
    here = os.path.join(dataset_path, ".cache")
    if os.access(dataset_path, os.W_OK) and (not os.path.exists(here) or os.access(here, os.W_OK)):
        return here
    return fallback
