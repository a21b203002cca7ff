"""Bounded work per DataCompDR sample (issue 25, item 6): a ``pth.gz`` or ``npz`` payload that
would decode to more than ``shards.MAX_PAYLOAD_BYTES`` is refused with ValueError before it is
expanded (a few MB of gzip or deflate can stand for gigabytes), and a sample carrying one, or
a ``param_aug`` entry outside RandAugment's ranges, is a counted skip while training goes on.

The bombs are built in blocks and the cap is lowered, so nothing here holds more than a few MB.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from mobileclip_repro import replay, shards
from mobileclip_repro.reinforce.reinforce import encode_pth
from mobileclip_repro.train.samples import DRSamples, SkipCounter, paired_shards

CAP = 64 * 2 ** 10  # the lowered MAX_PAYLOAD_BYTES; a real test payload is a few hundred bytes
BLOCK = bytes(2 ** 20)


@pytest.fixture
def cap(monkeypatch) -> int:
    monkeypatch.setattr(shards, "MAX_PAYLOAD_BYTES", CAP)
    return CAP


def _gzip_of_zeros(size: int) -> bytes:
    """gzip of ``size`` zero bytes, compressed a block at a time (~1 KB per MB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(BLOCK[:min(len(BLOCK), size - start)]) for start in range(0, size, len(BLOCK))]
    return b"".join(parts) + packer.flush()


def _npz(members: dict[str, int], data: bool = True) -> bytes:
    """A deflated npz whose member ``name`` is a float32 vector of ``n`` zeros, written a block at
    a time; ``data`` False: only the .npy header, claiming the shape without the bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, count in members.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(
                    member, {"descr": "<f4", "fortran_order": False, "shape": (count,)})
                for start in range(0, count * 4 if data else 0, len(BLOCK)):
                    member.write(BLOCK[:min(len(BLOCK), count * 4 - start)])
    return buffer.getvalue()


def _peak_bytes(decode) -> int:
    """Peak bytes Python (and numpy, zlib) allocated while ``decode()`` ran."""
    tracemalloc.start()
    try:
        decode()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# -- pth.gz ---------------------------------------------------------------------------------

def test_a_gzip_bomb_is_refused_without_being_expanded(cap):
    bomb = _gzip_of_zeros(32 * 2 ** 20)  # 32 MiB of zeros, ~32 KB of gzip: 512x the cap

    def decode():
        with pytest.raises(ValueError, match=f"pth.gz decompresses to more than MAX_PAYLOAD_BYTES \\({cap:,} bytes\\)"):
            shards.decode_payload({"pth.gz": bomb})

    assert _peak_bytes(decode) < 4 * cap, "inflated only up to the cap"


def test_a_pth_gz_is_read_as_gzip_reads_it():
    """One member, several members with zero padding between them (as gzip allows): the same
    tensors; cut short: EOFError as from gzip; not gzip: ValueError."""
    image_emb, text_emb = torch.arange(12.0).reshape(3, 4), torch.ones(2, 4)
    raw = encode_pth(image_emb, text_emb)
    cut = len(raw) // 2
    for stored in (gzip.compress(raw), gzip.compress(raw[:cut]) + b"\0" * 8 + gzip.compress(raw[cut:])):
        payload = shards.decode_payload({"pth.gz": stored})
        np.testing.assert_array_equal(payload["image_emb"], image_emb.numpy())
        np.testing.assert_array_equal(payload["text_emb"], text_emb.numpy())
    with pytest.raises(EOFError):
        shards.decode_payload({"pth.gz": gzip.compress(raw)[:-20]})
    with pytest.raises(ValueError, match="not valid gzip"):
        shards.decode_payload({"pth.gz": raw})


def test_a_payload_just_under_the_cap_decodes(monkeypatch):
    raw = encode_pth(torch.zeros(30, 1536), torch.zeros(6, 1536))  # DataCompDR-12M's shapes, in bf16
    monkeypatch.setattr(shards, "MAX_PAYLOAD_BYTES", len(raw))
    assert shards.decode_payload({"pth.gz": gzip.compress(raw)})["image_emb"].shape == (30, 1536)
    monkeypatch.setattr(shards, "MAX_PAYLOAD_BYTES", len(raw) - 1)
    with pytest.raises(ValueError, match="MAX_PAYLOAD_BYTES"):
        shards.decode_payload({"pth.gz": gzip.compress(raw)})


# -- npz ------------------------------------------------------------------------------------

def test_the_npz_builder_writes_what_np_load_reads():
    assert shards.decode_payload({"npz": _npz({"image_emb": 5})})["image_emb"].tolist() == [0.0] * 5


@pytest.mark.parametrize("members", [{"image_emb": 4 * 2 ** 20}, {"image_emb": CAP // 6, "text_emb": CAP // 6}],
                         ids=["one member of 256x the cap", "two members over it together"])
def test_npz_members_declaring_more_than_the_cap_are_refused_unread(cap, members):
    npz = _npz(members)
    assert len(npz) < 32 * 2 ** 10, "a deflated bomb: small on disk"

    def decode():
        with pytest.raises(ValueError, match=f"npz members declare [0-9,]+ bytes uncompressed, over "
                                             f"MAX_PAYLOAD_BYTES \\({cap:,}\\)"):
            shards.decode_payload({"npz": npz})

    assert _peak_bytes(decode) < 4 * cap


def test_an_npy_header_claiming_more_than_its_member_holds_is_refused_unallocated():
    """np.load allocates the header's shape before reading: 4 TiB for this 100-byte member."""
    npz = _npz({"image_emb": 2 ** 40}, data=False)
    with pytest.raises(ValueError, match=r"npz member image_emb.npy declares shape \(1099511627776,\) "
                                         r"\(4,398,046,511,104 bytes\) in \d+ bytes"):
        shards.decode_payload({"npz": npz})


