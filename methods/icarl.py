"""iCaRL (public methods/icarl.py): growing bias-free head, CE + BCE distillation, nearest-mean prediction."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods import register
from methods.base import Method
from methods.engine.evaluation import EVAL_BATCH
from methods.engine.optim import make_optimizer
from models.feature_head import FeatureHeadNet
from utils.data.augment import cutmix, normalize


def new_class_ce(logits: torch.Tensor, y: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (over all outputs) averaged over the rows of new classes; 0 when there are none."""
    ce = F.cross_entropy(logits, y, reduction="none")
    return (ce * new).sum() / new.sum().clamp_min(1)


def distillation_loss(logits: torch.Tensor, q: torch.Tensor, old: torch.Tensor, n_learned: int) -> torch.Tensor:
    """Sum over old classes c < n_learned of the BCE between sigmoid(logits[:, c]) and the stored
    target q[:, c], averaged over the rows of old classes (public: one nn.BCELoss per class)."""
    bce = F.binary_cross_entropy_with_logits(logits[:, :n_learned], q[:, :n_learned], reduction="none").sum(1)
    return (bce * old).sum() / old.sum().clamp_min(1)


def class_means(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per class: mean of the (L2-normalised) features, L2-normalised; zeros for a class with no
    sample (public icarl_evaluation)."""
    d = features.shape[1] if features.dim() == 2 else 0
    sums = torch.zeros(n_classes, d, device=features.device).index_add_(0, labels, features.float())
    counts = torch.bincount(labels, minlength=n_classes)[:n_classes].clamp_min(1).unsqueeze(1)
    return F.normalize(sums / counts, dim=1)


def nme_scores(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Nearest-mean-of-exemplars scores: minus the squared Euclidean distance of each
    (L2-normalised) feature to each class mean, so argmax/top-k give the nearest means."""
    d2 = (features * features).sum(1, keepdim=True) - 2 * features @ means.T + (means * means).sum(1)
    return -d2


@register("icarl")
class ICaRL(Method):
    """iCaRL as the public code trains it; herding memory (``prototype``) by default. Evaluated once
    per task, after the memory update (the public train() evaluates only at its end)."""

    default_memory = "prototype"
    eval_every_epoch = False
    # Public code: the optimizer is built over the feature extractor only, so the head and the
    # BN affine parameters of ICaRLNet keep their initial values. True trains them too.
    train_head = False

    def __init__(self, cfg, data, device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        self.n_learned = 0  # classes learned before this task (public num_learned_class)
        self.targets = torch.empty(0, 0, device=device)  # stored sigmoid outputs, one row per old sample
        self.target_row = torch.full((len(data.train_labels),), -1, dtype=torch.long, device=device)
        self.means: torch.Tensor | None = None  # class means of the exemplars, per evaluation

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
        self.head = "linear"

    def build_optimizer(self) -> None:
        if self.train_head:
            return super().build_optimizer()
        for p in (*self.model.fc.parameters(), *self.model.bn.parameters()):
            p.requires_grad_(False)
        self.optimizer, self.scheduler = make_optimizer(self.cfg.opt_name, self.cfg.lr, self.model.extractor,
                                                        self.cfg.sched_name)

    def after_task(self, task_id: int) -> None:
        self.n_learned = self.n_out

    # ----------------------------------------------------------------- training
    def before_fit(self, phase: str) -> None:
        self.store_targets(self.call_pool(phase))

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

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                   extra: dict[str, torch.Tensor] | None = None):
        """CE on new-class samples (+ cutmix on them, second forward pass, as the public code) and
        BCE distillation of the old classes' outputs on old-class samples (stored targets of the
        training-set indices ``idx``). Only a cutmix step reads its new-class count on the host."""
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.net(x)
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

    # ----------------------------------------------------------------- evaluation
    def before_eval(self) -> None:
        """The class means of this moment's exemplars, used by every batch of this evaluation."""
        self.means = self.exemplar_means()

    @torch.no_grad()
    def exemplar_means(self) -> torch.Tensor:
        """Normalised mean of the normalised features of each class's exemplars (zeros if none)."""
        mem = self.memory.indices
        if len(mem) == 0:
            return torch.zeros(self.n_out, self.cfg.feature_size, device=self.device)
        return class_means(self.featurizer()(mem), self.data.train_labels[mem], self.n_out)

    @torch.no_grad()
    def eval_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Minus the squared distance of the L2-normalised features to each class's exemplar mean."""
        if self.means is None:
            self.means = self.exemplar_means()
        feats = F.normalize(self.model.features(normalize(x, self.data.mean, self.data.std)), dim=1)
        return nme_scores(feats, self.means)

    # ----------------------------------------------------------------- state
    def extra_state(self) -> dict:
        return {"n_learned": self.n_learned}

    def load_extra_state(self, state: dict) -> None:
        self.n_learned = state["n_learned"]
