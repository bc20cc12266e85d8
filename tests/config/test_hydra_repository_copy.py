"""docclassify.config gives Hydra 1.3's config-repository copies the live ConfigStore (as Hydra 1.4
does, facebookresearch/hydra#2928) instead of a deep copy of every typed schema per compose."""

from __future__ import annotations

import copy

import hydra
import pytest
from hydra._internal.config_repository import ConfigRepository
from hydra._internal.utils import create_config_search_path
from hydra.core.config_store import ConfigStore

from docclassify.config import CONF_DIR


@pytest.fixture
def repo() -> ConfigRepository:
    return ConfigRepository(config_search_path=create_config_search_path(str(CONF_DIR)))


def _structured(repository: ConfigRepository):
    return next(s for s in repository.sources if s.scheme() == "structured")


def test_a_copy_reads_the_live_store_and_a_later_registration(repo):
    clone = copy.deepcopy(repo)
    if hydra.__version__.startswith("1.3"):
        assert _structured(clone).store is ConfigStore.instance()
    ConfigStore.instance().store(group="test_repo_copy", name="late", node={"x": 1})
    try:
        loaded = clone.load_config("test_repo_copy/late")  # registered after the copy was made
        assert loaded is not None and loaded.config.x == 1
        loaded.config.x = 2  # the node a load returns is its own: the store keeps its value
        assert clone.load_config("test_repo_copy/late").config.x == 1
    finally:
        ConfigStore.instance().repo.pop("test_repo_copy", None)


def test_the_other_sources_are_still_copied(repo):
    clone = copy.deepcopy(repo)
    assert clone.sources is not repo.sources
    assert all(a is not b for a, b in zip(clone.sources, repo.sources))
    assert [s.path for s in clone.sources] == [s.path for s in repo.sources]
