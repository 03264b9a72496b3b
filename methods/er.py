"""ER (Chaudhry et al. 2019; the CLIB code's er): reservoir replay; each step trains the new samples with a uniform
memory draw, which they then enter. The base of the replaying methods (ewc++, mir, der++, clib)."""
from __future__ import annotations

import logging

import torch

from methods import register
from methods.base import Method
from methods.engine.online_protocol import grow_head
from methods.engine.optim import Adam

logger = logging.getLogger("rm")
LR_DECAY = 0.9999  # per training step; the learning rate restarts at --lr at every new class (the CLIB code)


def grow_exposed(m: Method, labels: list[int]) -> None:
    """The CLIB code's head growth: old weight rows kept, every bias re-initialised (the first class
    re-initialises the one-output head too); ``labels`` join the exposed classes."""
    n_classes = max(labels) + 1
    if n_classes > m.n_out or not m.exposed:
        m.model.fc = grow_head(m.model.fc, max(n_classes, m.n_out))
    m.head = "linear"
    m.exposed |= set(labels)
    m.num_learning_class = len(m.exposed)


@register("er")
class ER(Method):
    """Each step trains on the chunk of new stream samples (--temp_batchsize) plus up to --batchsize minus
    its size memory samples (uniform, without replacement); the chunk then enters a reservoir memory of
    --memory_size minus --temp_batchsize. Adam (weight decay 0) is rebuilt whenever classes appear, so its
    learning rate restarts at --lr, and decays by 0.9999 per step (the CLIB code's er, in every setting).
    In the CVPR'21 settings (task and epochs; no public code runs ER there): one step per chunk; online it
    trains in the stream only, offline --n_epoch epochs of the same steps (mammoth's ER), each stream sample
    offered to the memory once."""

    default_memory = "reservoir"
    replays = True
    graph_auto = False  # the base step, compiled with --compile graphs/inductor; auto keeps it eager

    def __init__(self, cfg, data, device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        self.replace_head(1)  # a linear head with one output, grown per exposed class
        self.exposed = set()

    @classmethod
    def hyper_defaults(cls, follow: str) -> dict:
        """The CLIB scripts' Adam at 3e-4 in every setting (the dataset presets' SGD at 0.05 diverges with a plain
        linear head and no memory epochs: DER++ in disjoint on MNIST)."""
        return {"opt_name": "adam", "lr": 3e-4}

    def memory_size(self) -> int:
        return max(self.cfg.memory_size - self.cfg.temp_batchsize, 0)

    @classmethod
    def optimizer_kind(cls, cfg) -> str | None:
        """Adam without weight decay, whatever --opt_name says: mlp400 on grey images takes the Adam fold."""
        return "adam"

    def build_optimizer(self) -> None:
        """The CLIB code's Adam (weight decay 0)."""
        self.optimizer = Adam(self.model.parameters(), lr=self.cfg.lr, weight_decay=0.0, fused=True)
        self.scheduler = None

    def decay_lr(self) -> None:
        """The CLIB code's per-step decay."""
        for g in self.optimizer.param_groups:
            g["lr"] *= LR_DECAY

    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor,
                    shown: list[int] | None = None) -> None:
        """The stream keeps its order; the head grows with the classes, not with the task."""
        self.stream = stream
        if self.optimizer is None:
            self.build_optimizer()
        shown = torch.unique(self.data.train_labels[stream]).tolist() if shown is None else shown
        if shown:
            self.expose(shown)
        logger.info("Task %d: %d stream samples, %d memory, head %d outputs (%d classes exposed)", task_id,
                    len(stream), len(self.memory), self.n_out, len(self.exposed))

    def expose(self, labels: list[int]) -> None:
        """Classes ``labels`` appear: grow the head and restart the optimizer at --lr."""
        grow_exposed(self, labels)
        self.build_optimizer()

    def after_step(self) -> None:
        self.decay_lr()

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """The chunk's samples enter the reservoir."""
        self.memory.update(temp, task_id, self.n_out)

    def training_calls(self, online: bool) -> list[tuple[str, int]]:
        """Online, the stream only; offline, --n_epoch epochs of stream steps."""
        return [("stream", 1)] if online else [("offline", self.cfg.n_epoch)]

    def update_memory(self, task_id: int) -> None:
        """Nothing at the task end: the memory learned from every step."""
