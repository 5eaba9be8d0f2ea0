"""The canary's default sample page ships with the package: an installed worker (no checkout,
another working directory) judges a canary with the default policy."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

import shipyard.blocks.release_target
from shipyard.blocks.canary_policy import LEGACY_SAMPLE_IMAGE, CanaryPolicy
from shipyard.tasks.canary_probe import load_sample

PACKAGE_DIR = Path(shipyard.blocks.release_target.__file__).resolve().parent
# The scikit-image page (samples/PROVENANCE.md records where it comes from).
PAGE_SHA256 = "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3"


def test_default_sample_is_package_data_not_a_checkout_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a worker runs anywhere

    path = CanaryPolicy().sample_path()

    assert PACKAGE_DIR in path.parents  # inside the installed `blocks` package
    sample = load_sample(path)
    assert hashlib.sha256(sample.data).hexdigest() == PAGE_SHA256
    assert sample.size == (384, 191) and sample.content_type == "image/png"


def test_a_saved_policy_with_the_old_default_gets_the_packaged_page():
    name = f"canary-{uuid.uuid4().hex[:8]}"
    CanaryPolicy(sample_image=LEGACY_SAMPLE_IMAGE).save(name)

    assert CanaryPolicy.load(name).sample_path().parent.parent == PACKAGE_DIR


def test_a_relative_sample_path_is_the_workers_not_the_checkouts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = CanaryPolicy(sample_image="pages/mine.png")

    assert policy.sample_path() == tmp_path / "pages" / "mine.png"
    with pytest.raises(FileNotFoundError, match="leave it empty for the page Shipyard ships"):
        load_sample(policy.sample_path())
