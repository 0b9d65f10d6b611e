"""PCA hard tokens: standardisation, sign, padding, rank-deficient modalities, the modality mean
and the cache."""
import os

import numpy as np
import pytest

import utility.features as features
from utility.features import item_hard_tokens, pca_reduce


def axis_data(n=400, stds=(10.0, 5.0, 1.0, 0.1), seed=0, offset=3.0):
    """Independent columns with very different variances: the principal axes are close to the
    coordinate axes, in the order of the given stds."""
    rng = np.random.default_rng(seed)
    return (offset + rng.normal(size=(n, len(stds))) * np.asarray(stds)).astype(np.float32)


def corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_tokens_are_standardised_per_column():
    x = axis_data()
    z = pca_reduce(x, 3)
    assert z.shape == (400, 3) and z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-5)


def test_tokens_are_the_top_components_in_order_with_positive_largest_loading():
    x = axis_data()
    z = pca_reduce(x, 2)
    # column j follows feature j (largest variances first); the largest loading of each component
    # is on that feature and is made positive, so the correlation is positive, not just large
    assert corr(z[:, 0], x[:, 0]) > 0.99
    assert corr(z[:, 1], x[:, 1]) > 0.99
    # negating the data negates the projections (the loadings' signs do not follow the data)
    np.testing.assert_allclose(pca_reduce(-x, 2), -z, atol=1e-5)


def test_sign_does_not_depend_on_the_eigen_solver(monkeypatch):
    """eigh may return any sign for each eigenvector; the tokens must not change with it."""
    x = axis_data(stds=(3.0, 2.0, 1.5, 1.0, 0.5), seed=1)
    expected = pca_reduce(x, 4)
    eigh = np.linalg.eigh

    def flipped_eigh(a):
        w, v = eigh(a)
        return w, v * np.where(np.arange(v.shape[1]) % 2 == 0, -1.0, 1.0)

    monkeypatch.setattr(np.linalg, "eigh", flipped_eigh)
    np.testing.assert_array_equal(pca_reduce(x, 4), expected)


def test_narrow_modality_is_zero_padded():
    x = axis_data(stds=(4.0, 2.0, 1.0))
    z = pca_reduce(x, 5)
    assert z.shape == (400, 5)
    assert (z[:, 3:] == 0).all()
    np.testing.assert_allclose(z[:, :3].std(axis=0), 1.0, rtol=1e-5)


def rank2(seed, scale, dtype):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(50, 2)) @ rng.normal(size=(2, 8)) * scale).astype(dtype)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("scale,dtype", [(1e3, np.float32), (1e6, np.float64), (1e3, np.float64)])
def test_rank_deficient_modality_has_zero_tokens_beyond_its_rank(seed, scale, dtype):
    """Rounding noise of a rank-2 matrix (std far above 1e-12 once the data are large or float32)
    must not become unit-variance tokens."""
    z = pca_reduce(rank2(seed, scale, dtype), 8)
    assert (z[:, 2:] == 0).all()
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1.0, rtol=1e-5)


def test_rank_deficient_modality_with_a_large_offset():
    """float32 rounding of a large common offset is noise of std ~1e-5 times the offset: more
    than 1e-6 of the signal's std here, but still not a direction of the data."""
    rng = np.random.default_rng(0)
    x = (1e3 + rng.normal(size=(50, 2)) @ rng.normal(size=(2, 8))).astype(np.float32)
    z = pca_reduce(x, 8)
    assert (z[:, 2:] == 0).all()
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1.0, rtol=1e-5)


def test_small_but_real_components_are_kept():
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        x = (rng.normal(size=(200, 3)) * np.array([1.0, 1e-4, 1e-5])).astype(dtype)
        np.testing.assert_allclose(pca_reduce(x, 3).std(axis=0), 1.0, rtol=1e-4)


def test_constant_modality_gives_zero_tokens():
    z = pca_reduce(np.full((10, 4), 7.0, dtype=np.float32), 3)
    assert z.shape == (10, 3) and (z == 0).all()


def modalities():
    return {"image": axis_data(n=60, stds=(5.0, 3.0, 2.0, 1.0), seed=1),
            "text": axis_data(n=60, stds=(1.0, 2.0, 4.0, 8.0, 0.5, 0.2), seed=2)}


def test_item_tokens_are_the_mean_over_modalities():
    feats = modalities()
    tokens = item_hard_tokens(feats, 4)
    expected = (pca_reduce(feats["image"], 4) + pca_reduce(feats["text"], 4)) / 2
    assert tokens.shape == (60, 4) and tokens.dtype == np.float32
    np.testing.assert_allclose(tokens, expected, atol=1e-6)
    assert np.abs(tokens - pca_reduce(feats["image"], 4)).max() > 0.1   # both modalities count


def cache_files(folder):
    return sorted(os.listdir(folder))


