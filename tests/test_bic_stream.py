"""BiC in the i-Blurry protocol (the CLIB code's): held-out rule and memory split, the temporary batch and its
counter, KD against the corrected teacher, the bias layer (its fit and the classes it touches), and its state."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from methods import get_method_class
from methods.bic import bias_layer_step
from methods.bic_rules import HeldOutStream, correct_logits, fit_bias_layer, held_out_plan
from methods.bic_stream import BiCStream
from methods.engine.trainer import Settings, Trainer
from tests.synthetic import synthetic_method

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(memory_size: int = 500, n_cls: int = 3, per_cls: int = 100) -> BiCStream:
    """i-Blurry BiC on random 28x28 images (label = index % n_cls), temp batch 8, batch 16, eval every 50."""
    torch.manual_seed(0)
    argv = ["--mode", "bic", "--dataset", "mnist", "--exp_name", "iblurry50_10", "--memory_size", str(memory_size),
            "--eval_period", "50", "--transforms"]
    m = synthetic_method(argv, n_cls, per_cls)
    assert isinstance(m, BiCStream)
    return m


def idx(c: int, ks, n_cls: int = 3) -> list[int]:
    """Training indices of class c's samples number ks (label = index % n_cls)."""
    return [n_cls * k + c for k in ks]


def test_registered_apart_from_the_blurry_bic_and_memory_split():
    assert get_method_class("bic").form("clib") is BiCStream and get_method_class("bic").form("paper") is BiCStream
    assert get_method_class("bic").form("cvpr21") is not BiCStream
    m = make(500)  # CLIB: 500 - 8 = 492; held out round(49.2) = 49, reservoir 443
    assert (m.cfg.temp_batchsize, m.held_out.valid_size, m.memory.size, m.held_out.quota) == (8, 49, 443, 49)
    assert (make(200).held_out.valid_size, make(200).memory.size) == (19, 173)


def test_held_out_rule_by_hand():
    # valid_size 6: class 0 (first ever) may hold 6; class 1 arrives: 3 each (class 0 cut); class 2: 2 each
    y = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 2, 2, 2])
    held = held_out_plan(y, torch.zeros(3, dtype=torch.long), 6, 0, 6)
    assert held.int().tolist() == [1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0]
    # a later task: 3 classes known holding [2, 1, 2] of quota 2; class 3 arrives: 6 // 4 = 1 each
    y = torch.tensor([1, 0, 1, 3, 1, 3, 3])
    held = held_out_plan(y, torch.tensor([2, 1, 2, 0]), 2, 3, 6)
    assert held.int().tolist() == [1, 0, 0, 1, 0, 0, 0]


def test_held_out_stream_decisions_by_hand():
    """valid_size 4, temporary batch 3, online_iter 1, an evaluation every 4 samples; the stream: 6 samples of
    class 0 then 4 of class 1 (training indices 10..19). Held out: class 0's first 4, then (quota 4 // 2) class
    1's first 2; the batch fills with positions 4, 5, 8 at position 8, having earned 9 steps."""
    labels = torch.tensor([9] * 10 + [0] * 6 + [1] * 4)
    h = HeldOutStream(labels, 10, valid_size=4, temp_batchsize=3, online_iter=1.0, eval_period=4)
    stream = torch.arange(10, 20)
    h.plan(stream, 0)
    assert (h.held_pos, h.used_pos, h.eval_pos) == ([0, 1, 2, 3, 6, 7], [4, 5, 8, 9], [3, 7])
    assert h.chunk_ends(10, 3) == [9, 10]
    h.next_eval()  # the evaluation after position 3: the decisions up to it
    assert (h.valid.tolist(), h.pending.tolist(), h.num_updates, h.take_ready()) == ([10, 11, 12, 13], [], 4.0, None)
    h.take_chunk(9)
    batch, steps = h.take_ready()
    assert (batch.tolist(), steps, h.pending.tolist(), h.num_updates) == ([14, 15, 18], 9, [], 0.0)
    assert h.valid.tolist() == [10, 11, 12, 13, 16, 17] and not h.full(2)
    h.end_stream()
    assert (h.pending.tolist(), h.num_updates, h.in_stream) == ([19], 1.0, False)
    h.cut(2)  # two classes: 2 each, class 0's 2 at random
    kept = h.valid.tolist()
    assert h.quota == 2 and sorted(kept)[2:] == [16, 17] and set(sorted(kept)[:2]) < {10, 11, 12, 13} and h.full(2)
    h.stream_seen += 10
    h2 = HeldOutStream(labels, 10, 4, 3, 1.0, 4)
    h2.load_state_dict(h.state_dict())
    assert (h2.valid.tolist(), h2.pending.tolist(), h2.quota, h2.num_updates, h2.stream_seen) == \
        (kept, [19], 2, 1.0, 10)


