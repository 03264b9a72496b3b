"""BiC's rules as the CLIB code keeps them, sample-wise (SPEC section 12): which stream samples are held out and
when the temporary batch fills (HeldOutStream, no model), and the bias layer's correction and fit (pure functions)."""
from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np
import torch

from methods.engine.online_protocol import anytime_marks, first_positions
from methods.memory.base import rank_within_class

BIAS_EPOCHS = 256  # CLIB: online_bias_correction(n_iter=256), every epoch over the same held-out batches
BIAS_LR = 1e-3  # CLIB: Adam lr of the bias layer


def per_class_take(cand: torch.Tensor, labels: torch.Tensor, per: int) -> torch.Tensor:
    """The first ``per`` candidates of every class, in candidate order (vectorised)."""
    if per <= 0 or len(cand) == 0:
        return cand[:0]
    rank = rank_within_class(labels[cand])
    return cand[rank < per]


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




class HeldOutStream:
    """The CLIB code's BiC stream, its decisions only: which samples are held out (they join the held-out set
    ``valid``, never train nor enter the memory), when the temporary batch (``pending``) fills, and the steps it
    earns (``num_updates``: online_iter per stream sample, held-out ones included; the remainder is carried
    across tasks). A task's decisions are a function of its labels (``plan``); ``advance`` takes them in stream
    order, up to a position. The anytime evaluations' positions are the trainer's: after sample p when
    stream_seen + p + 1 is a multiple of ``eval_period``."""

    def __init__(self, labels: torch.Tensor, n_classes: int, valid_size: int, temp_batchsize: int,
                 online_iter: float, eval_period: int) -> None:
        self.labels, self.n_classes = labels, n_classes  # the training set's labels, on the run's device
        self.valid_size = valid_size
        self.quota = valid_size  # CLIB's val_per_cls: the whole held-out set for the first class
        self.temp_batchsize, self.online_iter, self.eval_period = temp_batchsize, online_iter, eval_period
        none = torch.empty(0, dtype=torch.long, device=labels.device)
        self.valid = none  # the held-out samples (training indices)
        self.pending = none  # CLIB's temp_batch (never held-out)
        self.num_updates = 0.0
        self.ready: torch.Tensor | None = None  # a full temporary batch, trained in this chunk's steps
        self.ready_steps = 0
        self.stream_seen = 0  # stream samples of the finished tasks
        self.plan(none, 0, in_stream=False)

    def plan(self, stream: torch.Tensor, n_known: int, in_stream: bool = True) -> None:
        """The decisions of a task's ``stream`` (``n_known`` classes exposed before it) as position lists, and
        the positions of its anytime evaluations."""
        y = self.labels[stream].cpu()
        counts = torch.bincount(self.labels[self.valid].cpu(), minlength=self.n_classes)
        held = held_out_plan(y, counts, self.quota, n_known, self.valid_size)
        pos = torch.arange(len(y))
        self.held_pos, self.used_pos = pos[held].tolist(), pos[~held].tolist()
        held_d = held.to(stream.device)
        self.held_idx, self.used_idx = stream[held_d], stream[~held_d]
        self.first_pos = first_positions(y, self.n_classes).tolist()
        period, seen, n = self.eval_period, self.stream_seen, len(y)
        self.eval_pos = [q - seen - 1 for q in anytime_marks(seen, n, period)]
        self.length, self.cursor, self.chunk_end, self.eval_k = n, 0, 0, 0
        self.in_stream = in_stream

    def advance(self, upto: int) -> None:
        """Take the decisions of stream positions [cursor, upto): held-out samples join the held-out set, the
        others the temporary batch; each adds online_iter to the counter. When the batch fills (at most once
        per trainer chunk) it is set aside with int(counter) steps, counted up to its last sample."""
        lo = self.cursor
        if upto <= lo:
            return
        hl, hh = bisect_left(self.held_pos, lo), bisect_left(self.held_pos, upto)
        if hh > hl:
            self.valid = torch.cat([self.valid, self.held_idx[hl:hh]])
        ul, uh = bisect_left(self.used_pos, lo), bisect_left(self.used_pos, upto)
        need, it = self.temp_batchsize - len(self.pending), self.online_iter
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
        """Stream positions just after each sample that fills the temporary batch in this task, and ``n``."""
        first = temp_batchsize - len(self.pending) - 1
        return sorted({self.used_pos[k] + 1 for k in range(first, len(self.used_pos), temp_batchsize)} | {n})

    def take_chunk(self, n: int) -> None:
        """The trainer's next chunk of ``n`` stream samples: its decisions."""
        self.chunk_end += n
        self.advance(self.chunk_end)

    def take_ready(self) -> tuple[torch.Tensor, int] | None:
        """The temporary batch that filled in this chunk and its steps, if one did."""
        if self.ready is None:
            return None
        ready, self.ready = self.ready, None
        return ready, self.ready_steps

    def advance_to_class(self, c: int) -> None:
        """The decisions up to class ``c``'s first sample in the stream (where it is not there: up to now)."""
        p = self.first_pos[c] if c < len(self.first_pos) and self.first_pos[c] < self.length else self.cursor
        self.advance(p)

    def cut(self, n_classes: int) -> None:
        """``n_classes`` exposed, more than one: the quota becomes valid_size // n_classes per class and every
        class is cut to it, a random subset."""
        self.quota = self.valid_size // n_classes
        perm = torch.randperm(len(self.valid), device=self.valid.device)
        self.valid = per_class_take(self.valid[perm], self.labels, self.quota)

    def next_eval(self) -> None:
        """An anytime evaluation in the stream: the decisions up to the evaluated sample."""
        if self.in_stream and self.eval_k < len(self.eval_pos):
            self.advance(self.eval_pos[self.eval_k] + 1)
            self.eval_k += 1

    def end_stream(self) -> None:
        """After the task's stream: every decision taken."""
        self.advance(self.length)
        self.in_stream = False

    def full(self, n_exposed: int) -> bool:
        """CLIB's val_full: every exposed class holds its (non-zero) quota."""
        return self.quota > 0 and len(self.valid) == self.quota * n_exposed

    def state_dict(self) -> dict:
        """After a task: the held-out set and its quota, the carried temporary batch and counter."""
        return {"valid": self.valid.cpu(), "quota": self.quota, "pending": self.pending.cpu(),
                "num_updates": self.num_updates, "stream_seen": self.stream_seen}

    def load_state_dict(self, state: dict) -> None:
        device = self.labels.device
        self.valid, self.quota = state["valid"].to(device), state["quota"]
        self.pending, self.num_updates = state["pending"].to(device), state["num_updates"]
        self.stream_seen = state["stream_seen"]
