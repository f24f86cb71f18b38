"""Fixtures of the commands' tests: tiny-chat-judge's build, and a chain or sweep rendered
without the assets this offline cache lacks."""

import pytest


@pytest.fixture(scope="session")
def tiny_chat_judge(tiny_dir):
    """tiny-chat-judge's folder, built on first use (a few minutes: the tests and commands that
    grade MT-Bench or Arena-Hard with it are the only ones that wait for it)."""
    from src.tiny import models as tiny

    return tiny.ensure("tiny-chat-judge", tiny.DEFAULT_CACHE_DIR)


@pytest.fixture
def without_assets(runs_in_tmp, monkeypatch):
    """The runs root under this test's tmp_path and no assets check, for every test of
    test_slurm_render.py and test_sweep.py (their `pytestmark`)."""
    # the real recipes are rendered here without their weights and prompt splits in this offline
    # cache: the check that refuses such a chain is tests/tools/test_assets.py's
    monkeypatch.setattr("src.slurm.require_chain_assets", lambda *args: None)
    monkeypatch.setattr("src.sweep.require_sweep_assets", lambda *args: None)
