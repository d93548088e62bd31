"""Ultralytics YOLO, end to end (skipped without ultralytics; models from their yaml, no
weights, YOLO_OFFLINE): a never-run model of every task prunes without touching its input,
removes at least 85 % of the ideal uniform-rate reduction, and equals its masked original
by value on every output but the heads' "feats" (which lose channels) in both modes; the
pruned model saves as a checkpoint ``YOLO(path)`` loads, predicts, fine-tunes with
Ultralytics' trainer on a synthetic dataset keeping the pruned architecture, and exports
to ONNX giving the same outputs; ``fpgm-ext prune yolov8n.yaml --out`` writes such a file."""
import os

import numpy as np
import pytest
import torch

from masking import masked_original
from test_prune import randomize

os.environ.setdefault("YOLO_OFFLINE", "1")
ultralytics = pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402

import fpgm_ext  # noqa: E402
from fpgm_ext.integrations import ultralytics as fu  # noqa: E402

RATE = 0.3
IDEAL = 1 - (1 - RATE) ** 2   # every layer loses RATE of its outputs and of its inputs
CONFIGS = [f"{v}{task}.yaml" for v in ("yolov8n", "yolo11n") for task in ("", "-seg", "-pose", "-obb")]


def _tensors(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _feats(out):
    return _tensors(out[1]["feats"] if isinstance(out, tuple) and isinstance(out[1], dict) else out["feats"])


def _state(model):
    """Every tensor the model holds, its attributes' included (what a forward may cache)."""
    found = {f"{n}.{k}": v.clone() for n, m in model.named_modules() for k, v in vars(m).items()
             if isinstance(v, torch.Tensor)}
    return {**found, **{k: v.clone() for k, v in model.state_dict().items()}}


@pytest.mark.parametrize("cfg", CONFIGS)
def test_a_never_run_model_prunes_exactly(cfg):
    torch.manual_seed(0)
    model = randomize(YOLO(cfg).model)
    state = _state(model)
    x = torch.randn(1, 3, 128, 128)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=RATE)
    after = _state(model)
    assert after.keys() == state.keys() and all(torch.equal(state[k], v) for k, v in after.items())
    assert report.params_reduction >= 0.85 * IDEAL, report.summary()
    assert "'feats'" in report.summary()
    masked = masked_original(model, pruned)
    for training in (False, True):
        with torch.no_grad():
            got, want = pruned.train(training)(x), masked.train(training)(x)
        a, b = _tensors(fu.without_feats(got)), _tensors(fu.without_feats(want))
        scale = max(float(t.abs().max()) for t in b)
        assert len(a) == len(b) and all(torch.allclose(p, q, atol=1e-4 * scale, rtol=1e-4) for p, q in zip(a, b))
        assert sum(f.shape[1] for f in _feats(got)) < sum(f.shape[1] for f in _feats(want))


def test_c2f_blocks_split_as_the_exporter_runs_them():
    """Ultralytics' exporter switches C2f-like blocks to ``forward_split``, which splits by
    ``self.c``: refit to the pruned halves, it gives what ``forward`` gives."""
    model = randomize(YOLO("yolo11n.yaml").model)
    pruned, _ = fpgm_ext.prune(model, torch.randn(1, 3, 128, 128), rate_dist=RATE)
    blocks = [m for m in pruned.modules() if hasattr(m, "forward_split")]
    assert blocks and any(m.c < o.c for m, o in zip(blocks, (m for m in model.modules() if hasattr(m, "forward_split"))))
    for m in blocks:
        x = torch.randn(1, m.cv1.conv.in_channels, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(m.forward_split(x), m(x))


def _dataset(root, n_images=4, size=64):
    """A detection dataset in YOLO format: random images, two boxes each, 80 class names
    (the yaml models predict 80)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / "train" / f"{i}.jpg")
        (root / "labels" / "train" / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n1 0.3 0.3 0.2 0.2\n")
    names = "".join(f"  {i}: c{i}\n" for i in range(80))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n{names}")
    return root / "data.yaml"


@pytest.mark.parametrize("cfg", ["yolov8n-seg.yaml", "yolo11n-pose.yaml", "yolov8n-obb.yaml"])
def test_checkpoint_loads_and_predicts(cfg, tmp_path):
    yolo = YOLO(cfg)
    pruned, report = fu.prune(yolo, rate_dist=RATE, imgsz=128)
    assert yolo.model.training and all(m.training for m in yolo.model.modules())   # its modes kept
    path = fu.save(pruned, tmp_path / "pruned.pt", report)
    loaded = YOLO(str(path))
    assert loaded.task == yolo.task
    assert sum(p.numel() for p in loaded.model.parameters()) == report.params_after
    results = loaded.predict(np.zeros((96, 96, 3), dtype=np.uint8), imgsz=96, verbose=False)
    assert len(results) == 1


def test_finetune_keeps_the_pruned_model_and_exports_to_onnx(tmp_path):
    data = _dataset(tmp_path / "data")
    pruned, report = fu.prune(YOLO("yolov8n.yaml"), rate_dist=RATE, imgsz=128)
    path = fu.save(pruned, tmp_path / "pruned.pt", report)
    tuned = fu.finetune(path, data=str(data), epochs=1, imgsz=64, batch=2, workers=0, plots=False,
                        device="cpu", amp=False, project=str(tmp_path / "runs"), name="ft", verbose=False)
    assert sum(p.numel() for p in tuned.model.parameters()) == report.params_after
    weights = [p for p in tuned.model.state_dict().values() if p.is_floating_point()]
    before = [p for p in pruned.state_dict().values() if p.is_floating_point()]
    assert any(not torch.equal(a.float(), b.float()) for a, b in zip(weights, before))   # it trained
    assert len(tuned.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)) == 1
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    onnx_path = tuned.export(format="onnx", imgsz=64)
    x = torch.rand(1, 3, 64, 64)
    session = ort.InferenceSession(onnx_path)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = YOLO(onnx_path.replace(".onnx", ".pt")).model.float().eval()(x)[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-3 * float(want.abs().max()))


def test_the_trainer_refuses_to_rebuild_the_yaml_model():
    trainer = fu.trainer_for("detect")
    assert issubclass(trainer, ultralytics.models.yolo.detect.DetectionTrainer)
    with pytest.raises(ValueError, match="lives in its checkpoint"):
        trainer.get_model(object.__new__(trainer), cfg="yolov8n.yaml", weights=None)
    with pytest.raises(ValueError, match="unknown task"):
        fu.trainer_for("segmentation")


def test_cli_prunes_a_yaml_into_a_checkpoint(tmp_path):
    from fpgm_ext import cli

    out = tmp_path / "pruned.pt"
    assert cli.main(["prune", "yolov8n.yaml", "--rate-dist", "0.3", "--input-shape", "1,3,128,128",
                     "--out", str(out)]) == 0
    loaded = YOLO(str(out))
    assert loaded.task == "detect"
    assert sum(p.numel() for p in loaded.model.parameters()) < 0.6 * sum(
        p.numel() for p in YOLO("yolov8n.yaml").model.parameters())
