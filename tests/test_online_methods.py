"""The i-Blurry protocol's rm, gdumb and der++ against hand-computed values on tiny random inputs: GDumb's
class-balanced rule, rm's head (wiped or kept) and step schedule, gdumb's fresh model per evaluation, and
the logits der++ stores with its memory."""
from __future__ import annotations

import torch

from methods.memory import build_manager
from methods.memory.greedy_balanced import balanced_insert
from methods.engine.online_protocol import StepCounter
from methods.engine.trainer import Settings, Trainer
from tests.synthetic import synthetic_method


def online(mode: str, *extra: str, n_cls: int = 3, per_cls: int = 8):
    argv = ["--mode", mode, "--exp_name", "iblurry50_10", "--dataset", "mnist", "--device", "cpu", "--transforms",
            *extra]
    torch.manual_seed(0)
    m = synthetic_method(argv, n_cls, per_cls)
    n = n_cls * per_cls
    m.before_task(0, torch.arange(n), torch.arange(n), [])  # sample-wise: classes come by expose
    return m


def test_balanced_rule_by_hand():
    """Slots [0, 0, 1], size 4; newcomers 1, 2, 2, 2. 1 fills slot 3 -> [0,0,1,1]. 2: counts {0:2, 1:2, 2:1},
    largest (lowest label) 0, draw 0.5 of slots [0, 1] -> slot 1 -> [0,2,1,1]. 2: {0:1, 1:2, 2:2} -> class 1,
    draw 0.99 of [2, 3] -> 3 -> [0,2,1,2]. 2: {0:1, 1:1, 2:3} -> class 2 (its own), draw 0 of [1, 3] -> 1."""
    slots = [0, 0, 1]
    assert balanced_insert(slots, [1, 2, 2, 2], 4, [0.0, 0.5, 0.99, 0.0]) == [3, 1, 3, 1]
    assert slots == [0, 2, 1, 2]


def test_balanced_rule_with_fewer_slots_than_classes():
    """Slots [3, 5], size 2: newcomer 0 counts {3:1, 5:1, 0:1}; its own class, the lowest label, holds no slot
    (the CLIB code stops there), so the largest class that holds one gives it up: 3, the lower label, slot 0.
    Then 7: {0:1, 5:1, 7:1} -> class 0, slot 0 -> [7, 5]."""
    slots = [3, 5]
    assert balanced_insert(slots, [0, 7], 2, [0.0, 0.0]) == [0, 0]
    assert slots == [7, 5]


def test_balanced_memory_a_slot_taken_twice_goes_to_the_later_newcomer():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    mem = build_manager("greedy_balanced", 3, labels)
    mem.update(torch.tensor([0, 1, 2]), 0, 3)  # fills: [0, 1, 2]
    torch.manual_seed(0)
    mem.update(torch.tensor([4, 5]), 0, 3)  # 4 evicts a class-0 slot (largest, lowest label); 5 evicts ...
    counts = mem.class_counts(3)
    assert len(mem) == 3 and counts[2] >= 1 and sum(counts) == 3
    assert 5 in mem.indices.tolist()  # the later newcomer always ends in the memory


def test_rm_as_the_clib_code_runs_it_and_as_intended():
    """The CLIB code: 16 stream samples per step, head wiped at each new class; as intended: 8 stream
    samples + 8 memory samples per step, head rows kept. Either way one step per temporary batch."""
    for intended in (False, True):
        m = online("rm", *(["--as_intended"] if intended else []), "--memory_size", "500", "--batchsize", "16")
        assert m.memory_size() == 492 and m.cfg.temp_batchsize == (8 if intended else 16)
        assert m.cfg.opt_name == "sgd" and m.cfg.lr == 0.05
        m.expose(list(range(2)))
        old = m.model.fc.weight.detach().clone()
        m.expose(list(range(3)))
        assert m.n_out == 3
        assert torch.equal(m.model.fc.weight.detach()[:2], old) is intended
        m.memory.indices = torch.arange(12, 24)
        temp = torch.arange(m.cfg.temp_batchsize)
        batch = m.replay_batch(temp)
        assert torch.equal(batch[:len(temp)], temp)
        assert len(batch) == 16 and set(batch[len(temp):].tolist()) <= set(range(12, 24))  # 16 + 0 or 8 + 8
        assert [m.steps_due(StepCounter(3.0), len(temp)) for _ in range(3)] == [1, 1, 1]  # not --online_iter
        assert m.training_calls(True) == [("stream", 1), ("memory", m.cfg.n_epoch)]  # the stream: sample-wise


