"""GDumb in the i-Blurry protocol (the CLIB code's gdumb): no online training; a fresh model per evaluation."""
from __future__ import annotations

import torch

from methods import register
from methods.base import Method
from methods.er import ER
from methods.engine.online_protocol import StepCounter, trainable
from methods.engine.optim import make_optimizer, warm_start_lr
from utils.data.batches import shuffled_batches


@register("gdumb", iblurry=True)
class GDumbiBlurry(ER):
    """Each stream sample enters a memory of --memory_size by GDumb's rule (a full memory evicts a random
    sample of its largest class). Before every evaluation (anytime and task end) a fresh model with one
    output per exposed class is trained on the memory for --n_epoch epochs (SGD at --lr, warm start,
    cosine warm restarts to 0, cutmix when configured) and evaluated. The CLIB code reads its task-end
    numbers from the wrong anytime evaluations; here each task end is evaluated as every method's is."""

    default_memory = "greedy_balanced"
    protocol_defaults: dict = {}  # SGD, --lr and --sched_name from the dataset's preset (the CLIB scripts: sgd 0.05)

    @staticmethod
    def default_temp_batchsize(batchsize: int, as_intended: bool = False) -> int:
        return 1  # each sample enters the memory at once, so an evaluation sees every sample before it

    def memory_size(self) -> int:
        return self.cfg.memory_size

    def build_optimizer(self) -> None:
        self.optimizer, self.scheduler = make_optimizer(self.cfg.opt_name, self.cfg.lr, self.model, self.cfg.sched_name)

    def expose(self, n_classes: int) -> None:
        self.exposed |= set(range(n_classes))
        self.num_learning_class = len(self.exposed)

    def steps_due(self, counter: StepCounter, n_samples: int) -> int:
        return 0

    def before_eval(self) -> None:
        """A fresh model trained on the memory as it is now."""
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
