"""Under torchrun or alone: N SGD steps of mlp400 on fixed batches, data-parallel the way a run trains
(each rank its share of every batch, batch norm over all ranks, DistributedDataParallel); rank 0
saves the parameters and buffers. Usage: step.py OUT.pt DTYPE(float32|float64) STEPS."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from methods.engine.optim import make_optimizer  # noqa: E402
from models import build_model  # noqa: E402
from utils.run import dist  # noqa: E402


def main(out: str, dtype: str, steps: int) -> None:
    d = dist.init("cpu", 120)
    torch.set_default_dtype(getattr(torch, dtype))
    torch.manual_seed(0)
    model = build_model("mlp400", 10, 3, 28, "sgd")
    opt, _ = make_optimizer("sgd", 0.05, model, "cos")
    dist.sync_batchnorm(model, "cpu")
    net = dist.data_parallel(model, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand(16, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(dist.shard(x)), dist.shard(y)).backward()
        opt.step()
    if d.main:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
