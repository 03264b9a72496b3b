"""iCaRL (public methods/icarl.py): growing bias-free head, CE + BCE distillation, nearest-mean prediction."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods import register
from methods.base import EVAL_BATCH, FitResult, Method, make_optimizer
from methods.prototype import FeatureHeadNet, class_means, method_featurizer, nme_scores
from utils.augment import cutmix, normalize

logger = logging.getLogger("rm")


def new_class_ce(logits: torch.Tensor, y: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (over all outputs) averaged over the rows of new classes; 0 when there are none."""
    ce = F.cross_entropy(logits, y, reduction="none")
    return (ce * new).sum() / new.sum().clamp_min(1)


def distillation_loss(logits: torch.Tensor, q: torch.Tensor, old: torch.Tensor, n_learned: int) -> torch.Tensor:
    """Sum over old classes c < n_learned of the BCE between sigmoid(logits[:, c]) and the stored
    target q[:, c], averaged over the rows of old classes (public: one nn.BCELoss per class)."""
    bce = F.binary_cross_entropy_with_logits(logits[:, :n_learned], q[:, :n_learned], reduction="none").sum(1)
    return (bce * old).sum() / old.sum().clamp_min(1)


@register("icarl")
class ICaRL(Method):
    """iCaRL as the public code trains it; herding memory (``prototype``) by default."""

    default_memory = "prototype"
    # Public code: the optimizer is built over the feature extractor only, so the head and the
    # BN affine parameters of ICaRLNet keep their initial values. True trains them too.
    train_head = False

    def __init__(self, cfg, data, device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        self.n_learned = 0  # classes learned before this task (public num_learned_class)
        self.targets = torch.empty(0, 0, device=device)  # stored sigmoid outputs, one row per old sample
        self.target_row = torch.full((len(data.train_labels),), -1, dtype=torch.long, device=device)
        self.means: torch.Tensor | None = None
        self.mem_done = False

    # ----------------------------------------------------------------- model
    def new_model(self, n_out: int) -> nn.Module:
        return FeatureHeadNet(super().new_model(n_out), self.cfg.feature_size, n_out).to(self.device)

    def replace_head(self, n_out: int) -> None:
        """Grow the bias-free head, keeping the old rows (the new rows are freshly initialised)."""
        old = self.model.fc
        new = nn.Linear(old.in_features, n_out, bias=False).to(self.device)
        r = min(old.out_features, n_out)
        with torch.no_grad():
            new.weight[:r] = old.weight[:r]
        self.model.fc = new

    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor) -> None:
        super().before_task(task_id, stream, test_idx)
        self.mem_done = False
        self.means = None
        if not self.train_head:
            for p in (*self.model.fc.parameters(), *self.model.bn.parameters()):
                p.requires_grad_(False)
            self.optimizer, self.scheduler = make_optimizer(self.cfg.opt_name, self.cfg.lr, self.model.extractor,
                                                            self.cfg.sched_name)

    def after_task(self, task_id: int) -> None:
        self.n_learned = self.n_out

    # ----------------------------------------------------------------- memory
    def update_memory(self, task_id: int) -> None:
        """Once per task (public already_mem_update), with this model's features for herding."""
        if self.mem_done:
            return
        self.mem_done = True
        if not self.memory.needs_features:
            return super().update_memory(task_id)
        self.memory.update(self.stream, task_id, self.num_learning_class, featurizer=method_featurizer(self))
        logger.info("Memory (%s) after task %d: %d samples, per class %s", self.mem_manage, task_id, len(self.memory),
                    self.memory.class_counts(self.data.n_classes))

    # ----------------------------------------------------------------- training
    @torch.no_grad()
    def store_targets(self, pool: torch.Tensor) -> None:
        """sigmoid outputs of the model before this training call, for the old-class samples of
        the pool, with test-time preprocessing (public: q, computed at the start of train())."""
        old = pool[self.data.train_labels[pool] < self.n_learned] if self.n_learned else pool[:0]
        self.model.eval()
        self.target_row.fill_(-1)
        self.target_row[old] = torch.arange(len(old), device=self.device)
        imgs = self.data.train.images
        outs = [torch.sigmoid(self.predict_logits(imgs[old[s:s + EVAL_BATCH]])[:, :self.n_learned])
                for s in range(0, len(old), EVAL_BATCH)]
        self.targets = torch.cat(outs) if outs else torch.empty(0, self.n_learned, device=self.device)

    def epoch_batches(self, phase: str) -> list[torch.Tensor]:
        """The base batches; with cutmix each batch is reordered new-class samples first, so the
        new-class rows that cutmix mixes are a prefix of the batch."""
        batches = super().epoch_batches(phase)
        if self.cutmix and batches and self.n_learned:
            labels = self.data.train_labels
            batches = [b[torch.argsort((labels[b] < self.n_learned).to(torch.int8), stable=True)] for b in batches]
        return batches

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None):
        """CE on new-class samples (+ cutmix on them, second forward pass, as the public code) and
        BCE distillation of the old classes' outputs on old-class samples (stored targets of the
        training-set indices ``idx``). Only a cutmix step reads its new-class count on the host."""
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        new = y >= self.n_learned
        n_new = int(new.sum()) if self.cutmix and np.random.rand() < 0.5 else 0
        if n_new > 1:  # BN needs 2 samples
            xm, ya, yb, lam = cutmix(x[:n_new], y[:n_new], alpha=1.0)
            g = self.model(xm)
            loss = lam * F.cross_entropy(g, ya) + (1 - lam) * F.cross_entropy(g, yb)
        else:
            loss = new_class_ce(logits, y, new)
        if self.n_learned:
            q = self.targets[self.target_row[idx].clamp_min(0)] if len(self.targets) else torch.zeros_like(logits)
            loss = loss + distillation_loss(logits, q, ~new, self.n_learned)
        loss.backward()
        self.optimizer.step()
        return loss, logits, y

    def fit(self, task_id: int, n_epoch: int, phase: str) -> FitResult:
        """Train, then (except in the online stream pass) update the memory and evaluate once with
        the nearest mean of exemplars: the public train() evaluates only at its end."""
        pool = self.memory.indices if phase == "memory" else torch.cat([self.stream, self.memory.indices])
        self.store_targets(pool)
        self.phase = phase
        res = FitResult(best_acc=0.0)
        for epoch in range(n_epoch):
            res.epochs.append(self.train_epoch(epoch, phase))
        self.after_fit(task_id, phase)
        if phase != "stream":
            self.update_memory(task_id)
            self.means = None
            ev = self.timed_eval(self.test_idx)
            if res.epochs:
                res.epochs[-1].update(test_loss=ev["avg_loss"], test_acc=ev["avg_acc"])
            res.best_acc, res.last = ev["avg_acc"], ev
        for rec in res.epochs:
            self.log_epoch(task_id, phase, rec)
        return res

    # ----------------------------------------------------------------- evaluation
    def anytime_accuracy(self, test_idx: torch.Tensor) -> float:
        """Nearest-mean accuracy with the class means of this moment (not kept afterwards)."""
        self.means = None
        acc = super().anytime_accuracy(test_idx)
        self.means = None
        return acc

    @torch.no_grad()
    def exemplar_means(self) -> torch.Tensor:
        """Normalised mean of the normalised features of each class's exemplars (zeros if none)."""
        mem = self.memory.indices
        if len(mem) == 0:
            return torch.zeros(self.n_out, self.cfg.feature_size, device=self.device)
        return class_means(method_featurizer(self)(mem), self.data.train_labels[mem], self.n_out)

    @torch.no_grad()
    def eval_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Minus the squared distance of the L2-normalised features to each class's exemplar mean."""
        if self.means is None:
            self.means = self.exemplar_means()
        feats = F.normalize(self.model.features(normalize(x, self.data.mean, self.data.std)), dim=1)
        return nme_scores(feats, self.means)
