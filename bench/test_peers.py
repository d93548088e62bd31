"""Smoke test of bench/peers.py: one model, one round, a small input (about 20 s on 2 cores)."""
import re

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("torch_pruning")
pytest.importorskip("scipy")

from bench import peers  # noqa: E402


def test_quick_resnet18(capsys):
    assert peers.main(["--quick", "--models", "resnet18", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    for heading in ("### Time to prune", "### Agreement", "### After pruning"):
        assert heading in out
    # fpgm_ext.prune and fpgm_ext's importance in Torch-Pruning pick the official filters
    row = next(line for line in out.splitlines() if line.startswith("| resnet18 | 8 |"))
    assert re.findall(r"(\d+)/(\d+) exact", row)[0] == ("8", "8")
    assert re.findall(r"(\d+)/(\d+) exact", row)[2] == ("8", "8")
    threads = len({1, torch.get_num_threads()})
    assert out.count("| resnet18 | ") == threads + 1 + 4   # times, agreement, 4 models after
