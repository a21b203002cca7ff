import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def snakemake_cmd() -> list[str]:
    """Snakemake from the same environment as the tests (the project's venv)."""
    return [sys.executable, "-m", "snakemake"]


def pytest_configure(config):
    # Tests run on CPU with few cores: keep torch from oversubscribing them.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
