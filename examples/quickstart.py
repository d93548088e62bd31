"""Scores a conv layer with FPGM and shows which filters it would prune."""
import torch

import fpgm_ext

torch.manual_seed(0)
conv = torch.nn.Conv2d(64, 128, kernel_size=3)
# Make filters 5 and 77 near-copies of the layer's mean filter: FPGM should pick them.
with torch.no_grad():
    centre = conv.weight.mean(0)
    conv.weight[5] = centre + 1e-3 * torch.randn_like(centre)
    conv.weight[77] = centre + 1e-3 * torch.randn_like(centre)

scores = fpgm_ext.distance_scores(conv.weight)          # [128]: sum of distances to the others
keep, prune = fpgm_ext.select(conv.weight, rate_dist=0.1)
print("backend:", fpgm_ext.backend_info()["backend"])
print("lowest scores:", [(int(i), round(float(scores[i]), 3)) for i in scores.argsort()[:4]])
print(f"pruned {prune.numel()} of {conv.out_channels} filters:", prune.tolist())
assert {5, 77} <= set(prune.tolist())
