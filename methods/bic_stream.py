"""BiC as the CLIB code runs it, sample-wise (SPEC section 12): ER + KD, a held-out set; ``BiC.form`` picks it
wherever the CVPR'21 code's BiC does not run. Its stream decisions and pure rules are methods.bic_rules'."""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from methods.bic_rules import HeldOutStream, correct_logits, fit_bias_layer
from methods.distill import kd_loss
from methods.er import ER, LR_DECAY
from methods.engine.online_protocol import StepCounter
from methods.engine.optim import clip_grad_norm_unfolded
from utils.data.augment import cutmix
from utils.data.run_data import RunData

logger = logging.getLogger("rm")

T_DISTILL = 2.0  # CLIB: T = 2, soft-target cross-entropy, no T^2 factor, weight 1 (loss = CE + KD)
VALID_FRACTION = 0.1  # CLIB: valid_size = round(0.1 * (memory_size - temp_batchsize)); the memory keeps the rest
BIAS_BATCH = 100  # CLIB: the bias loader's batch size
GRAD_CLIP = 10.0  # CLIB: BiC's online_train clips the gradient norm at 10 (ER does not)
EVAL_CHUNK = 1024  # images per forward pass when the held-out logits are computed


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
        valid_size = round(super().memory_size() * VALID_FRACTION)
        self.held_out = HeldOutStream(data.train_labels, data.n_classes, valid_size, cfg.temp_batchsize,
                                      cfg.online_iter or 1.0, getattr(cfg, "eval_period", 0) or 0)
        self.batch: torch.Tensor | None = None  # the temporary batch being trained; enters the memory after
        self.teacher: nn.Module | None = None
        self.layer = torch.tensor([1.0, 0.0], device=device)  # this task's bias layer (alpha, beta)
        self.layer_trained = False
        self.new_labels: list[int] = []  # classes first exposed in this task (CLIB's bias_labels[cur_iter])
        self.prev_layer, self.prev_trained, self.prev_labels = self.layer.clone(), False, []
        self.new_mask = self.prev_mask = self.class_mask([])
        self.task_id = 0

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
    def chunk_ends(self, n: int, temp_batchsize: int) -> list[int]:
        """Stream positions just after each sample that fills the temporary batch in this task, and ``n``: the
        trainer chunks that would train every batch at CLIB's moment (the trainer chunks every --temp_batchsize
        samples for now, so a batch that fills inside a chunk trains at the chunk's end)."""
        return self.held_out.chunk_ends(n, temp_batchsize)

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
        h = self.held_out
        h.plan(stream, len(self.exposed))
        logger.info("BiC task %d: held-out %d (quota %d per class, %d this task), temporary batch %d carried, "
                    "%d evaluations planned", task_id, len(h.valid), h.quota, len(h.held_pos), len(h.pending),
                    len(h.eval_pos))

    def expose(self, labels: list[int]) -> None:
        """Per new class (CLIB's add_new_class): the decisions up to its first sample, the teacher copied (before
        the head grows), the head grown and the optimizer reset (ER), the class marked as this task's, and
        (but for the first class) the held-out set cut to valid_size // classes per class at random."""
        for c in sorted(c for c in labels if c not in self.exposed):
            self.held_out.advance_to_class(c)
            if self.task_id > 0:  # a copy taken in task 0 is replaced at its end before any use
                self.copy_teacher()
            super().expose([c])
            self.new_labels.append(c)
            self.new_mask = self.class_mask(self.new_labels)
            if c > 0:
                self.held_out.cut(c + 1)

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """Before the chunk's steps: the last trained batch enters the memory; the chunk's decisions."""
        self.flush(task_id)
        self.held_out.take_chunk(len(temp))

    def steps_due(self, counter: StepCounter, n_samples: int) -> int:
        """The steps of the temporary batch that filled in this chunk, if one did (BiC keeps its own counter:
        held-out samples count but do not fill the batch)."""
        ready = self.held_out.take_ready()
        if ready is None:
            return 0
        self.batch, steps = ready
        return steps

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
        self.held_out.end_stream()
        self.flush(task_id)
        self.copy_teacher()

    def after_task(self, task_id: int) -> None:
        self.held_out.stream_seen += len(self.stream)

    # ----------------------------------------------------------------- evaluation
    def valid_full(self) -> bool:
        """CLIB's val_full: every exposed class holds its (non-zero) quota."""
        return self.held_out.full(len(self.exposed))

    def before_eval(self) -> None:
        """CLIB's online_bias_correction: this task's layer starts again at identity; from the second task on,
        with new classes and a full held-out set, it is trained."""
        self.held_out.next_eval()  # in the stream: the decisions up to the evaluated sample
        self.layer, self.layer_trained = torch.tensor([1.0, 0.0], device=self.device), False
        if self.task_id > 0 and self.new_labels and self.valid_full():
            self.train_bias_layer()

    def train_bias_layer(self) -> None:
        """The frozen model's logits of the (un-augmented) held-out set, once; one random split into batches of
        100 (CLIB's shuffled loader is iterated once, then reused), then 256 epochs over those batches."""
        self.model.eval()
        imgs, labels, valid = self.data.train.images, self.data.train_labels, self.held_out.valid
        with torch.no_grad():
            raw = torch.cat([self.predict_logits(imgs[c]) for c in valid.split(EVAL_CHUNK)])
        perm = torch.randperm(len(raw), device=self.device)
        self.count("bias_correction", len(raw))
        ab, loss = fit_bias_layer(raw.double().cpu().numpy(), labels[valid].cpu().numpy(),
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
        return {**self.held_out.state_dict(), "teacher": teacher, "layer": self.layer.cpu(),
                "layer_trained": self.layer_trained, "new_labels": list(self.new_labels),
                "model_training": self.model.training}

    def load_extra_state(self, state: dict) -> None:
        self.held_out.load_state_dict(state)
        self.layer, self.layer_trained = state["layer"].to(self.device), state["layer_trained"]
        self.new_labels = list(state["new_labels"])
        self.model.train(state["model_training"])
        self.teacher = None
        if state["teacher"] is not None:
            t = copy.deepcopy(self.model)
            t.fc = nn.Linear(t.fc.in_features, state["teacher"]["n_out"]).to(self.device)
            t.load_state_dict(state["teacher"]["state"])
            self.teacher = t.train(state["teacher"]["training"]).requires_grad_(False)
