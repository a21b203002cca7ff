import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY_TEACHERS = ("teacher_a.pt", "teacher_b.pt")  # the `pretrained` entries of configs/reinforce/toy.json


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def snakemake_cmd() -> list[str]:
    """Snakemake from the same environment as the tests (the project's venv)."""
    return [sys.executable, "-m", "snakemake"]


@pytest.fixture(scope="session")
def write_toy_teachers():
    """``write(directory)``: untrained ``toy-teacher`` checkpoints named as configs/reinforce/toy.json
    expects them (teacher i from torch seed i), stand-ins for the DAG's trained teachers."""
    def write(directory: Path, names: tuple[str, ...] = TOY_TEACHERS) -> Path:
        import torch

        from mobileclip_repro.models import create_model_and_transforms

        directory.mkdir(parents=True, exist_ok=True)
        for seed, name in enumerate(names):
            torch.manual_seed(seed)
            model, _, _ = create_model_and_transforms("toy-teacher")
            torch.save({"state_dict": model.state_dict()}, directory / name)
        return directory

    return write


@pytest.fixture(scope="session")
def write_reinforced_toy(write_toy_teachers):
    """``write(results, train_samples, samples_per_shard)``: a tiny toy world under ``results/data``
    and its DataCompDR shards from untrained teachers, reinforced with the schema's defaults (so
    a config's preflight accepts them)."""
    def write(results: Path, train_samples: int, samples_per_shard: int) -> Path:
        from mobileclip_repro import cli, toyworld

        toyworld.generate(results / "data", train_samples=train_samples, teacher_samples=1, benchmark_samples=1,
                          samples_per_shard=samples_per_shard)
        teachers = write_toy_teachers(results / "teachers")
        assert cli.main(["reinforce", "--datacomp-dir", str(results / "data" / "datacomp"),
                         "--out-dir", str(results / "data" / "datacompdr"),
                         "--reinforce-config", str(REPO_ROOT / "configs" / "reinforce" / "toy.json"),
                         "--pretrained-root", str(teachers), "--captioner", "world", "--num-syn-captions", "5",
                         "--seed", "0", "--device", "cpu"]) == 0
        return results

    return write


def pytest_configure(config):
    # Tests run on CPU with few cores: keep torch from oversubscribing them.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
