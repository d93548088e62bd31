"""SoftFPGM under DistributedDataParallel: 2 processes, the gloo backend, on the CPU. Each
rank trains a few steps on its own data; every rank must end with the same masks and the
same finalized model. A second model, different on each rank and not wrapped, checks that
the selection is rank 0's, broadcast."""
import gc
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

import fpgm_ext

WORLD = 2
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(100 + rank)              # different initial weights: DDP broadcasts rank 0's
        model = fpgm_ext.models.cifar_resnet(8)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        soft = fpgm_ext.SoftFPGM(ddp, rate_dist=0.4, optimizer=opt)
        g = torch.Generator().manual_seed(rank)    # each rank its own data
        masked_ok = True
        for epoch in range(2):
            ddp.train()
            for _ in range(3):
                x = torch.randn(4, 3, 16, 16, generator=g)
                y = torch.randint(0, 10, (4,), generator=g)
                loss = F.cross_entropy(ddp(x), y)
                opt.zero_grad()
                loss.backward()                    # the masked gradients are the ones averaged
                opt.step()
                params = dict(model.named_parameters())
                masked_ok &= all(bool((params[n].grad[~k] == 0).all() and (params[n][~k] == 0).all())
                                 for n, k in soft.masks.items())
            soft.step()
        masks = {k: v.clone() for k, v in soft.masks.items()}
        plan = soft.plan.to_dict()
        model.eval()
        pruned = soft.finalize()
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            masked_out, pruned_out = model(x), pruned.eval()(x)

        # not wrapped, different weights on each rank: the choice is rank 0's
        torch.manual_seed(200 + rank)
        other = fpgm_ext.models.cifar_resnet(8)
        local = fpgm_ext.pruning.make_plan(other, None, rate_dist=0.4)
        other_soft = fpgm_ext.SoftFPGM(other, rate_dist=0.4)
        assert other_soft.broadcast
        torch.save({"masked_ok": masked_ok, "masks": masks, "plan": plan, "state": pruned.state_dict(), "masked_out": masked_out,
                    "pruned_out": pruned_out, "other_plan": other_soft.plan.modules,
                    "other_local_plan": local.modules}, os.path.join(out, f"rank{rank}.pt"))
        other_soft.remove()
        # Quiesce before teardown: every rank done with its collectives, and the DDP
        # reducer (which holds the process group and its gloo work) gone before the group
        # is destroyed; gloo work still alive at interpreter exit can abort the process.
        dist.barrier()
        del ddp, soft, other_soft, opt
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_agree(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))

    assert r0["masked_ok"] and r1["masked_ok"]     # gradients and weights of masked channels zero
    assert r0["plan"] == r1["plan"]
    assert r0["masks"].keys() == r1["masks"].keys() and len(r0["masks"]) > 0
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k]), k
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # the finalized model computes the masked model's outputs, on both ranks
    for r in (r0, r1):
        torch.testing.assert_close(r["pruned_out"], r["masked_out"], rtol=1e-4, atol=1e-5)
    assert r0["state"]["conv1.weight"].shape[0] == 16 - int(16 * 0.4)

    # broadcast: rank 1 applied rank 0's selection, not the one its own weights give
    assert r1["other_plan"] == r0["other_plan"] == r0["other_local_plan"]
    assert r1["other_local_plan"] != r0["other_local_plan"]
