"""Two torchrun agents (--nnodes=2, c10d rendezvous on 127.0.0.1) train exactly as one node with the same world size.

This is how a 2-node run starts (examples/pretrain_1p36b.sh): one agent per node meets the other at the
rendezvous endpoint, and the training processes form one group across them. Here both "nodes" are
processes on this machine (gloo), so the test checks the launch path and the rank layout, not the network.
"""

import os
import socket
import subprocess
import sys

from megasci.training.metrics import read_metrics
from training_fixtures import REPO, make_training_data, run_pretrain, training_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(save_dir) -> dict[int, float]:
    return {
        step: values["train/loss"]
        for step, values in read_metrics(os.path.join(save_dir, "tensorboard")).items()
        if "train/loss" in values
    }


def test_two_nodes_give_the_losses_of_one_node_with_the_same_world_size(tmp_path):
    data = make_training_data(tmp_path / "data", papers=40)
    single = tmp_path / "single"
    run_pretrain(
        2,
        training_overrides(
            data, str(single), **{"train.train_steps": 6, "train.save_interval": 0, "train.eval_interval": 0}
        ),
    )
    multi = tmp_path / "multi"
    overrides = training_overrides(
        data, str(multi), **{"train.train_steps": 6, "train.save_interval": 0, "train.eval_interval": 0}
    )
    endpoint = f"127.0.0.1:{_free_port()}"
    agents = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node_rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            "--rdzv_id=megasci-two-nodes",
            f"--rdzv_conf=is_host={1 if node_rank == 0 else 0}",
            "--local_addr=127.0.0.1",
            os.path.join(REPO, "tools", "pretrain.py"),
            *overrides,
        ]
        agents.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
            )
        )
    outputs = []
    for agent in agents:
        try:
            outputs.append(agent.communicate(timeout=300)[0])
        finally:
            agent.kill()
    for agent, output in zip(agents, outputs):
        assert agent.returncode == 0, output[-6000:]
    assert "2 data-parallel rank(s)" in outputs[0]  # one group across both agents, not two runs of one rank
    single_losses, multi_losses = _losses(single), _losses(multi)
    assert sorted(single_losses) == sorted(multi_losses) == [1, 2, 3, 4, 5, 6]
    assert multi_losses == single_losses  # same ranks, same data slices, same reductions: bit-equal