def run_two_tasks(m: BiCStream):
    """Task 0: 60 samples of class 0 then 20 of class 1; task 1: 16 of class 1 then 30 of class 2. Records each
    step's training indices, after each evaluation's bias training (held-out size, class 2 held, trained), and
    each task's planned chunk ends."""
    s0 = torch.tensor(idx(0, range(60)) + idx(1, range(20)))
    s1 = torch.tensor(idx(1, range(20, 36)) + idx(2, range(30)))
    test = torch.arange(60)
    trainer = Trainer(m, m.data, [(s0, test), (s1, test)], Settings.from_config(m.cfg))
    steps, evals, ends = [], [], []
    step, before_eval, before_task = m.train_step, m.before_eval, m.before_task

    def rec_step(x, y, i=None, extra=None):
        steps.append(i.tolist())
        return step(x, y, i, extra)

    def rec_eval():
        before_eval()
        valid = m.held_out.valid
        evals.append((len(valid), int((m.data.train_labels[valid] == 2).sum()), m.layer_trained))

    def rec_task(t, stream, test, shown=None):
        before_task(t, stream, test, shown)
        ends.append(m.chunk_ends(len(stream), m.cfg.temp_batchsize))
    m.train_step, m.before_eval, m.before_task = rec_step, rec_eval, rec_task
    return trainer, s0, s1, steps, evals, ends


def test_temporary_batch_counter_held_out_and_bias_layer_through_two_tasks():
    """valid_size 49 (memory 500, temp 8). Task 0: class 0's first 49 samples are held out; its samples 49-56
    fill the temporary batch at stream position 56, which has earned 57 steps (held-out samples count);
    class 1 arrives at position 60: 24 per class, class 0 cut to 24 at random, all 20 of class 1 held out."""
    m = make(500)
    trainer, s0, s1, steps, evals, ends = run_two_tasks(m)
    planned = [p for p, kind, _ in trainer.stream_events(s0) if kind == "eval"]  # the trainer's positions
    trainer.run_task(0)
    assert ends == [[57, 80]]  # the batch fills at position 56 (chunk_ends, planned at the task's start)
    assert m.held_out.eval_pos == planned == [49]
    assert steps == [idx(0, range(49, 57))] * 57  # the memory is empty during the first batch's steps
    assert sorted(m.memory.indices.tolist()) == idx(0, range(49, 57))
    assert m.held_out.pending.tolist() == idx(0, range(57, 60)) and m.held_out.num_updates == 23.0
    valid = m.held_out.valid.tolist()
    assert len(valid) == 44 and set(idx(1, range(20))) < set(valid) and set(valid) - set(idx(1, range(20))) \
        < set(idx(0, range(49)))
    assert evals == [(49, 0, False), (44, 0, False)]  # task 0: never a bias layer
    teacher0 = m.teacher
    assert teacher0 is not None and teacher0.fc.out_features == 2  # copied at the task's end

    # task 1: class 1's 4 missing held-out samples (positions 0-3); the carried 3 + positions 4-8 fill at 8
    # (32 steps: 23 + 9); class 2 arrives at 16 (16 each): 16-31 held out; fills at 32 (24 steps), 40 (8 steps)
    steps.clear()
    planned = [p for p, kind, _ in trainer.stream_events(s1) if kind == "eval"]
    trainer.run_task(1)
    assert ends[1] == [9, 33, 41, 46]
    assert m.held_out.eval_pos == planned == [19]  # 80 samples seen before: the evaluation at 100
    first = idx(0, range(57, 60)) + idx(1, range(24, 29))
    second = idx(1, range(29, 36)) + idx(2, [16])
    third = idx(2, range(17, 25))
    assert [s[:8] for s in steps] == [first] * 32 + [second] * 24 + [third] * 8
    assert all(len(s) == 16 for s in steps)  # 8 memory samples join each step
    held = set(m.held_out.valid.tolist()) | set(valid)
    assert not held & {i for s in steps for i in s} and not held & set(m.memory.indices.tolist())
    assert m.held_out.pending.tolist() == idx(2, range(25, 30)) and m.held_out.num_updates == 5.0
    labels = m.data.train_labels[m.held_out.valid]
    assert torch.bincount(labels, minlength=3).tolist() == [16, 16, 16] and m.valid_full()
    assert sorted(m.held_out.valid[labels == 2].tolist()) == idx(2, range(16))
    # at sample 19 class 2 holds 4 of its 16: not full, no layer; at the task's end: full, trained
    assert evals[2:] == [(36, 4, False), (48, 16, True)]
    assert m.new_labels == [2] and m.teacher is not teacher0 and m.teacher.fc.out_features == 3

    # the layer corrects class 2 only, and only this task's layer is applied
    x = m.data.test.images[:20]
    raw, scores = m.predict_logits(x), m.eval_scores(x)
    alpha, beta = m.layer.tolist()
    assert (alpha, beta) != (1.0, 0.0)
    assert torch.equal(scores[:, :2], raw[:, :2])
    assert torch.allclose(scores[:, 2], alpha * raw[:, 2] + beta)

    # the state after the task rebuilds the same method
    m2 = make(500)
    m2.load_state_dict(m.state_dict())
    for k in ("valid", "pending"):
        assert torch.equal(getattr(m2.held_out, k), getattr(m.held_out, k)), k
    assert torch.equal(m2.layer, m.layer)
    h2 = m2.held_out
    assert (h2.quota, h2.num_updates, m2.new_labels, h2.stream_seen) == (16, 5.0, [2], 126)
    assert m2.model.training == m.model.training and m2.teacher.training == m.teacher.training
    assert torch.equal(m2.teacher(x.float()), m.teacher(x.float()))


