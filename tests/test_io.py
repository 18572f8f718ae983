"""utils.io's zstd pieces: frames that workers compress on their own concatenate into a file every
reader of ours reads whole, whatever the frame sizes (zstandard can stop at a frame's end)."""

import json
import multiprocessing as mp

import zstandard

from megasci.utils.io import atomic_output, iter_json_records, open_binary, zstd_frame


def _frame_in_child(line: bytes) -> bytes:
    return zstd_frame(line)


def test_frames_from_several_processes_read_back_as_one_file(tmp_path):
    lines = [(json.dumps({"i": i, "text": "word " * (i * 997 % 30_000)}) + "\n").encode() for i in range(40)]
    zstd_frame(b"warm the parent's compressor before the fork\n")
    with mp.get_context("fork").Pool(2) as pool:
        frames = pool.map(_frame_in_child, lines)
    path = str(tmp_path / "records.jsonl.zst")
    with atomic_output(path, "wb") as out:
        for frame in frames:
            out.write(frame)
    assert b"".join(zstandard.ZstdDecompressor().decompress(frame) for frame in frames) == b"".join(lines)
    with open_binary(path) as f:
        assert list(f) == lines
    assert [record["i"] for record in iter_json_records(path)] == list(range(40))
