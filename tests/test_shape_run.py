"""The analysis's shape run (graph/tracing.py ``_fx_shapes``) skips the convolutions,
BatchNorms and activation modules: every node's shape must equal a real run's, and a graph
whose shapes depend on the values must run for real."""
import pytest
import torch
from torch import nn

from fpgm_ext.pruning import flops
from fpgm_ext.pruning.graph import tracing

torchvision = pytest.importorskip("torchvision")


class Convs(nn.Module):
    """Every padding spelling, strides, dilation, groups, 1-D and 3-D, an unbatched input."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 8, (3, 5), padding="same", dilation=(1, 2), groups=4)
        self.c = nn.Conv2d(8, 6, 4, padding="valid", stride=(1, 3), padding_mode="reflect")
        self.d = nn.Conv2d(6, 6, 3, padding=2, padding_mode="circular", bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.Hardswish()
        self.e = nn.Conv1d(6, 4, 3, stride=2)
        self.f = nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x):
        y = self.act(self.bn(self.d(self.c(self.b(self.a(x))))))
        z = self.e(y.flatten(2))
        w = self.f(y[:, :1].unsqueeze(1))
        return z.sum() + w.mean() + self.a(x[0]).sum()


class ValueIndexed(nn.Module):
    """A channel picked by the values (argmax): its shape needs the real run."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.pick = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        idx = (y.mean((2, 3)) > 0).nonzero()
        return self.pick(y), y[:, idx[:, 1]]


def shapes(model, x, **kw):
    graph = tracing._fx_graph(model)
    return tracing._fx_shapes(graph, model, (x,), **kw)


@pytest.mark.parametrize("make,size", [
    (lambda: Convs(), (2, 3, 29, 31)),
    (lambda: torchvision.models.resnet18(), (1, 3, 64, 64)),
    (lambda: torchvision.models.mobilenet_v3_small(), (2, 3, 57, 64)),
    (lambda: torchvision.models.efficientnet_b0(), (1, 3, 48, 48)),
    (lambda: torchvision.models.googlenet(aux_logits=False, init_weights=False), (1, 3, 64, 64)),
], ids=["convs", "resnet18", "mobilenet_v3_small", "efficientnet_b0", "googlenet"])
def test_shape_run_equals_real_run(make, size):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*size)
    fast, real = shapes(model, x), shapes(model, x, skip_compute=False)
    assert fast == real
    recorder, counted = flops.FlopRecorder(), flops.FlopRecorder()
    shapes(model, x, flops=recorder)
    shapes(model, x, flops=counted, skip_compute=False)
    assert recorder.measurement(model) == counted.measurement(model)


def test_value_dependent_shapes_run_for_real():
    torch.manual_seed(0)
    model = ValueIndexed().eval()
    x = torch.randn(2, 3, 12, 12)
    got = shapes(model, x)
    assert got == shapes(model, x, skip_compute=False)
    with torch.no_grad():
        picked = model(x)[1]
    assert got["output"][1] == tuple(picked.shape) and picked.shape[1] > 0   # (zeros pick none)


def test_a_wrong_input_still_raises_the_modules_error():
    model = torchvision.models.resnet18().eval()
    with pytest.raises(RuntimeError, match="channels"):
        shapes(model, torch.randn(1, 4, 32, 32))
