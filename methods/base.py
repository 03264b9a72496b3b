"""The Method base: hooks (before_task, train_stream/train_memory/train_offline, update_memory,
after_task, evaluate) and the shared epoch loop with the public code's LR warm start."""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from methods.memory import MemoryManager, build_manager
from methods.prototype import method_featurizer
from models import build_model
from utils.augment import TrainAugment, cutmix, normalize
from utils.data import RunData, read_ahead

logger = logging.getLogger("rm")

EVAL_BATCH = 1024
AUG_CHUNK = 4096


class DivergedError(Exception):
    """The training loss became NaN or infinite."""

    def __init__(self, task_id: int, phase: str, epoch: int, loss: float) -> None:
        super().__init__(f"training diverged: loss {loss} in task {task_id}, {phase} epoch {epoch + 1}")
        self.task_id = task_id


@dataclass
class FitResult:
    """One training call: best test accuracy over its epochs and the last epoch's evaluation."""

    best_acc: float
    last: dict = field(default_factory=dict)
    epochs: list[dict] = field(default_factory=list)


def make_optimizer(name: str, lr: float, model: nn.Module, sched: str):
    """SGD (momentum 0.9, Nesterov, wd 1e-4), adam (wd 1e-6) or radam (wd 1e-5), and the schedule."""
    # fused kernels: one pass over each parameter per step (the same update as the loop version)
    if name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4, fused=True)
    elif name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-6, fused=True)
    elif name == "radam":
        opt = torch.optim.RAdam(model.parameters(), lr=lr, weight_decay=1e-5, foreach=True)
    else:
        raise ValueError(f"unknown optimizer '{name}'; valid: sgd, adam, radam")
    if sched == "cos":
        sch = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=lr * 0.01)
    elif sched == "anneal":
        sch = torch.optim.lr_scheduler.ExponentialLR(opt, 1 / 1.1)
    elif sched == "multistep":
        sch = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60, 80, 90], gamma=0.1)
    else:
        raise ValueError(f"unknown scheduler '{sched}'; valid: cos, anneal, multistep")
    return opt, sch


