"""GDumb (Prabhu et al., ECCV 2020): a class-balanced memory, and a fresh model trained on it alone."""
from __future__ import annotations

import torch

from methods import register
from methods.base import Method
from methods.engine.online_protocol import trainable
from methods.engine.optim import make_optimizer, warm_start_lr
from utils.data.batches import shuffled_batches


@register("gdumb")
class GDumb(Method):
    """Never trains on the stream. The CVPR'21 code (blurry/disjoint): per task, update the memory
    (class-balanced random), rebuild the whole model (its initial head: a bias-free linear layer + BatchNorm)
    and train --n_epoch epochs on the memory in batches of --batchsize (last partial batch dropped).
    Sample-wise (the CLIB code, and the paper): each stream sample enters a memory of --memory_size by GDumb's
    rule (a full memory evicts a random sample of its largest class); before every evaluation (anytime and
    task end) a fresh model with one output per exposed class is trained on the memory for --n_epoch epochs
    (SGD at --lr, warm start, cosine warm restarts to 0, cutmix when configured). The CLIB code reads its
    task-end numbers from the wrong anytime evaluations; here each task end is evaluated as every method's is."""

    stream_pass = False  # never trains on the stream itself

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.follow != "cvpr21":  # the sample-wise model starts with one linear output, as the CLIB code's
            Method.replace_head(self, 1)
            self.exposed = set()

    @property
    def default_memory(self) -> str:
        return "class_balanced" if self.follow == "cvpr21" else "greedy_balanced"

    @staticmethod
    def default_temp_batchsize(batchsize: int, follow: str) -> int:
        return 1  # each sample enters the memory at once, so an evaluation sees every sample before it

    def training_calls(self, online: bool) -> list[tuple[str, int]]:
        """The CVPR'21 code, online or offline: one call on the memory (updated before it); sample-wise the
        training happens before each evaluation."""
        return [("memory", self.cfg.n_epoch)] if self.follow == "cvpr21" else []

    def replace_head(self, n_out: int) -> None:
        """The model is rebuilt before training, so the head is not replaced here."""

    def expand_head(self, n_out: int) -> None:
        """The model is rebuilt before training."""

    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor,
                    shown: list[int] | None = None) -> None:
        if self.follow == "cvpr21":
            return super().before_task(task_id, stream, test_idx, shown)
        self.stream = stream
        if self.optimizer is None:
            self.build_optimizer()

    def before_fit(self, phase: str) -> None:
        if phase == "memory":
            self.model = self.new_model(self.head_size())
            self.build_optimizer()

    def expose(self, labels: list[int]) -> None:
        self.exposed |= set(labels)
        self.num_learning_class = len(self.exposed)

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """Sample-wise: the chunk enters the memory by GDumb's rule."""
        self.memory.update(temp, task_id, self.n_out)

    def update_memory(self, task_id: int) -> None:
        if self.follow == "cvpr21":
            super().update_memory(task_id)

    def before_eval(self) -> None:
        """Sample-wise: a fresh model trained on the memory as it is now."""
        if self.follow == "cvpr21":
            return
        self.model = self.new_model(max(len(self.exposed), 1))
        self.optimizer, _ = make_optimizer(self.cfg.opt_name, self.cfg.lr, self.model, self.cfg.sched_name)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(self.optimizer, T_0=1, T_mult=2)
        imgs, labels = self.data.train.images, self.data.train_labels
        self.model.train()
        n = 0
        for epoch in range(self.cfg.n_epoch):
            warm_start_lr(self.optimizer, self.scheduler, self.cfg.lr, epoch)
            for b in trainable(shuffled_batches(self.memory.indices, self.cfg.batchsize, drop_last=False), self.model):
                with self.autocast():
                    Method.train_step(self, self.train_aug(imgs[b]), labels[b])
                n += len(b)
        self.count("memory_training", n)
        self.model.eval()