def test_rm_carries_its_partial_batch_and_trains_the_memory_in_the_mode_the_stream_left():
    """The CLIB code's rm: batches of 8 (--batchsize) count across tasks, so task 0's last 5 samples wait and
    open task 1's first batch; the memory epochs run in the mode the stream left the model in. Tasks of 13 and
    23 samples, --eval_period 10: task 0 steps on 0-7, evaluates at sample 10, then only gathers 8-12: its
    memory epochs run in eval mode (the CLIB code's memory training never calls train()). Task 1 steps on
    8-15, evaluates at 20, steps on 16-23, evaluates at 30, steps on 24-31 and gathers 32-35: train mode.
    --as_intended: one step per full chunk of 4 (the last, partial one is dropped, as the CVPR'21 code's stream
    loader drops it), memory epochs always in train mode."""
    for intended in (False, True):
        flags = ["--memory_size", "14", "--batchsize", "8", "--n_epoch", "2", "--eval_period", "10"]
        m = online("rm", *flags, *(["--as_intended"] if intended else []), n_cls=3, per_cls=12)
        steps = []  # (phase, batch indices, train mode)
        real = m.train_step

        def spy(x, y, idx=None, extra=None):
            steps.append(("memory" if m.grad_clip else "stream", idx.tolist(), m.model.training))
            return real(x, y, idx, extra)
        m.train_step = spy
        tasks = [(torch.arange(13), torch.arange(36)), (torch.arange(13, 36), torch.arange(36))]
        tr = Trainer(m, m.data, tasks, Settings.from_config(m.cfg))
        tr.run_task(0)
        stream0 = [s for s in steps if s[0] == "stream"]
        mem0 = [s[2] for s in steps if s[0] == "memory"]
        if intended:
            assert [s[1] for s in stream0] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # memory empty; 12 dropped
            assert all(mem0)
        else:
            assert [s[1] for s in stream0] == [list(range(8))] and m.pending.tolist() == list(range(8, 13))
            assert sorted(m.memory.indices.tolist()) == list(range(8))  # 8-12 wait: not in the memory yet
            assert mem0 and not any(mem0)  # eval mode: the evaluation at 10 came after the last step (at 8)
        steps.clear()
        m.grad_clip = None
        tr.run_task(1)
        stream1 = [s for s in steps if s[0] == "stream"]
        assert all(s[2] for s in steps if s[0] == "memory")
        if not intended:
            assert [s[1] for s in stream1] == [list(range(8, 16)), list(range(16, 24)), list(range(24, 32))]
            assert m.pending.tolist() == [32, 33, 34, 35]
            assert [p["samples"] for p in tr.anytime] == [10, 20, 30]


def test_rm_task_end_memory_is_chosen_by_uncertainty_only_as_intended():
    for intended in (False, True):
        m = online("rm", *(["--as_intended"] if intended else []), "--memory_size", "14", "--batchsize", "8",
                   n_cls=3, per_cls=10)
        m.expose(list(range(3)))
        m.remember(torch.arange(10), 0)
        assert len(m.memory) == (0 if intended else 10)  # as intended, the stream does not enter it
        before = m.memory.indices.clone()
        m.after_stream(1)
        assert m.grad_clip == 10.0 and len(m.memory) == 10
        assert torch.equal(before, m.memory.indices) is not intended
        if intended:  # 10 // 3 = 3 per class from the 30 stream samples by uncertainty, then one random fill
            assert sorted(m.memory.class_counts(3)) == [3, 3, 4] and len(set(m.memory.indices.tolist())) == 10


def test_gdumb_trains_a_fresh_model_on_the_memory_before_each_evaluation():
    m = online("gdumb", "--memory_size", "9", "--batchsize", "4", "--n_epoch", "2")
    assert m.cfg.temp_batchsize == 1 and m.steps_due(StepCounter(1.0), 1) == 0
    m.expose(list(range(3)))
    m.remember(torch.arange(12), 0)
    assert m.memory.class_counts(3) == [3, 3, 3]
    first = m.model
    m.before_eval()
    assert m.model is not first and m.n_out == 3 and not m.model.training
    # 2 epochs of batches 4 + 4 (+ 1, left out: mlp400's BatchNorm1d cannot train on one sample)
    assert m.samples["memory_training"] == 2 * 8
    w = [p.detach().clone() for p in m.model.parameters()]
    m.before_eval()
    assert not any(torch.equal(a, b.detach()) for a, b in zip(w, m.model.parameters()))  # fresh again


def test_derpp_stores_the_last_logits_of_the_samples_that_enter():
    m = online("der++", "--memory_size", "12", "--batchsize", "8", n_cls=4, per_cls=6)  # temp 4, reservoir of 8
    m.expose(list(range(2)))
    temp = torch.tensor([0, 1, 4, 5])  # labels 0, 1, 0, 1
    m.model.train()
    assert torch.equal(m.replay_batch(temp), temp)  # an empty memory: the step trains the chunk alone
    x, y = m.train_aug(m.data.train.images[temp]), m.data.train_labels[temp]
    m.train_step(x, y, temp)
    last = m.last.clone()
    m.remember(temp, 0)
    assert torch.equal(m.memory.indices, temp)
    assert torch.equal(m.slot_logits[:4, :2], last) and m.slot_width[:4].tolist() == [2, 2, 2, 2]
    m.expose(list(range(4)))
    temp2 = torch.tensor([2, 3, 6, 7])
    m.remember(temp2, 0)  # no step since: stored with no columns, matched on none
    assert m.slot_width[4:8].tolist() == [0, 0, 0, 0] and m.slot_logits[4:8].abs().sum() == 0
    batch = m.replay_batch(torch.tensor([8, 9, 10, 11]))
    assert len(batch) == 4 + 2 * 4 and torch.equal(m.memory.indices[m.drawn], batch[4:8])
    x, y = m.train_aug(m.data.train.images[batch]), m.data.train_labels[batch]
    loss, logits, y_out = m.train_step(x, y, batch)
    assert logits.shape == (4, 4) and torch.equal(y_out, y[:4]) and torch.isfinite(loss)
    batch = m.replay_batch(torch.tensor([12, 13, 14]))  # a task's last chunk, shorter than --temp_batchsize
    assert len(batch) == 3 + 2 * 5 and torch.equal(m.memory.indices[m.drawn], batch[3:8])
    x, y = m.train_aug(m.data.train.images[batch]), m.data.train_labels[batch]
    loss, logits, y_out = m.train_step(x, y, batch)
    assert logits.shape == (3, 4) and torch.equal(y_out, y[:3]) and torch.isfinite(loss)