class Method:
    """Fine-tuning on stream + memory; subclasses override only what differs."""

    name = "base"
    default_memory = "random"
    allow_grey_fold = True  # methods whose loss looks at each parameter slice (EWC) set False

    def __init__(self, cfg, data: RunData, device: torch.device, writer=None) -> None:
        self.cfg = cfg
        self.data = data
        self.device = device
        self.writer = writer
        ch = getattr(cfg, "in_channels", None)
        self.in_channels = ch if ch is not None else (3 if cfg.model_name == "mlp400" else data.train.images.shape[1])
        self.model = self.new_model(cfg.n_init_cls)
        mem = cfg.mem_manage if cfg.mem_manage not in (None, "default") else self.default_memory
        self.mem_manage = mem
        self.memory: MemoryManager = build_manager(mem, cfg.memory_size, data.train_labels)
        transforms = list(cfg.transforms)
        self.cutmix = "cutmix" in transforms
        self.train_aug = TrainAugment(transforms, data.mean, data.std)
        self.exposed: set[int] = set()
        self.num_learning_class = cfg.n_init_cls
        self.stream = torch.empty(0, dtype=torch.long, device=device)
        self.test_idx = torch.empty(0, dtype=torch.long, device=device)
        self.optimizer = None
        self.scheduler = None
        self.eval_time = 0.0
        self.last_task = True  # the driver sets it per task (False before the final task)
        self.task_id = 0
        self.phase = ""
        self.epoch = 0
        self.stream_seen = 0  # stream samples trained on so far (anytime evaluation)
        self.anytime: list[dict] = []  # {"task", "samples", "acc"} every --eval_period stream samples
        self.samples: dict[str, int] = {}  # samples processed per phase (for benchmarks)

    # ----------------------------------------------------------------- model
    def new_model(self, n_out: int) -> nn.Module:
        size = self.data.train.images.shape[-1]
        grey_sgd = self.data.train.images.shape[1] == 1 and self.cfg.opt_name == "sgd" and self.allow_grey_fold
        return build_model(self.cfg.model_name, n_out, self.in_channels, size, grey_sgd).to(self.device)

    @property
    def n_out(self) -> int:
        return self.model.fc.out_features

    # ----------------------------------------------------------------- hooks
    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor) -> None:
        """Grow the exposed classes, replace the head (public code: fresh nn.Linear with bias),
        reset optimizer and scheduler."""
        self.task_id = task_id
        self.stream = stream[torch.randperm(len(stream), device=self.device)]
        self.test_idx = test_idx
        incoming = torch.unique(self.data.train_labels[stream]).tolist()
        self.exposed |= set(int(c) for c in incoming)
        self.num_learning_class = max(len(self.exposed), self.num_learning_class)
        new_out = max(self.n_out, self.num_learning_class, max(self.exposed, default=-1) + 1)
        if self.cfg.init_model:
            self.model = self.new_model(new_out)
        else:
            self.replace_head(new_out)
        self.optimizer, self.scheduler = make_optimizer(self.cfg.opt_name, self.cfg.lr, self.model, self.cfg.sched_name)
        logger.info("Task %d: %d stream samples, %d memory, head %d outputs", task_id, len(stream), len(self.memory), new_out)

    def replace_head(self, n_out: int) -> None:
        self.model.fc = nn.Linear(self.model.fc.in_features, n_out).to(self.device)

    def train_stream(self, task_id: int) -> FitResult:
        """Online step 1: one pass over the stream."""
        return self.fit(task_id, 1, "stream")

    def train_memory(self, task_id: int) -> FitResult:
        """Online step 3: n_epoch epochs on the memory only."""
        return self.fit(task_id, self.cfg.n_epoch, "memory")

    def train_offline(self, task_id: int) -> FitResult:
        return self.fit(task_id, self.cfg.n_epoch, "offline")

    def update_memory(self, task_id: int) -> None:
        scorer = self.uncertainty if self.memory.needs_scorer else None
        featurizer = method_featurizer(self) if self.memory.needs_features else None
        self.memory.update(self.stream, task_id, self.num_learning_class, scorer, featurizer)
        counts = self.memory.class_counts(self.data.n_classes)
        logger.info("Memory (%s) after task %d: %d samples, per class %s", self.mem_manage, task_id, len(self.memory), counts)

    def after_task(self, task_id: int) -> None:
        pass

    # ----------------------------------------------------------------- batches
    def epoch_batches(self, phase: str) -> list[torch.Tensor]:
        """Index batches of one epoch. Fine-tuning: stream + memory shuffled, last partial batch dropped."""
        pool = self.memory.indices if phase == "memory" else torch.cat([self.stream, self.memory.indices])
        return shuffled_batches(pool, self.cfg.batchsize, drop_last=True)

    # ----------------------------------------------------------------- training
    def set_epoch_lr(self, epoch: int) -> None:
        """Epoch 0 at lr/10, epoch 1 at lr, then one scheduler step per epoch (public code)."""
        if epoch == 0:
            for g in self.optimizer.param_groups:
                g["lr"] = self.cfg.lr * 0.1
        elif epoch == 1:
            for g in self.optimizer.param_groups:
                g["lr"] = self.cfg.lr
        else:
            self.scheduler.step()

    def evaluates_epoch(self, epoch: int, n_epoch: int) -> bool:
        """Every epoch (the protocol), or with --eval_epochs last_task only the last epoch of each
        call before the final task: evaluation has no effect on training, so the final task's
        numbers (A_last, A_last_final) are unchanged."""
        return getattr(self.cfg, "eval_epochs", "all") == "all" or self.last_task or epoch == n_epoch - 1

    def train_epoch(self, epoch: int, phase: str) -> dict:
        """One epoch at the public schedule; its record, with no test numbers yet."""
        self.epoch = epoch
        self.set_epoch_lr(epoch)
        batches = self.epoch_batches(phase)
        self._count(phase, sum(len(b) for b in batches))
        tr_loss, tr_acc = self.run_epoch(batches)
        return {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "test_loss": None, "test_acc": None,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def timed_eval(self, test_idx: torch.Tensor, fn=None):
        """``fn`` (default: evaluate) on ``test_idx``; its time goes to eval_time, its samples are counted."""
        t0 = time.perf_counter()
        out = (fn or self.evaluate)(test_idx)
        self.eval_time += time.perf_counter() - t0
        self._count("evaluation", len(test_idx))
        return out

    def fit(self, task_id: int, n_epoch: int, phase: str) -> FitResult:
        res = FitResult(best_acc=0.0)
        self.phase = phase
        for epoch in range(n_epoch):
            rec = self.train_epoch(epoch, phase)
            if self.evaluates_epoch(epoch, n_epoch):
                ev = self.timed_eval(self.test_idx)
                rec.update(test_loss=ev["avg_loss"], test_acc=ev["avg_acc"])
                res.best_acc = max(res.best_acc, ev["avg_acc"])
                res.last = ev
            res.epochs.append(rec)
            self.log_epoch(task_id, phase, rec)
        self.after_fit(task_id, phase)
        return res

    def after_fit(self, task_id: int, phase: str) -> None:
        """Hook run after every training call (EWC/RWalk compute their importance here)."""

    def log_epoch(self, task_id: int, phase: str, rec: dict) -> None:
        keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
        if rec["test_acc"] is None:
            keys = ("train_loss", "train_acc", "lr")
            logger.info("Task %d | %s | Epoch %d | train_loss %.4f | train_acc %.2f | lr %.5f (no evaluation)",
                        task_id, phase, rec["epoch"] + 1, rec["train_loss"], rec["train_acc"], rec["lr"])
        else:
            logger.info("Task %d | %s | Epoch %d | train_loss %.4f | train_acc %.2f | test_loss %.4f | test_acc %.2f | "
                        "lr %.5f", task_id, phase, rec["epoch"] + 1, rec["train_loss"], rec["train_acc"],
                        rec["test_loss"], rec["test_acc"], rec["lr"])
        if self.writer is not None:
            for k in keys:
                group, _, name = k.partition("_")
                self.writer.add_scalar(f"task{task_id}/{phase}/{group}/{name}", rec[k], rec["epoch"])

    def run_epoch(self, batches: list[torch.Tensor]) -> tuple[float, float]:
        """Train on the given index batches; augmentation runs in chunks of whole batches."""
        self.model.train()
        if not batches:
            return 0.0, 0.0
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n_seen = 0
        imgs, labels = self.data.train.images, self.data.train_labels
        anytime = self.anytime_hook(batches)
        k = 0
        bar = tqdm(total=len(batches), desc="train", leave=False, disable=not sys.stderr.isatty(), mininterval=0.5)
        spans = aug_spans([len(b) for b in batches])
        chunks = [torch.cat(batches[i:j]) for i, j in spans]
        read_ahead(imgs, chunks)
        for (i, j), idx in zip(spans, chunks):
            x_all = self.train_aug(imgs[idx])
            y_all = labels[idx]
            o = 0
            for b in batches[i:j]:
                s = len(b)
                loss, logits, y = self.train_step(x_all[o:o + s], y_all[o:o + s], b)
                total_loss += loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
                n_seen += s
                o += s
                if anytime is not None:
                    anytime(k)
                k += 1
            bar.update(j - i)
        bar.close()
        loss = total_loss.item() / len(batches)  # the epoch's one host sync
        if not math.isfinite(loss):
            raise DivergedError(self.task_id, self.phase, self.epoch, loss)
        return loss, 100.0 * correct.item() / max(n_seen, 1)

    def anytime_hook(self, batches: list[torch.Tensor]):
        """With --eval_period N, during the online stream pass: a callback after each batch that
        evaluates the model every N stream samples trained on (anytime accuracy, on the test
        samples of the classes exposed so far). Stream counts: one host sync per pass."""
        period = getattr(self.cfg, "eval_period", 0) or 0
        if self.phase != "stream" or period <= 0 or not batches:
            return None
        is_stream = torch.zeros(len(self.data.train_labels), dtype=torch.bool, device=self.device)
        is_stream[self.stream] = True
        cum = torch.stack([is_stream[b].sum() for b in batches]).cumsum(0).tolist()
        start = self.stream_seen
        exposed = torch.tensor(sorted(self.exposed), device=self.device)
        test = self.test_idx[torch.isin(self.data.test_labels[self.test_idx], exposed)]

        def after_batch(k: int) -> None:
            before, seen = start + (cum[k - 1] if k else 0), start + cum[k]
            if seen // period > before // period:
                acc = self.timed_eval(test, self.anytime_accuracy)
                self.anytime.append({"task": self.task_id, "samples": seen, "acc": acc})
                if self.writer is not None:
                    self.writer.add_scalar("Metrics/AnytimeAcc", acc, seen)
            if k == len(batches) - 1:
                self.stream_seen = seen
        return after_batch

    def anytime_accuracy(self, test_idx: torch.Tensor) -> float:
        acc = self.evaluate(test_idx)["avg_acc"]
        self.model.train()
        return acc

    def criterion(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def extra_loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """Hook for regularisers and distillation (none here)."""
        return None

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None):
        """One step on augmented images ``x``, labels ``y`` of training-set indices ``idx``: SGD step with cutmix (p=0.5 per batch, loss mixed by area) when configured."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cutmix and np.random.rand() < 0.5:
            xm, ya, yb, lam = cutmix(x, y, alpha=1.0)
            logits = self.model(xm)
            loss = lam * self.criterion(logits, ya) + (1 - lam) * self.criterion(logits, yb)
        else:
            logits = self.model(x)
            loss = self.criterion(logits, y)
        extra = self.extra_loss(x, y, logits)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        self.optimizer.step()
        return loss, logits, y

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(x, self.data.mean, self.data.std))

    @torch.no_grad()
    def evaluate(self, test_idx: torch.Tensor) -> dict:
        """Accuracy (top-k, %), mean loss and per-class accuracy (%; None for absent classes)."""
        self.model.eval()
        n_cls = self.data.n_classes
        k = min(self.cfg.topk, self.n_out)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        loss_sum = torch.zeros((), device=self.device)
        cls_correct = torch.zeros(n_cls, device=self.device, dtype=torch.long)
        cls_total = torch.zeros(n_cls, device=self.device, dtype=torch.long)
        imgs, labels = self.data.test.images, self.data.test_labels
        chunks = [c for c in test_idx.split(EVAL_BATCH) if len(c)]
        read_ahead(imgs, chunks)
        for idx in chunks:
            y = labels[idx]
            x = imgs[idx]
            logits = self.eval_scores(x)
            # classes the head does not cover yet (blurry runs with a small --n_init_cls) count as
            # wrong and stay out of the loss
            known = y < logits.shape[1]
            ce = F.cross_entropy(logits, y.clamp_max(logits.shape[1] - 1), reduction="none")
            loss_sum += (ce * known).sum()
            topk = logits.topk(k, 1).indices
            correct += (topk == y[:, None]).any(1).sum()
            pred = self.predict_labels(logits, x)
            cls_total += torch.bincount(y, minlength=n_cls)
            cls_correct += torch.bincount(y[pred == y], minlength=n_cls)
        n = max(len(test_idx), 1)
        tot = cls_total.tolist()
        cor = cls_correct.tolist()
        return {"avg_acc": 100.0 * correct.item() / n, "avg_loss": loss_sum.item() / n,
                "cls_acc": [100.0 * c / t if t else None for c, t in zip(cor, tot)]}

    def predict_labels(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1)

    @torch.no_grad()
    def eval_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores used for test accuracy (iCaRL: nearest mean of exemplars)."""
        return self.predict_logits(x)

    # ----------------------------------------------------------------- uncertainty
    @torch.no_grad()
    def uncertainty(self, cand: torch.Tensor) -> torch.Tensor:
        """1 - (votes of the most-voted class) / K over K perturbed views (K batched passes)."""
        from utils.augment import iter_uncertainty_views
        self.model.eval()
        votes = torch.zeros(len(cand), self.n_out, device=self.device)
        k_views = 0
        imgs = self.data.train.images
        chunks = [c for c in cand.split(AUG_CHUNK) if len(c)]
        read_ahead(imgs, chunks)
        for s, idx in zip(range(0, len(cand), AUG_CHUNK), chunks):
            rows = torch.arange(s, s + len(idx), device=self.device)
            k_views = 0
            for view in iter_uncertainty_views(imgs[idx], self.cfg.uncert_metric):
                pred = self.predict_logits(view).argmax(1)
                votes[rows, pred] += 1
                k_views += 1
        self._count("uncertainty_views", len(cand) * k_views)
        return 1.0 - votes.max(1).values / max(k_views, 1)

    def _count(self, key: str, n: int) -> None:
        self.samples[key] = self.samples.get(key, 0) + n


def aug_spans(sizes: list[int]) -> list[tuple[int, int]]:
    """Runs [i, j) of consecutive batches (sizes given) that make one augmentation chunk: as many
    whole batches as fit in AUG_CHUNK samples, at least one."""
    spans, i = [], 0
    while i < len(sizes):
        j, n = i, 0
        while j < len(sizes) and (n == 0 or n + sizes[j] <= AUG_CHUNK):
            n += sizes[j]
            j += 1
        spans.append((i, j))
        i = j
    return spans


def shuffled_batches(pool: torch.Tensor, batch: int, drop_last: bool) -> list[torch.Tensor]:
    """A random permutation of ``pool`` cut into batches."""
    if len(pool) == 0 or batch <= 0:
        return []
    perm = pool[torch.randperm(len(pool), device=pool.device)]
    n_full = len(perm) // batch
    out = list(perm[: n_full * batch].view(n_full, batch)) if n_full else []
    if not drop_last and len(perm) % batch:
        out.append(perm[n_full * batch:])
    return out
