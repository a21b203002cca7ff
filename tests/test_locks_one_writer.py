"""One writer per output (issue 25, item 4): a second reinforce job on the shards another is
writing stops at once, before it looks at any; the hub DAG's jobs of disjoint shard groups
share one folder; and every writer of a file has a temporary file of its own, removed when
its block fails or when its process is gone."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mobileclip_repro import cli, locks, shards, toyworld
from mobileclip_repro.reinforce.reinforce import _lock_slots

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys; from pathlib import Path; from mobileclip_repro import locks\n"
        "slots = [int(s) for s in sys.argv[2].split(',')] if sys.argv[2] else None\n"
        "with locks.folder_lock(Path(sys.argv[1]), 'reinforce job', slots):\n"
        "    print('held', flush=True); sys.stdin.read()\n")


class Holder:
    """Another process holding ``folder``'s lock (or some shards of it) until closed."""

    def __init__(self, folder: Path, slots: list[int] | None = None):
        self.process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), ",".join(map(str, slots or []))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def test_a_second_reinforce_job_on_a_folder_being_written_refuses_before_touching_it(tmp_path, write_toy_teachers):
    toyworld.generate(tmp_path / "toy", train_samples=4, teacher_samples=1, benchmark_samples=1, samples_per_shard=4)
    teachers = write_toy_teachers(tmp_path / "teachers")
    out_dir = tmp_path / "dr"
    command = ["reinforce", "--datacomp-dir", str(tmp_path / "toy" / "datacomp"), "--out-dir", str(out_dir),
               "--reinforce-config", str(REPO / "configs" / "reinforce" / "toy.json"),
               "--pretrained-root", str(teachers), "--captioner", "world", "--num-syn-captions", "2",
               "--seed", "1", "--device", "cpu"]
    with Holder(out_dir):
        assert cli.main(command) == 3
        assert sorted(p.name for p in out_dir.iterdir()) == [locks.LOCK_FILE], "nothing written"
    assert cli.main(command) == 0  # once the first is gone
    assert shards.list_shards(out_dir)


def test_hub_groups_lock_their_own_shards_and_a_whole_folder_run_waits_for_all(tmp_path):
    with Holder(tmp_path, slots=[0, 1]):
        with locks.folder_lock(tmp_path, "reinforce job", [2, 3]):
            pass  # another group's shards: side by side
        with pytest.raises(locks.FolderBusy, match=r"shard 1 of .* is being written by another reinforce job"):
            with locks.folder_lock(tmp_path, "reinforce job", [1, 2]):
                pass
        with pytest.raises(locks.FolderBusy, match="is being written by another reinforce job"):
            with locks.folder_lock(tmp_path, "reinforce job"):
                pass


def test_a_hub_group_locks_one_slot_per_shard_number_and_other_selections_the_folder():
    assert _lock_slots(["00000042", "00000043"], group_index=4) == [42, 43]
    assert _lock_slots(["17/00000042"], group_index=0) == [1700000042]
    assert _lock_slots(["00000042"], group_index=None) is None  # every shard of a folder
    assert _lock_slots(["part-a"], group_index=0) is None


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "manifest.json"
    with shards.atomic_output(target) as first, shards.atomic_output(target) as second:
        assert first != second and first.name.endswith(".partial") and second.name.endswith(".partial")
        first.write_text("one")
        second.write_text("two")
    assert target.read_text() == "one" and not list(tmp_path.glob("*.partial"))


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_as_it_was(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with shards.atomic_output(target) as partial:
            partial.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and not list(tmp_path.glob("*.partial"))


def test_a_gone_writers_leftover_is_removed_and_a_live_ones_kept(tmp_path):
    target = tmp_path / "00000000.tar"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    leftovers = {"legacy": tmp_path / "00000000.tar.partial",
                 "gone": tmp_path / f"00000000.tar.{host}.{int(gone.stdout)}.0a1b2c3d.partial",
                 "alive": tmp_path / f"00000000.tar.{host}.{os.getppid()}.0a1b2c3d.partial",
                 "other node": tmp_path / f"00000000.tar.elsewhere.1.0a1b2c3d.partial"}
    for path in leftovers.values():
        path.write_bytes(b"leftover")
    shards.write_json_atomic(target, {"done": True})

    assert json.loads(target.read_text()) == {"done": True}
    assert {name for name, path in leftovers.items() if path.exists()} == {"alive", "other node"}