def _savez(compressed: bool, **arrays) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize("compressed", [False, True], ids=["stored (np.savez)", "deflated (np.savez_compressed)"])
def test_an_npz_decodes_to_what_np_load_reads_in_any_layout(compressed):
    rng = np.random.default_rng(0)
    arrays = {"image_emb": rng.standard_normal((5, 6), dtype=np.float32),
              "text_emb": np.asfortranarray(rng.standard_normal((3, 6)).astype(">f4")),
              "syn_text_b_emb": rng.standard_normal((2, 6)).astype(np.float16)}
    npz = _savez(compressed, **arrays)
    with np.load(io.BytesIO(npz)) as reference:
        expected = {name: reference[name].astype(np.float32) for name in reference.files}
    for views in (False, True):
        decoded = shards.decode_payload({"npz": npz}, views=views)
        assert decoded.keys() == expected.keys()
        for name, array in decoded.items():
            assert array.dtype == np.float32 and np.array_equal(array, expected[name]), name
    assert all(array.flags.writeable for array in shards.decode_payload({"npz": npz}).values()), \
        "a caller that does not ask for views may write into what it gets"


def test_a_stored_npz_member_with_a_flipped_byte_fails_its_crc():
    npz = bytearray(_savez(False, image_emb=np.ones((4, 4), np.float32)))
    npz[npz.index(np.ones(4, np.float32).tobytes()) + 5] ^= 0xFF
    with pytest.raises(ValueError, match="npz member image_emb.npy: bad CRC-32"):
        shards.decode_payload({"npz": bytes(npz)})


def test_an_npz_of_python_objects_is_refused():
    npz = _savez(False, image_emb=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        shards.decode_payload({"npz": npz})


def test_a_bare_npy_is_not_an_npz_and_is_not_read():
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (2 ** 40,)})
    with pytest.raises(ValueError, match="npz is not a zip archive"):
        shards.decode_payload({"npz": buffer.getvalue()})
    with pytest.raises(ValueError, match="npz is not a readable zip"):
        shards.decode_payload({"npz": b"PK\x03\x04 but no zip after that"})