def test_mir_ranks_every_candidate_when_the_chunk_is_short(monkeypatch):
    """A task's last chunk (3 of --temp_batchsize 4) keeps its 3 stream samples and the 5 candidates MIR ranks
    highest, none taken for a stream sample."""
    from methods.er import ER
    from methods.replay_rules import mir_scores, mir_select
    from utils.data.augment import normalize

    m = online("mir", "--memory_size", "12", "--batchsize", "8", "--as_intended", n_cls=4, per_cls=6)
    m.expose(list(range(4)))
    m.remember(torch.arange(8), 0)  # the reservoir (12 - 4 slots) takes them all
    temp = torch.tensor([8, 9, 10])
    batch = m.replay_batch(temp)
    assert len(batch) == 3 + 8 and torch.equal(batch[:3], temp)
    imgs, labels = m.data.train.images, m.data.train_labels
    x, y = m.train_aug(imgs[batch]), labels[batch]
    m.model.train()
    lr = m.optimizer.param_groups[0]["lr"]
    scores = mir_scores(m.model, x[:3], y[:3], normalize(imgs[batch[3:]], m.data.mean, m.data.std), y[3:], lr,
                        bn_drift=False)
    seen = {}
    monkeypatch.setattr(ER, "train_step", lambda self, x, y, idx=None, extra=None: seen.update(idx=idx))
    m.train_step(x, y, batch)
    assert torch.equal(seen["idx"], torch.cat([temp, batch[3:][mir_select(scores, 5)]]))


def test_mir_takes_the_candidates_as_drawn_for_a_one_sample_chunk(monkeypatch):
    """A task's last chunk of a single stream sample: mlp400's BatchNorm1d cannot take the virtual step's
    gradient on it (the seed-2 i-Blurry run on 10,000 MNIST images stopped there), so the step keeps the
    first --batchsize - 1 candidates as drawn."""
    from methods.er import ER

    m = online("mir", "--memory_size", "12", "--batchsize", "8", n_cls=4, per_cls=6)
    m.expose(list(range(4)))
    m.remember(torch.arange(8), 0)
    batch = m.replay_batch(torch.tensor([8]))
    assert len(batch) == 1 + 8
    x, y = m.train_aug(m.data.train.images[batch]), m.data.train_labels[batch]
    seen = {}
    monkeypatch.setattr(ER, "train_step", lambda self, x, y, idx=None, extra=None: seen.update(idx=idx))
    m.model.train()
    m.train_step(x, y, batch)
    assert torch.equal(seen["idx"], batch[:8])


def test_ewcpp_penalty_counts_the_adam_folded_input_weight_for_its_three_slices():
    """ewc++ as intended on grey images (mlp400's Adam fold: one input weight Q for 3 identical slices): the
    penalty is the 3-channel model's, reg * (3 F (Q - Q*)^2 + the other parameters'), and Q's gradient is one
    slice's, 2 reg F (Q - Q*)."""
    m = online("ewc++", "--as_intended", "--reg_coef", "2", n_cls=2, per_cls=4)
    assert m.model.grey_fold == "adam" and m.model.per_slice() == {"input.lin.weight": 3}
    params = m.body_params()
    torch.manual_seed(1)
    m.anchor = {n: p.detach() + 0.01 * torch.randn_like(p) for n, p in params.items()}
    m.importance = {n: torch.rand_like(p) for n, p in params.items()}
    pen = m.extra_loss(None, None, None)
    parts = {n: (m.importance[n] * (p.detach() - m.anchor[n]).square()).sum() for n, p in params.items()}
    want = 2 * (3 * parts["input.lin.weight"] + sum(v for n, v in parts.items() if n != "input.lin.weight"))
    assert torch.allclose(pen, want, rtol=1e-5)
    q = params["input.lin.weight"]
    g, = torch.autograd.grad(pen, [q])
    assert torch.allclose(g, 2 * 2 * m.importance["input.lin.weight"] * (q.detach() - m.anchor["input.lin.weight"]))