def test_new_class_copies_the_teacher_before_the_head_grows():
    m = make(500)
    s = torch.tensor(idx(0, range(10)) + idx(1, range(10)))
    m.before_task(0, s, torch.arange(10), [])
    m.expose([0])
    m.before_task(1, torch.tensor(idx(1, range(10, 20)) + idx(2, range(10))), torch.arange(10), [])
    m.expose([1])  # class 1, at position 0 of this stream
    m.model.fc.weight.data.fill_(0.5)
    m.expose([2])
    assert m.teacher.fc.out_features == 2 and m.n_out == 3 and m.new_labels == [1, 2]
    assert torch.equal(m.teacher.fc.weight, torch.full((2, m.model.fc.in_features), 0.5))


class Fixed(nn.Module):
    """A 'model' returning the same logits row for every input (plus a zero-weight parameter to train)."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.tensor(row)
        self.fc = nn.Linear(1, len(row))
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row.expand(x.shape[0], -1) + self.w


def test_loss_is_ce_plus_kd_at_t2_on_the_old_classes_of_the_corrected_teacher():
    m = make(500)
    m.model = Fixed([1.0, 0.0, 0.0])
    m.build_optimizer()
    m.teacher = Fixed([0.0, 0.0])  # the model before class 2: 2 outputs
    x, y = torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    ce = math.log(math.e + 2) - 1  # -log softmax([1, 0, 0])_0
    m.task_id = 0  # task 0: CE only
    assert m.train_step(x, y)[0].item() == pytest.approx(ce, rel=1e-6)
    m.task_id = 1  # KD at T=2 on logits 0 and 1 only: teacher [0, 0] -> (1/2, 1/2); student [1, 0] / 2
    kd = math.log(1 + math.exp(0.5)) - 0.25
    assert m.train_step(x, y)[0].item() == pytest.approx(ce + kd, rel=1e-6)
    # the previous task's layer (alpha 1, beta 2 ln 3 on class 1) corrects the teacher: (1/4, 3/4)
    m.prev_layer, m.prev_trained, m.prev_mask = torch.tensor([1.0, 2 * math.log(3)]), True, m.class_mask([1])
    kd = math.log(1 + math.exp(0.5)) - 0.125
    assert m.train_step(x, y)[0].item() == pytest.approx(ce + kd, rel=1e-6)


def test_correct_logits_touches_the_masked_classes_only():
    logits = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0]])
    mask = torch.tensor([False, True, True, True])  # wider than the head: cut
    out = correct_logits(logits, torch.tensor([2.0, -1.0]), mask)
    assert out.tolist() == [[1.0, 3.0, 5.0], [-1.0, -1.0, 7.0]]


def test_bias_layer_fit_by_hand_and_against_autograd_adam():
    # one sample of class 1, logits [2, 0], class 1 corrected: dL/dalpha = 0 (its logit is 0), dL/dbeta < 0;
    # Adam's first step moves beta by +lr and leaves alpha
    ab, _ = fit_bias_layer(np.array([[2.0, 0.0]]), np.array([1]), np.array([False, True]), [np.array([0])], epochs=1)
    assert ab[0] == 1.0 and ab[1] == pytest.approx(1e-3, rel=1e-6)
    # 256 epochs over two batches (130 held out: 100 + 30), classes 3 and 4 corrected
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(130, 5, generator=g) * 3
    raw[:, 3:] += 2  # the new classes over-scored
    y = torch.randint(0, 5, (130,), generator=g)
    mask = torch.tensor([False, False, False, True, True])
    batches = torch.randperm(130, generator=g).split(100)
    ab, loss = fit_bias_layer(raw.double().numpy(), y.numpy(), mask.numpy(), [b.numpy() for b in batches])
    p = torch.tensor([1.0, 0.0], requires_grad=True)
    opt = torch.optim.Adam([p], lr=1e-3)
    for _ in range(256):
        for b in batches:
            last = bias_layer_step(p, opt, raw[b], y[b], mask, torch.ones(5), torch.zeros(5))
    assert ab.tolist() == pytest.approx(p.tolist(), abs=1e-5)
    assert loss == pytest.approx(last.item(), abs=1e-5)
    assert ab[1] < 0  # over-scored classes pushed down