def test_cache_hit_returns_the_same_tokens_without_recomputing(tmp_path, monkeypatch):
    feats = modalities()
    first = item_hard_tokens(feats, 4, cache_dir=str(tmp_path))
    files = cache_files(tmp_path)
    assert len(files) == 2 and all(f.startswith("pca_") and f.endswith(".npy") for f in files)  # no temp left

    def no_pca(x, dim):
        raise AssertionError("recomputed despite a valid cache")

    monkeypatch.setattr(features, "pca_reduce", no_pca)
    again = item_hard_tokens(feats, 4, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again, first)


def test_cache_key_changes_with_dim_and_features(tmp_path):
    feats = modalities()
    item_hard_tokens(feats, 4, cache_dir=str(tmp_path))
    item_hard_tokens(feats, 3, cache_dir=str(tmp_path))
    changed = dict(feats, text=feats["text"] + 1.0)
    changed["text"][0, 0] += 1.0
    item_hard_tokens(changed, 4, cache_dir=str(tmp_path))
    assert len(cache_files(tmp_path)) == 5   # image x {4, 3}, text x {4, 3}, changed text x 4


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "nan"])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    feats = modalities()
    expected = item_hard_tokens(feats, 4, cache_dir=str(tmp_path))
    image_file = next(f for f in cache_files(tmp_path) if f.startswith("pca_image_"))
    path = tmp_path / image_file
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "wrong_shape":
        np.save(path, np.zeros((60, 3), np.float32))
    else:
        bad = np.load(path)
        bad[0, 0] = np.nan
        np.save(path, bad)
    with pytest.warns(UserWarning, match="rebuilding"):
        got = item_hard_tokens(feats, 4, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.load(path), pca_reduce(feats["image"], 4))   # rewritten


def test_unwritable_cache_dir_warns_and_continues(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    feats = modalities()
    with pytest.warns(UserWarning, match="cannot write the PCA cache"):
        got = item_hard_tokens(feats, 4, cache_dir=str(blocker / "cache"))
    np.testing.assert_array_equal(got, item_hard_tokens(feats, 4))


def test_noise_floor_uses_the_largest_column_rms_and_the_inputs_eps():
    x = np.array([[3.0, 0.0], [4.0, 0.0]])
    # column rms: sqrt((9 + 16) / 2) and 0 (not the rms of all entries, nor of a row)
    expected = features.NOISE_EPS_FACTOR * np.finfo(np.float64).eps * np.sqrt(12.5)
    assert features._noise_floor(x) == pytest.approx(expected, rel=1e-12)
    expected32 = features.NOISE_EPS_FACTOR * np.finfo(np.float32).eps * np.sqrt(12.5)
    assert features._noise_floor(x.astype(np.float32)) == pytest.approx(expected32, rel=1e-6)
    assert features._noise_floor(x.astype(np.int64)) == pytest.approx(expected, rel=1e-12)


def test_components_below_the_relative_tolerance_are_zeroed():
    """A direction 1e-8 as wide as the main one, far above the rounding noise: still zeroed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2)) * np.array([1.0, 1e-8])
    assert features._noise_floor(x) < 1e-13
    z = pca_reduce(x, 2)
    assert z[:, 0].std() == pytest.approx(1.0, rel=1e-5)
    assert (z[:, 1] == 0).all()


def test_default_cache_dir(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    assert features.default_cache_dir(str(data), "fallback") == os.path.join(str(data), ".cache")
    (data / ".cache").mkdir()
    assert features.default_cache_dir(str(data), "fallback") == os.path.join(str(data), ".cache")
    real = os.access
    # the tests may run as root, for whom every folder is writable: fake the permission bits
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(data / ".cache") else real(p, mode))
    assert features.default_cache_dir(str(data), "fallback") == "fallback"
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(data) else real(p, mode))
    assert features.default_cache_dir(str(data), "fallback") == "fallback"
    (data / ".cache").rmdir()
    assert features.default_cache_dir(str(data), "fallback") == "fallback"


def test_pca_in_row_blocks_equals_pca_of_the_whole_matrix(monkeypatch):
    x = (np.random.default_rng(3).normal(size=(101, 12)) * np.arange(1, 13) + 5.0).astype(np.float32)
    before = x.copy()
    whole = features.pca_reduce(x, 6)
    monkeypatch.setattr(features, "ROW_BLOCK", 7)   # 15 blocks, the last one short
    blocks = features.pca_reduce(x, 6)
    np.testing.assert_allclose(blocks, whole, atol=1e-5)
    np.testing.assert_array_equal(x, before)   # the input is not centred in place
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(features.pca_reduce(x64, 6), whole, atol=1e-5)
    np.testing.assert_array_equal(x64, before.astype(np.float64))   # a float64 input is not centred either
    # and both are the standardised projections on the top principal components
    centred = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    z = centred @ vt[:6].T
    z /= z.std(axis=0)
    np.testing.assert_allclose(np.abs(blocks), np.abs(z), atol=1e-4)
