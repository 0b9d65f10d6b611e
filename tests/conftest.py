"""Shared fixtures."""
import pytest

from tinydata import tiny_splits, write_json_dataset, write_pickle_dataset


@pytest.fixture
def tiny_json(tmp_path):
    train, val, test, feats = tiny_splits()
    return write_json_dataset(str(tmp_path / "tiny"), train, val, test, feats)


@pytest.fixture
def tiny_pickle(tmp_path):
    train, val, test, feats = tiny_splits()
    return write_pickle_dataset(str(tmp_path / "tinypkl"), train, val, test, feats, 30, 40)
