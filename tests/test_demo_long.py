"""`make demo-long` shortened (--quick) over a shortened demo: it runs every command it prints, and every
figure it prints is in the tools' JSON and TensorBoard files it names. Whether the extension works is
measured by the full run (docs/benchmarks.md), not here: three steps teach nothing."""

import json
import os
import sys
import time

import pytest

from megasci import demo, demo_long
from test_demo_and_tools import SHORT_TRAINING, _recording, assert_ran_as_printed


@pytest.fixture(scope="module")
def base_demo(tmp_path_factory):
    """A shortened demo's output: its run/ is the model demo-long extends (trained at 128, window 256)."""
    out = tmp_path_factory.mktemp("demo")
    demo.run(str(out), papers=80, vocab_size=1500, workers=2, seed=3, train_overrides=SHORT_TRAINING)
    return out


def test_demo_long_quick_runs_what_it_prints_and_writes_its_figures(base_demo):
    started = time.perf_counter()
    with _recording() as (printed, calls):
        assert demo_long.main(["--output", str(base_demo), "--quick"]) == 0
    seconds = time.perf_counter() - started
    sys.stdout.write(printed.getvalue())
    shown = assert_ran_as_printed(printed.getvalue(), calls)
    assert [s.split()[1] if s.startswith("python tools/") else s.split()[5] for s in shown] == [
        "tools/make_passkey_data.py",
        "tools/make_passkey_data.py",
        "tools/pretrain.py",
        "tools/pretrain.py",
        "tools/pretrain.py",
        "tools/pretrain.py",
        *["tools/eval_ppl.py", "tools/eval_passkey.py"] * 3,
    ]
    assert seconds < 90, f"demo-long --quick took {seconds:.0f} s"

    long_dir = base_demo / "long"
    summary = json.loads((long_dir / "summary.json").read_text())
    assert summary["trained_length"] == 128 and summary["length"] == 512 and summary["steps"] == 3
    assert "weights identical to the retrieval stage's: True" in printed.getvalue()
    for name in ("before", "raised_base", "control"):
        evaluation = long_dir / "eval" / name
        positions = json.loads((evaluation / "by_position" / "by_position.json").read_text())["by_position"]
        passkey = json.loads((evaluation / "passkey" / "passkey.json").read_text())["summary"]["by_length"]
        for directory in ("by_position", "passkey"):
            assert any(f.startswith("events.out.tfevents") for f in os.listdir(evaluation / directory / "tensorboard"))
        assert os.path.isfile(evaluation / "passkey" / "passkey.png")
        result = next(
            r
            for key, r in summary["results"].items()
            if key.startswith(name[:5]) or (name == "raised_base" and key.startswith("rope_theta"))
        )
        # The printed figures: TensorBoard's float32 values of the JSON's numbers, with the JSON's n and stderr.
        assert [(r["start"], r["end"]) for r in result["by_position"]] == [(0, 128), (128, 256), (256, 384), (384, 512)]
        for row, bucket in zip(result["by_position"], positions):
            assert row["loss"] == pytest.approx(bucket["loss"], rel=1e-6)
            assert f"{row['loss']:.3f} ± {row['stderr']:.3f}" in printed.getvalue()
        for length in ("128", "512"):  # the training length and 4x
            figures, cell = result["passkey"][length], passkey[length]
            assert figures["n"] == cell["n"] == 10
            for metric in ("ll", "greedy"):
                assert figures[f"{metric}_acc"] == pytest.approx(cell[f"{metric}_acc"], abs=1e-6)
                assert figures[f"{metric}_stderr"] == cell[f"{metric}_stderr"]
            shown = (
                f"at {int(length):>5} ({int(length) // 128}x): greedy {100 * figures['greedy_acc']:5.1f}% ± "
                f"{100 * cell['greedy_stderr']:.1f};  key chosen {100 * figures['ll_acc']:5.1f}% ± "
                f"{100 * cell['ll_stderr']:.1f}  (n=10;"
            )
            assert shown in printed.getvalue()
    for length in (128, 512):
        assert (long_dir / "data" / f"retrieval_{length}_text_document.bin").is_file()
        assert (long_dir / "data" / f"retrieval_{length}_loss_mask_document.bin").is_file()
