"""BiC (Wu et al., CVPR 2019): CE + distillation, a held-out 10% of memory, one bias layer per task."""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from methods import register
from methods.base import Method
from methods.bic_rules import per_class_take
from methods.distill import kd_loss
from methods.engine.evaluation import EVAL_BATCH
from methods.engine.optim import Adam

logger = logging.getLogger("rm")

T_DISTILL = 2.0  # public code: T = 2, no T^2 factor
VALID_FRACTION = 0.1  # public code: valid_size = round(0.1 * memory_size), memory gets the rest
BIAS_BATCH = 100  # public code: bias loader batch size
BIAS_LR = 1e-3  # public code: Adam lr of stage 2


def apply_bias(logits: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per-class affine correction q_c = alpha_c * o_c + beta_c (alpha/beta indexed by class)."""
    n = logits.shape[1]
    return logits * alpha[:n] + beta[:n]


def bias_layer_step(p: torch.Tensor, opt: torch.optim.Optimizer, raw: torch.Tensor, y: torch.Tensor,
                    mask: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """One stage-2 step: CE of the corrected logits; only p = (alpha, beta) of the masked classes learns."""
    a = torch.where(mask, p[0], alpha)
    b = torch.where(mask, p[1], beta)
    loss = F.cross_entropy(apply_bias(raw, a, b), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


@register("bic")
class BiC(Method):
    """Stage 1: fine-tuning on stream + memory with (optional) distillation from the model of the
    previous task; stage 2 (t > 0): the bias layer of task t (alpha, beta on the classes first
    exposed in task t) trained on the held-out set. Earlier layers stay frozen and all are applied.
    A task's accuracy is its final model's (the public BiC records it, not the best epoch's)."""

    default_memory = "prototype"
    task_acc_is_final = True

    def __init__(self, cfg, data, device: torch.device, writer=None) -> None:
        self.valid_size = round(cfg.memory_size * VALID_FRACTION)
        super().__init__(cfg, data, device, writer)
        if self.cutmix:
            logger.info("bic: cutmix is ignored (the public BiC trainer has none)")
        self.heldout = torch.empty(0, dtype=torch.long, device=device)
        self.first_task = torch.zeros(data.n_classes, dtype=torch.long, device=device)  # layer index per class
        self.layers: list[torch.Tensor] = [torch.tensor([1.0, 0.0], device=device)]  # task 0: identity, never trained
        self.old_model: nn.Module | None = None
        self.new_classes: list[int] = []
        self.lam = 0.0
        self._refresh()

    def memory_size(self) -> int:
        """The memory gets what the held-out set leaves (public: valid_size = round(0.1 * memory_size))."""
        return self.cfg.memory_size - self.valid_size

    def _refresh(self) -> None:
        ab = torch.stack(self.layers)[self.first_task]
        self.alpha, self.beta = ab[:, 0].contiguous(), ab[:, 1].contiguous()
        self.identity = all(t.tolist() == [1.0, 0.0] for t in self.layers)  # once per task: skip a no-op

    def correct(self, logits: torch.Tensor) -> torch.Tensor:
        """All bias layers, each on the classes first exposed in its task."""
        return logits if self.identity else apply_bias(logits, self.alpha, self.beta)

    @classmethod
    def form(cls, follow: str) -> type:
        """The CLIB code's BiC where the CVPR'21 code's does not run (methods.bic_stream)."""
        if follow == "cvpr21":
            return cls
        from methods.bic_stream import BiCStream
        return BiCStream

    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor,
                    shown: list[int] | None = None) -> None:
        learned = set(self.exposed)
        self.old_model = None
        if task_id > 0 and self.cfg.distilling:  # frozen copy of the previous task's model (before the new head)
            self.old_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        super().before_task(task_id, stream, test_idx, shown)
        self.new_classes = sorted(self.exposed - learned)
        self.lam = len(learned) / max(len(self.exposed), 1)  # public: len(learned) / len(exposed)
        while len(self.layers) <= task_id:
            self.layers.append(torch.tensor([1.0, 0.0], device=self.device))
        if task_id > 0 and self.new_classes:
            self.first_task[torch.tensor(self.new_classes, device=self.device)] = task_id
        self._refresh()
        # held-out set: valid_size // |exposed| per class, kept old samples first, then this task's stream;
        # removed from the stream, so it is never trained on and never enters the memory
        per = self.valid_size // max(len(self.exposed), 1)
        old = self.heldout[torch.randperm(len(self.heldout), device=self.device)]
        self.heldout = per_class_take(torch.cat([old, self.stream]), self.data.train_labels, per)
        self.stream = self.stream[~torch.isin(self.stream, self.heldout)]
        if task_id == 0:
            what = f"classes {self.new_classes} (first task: no bias layer)"
        elif self.new_classes:
            what = f"classes first exposed now {self.new_classes} -> bias layer {task_id}"
        else:
            what = f"no class first exposed now: bias layer {task_id} stays identity, stage 2 skipped"
        logger.info("BiC task %d: %s; lambda %.3f; held-out %d (%d per class), memory budget %d", task_id, what,
                    self.lam, len(self.heldout), per, self.memory.size)

    @torch.no_grad()
    def old_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen old model's bias-corrected scores of augmented images ``x`` (eval mode: per
        sample, so a chunk in a few large passes equals one pass per batch)."""
        return torch.cat([self.correct(self.old_model(x[s:s + EVAL_BATCH])) for s in range(0, len(x), EVAL_BATCH)])

    def chunk_extras(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """With distillation: the old model's scores of the whole augmented chunk."""
        return None if self.old_model is None else {"old_logits": self.old_scores(x)}

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                   extra: dict[str, torch.Tensor] | None = None):
        """(1 - lam) * CE + lam * KD on bias-corrected logits with --distilling (public code), else CE;
        the old model's scores come from ``extra["old_logits"]`` (computed here when not given)."""
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.correct(self.net(x))
        loss = F.cross_entropy(logits, y)
        if self.old_model is not None:
            old = extra["old_logits"] if extra is not None else self.old_scores(x)
            loss = self.lam * kd_loss(old, logits, T_DISTILL) + (1.0 - self.lam) * loss
        loss.backward()
        self.optimizer.step()
        return loss, logits, y

    @torch.no_grad()
    def eval_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.correct(self.predict_logits(x))

    def after_training(self, task_id: int) -> bool:
        """Stage 2 after the task's last training call: the bias correction."""
        return self.train_bias_layer(task_id)

    def train_bias_layer(self, task_id: int) -> bool:
        """Adam (lr 1e-3), n_epoch epochs, batches of 100 of the augmented held-out set, model frozen."""
        if task_id == 0 or not self.new_classes or len(self.heldout) == 0:
            return False
        p = self.layers[task_id].clone().requires_grad_(True)
        opt = Adam([p], lr=BIAS_LR)
        mask = self.first_task == task_id
        self.model.eval()
        imgs, labels = self.data.train.images, self.data.train_labels
        loss_sum = torch.zeros((), device=self.device)
        n_steps = self.cfg.n_epoch * -(-len(self.heldout) // BIAS_BATCH)
        for _ in range(self.cfg.n_epoch):
            perm = self.heldout[torch.randperm(len(self.heldout), device=self.device)]
            for s in range(0, len(perm), BIAS_BATCH):
                idx = perm[s:s + BIAS_BATCH]
                with torch.no_grad():
                    raw = self.model(self.train_aug(imgs[idx]))
                loss_sum += bias_layer_step(p, opt, raw, labels[idx], mask, self.alpha, self.beta)
            self.count("bias_correction", len(perm))
        self.layers[task_id] = p.detach()
        self._refresh()
        alpha, beta = self.layers[task_id].tolist()
        logger.info("BiC stage 2, task %d: alpha %.4f beta %.4f (mean loss %.4f); layers %s", task_id, alpha, beta,
                    loss_sum.item() / n_steps, [[round(v, 4) for v in t.tolist()] for t in self.layers])
        if self.writer is not None:
            self.writer.add_scalar("BiC/alpha", alpha, task_id)
            self.writer.add_scalar("BiC/beta", beta, task_id)
        return True

    def extra_state(self) -> dict:
        return {"heldout": self.heldout.cpu(), "first_task": self.first_task.cpu(),
                "layers": [t.cpu() for t in self.layers]}

    def load_extra_state(self, state: dict) -> None:
        self.heldout = state["heldout"].to(self.device)
        self.first_task = state["first_task"].to(self.device)
        self.layers = [t.to(self.device) for t in state["layers"]]
        self._refresh()
