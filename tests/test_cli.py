"""The fpgm-ext command line: `demo --quick` end to end (in a fresh process, as
`python -m fpgm_ext`), `prune`, `bench` and `info`, and the error paths: one line on
stderr, a non-zero exit, no traceback."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fpgm_ext
from fpgm_ext import cli

ROOT = Path(__file__).resolve().parent.parent


def run_module(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fpgm_ext", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo.json"
    p = run_module("demo", "--quick", "--no-progress", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert "| test accuracy |" in p.stdout and "| FLOPs per image (measured) |" in p.stdout
    assert "| CPU latency, batch 1 |" in p.stdout
    r = json.loads(out.read_text())
    before, after = r["before"], r["after"]
    assert after["accuracy"] > 10.0 + 30.0          # 10 classes: chance is 10 %
    assert after["params"] < 0.5 * before["params"]  # 40 % of the channels of every layer
    assert after["flops"] < 0.5 * before["flops"]
    assert r["max_abs_diff"] < 1e-4 and r["pruned_accuracy"] == r["masked_accuracy"]


def call(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, match):
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]


@pytest.mark.parametrize("argv, match", [
    (["prune", "no_such_net"], "unknown model 'no_such_net'"),
    pytest.param(["prune", "resnet5O"], "did you mean resnet50", marks=pytest.mark.skipif(
        importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")),
    (["prune", "resnet2O"], "did you mean"),
    (["prune", "missing.pt"], "cannot read 'missing.pt': no such file"),
    (["prune", "cifar_resnet21"], "depth must be 6n + 2"),
    (["prune", "cifar_resnet20", "--rate-dist", "1.5"], "--rate-dist: must be in [0, 1), got 1.5"),
    (["prune", "cifar_resnet20", "--rate-dist", "lots"], "must be a number, got 'lots'"),
    (["prune", "cifar_resnet20", "--rate-norm", "0"], "--rate-norm: must be in (0, 1], got 0"),
    (["prune", "cifar_resnet20", "--metric", "l3"], "invalid choice: 'l3'"),
    (["prune", "cifar_resnet20", "--ignore", "layer9"], "not a submodule of CifarResNet"),
    (["prune", "cifar_resnet20", "--input-shape", "1,3,x"], "--input-shape"),
    (["demo", "--epochs", "0"], "--epochs: must be >= 1"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_errors_are_one_line(capsys, argv, match):
    try:
        rc = cli.main(argv)
    except SystemExit as exc:    # argparse's own errors
        rc = exc.code
    _, err = capsys.readouterr()
    assert_one_line_error(rc, err, match)


def test_unreadable_files(capsys, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle at all")
    assert_one_line_error(*call(capsys, "prune", str(junk))[::2], "cannot read")
    weights = tmp_path / "weights.pt"
    torch.save(fpgm_ext.models.cifar_resnet(20).state_dict(), weights)
    assert_one_line_error(*call(capsys, "prune", str(weights))[::2], "holds a dict (a state_dict?), not a model")


def test_errors_in_a_fresh_process():
    p = run_module("prune", "no_such_net", timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().startswith("fpgm-ext prune: error: unknown model") and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_prune_saves_model_and_plan(capsys, tmp_path):
    out, plan = tmp_path / "pruned.pt", tmp_path / "plan.json"
    rc, stdout, _ = call(capsys, "prune", "cifar_resnet20", "--rate-dist", "0.3", "--rate-norm", "0.9",
                         "--out", str(out), "--plan", str(plan))
    assert rc == 0
    assert "| layer | type | channels before | after | FLOPs before |" in stdout
    assert "| layer3.2.conv2 | Conv2d |" in stdout and "% fewer, measured" in stdout
    pruned = torch.load(out, weights_only=False)
    rebuilt = fpgm_ext.apply_plan(fpgm_ext.models.cifar_resnet(20), str(plan))
    rebuilt.load_state_dict(pruned.state_dict())
    assert pruned.conv1.out_channels < 16
    # a saved model is a MODEL too
    rc, stdout, _ = call(capsys, "prune", str(out), "--rate-dist", "0.2")
    assert rc == 0 and f"CifarResNet from {out}, input [1, 3, 32, 32]" in stdout


def test_bench_needs_the_source_checkout(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "source_root", lambda: tmp_path)
    rc, _, err = call(capsys, "bench")
    assert_one_line_error(rc, err, "bench/ ships with the source checkout")


def test_bench_runs_the_report(capsys, monkeypatch):
    seen = {}

    def fake_call(cmd, cwd):
        seen.update(cmd=cmd, cwd=cwd)
        return 0

    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    rc, _, _ = call(capsys, "bench", "--rounds", "1")
    assert rc == 0 and seen["cmd"][1:] == ["-m", "bench.report", "--rounds", "1", "--write"]
    assert Path(seen["cwd"]) == ROOT and (ROOT / "bench" / "report.py").is_file()
    call(capsys, "bench", "--no-write")
    assert seen["cmd"][1:] == ["-m", "bench.report"]


def test_info(capsys):
    rc, out, _ = call(capsys, "info")
    assert rc == 0 and "backend:" in out and "cpu:" in out and "bench/:" in out
    rc, out, _ = call(capsys, "info", "--json")
    assert rc == 0 and json.loads(out)["backend"] == fpgm_ext.backend_info()["backend"]


def test_no_command_prints_help(capsys):
    rc, out, _ = call(capsys)
    assert rc == 2 and "demo" in out and "prune" in out


# ------------------------------------------------------------------- prune --plot
def test_prune_plot_writes_a_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "channels.png"
    rc, stdout, err = call(capsys, "prune", "cifar_resnet20", "--plot", str(png))
    assert rc == 0, err
    assert f"saved the channel plot to {png}" in stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_prune_plot_without_matplotlib_fails_fast(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)    # import matplotlib -> ImportError

    def not_reached(*args, **kwargs):
        raise AssertionError("ran although --plot cannot be drawn")

    monkeypatch.setattr(cli, "load_model", not_reached)
    monkeypatch.setattr(fpgm_ext, "prune", not_reached)
    out, png = tmp_path / "pruned.pt", tmp_path / "channels.png"
    rc, stdout, err = call(capsys, "prune", "cifar_resnet20", "--out", str(out), "--plot", str(png))
    assert_one_line_error(rc, err, "--plot needs matplotlib: pip install matplotlib")
    assert rc == 1 and "fpgm_ext[bench]" in err and stdout == ""
    assert not out.exists() and not png.exists()


def test_prune_plot_bad_path_fails_fast(capsys, monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(cli, "load_model", lambda *a: pytest.fail("loaded the model"))
    rc, _, err = call(capsys, "prune", "cifar_resnet20", "--plot", str(tmp_path / "channels.nope"))
    assert_one_line_error(rc, err, "matplotlib does not write .nope files")
    rc, _, err = call(capsys, "prune", "cifar_resnet20", "--plot", str(tmp_path / "no" / "c.png"))
    assert_one_line_error(rc, err, "no such folder")


def test_plot_channels_one_pair_of_bars_per_layer(tmp_path):
    pytest.importorskip("matplotlib")
    from fpgm_ext.plot import plot_channels

    _, report = fpgm_ext.prune(fpgm_ext.models.cifar_resnet(20).eval(), torch.randn(1, 3, 32, 32),
                               rate_dist=0.4)
    layers = [s for s in report.layers if s.type in ("Conv2d", "Linear")]
    assert len(layers) == 20 and len(report.layers) > len(layers)    # PadShortcuts left out
    fig = plot_channels(report, tmp_path / "c.svg")
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    ax, = fig.axes
    before, after = ax.containers
    assert len(before) == len(after) == len(layers)
    assert [b.get_height() for b in before] == [int(s.channels_before.split("->")[1]) for s in layers]
    assert [b.get_height() for b in after] == [int(s.channels_after.split("->")[1]) for s in layers]
    assert after[0].get_height() < before[0].get_height()            # conv1: 16 -> 10
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["conv1", "layer1.0.conv1"]
    assert "CifarResNet" in ax.get_title() and "params -" in ax.get_title() and "FLOPs -" in ax.get_title()
