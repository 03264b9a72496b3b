"""BiC as the CLIB code runs it, sample-wise (SPEC section 12): ER + KD, a held-out set; ``BiC.form`` picks it
wherever the CVPR'21 code's BiC does not run."""
from __future__ import annotations

import copy
import logging
import math
from bisect import bisect_left

import numpy as np
import torch
from torch import nn

from methods.bic import per_class_take
from methods.distill import kd_loss
from methods.er import ER, LR_DECAY
from methods.memory.base import rank_within_class
from methods.engine.online_protocol import StepCounter, first_positions
from methods.engine.optim import clip_grad_norm_unfolded
from utils.data.augment import cutmix
from utils.data.run_data import RunData

logger = logging.getLogger("rm")

T_DISTILL = 2.0  # CLIB: T = 2, soft-target cross-entropy, no T^2 factor, weight 1 (loss = CE + KD)
VALID_FRACTION = 0.1  # CLIB: valid_size = round(0.1 * (memory_size - temp_batchsize)); the memory keeps the rest
BIAS_EPOCHS = 256  # CLIB: online_bias_correction(n_iter=256), every epoch over the same held-out batches
BIAS_BATCH = 100  # CLIB: the bias loader's batch size
BIAS_LR = 1e-3  # CLIB: Adam lr of the bias layer
GRAD_CLIP = 10.0  # CLIB: BiC's online_train clips the gradient norm at 10 (ER does not)
EVAL_CHUNK = 1024  # images per forward pass when the held-out logits are computed


def held_out_plan(y: torch.Tensor, counts: torch.Tensor, quota: int, n_known: int, valid_size: int) -> torch.Tensor:
    """[len(y)] True where the CLIB rule holds a stream sample out (it never trains nor enters the memory).

    ``y``: the task's stream labels (ranks by appearance, so the classes first exposed now are those
    >= ``n_known``, in that order); ``counts``: held-out samples per class at the task start; ``quota``:
    held-out samples allowed per class now. A sample is held out while its class has fewer than the quota;
    at each new class (but the first ever) the quota becomes ``valid_size // classes exposed`` and every
    class is cut to it (a random subset, drawn at the exposure: only the counts matter here)."""
    n, n_cls = len(y), counts.numel()
    first = first_positions(y, n_cls).tolist()
    new = sorted((c for c in range(n_known, n_cls) if first[c] < n), key=lambda c: first[c])
    bounds = [0] + [first[c] for c in new] + [n]
    counts, held = counts.clone(), torch.zeros(n, dtype=torch.bool, device=y.device)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):  # one segment per exposure: vectorised inside
        if i > 0 and new[i - 1] > 0:
            quota = valid_size // (new[i - 1] + 1)
            counts.clamp_(max=quota)
        ys = y[a:b]
        h = rank_within_class(ys) < (quota - counts).clamp(min=0)[ys]
        held[a:b] = h
        counts += torch.bincount(ys[h], minlength=n_cls)
    return held


