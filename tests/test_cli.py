"""The command line: every job's command answers ``--help`` without loading torch, and
``--version`` names the package's version."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mobileclip_repro import __version__
from mobileclip_repro.cli import COMMANDS, main

HEAVY = ("torch", "open_clip", "clip_benchmark")


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mobileclip-repro {__version__}"


@pytest.mark.parametrize("command", ["train", "validate-config", "cost", "plan", "export-open-clip"])
def test_help_loads_no_deep_learning_library(command):
    """`<command> --help` in a fresh interpreter prints its options and imports none of torch,
    open_clip or clip_benchmark (`train --help` took 11 s when it did). The data, reinforce, evaluate
    and report commands read shards, and webdataset imports torch."""
    probe = (f"import sys\nfrom mobileclip_repro.cli import main\n"
             f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: mobileclip-repro" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_has_its_pair():
    import importlib

    for name, (module, prefix, _) in COMMANDS.items():
        loaded = importlib.import_module(module)
        assert callable(getattr(loaded, f"{prefix}_arguments")) and callable(getattr(loaded, f"{prefix}_command")), name
