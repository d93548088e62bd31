"""torch.export graphs keep the model's own code, whose ``chunk(n)`` cannot be given new
sizes: its pieces are pruned only in equal numbers, so that the code splits the pruned
tensor at the same places (YOLO's C2f / C3k2 blocks, which fx cannot trace); a
``type_as`` or ``new_full`` that only reads a feature map's dtype (a detection head's
anchors) is no use of its channels. Exact against the masked original, by value."""
import pytest
import torch
from torch import nn

import fpgm_ext

from masking import assert_exact_by_value
from test_prune import randomize


class C2f(nn.Module):
    """Ultralytics' C2f spelled out: ``list(cv1(x).chunk(2, 1))`` (a Proxy fx cannot
    iterate), bottlenecks on the last piece, a concatenation of all pieces."""

    def __init__(self, c1, c2, n=2, shortcut=True):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = nn.Sequential(nn.Conv2d(c1, 2 * self.c, 1), nn.BatchNorm2d(2 * self.c), nn.SiLU())
        self.m = nn.ModuleList(nn.Sequential(nn.Conv2d(self.c, self.c, 3, padding=1), nn.BatchNorm2d(self.c),
                                             nn.SiLU()) for _ in range(n))
        self.cv2 = nn.Sequential(nn.Conv2d((2 + n) * self.c, c2, 1), nn.BatchNorm2d(c2), nn.SiLU())
        self.shortcut = shortcut

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) + y[-1] if self.shortcut else m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class Anchored(nn.Module):
    """A head whose anchors take the feature map's dtype (``type_as``, ``new_full``)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        ax = torch.arange(x.shape[-1]).type_as(x)
        grid = x.new_full((x.shape[-1],), 0.5) + ax
        return self.conv(x) + grid


class Net(nn.Module):
    def __init__(self, shortcut=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.SiLU())
        self.c2f = C2f(16, 32, shortcut=shortcut)
        self.head = Anchored(32)

    def forward(self, x):
        return self.head(self.c2f(self.stem(x)))


@pytest.mark.parametrize("shortcut", [True, False])
def test_chunks_are_pruned_in_equal_numbers_under_export(shortcut):
    torch.manual_seed(0)
    model, x = randomize(Net(shortcut)), torch.randn(2, 3, 16, 16)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3)
    assert report.tracer == "export"
    halves = pruned.c2f.cv1[0].out_channels
    assert halves < 32 and halves % 2 == 0 and pruned.c2f.m[0][0].in_channels == halves // 2
    assert pruned.stem[0].out_channels < 16 and pruned.c2f.cv2[0].out_channels < 32   # the head's input too
    assert_exact_by_value(model, pruned, x)


def test_a_piece_left_alone_leaves_the_others_alone():
    torch.manual_seed(1)
    model, x = randomize(Net()), torch.randn(2, 3, 16, 16)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3, ignore=["c2f.m.1"])   # the second piece's stream
    assert pruned.c2f.cv1[0].out_channels == 32
    assert any("its pieces must keep equal channel counts" in (g["left_alone"] or "") for g in report.groups)
    assert_exact_by_value(model, pruned, x)
