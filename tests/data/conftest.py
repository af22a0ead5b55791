"""Every data test runs offline with its own empty cache: named sets never reach the real Hub or ~/.cache."""

from __future__ import annotations

import pytest

from deepscaler.data import sources


@pytest.fixture(autouse=True)
def offline_empty_cache(tmp_path, monkeypatch):
    """``DEEPSCALER_CACHE_DIR`` is a fresh folder; fetching from the Hub fails as it does without network (tests
    of the Hub path put ``sources.REAL_FETCH`` back and give ``datasets.load_dataset`` a fixture instead)."""
    monkeypatch.setenv(sources.CACHE_DIR_ENV, str(tmp_path / "deepscaler-cache"))

    def offline(source):
        raise ConnectionError(f"no network in tests ({source.repo})")

    monkeypatch.setattr(sources, "fetch_hub_rows", offline)
    return tmp_path / "deepscaler-cache"
