"""The accuracy contract (csrc/accuracy.h, docs/design.md "The accuracy guard") is one rule
for every backend: the compiled library reports the values it was built with, the
reference backend mirrors them, and the reference's close-pair recompute really is what
keeps clustered filters exact."""
import re
from pathlib import Path

import pytest
import torch

import fpgm_ext
from fpgm_ext import reference

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "accuracy.h"
# build-info key -> constant of the header
KEYS = {"close_ratio": "kCloseRatio", "centre_rows": "kCentreRows",
        "centre_ratio": "kCentreRatio", "direct_max_d": "kDirectMaxD"}


def header_constants():
    text = HEADER.read_text()
    return {name: float(value) for name, value in
            re.findall(r"constexpr\s+\w+\s+(k\w+)\s*=\s*([0-9.]+)\s*;", text)}


def test_header_holds_every_rule():
    assert set(KEYS.values()) <= set(header_constants())


def test_reference_uses_the_header_values():
    assert reference.CLOSE_RATIO == header_constants()["kCloseRatio"]


def test_compiled_library_reports_the_header_values():
    build = fpgm_ext.backend_info()["build"]
    if not build:
        pytest.skip("no compiled library loaded (reference backend)")
    constants = header_constants()
    assert build["accuracy"] == {key: constants[name] for key, name in KEYS.items()}


def _two_clusters(seed: int) -> torch.Tensor:
    """Two tight clusters far apart: centring puts the centre between them, so the pairs
    inside a cluster stay close compared with their norms and the Gram identity cancels."""
    g = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.randn(2, 256, generator=g, dtype=torch.float64)
    spread = 1e-3 * torch.randn(32, 256, generator=g, dtype=torch.float64)
    return (centres.repeat_interleave(16, 0) + spread).to(torch.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_close_pair_ratio_is_live(monkeypatch, seed):
    w = _two_clusters(seed)
    f = w.to(torch.float64)
    exact = torch.cdist(f, f)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[:16, :16] = inside[16:, 16:] = True
    inside.fill_diagonal_(False)

    def worst(d):
        return ((d.to(torch.float64) - exact).abs() / exact)[inside].max().item()

    # The reference recomputes from its centred rows rounded to float32: about 2e-5 here.
    assert worst(reference.distance_matrix(w)) < 1e-4
    monkeypatch.setattr(reference, "CLOSE_RATIO", float("inf"))  # no pair is ever close
    assert worst(reference.distance_matrix(w)) > 0.1  # the Gram identity alone: off by 3x