def correct_logits(logits: torch.Tensor, layer: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CLIB's online_bias_forward: alpha * o_c + beta on the masked classes (one layer: layer = [alpha, beta]),
    every other logit unchanged."""
    m = mask[: logits.shape[1]]
    return torch.where(m, logits * layer[0] + layer[1], logits)


def fit_bias_layer(raw: np.ndarray, y: np.ndarray, mask: np.ndarray, batches: list[np.ndarray],
                   epochs: int = BIAS_EPOCHS, lr: float = BIAS_LR) -> tuple[np.ndarray, float]:
    """CLIB's stage 2 on frozen logits ``raw`` [n, C] of labels ``y``: (alpha, beta) from (1, 0), applied to the
    ``mask``ed classes, minimise the mean CE of each of the ``batches`` (index arrays) in turn, ``epochs`` times,
    with Adam (torch's update, default betas and eps). The gradient is the closed form of the CE's, on the host in
    float64: 256 epochs cost milliseconds. Returns ((alpha, beta), the last step's loss)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    m = mask[: raw.shape[1]]
    parts = []
    for b in batches:
        r = raw[np.asarray(b)]
        onehot = np.eye(raw.shape[1])[y[np.asarray(b)]]
        parts.append((r, r[:, m], onehot, len(r)))
    p, m1, v, loss, t = np.array([1.0, 0.0]), np.zeros(2), np.zeros(2), float("nan"), 0
    for _ in range(epochs):
        for r, rm, onehot, n in parts:
            t += 1
            z = r.copy()
            z[:, m] = rm * p[0] + p[1]
            z -= z.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            loss = float(-(logp * onehot).sum() / n)
            g = ((np.exp(logp) - onehot) / n)[:, m]  # dCE/dz on the corrected classes
            grad = np.array([(g * rm).sum(), g.sum()])
            m1 = b1 * m1 + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            p = p - lr / (1 - b1 ** t) * m1 / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    return p, loss


class BiCStream(ER):
    """ER (temporary batch + uniform replay from a reservoir of 443 for memory 500) with a held-out set of 49
    and, from the second task on, CE + KD (T=2) against a copy of the model taken at every new class (before
    its head grows) and at every task end, the teacher's logits corrected by the previous task's bias layer
    on that task's new classes. At every evaluation, a fresh bias layer (alpha, beta) for the classes first
    exposed in this task is trained on the held-out set's logits (Adam 1e-3, 256 epochs, batches of 100)
    once the held-out set is full, and corrects those classes' logits; only this task's layer is applied.
    Held-out samples count toward ``online_iter``'s counter but not toward the temporary batch, which
    fills with the other samples and keeps its remainder across tasks (CLIB). KD is always on (the CLIB
    scripts' default; --distilling is the blurry protocol's flag). Gradients are clipped at norm 10."""

    name = "bic"
    remember_first = True  # the chunk's held-out decisions are taken before its steps (``remember``)
    grad_clip = GRAD_CLIP

    def __init__(self, cfg, data: RunData, device: torch.device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        self.mem_manage = "reservoir+held_out"
        self.valid_size = round(super().memory_size() * VALID_FRACTION)
        self.quota = self.valid_size  # CLIB's val_per_cls: the whole held-out set for the first class
        self.valid = torch.empty(0, dtype=torch.long, device=device)  # the held-out samples (training indices)
        self.pending = torch.empty(0, dtype=torch.long, device=device)  # CLIB's temp_batch (never held-out)
        self.num_updates = 0.0  # CLIB's counter: online_iter per stream sample, held-out ones included
        self.ready: torch.Tensor | None = None  # a full temporary batch, trained in this chunk's steps
        self.ready_steps = 0
        self.batch: torch.Tensor | None = None  # the temporary batch being trained; enters the memory after
        self.teacher: nn.Module | None = None
        self.layer = torch.tensor([1.0, 0.0], device=device)  # this task's bias layer (alpha, beta)
        self.layer_trained = False
        self.new_labels: list[int] = []  # classes first exposed in this task (CLIB's bias_labels[cur_iter])
        self.prev_layer, self.prev_trained, self.prev_labels = self.layer.clone(), False, []
        self.new_mask = self.prev_mask = self.class_mask([])
        self.stream_seen = 0  # stream samples of the finished tasks (the anytime evaluations' positions)
        self.task_id = 0
        self._plan(torch.empty(0, dtype=torch.long, device=device), in_stream=False)

    def memory_size(self) -> int:
        """--memory_size - --temp_batchsize (ER), less the held-out set's 10% of it: 443 + 49 for 500 and 8."""
        base = super().memory_size()
        return base - round(base * VALID_FRACTION)

    # ----------------------------------------------------------------- masks
    def class_mask(self, labels: list[int]) -> torch.Tensor:
        mask = torch.zeros(self.data.n_classes, dtype=torch.bool)
        mask[labels] = True
        return mask.to(self.device)

    # ----------------------------------------------------------------- the stream
    def _plan(self, stream: torch.Tensor, in_stream: bool) -> None:
        """The task's held-out decisions (a function of its labels only) as position lists, and the positions
        of its anytime evaluations (the trainer's: after sample p when stream_seen + p + 1 is a multiple of
        --eval_period)."""
        labels = self.data.train_labels
        y = labels[stream].cpu()
        counts = torch.bincount(labels[self.valid].cpu(), minlength=self.data.n_classes)
        held = held_out_plan(y, counts, self.quota, len(self.exposed), self.valid_size)
        pos = torch.arange(len(y))
        self.held_pos, self.used_pos = pos[held].tolist(), pos[~held].tolist()
        held_d = held.to(stream.device)
        self.held_idx, self.used_idx = stream[held_d], stream[~held_d]
        self.first_pos = first_positions(y, self.data.n_classes).tolist()
        period, seen, n = getattr(self.cfg, "eval_period", 0) or 0, self.stream_seen, len(y)
        self.eval_pos = [q - seen - 1 for q in range((seen // period + 1) * period, seen + n + 1, period)] \
            if period > 0 else []
        self.cursor = self.chunk_end = self.eval_k = 0
        self.in_stream = in_stream

    def advance(self, upto: int) -> None:
        """Take the held-out decisions of stream positions [cursor, upto): held-out samples join the held-out
        set, the others the temporary batch; each adds online_iter to the counter. When the batch fills (at
        most once per trainer chunk) it is set aside with int(counter) steps, counted up to its last sample."""
        lo = self.cursor
        if upto <= lo:
            return
        hl, hh = bisect_left(self.held_pos, lo), bisect_left(self.held_pos, upto)
        if hh > hl:
            self.valid = torch.cat([self.valid, self.held_idx[hl:hh]])
        ul, uh = bisect_left(self.used_pos, lo), bisect_left(self.used_pos, upto)
        need, it = self.cfg.temp_batchsize - len(self.pending), self.cfg.online_iter or 1.0
        if uh - ul >= need:
            if self.ready is not None:
                raise RuntimeError("bic: two temporary batches filled in one trainer chunk (a bug; please report it)")
            f = self.used_pos[ul + need - 1]
            self.num_updates += it * (f + 1 - lo)
            self.ready_steps = int(self.num_updates)
            self.num_updates -= self.ready_steps
            self.ready = torch.cat([self.pending, self.used_idx[ul:ul + need]])
            self.pending = self.used_idx[ul + need:uh]
            self.num_updates += it * (upto - f - 1)
        else:
            self.pending = torch.cat([self.pending, self.used_idx[ul:uh]])
            self.num_updates += it * (upto - lo)
        self.cursor = upto

    def chunk_ends(self, n: int, temp_batchsize: int) -> list[int]:
        """Stream positions just after each sample that fills the temporary batch in this task, and ``n``: the
        trainer chunks that would train every batch at CLIB's moment (the trainer chunks every --temp_batchsize
        samples for now, so a batch that fills inside a chunk trains at the chunk's end)."""
        first = temp_batchsize - len(self.pending) - 1
        return sorted({self.used_pos[k] + 1 for k in range(first, len(self.used_pos), temp_batchsize)} | {n})

    def flush(self, task_id: int) -> None:
        """The trained temporary batch enters the reservoir (CLIB: right after its steps; nothing reads the
        memory in between)."""
        if self.batch is not None:
            self.memory.update(self.batch, task_id, self.n_out)
            self.batch = None

    def copy_teacher(self) -> None:
        """CLIB's prev_model = deepcopy(model), in whatever train/eval mode the model is in now."""
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        for p in self.teacher.parameters():
            p.grad = None

    # ----------------------------------------------------------------- hooks
    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor,
                    shown: list[int] | None = None) -> None:
        super().before_task(task_id, stream, test_idx, shown)
        self.task_id = task_id
        self.prev_layer, self.prev_trained, self.prev_labels = self.layer, self.layer_trained, self.new_labels
        self.prev_mask = self.class_mask(self.prev_labels)
        self.layer, self.layer_trained, self.new_labels = torch.tensor([1.0, 0.0], device=self.device), False, []
        self.new_mask = self.class_mask([])
        self._plan(stream, in_stream=True)
        logger.info("BiC task %d: held-out %d (quota %d per class, %d this task), temporary batch %d carried, "
                    "%d evaluations planned", task_id, len(self.valid), self.quota, len(self.held_pos),
                    len(self.pending), len(self.eval_pos))

    def expose(self, labels: list[int]) -> None:
        """Per new class (CLIB's add_new_class): the decisions up to its first sample, the teacher copied (before
        the head grows), the head grown and the optimizer reset (ER), the class marked as this task's, and
        (but for the first class) the held-out set cut to valid_size // classes per class at random."""
        for c in sorted(c for c in labels if c not in self.exposed):
            p = self.first_pos[c] if c < len(self.first_pos) and self.first_pos[c] < len(self.stream) else self.cursor
            self.advance(p)
            if self.task_id > 0:  # a copy taken in task 0 is replaced at its end before any use
                self.copy_teacher()
            super().expose([c])
            self.new_labels.append(c)
            self.new_mask = self.class_mask(self.new_labels)
            if c > 0:
                self.quota = self.valid_size // (c + 1)
                perm = torch.randperm(len(self.valid), device=self.device)
                self.valid = per_class_take(self.valid[perm], self.data.train_labels, self.quota)

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """Before the chunk's steps: the last trained batch enters the memory; the chunk's decisions."""
        self.flush(task_id)
        self.chunk_end += len(temp)
        self.advance(self.chunk_end)

    def steps_due(self, counter: StepCounter, n_samples: int) -> int:
        """The steps of the temporary batch that filled in this chunk, if one did (BiC keeps its own counter:
        held-out samples count but do not fill the batch)."""
        if self.ready is None:
            return 0
        self.batch, self.ready = self.ready, None
        return self.ready_steps

    def replay_batch(self, temp: torch.Tensor) -> torch.Tensor:
        """The full temporary batch (not the trainer's chunk, whose held-out samples never train) + memory."""
        return super().replay_batch(self.batch)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                   extra: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CE (cutmix p=0.5) + KD on the old classes from the second task on; clipped, Adam, lr decay."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cutmix and np.random.rand() < 0.5:
            x, ya, yb, lam = cutmix(x, y, alpha=1.0)
            logits = self.net(x)
            loss = lam * self.criterion(logits, ya) + (1 - lam) * self.criterion(logits, yb)
        else:
            logits = self.net(x)
            loss = self.criterion(logits, y)
        if self.task_id > 0 and self.teacher is not None:
            with torch.no_grad():
                old = self.teacher(x)
                if self.prev_trained:
                    old = correct_logits(old, self.prev_layer, self.prev_mask)
            loss = loss + kd_loss(old, logits, T_DISTILL)
        loss.backward()
        clip_grad_norm_unfolded(self.model, self.grad_clip)
        self.optimizer.step()
        for g in self.optimizer.param_groups:
            g["lr"] *= LR_DECAY
        return loss, logits, y

    def after_stream(self, task_id: int) -> None:
        """CLIB's online_after_task: the teacher copied (before the task's last evaluation)."""
        self.advance(len(self.stream))
        self.flush(task_id)
        self.in_stream = False
        self.copy_teacher()

    def after_task(self, task_id: int) -> None:
        self.stream_seen += len(self.stream)

    # ----------------------------------------------------------------- evaluation
    def valid_full(self) -> bool:
        """CLIB's val_full: every exposed class holds its (non-zero) quota."""
        return self.quota > 0 and len(self.valid) == self.quota * len(self.exposed)

    def before_eval(self) -> None:
        """CLIB's online_bias_correction: this task's layer starts again at identity; from the second task on,
        with new classes and a full held-out set, it is trained."""
        if self.in_stream and self.eval_k < len(self.eval_pos):
            self.advance(self.eval_pos[self.eval_k] + 1)  # the decisions up to the evaluated sample
            self.eval_k += 1
        self.layer, self.layer_trained = torch.tensor([1.0, 0.0], device=self.device), False
        if self.task_id > 0 and self.new_labels and self.valid_full():
            self.train_bias_layer()

    def train_bias_layer(self) -> None:
        """The frozen model's logits of the (un-augmented) held-out set, once; one random split into batches of
        100 (CLIB's shuffled loader is iterated once, then reused), then 256 epochs over those batches."""
        self.model.eval()
        imgs, labels = self.data.train.images, self.data.train_labels
        with torch.no_grad():
            raw = torch.cat([self.predict_logits(imgs[c]) for c in self.valid.split(EVAL_CHUNK)])
        perm = torch.randperm(len(raw), device=self.device)
        self.count("bias_correction", len(raw))
        ab, loss = fit_bias_layer(raw.double().cpu().numpy(), labels[self.valid].cpu().numpy(),
                                  self.new_mask.cpu().numpy(), [b.numpy() for b in perm.cpu().split(BIAS_BATCH)])
        self.layer, self.layer_trained = torch.tensor(ab, dtype=torch.float32, device=self.device), True
        logger.debug("BiC bias layer (task %d, classes %s, %d held out): alpha %.4f, beta %.4f, loss %.4f",
                     self.task_id, self.new_labels, len(raw), ab[0], ab[1], loss)

    @torch.no_grad()
    def eval_scores(self, x: torch.Tensor) -> torch.Tensor:
        """The logits, this task's new classes corrected by this task's layer (CLIB: only the current one)."""
        logits = self.predict_logits(x)
        return correct_logits(logits, self.layer, self.new_mask) if self.layer_trained else logits

    # ----------------------------------------------------------------- state
    def extra_state(self) -> dict:
        """After a task: the held-out set and its quota, the carried temporary batch and counter, the teacher,
        the task's bias layer and classes, and the model's train/eval mode (the next teacher copies it)."""
        t = self.teacher
        teacher = None if t is None else {"state": {k: v.detach().cpu() for k, v in t.state_dict().items()},
                                          "n_out": t.fc.out_features, "training": t.training}
        return {"valid": self.valid.cpu(), "quota": self.quota, "pending": self.pending.cpu(),
                "num_updates": self.num_updates, "teacher": teacher, "layer": self.layer.cpu(),
                "layer_trained": self.layer_trained, "new_labels": list(self.new_labels),
                "stream_seen": self.stream_seen, "model_training": self.model.training}

    def load_extra_state(self, state: dict) -> None:
        self.valid, self.quota = state["valid"].to(self.device), state["quota"]
        self.pending, self.num_updates = state["pending"].to(self.device), state["num_updates"]
        self.layer, self.layer_trained = state["layer"].to(self.device), state["layer_trained"]
        self.new_labels, self.stream_seen = list(state["new_labels"]), state["stream_seen"]
        self.model.train(state["model_training"])
        self.teacher = None
        if state["teacher"] is not None:
            t = copy.deepcopy(self.model)
            t.fc = nn.Linear(t.fc.in_features, state["teacher"]["n_out"]).to(self.device)
            t.load_state_dict(state["teacher"]["state"])
            self.teacher = t.train(state["teacher"]["training"]).requires_grad_(False)