# -- end to end: counted skips --------------------------------------------------------------

AUGMENTATIONS, WIDTH = 2, 4
REPLAY = replay.ReplayTransform((32, 32), replay.InterpolationMode.BICUBIC, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _jpg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (shade, 255 - shade, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def _write(path: Path, samples: list[dict]) -> None:
    with shards.atomic_tar_writer(path, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)


def _npz_bomb(dr: dict) -> None:
    dr["npz"] = _npz({"image_emb": 2 ** 20})


def _pth_gz_bomb(dr: dict) -> None:
    del dr["npz"]
    dr["pth.gz"] = BLOCK  # the tar writer gzips it: ~1 KB in the tar, 1 MiB once read


def _ops(ops: list) -> Callable[[dict], None]:
    def mutate(dr: dict) -> None:
        dr["paug.json"] = json.dumps({"param_aug": [[[0, 0, 40, 48], ops]] * AUGMENTATIONS})
    return mutate


BAD = {
    "npz bomb": (_npz_bomb, "bad_reinforcement", "npz members declare 4,194,432 bytes uncompressed, over "
                                                 f"MAX_PAYLOAD_BYTES ({CAP:,})"),
    "pth.gz bomb": (_pth_gz_bomb, "bad_reinforcement",
                    f"pth.gz decompresses to more than MAX_PAYLOAD_BYTES ({CAP:,} bytes)"),
    "Rotate 45": (_ops([[5, 45.0]]), "bad_param_aug", "Rotate magnitude 45.0 outside [-30, 30]"),
    "Posterize 2 bits": (_ops([[0, 0.0], [10, 2.0]]), "bad_param_aug", "Posterize magnitude 2.0 outside [4, 8]"),
    "17 ops": (_ops([[0, 0.0]] * 17), "bad_param_aug", "param_aug has 17 ops, more than MAX_OPS=16"),
    "a 150 px shift": (_ops([[4, 150.0]]), "bad_param_aug", "TranslateY magnitude 150.0 outside [-101.511, 101.511]"),
}


def test_bombs_and_out_of_range_entries_are_counted_skips(cap, tmp_path, caplog):
    datacomp, dr = [], []
    for index, mutate in enumerate([None, *(m for m, _, _ in BAD.values())]):
        key = f"{index:09d}"
        record = shards.datacomp_record(key, _jpg(40 * index), f"caption {index}", f"uid{index}", "http://x")
        meta = json.loads(record["json"])
        reinforced = shards.dr_record(key, meta["uid"], meta["sha256"], "http://x", ["syn"],
                                      [[[0, 0, 40, 48], [[6, 0.27]]]] * AUGMENTATIONS,
                                      np.ones((AUGMENTATIONS, WIDTH), np.float32), np.ones((2, WIDTH), np.float32))
        if mutate is not None:
            mutate(reinforced)
        datacomp.append(record)
        dr.append(reinforced)
    name = shards.shard_name(0)
    _write(tmp_path / "datacomp" / name, datacomp)
    _write(tmp_path / "dr" / name, dr)
    pairs = paired_shards(shards.list_shards(tmp_path / "datacomp"), tmp_path / "datacomp", tmp_path / "dr")
    counter = SkipCounter()
    dataset = DRSamples(pairs, REPLAY, tokenizer=None, seed=0, resampled=False, counter=counter,
                        shuffle_buffer=1, passes=1, embedding_dim=WIDTH)
    with caplog.at_level(logging.WARNING):
        examples = list(dataset.examples())

    assert [e.caption for e in examples] == ["caption 0"], "the good sample comes through"
    assert counter.totals() == {"bad_reinforcement": 2, "bad_param_aug": 4}
    for name, (_, reason, detail) in BAD.items():
        assert any(f"[{reason}]" in message and detail in message for message in caplog.messages), name
