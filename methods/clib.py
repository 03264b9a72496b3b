"""CLIB (Koh et al., ICLR 2022) in the i-Blurry protocol: importance-kept memory, memory-only steps, adaptive lr."""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from methods import register
from methods.clib_rules import (LR_FACTOR, loss_change, lr_decision, newcomer_importance, replacement_slot,
                                update_importance)
from methods.er import ER
from methods.engine.online_protocol import StepCounter, grow_head
from methods.engine.optim import Adam
from utils.data.augment import normalize

logger = logging.getLogger("rm")
LR_PERIOD = 10  # training calls per lr phase (the CLIB code's lr_period)
LR_LENGTH = 10  # loss decreases kept per phase, and needed in both lists for a decision (lr_length)
LR_WARMUP = 20  # no loss decrease is kept at the phase ends up to this training call
LOSS_BATCH = 512  # the batch of the importance pass over the memory


@register("clib")
class CLIB(ER):
    """Each sample enters a memory of --memory_size (when full, it evicts the least important slot of the
    largest class), then ``int(counter)`` steps train on min(|M|, --batchsize) memory samples only. After
    every step the per-sample loss of the whole memory updates the drawn slots' importance; the lr
    alternates between a high and a low value and follows a one-sided Welch test of their loss decreases.
    The head grows keeping Adam's moments; the lr neither decays per step nor restarts at new classes."""

    remember_first = True

    @staticmethod
    def default_temp_batchsize(batchsize: int, follow: str) -> int:
        """The CLIB code has no temporary batch: each sample is remembered, then trains."""
        return 1

    def __init__(self, cfg, data, device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        if self.memory_size() <= 0:
            raise ValueError("--mode clib trains on the memory only: give a --memory_size above 0")
        self.mem_manage = "clib_importance"  # its own rule (the manager only holds the indices)
        self.public = self.follow == "clib"  # the CLIB code's importance step and head lr
        self.importance = torch.zeros(0, dtype=torch.float64, device=device)  # H, one per memory slot
        self.losses = torch.zeros(0, device=device)  # per-slot CE at the last importance pass
        self.fresh = torch.zeros(0, dtype=torch.bool, device=device)  # slots (re)filled since that pass
        self.phase_fresh = torch.zeros(0, dtype=torch.bool, device=device)  # ... since the last lr phase end
        self.prev_losses: torch.Tensor | None = None  # the per-slot CE at the last lr phase end
        self.drawn: torch.Tensor | None = None  # the slots of the current step's batch
        self.high_lr, self.low_lr = cfg.lr, LR_FACTOR * cfg.lr
        self.lr_is_high = True
        self.decreases: dict[str, list[float]] = {"high": [], "low": []}
        self.train_count = 0  # training calls so far: samples that earned at least one step
        self.steps_left = 0  # steps still due for the current sample
        self._inputs = (torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device))

    @classmethod
    def hyper_defaults(cls, follow: str) -> dict:
        """CLIB's adaptive lr moves Adam's learning rate: the CLIB scripts' Adam at 3e-4 in every setting."""
        return {"opt_name": "adam", "lr": 3e-4}

    def memory_size(self) -> int:
        return self.cfg.memory_size

    def build_optimizer(self) -> None:
        """Adam (weight decay 0) with the CLIB code's two groups: the backbone, then the head."""
        head = {id(p) for p in self.model.fc.parameters()}
        body = [p for p in self.model.parameters() if id(p) not in head]
        self.optimizer = Adam(body, lr=self.cfg.lr, weight_decay=0.0, fused=True)
        self.optimizer.add_param_group({"params": list(self.model.fc.parameters())})
        self.scheduler = None

    # ----------------------------------------------------------------- head growth
    def expose(self, labels: list[int]) -> None:
        """Grow the head (old weight rows kept, every bias re-initialised) and move the old head's Adam
        moments to the new one's first rows; the lr is not restarted."""
        n_classes = max(labels) + 1
        if self.optimizer is None:
            self.build_optimizer()
        if n_classes > self.n_out or not self.exposed:
            old = self.model.fc
            self.model.fc = grow_head(old, max(n_classes, self.n_out))
            self.swap_head_group(old, self.model.fc)
        self.head = "linear"
        self.exposed |= set(labels)
        self.num_learning_class = len(self.exposed)

    def swap_head_group(self, old: nn.Linear, new: nn.Linear) -> None:
        """The optimizer's head group now holds ``new``, whose state is the old state padded with zeros.
        The CLIB code adds the group at Adam's initial lr; ``--as_intended`` keeps the current lr."""
        opt = self.optimizer
        lr = opt.param_groups[0]["lr"]
        states = [opt.state.pop(p, None) for p in old.parameters()]
        del opt.param_groups[1]
        opt.add_param_group({"params": list(new.parameters())} if self.public else
                            {"params": list(new.parameters()), "lr": lr})
        for p, st in zip(new.parameters(), states):
            if st:
                opt.state[p] = {k: padded(v, p) if k != "step" else v.clone() for k, v in st.items()}

    # ----------------------------------------------------------------- memory
    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """Each sample of ``temp`` enters the memory in turn."""
        for i in temp.tolist():
            self.remember_one(i)

    def remember_one(self, i: int) -> None:
        """Append sample ``i`` (H: its class's mean, 0 for a class's first), or when the memory is full,
        put it in the least important slot of the largest class (H: its class's other slots' mean, or
        the whole memory's for a class's first, as the CLIB code does)."""
        mem = self.memory.indices
        slot_labels = self.data.train_labels[mem]
        y = int(self.data.train_labels[i])
        if len(mem) < self.memory_size():
            mine = slot_labels == y
            h = float(self.importance[mine].mean()) if bool(mine.any()) else 0.0
            self.memory.indices = torch.cat([mem, mem.new_tensor([i])])
            self.importance = torch.cat([self.importance, self.importance.new_tensor([h])])
            self.losses = torch.cat([self.losses, self.losses.new_zeros(1)])
            self.fresh = torch.cat([self.fresh, self.fresh.new_ones(1)])
            self.phase_fresh = torch.cat([self.phase_fresh, self.phase_fresh.new_ones(1)])
            return
        slot = replacement_slot(slot_labels, self.importance, y)
        mine = slot_labels == y
        alone = int(mine.sum()) == int(mine[slot])  # no other slot of the newcomer's class stays
        h = float(self.importance.mean()) if alone else newcomer_importance(slot_labels, self.importance, y, slot)
        self.memory.indices = mem.clone()  # not in place: a state dict may hold the old tensor
        self.memory.indices[slot] = i
        self.importance[slot] = h
        self.fresh[slot] = True
        self.phase_fresh[slot] = True

    def replay_batch(self, temp: torch.Tensor) -> torch.Tensor:
        """min(|M|, --batchsize) memory samples drawn uniformly without replacement (no stream sample)."""
        mem = self.memory.indices
        self.drawn = torch.randperm(len(mem), device=mem.device)[:min(len(mem), self.cfg.batchsize)]
        return mem[self.drawn]

    # ----------------------------------------------------------------- training
    def steps_due(self, counter: StepCounter, n_samples: int) -> int:
        """The steps the samples earn; none (the counter still spent) while the memory holds one sample and
        the model has a BatchNorm1d, which cannot train on a batch of one (mlp400; the CLIB code fails)."""
        due = counter.add(n_samples)
        single = len(self.memory) < 2 and any(isinstance(m, nn.BatchNorm1d) for m in self.model.modules())
        self.steps_left = 0 if single else due
        return self.steps_left

    def after_step(self) -> None:
        """No per-step lr decay (the CLIB code's clib)."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                   extra: dict[str, torch.Tensor] | None = None):
        """The step (no per-step lr decay), the importance pass, and after the sample's last step the
        adaptive lr."""
        out = super().train_step(x, y, idx, extra)
        self.importance_pass()
        self.steps_left -= 1
        if self.steps_left == 0:
            self.adapt_lr()
        return out

    @torch.no_grad()
    def memory_losses(self) -> torch.Tensor:
        """Per-slot CE of the whole memory: eval mode, un-augmented images; train mode afterwards."""
        mem = self.memory.indices
        x = self.memory_inputs(mem)
        self.model.eval()
        out = [F.cross_entropy(self.model(x[s:s + LOSS_BATCH]), self.data.train_labels[mem[s:s + LOSS_BATCH]],
                               reduction="none") for s in range(0, len(mem), LOSS_BATCH)]
        self.model.train()
        self.count("importance_losses", len(mem))
        return torch.cat(out).float()

    def memory_inputs(self, mem: torch.Tensor) -> torch.Tensor:
        """The normalised images of the memory slots ``mem``, kept between passes: only the slots whose sample
        changed since the last pass are normalised again (one per step once the memory is full)."""
        have, x = self._inputs
        n = min(len(have), len(mem))
        redo = torch.nonzero(have[:n] != mem[:n]).flatten().tolist() + list(range(n, len(mem)))
        if len(mem) != len(have):
            x = torch.cat([x[:n], x.new_empty((len(mem) - n, *x.shape[1:]))]) if n else \
                torch.empty((len(mem), *self.data.train.images.shape[1:]), device=self.device)
        if redo:
            rows = torch.tensor(redo, device=mem.device)
            x[rows] = normalize(self.data.train.images[mem[rows]], self.data.mean, self.data.std)
        self._inputs = (mem.clone(), x)
        return x

    def importance_pass(self) -> None:
        """The drawn slots' H moves by the mean loss change of the slots unchanged since the last pass."""
        losses = self.memory_losses()
        dl = loss_change(self.losses, losses, ~self.fresh)  # 0 when no slot is unchanged (the first pass)
        if self.drawn is not None and len(self.drawn):
            update_importance(self.importance, self.drawn, dl, public=self.public)
        self.drawn = None
        self.losses = losses
        self.fresh.zero_()

    # ----------------------------------------------------------------- adaptive lr
    def adapt_lr(self) -> None:
        """One training call more; every LR_PERIOD calls the phase ends: after LR_WARMUP calls its mean loss
        decrease (slots unchanged in the phase) joins its list; the other lr takes over; with LR_LENGTH
        decreases in both lists, a one-sided Welch test may move both values and restart the lists."""
        self.train_count += 1
        if self.train_count % LR_PERIOD:
            return
        phase = "high" if self.lr_is_high else "low"
        if self.prev_losses is not None and self.train_count > LR_WARMUP:
            n = len(self.prev_losses)
            dec = float((self.prev_losses - self.losses[:n])[~self.phase_fresh[:n]].mean())  # nan when none
            self.decreases[phase] = (self.decreases[phase] + [dec])[-LR_LENGTH:]
        self.prev_losses = self.losses
        self.lr_is_high = not self.lr_is_high
        self.phase_fresh.zero_()
        high, low = self.decreases["high"], self.decreases["low"]
        if len(high) == len(low) >= LR_LENGTH:
            self.decide(high, low)
        self.set_lr(self.high_lr if self.lr_is_high else self.low_lr)

    def decide(self, high: list[float], low: list[float]) -> None:
        """The Welch test's move of both lrs (a NaN decrease, as in SciPy, decides nothing)."""
        factor = 1.0 if any(math.isnan(v) for v in high + low) else lr_decision(high, low)
        if factor == 1.0:
            return
        if factor < 1.0:
            self.high_lr, self.low_lr = self.low_lr, self.low_lr * LR_FACTOR
        else:
            self.high_lr, self.low_lr = self.high_lr / LR_FACTOR, self.high_lr
        logger.info("CLIB: adaptive lr moves %s after %d training calls: high %.3g, low %.3g",
                    "down" if factor < 1.0 else "up", self.train_count, self.high_lr, self.low_lr)
        self.decreases = {"high": [], "low": []}
        self.lr_is_high = not self.lr_is_high

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # ----------------------------------------------------------------- state
    def extra_state(self) -> dict:
        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:  # a copy: the live tensors change in place
            return None if t is None else t.to("cpu", copy=True)
        return {"importance": cpu(self.importance), "losses": cpu(self.losses), "fresh": cpu(self.fresh),
                "phase_fresh": cpu(self.phase_fresh), "prev_losses": cpu(self.prev_losses),
                "high_lr": self.high_lr, "low_lr": self.low_lr, "lr_is_high": self.lr_is_high,
                "decreases": {k: list(v) for k, v in self.decreases.items()}, "train_count": self.train_count,
                "steps_left": self.steps_left}

    def load_extra_state(self, state: dict) -> None:
        def dev(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(self.device, copy=True)
        self.importance, self.losses = dev(state["importance"]), dev(state["losses"])
        self.fresh, self.phase_fresh, self.prev_losses = dev(state["fresh"]), dev(state["phase_fresh"]), \
            dev(state["prev_losses"])
        self.high_lr, self.low_lr, self.lr_is_high = state["high_lr"], state["low_lr"], state["lr_is_high"]
        self.decreases = {k: list(v) for k, v in state["decreases"].items()}
        self.train_count, self.steps_left = state["train_count"], state["steps_left"]
        self.drawn = None


def padded(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """An optimizer moment of an old head as one of ``p``'s shape: its rows first, zeros after."""
    out = torch.zeros_like(p, memory_format=torch.preserve_format)
    r = min(len(v), len(out))
    out[:r] = v[:r]
    return out
