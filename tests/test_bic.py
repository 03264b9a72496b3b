"""BiC: bias layers on the classes first exposed in their task, stage-2 training, distillation loss,
the held-out 10% of memory, and end-to-end runs with and without distillation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import main as rm_main
from methods.bic import apply_bias, bias_layer_step
from methods.distill import kd_loss
from tests.synthetic import synthetic_method

N_CLS, PER_CLS = 10, 20


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class FixedLogits(nn.Module):
    """A frozen 'model' that returns the same logits row for every input."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.tensor(row)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row.expand(x.shape[0], -1).clone()


def make_bic(*flags: str):
    """A BiC method on 200 random 28x28 images (20 per class, label = index % 10), memory 100."""
    argv = ["--mode", "bic", "--mem_manage", "random", "--memory_size", "100", *flags, "--transforms"]
    return synthetic_method(argv, N_CLS, PER_CLS, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])


def stream_of(classes: list[int], extra: list[int] = ()) -> torch.Tensor:
    idx = torch.arange(N_CLS * PER_CLS)
    return torch.cat([idx[torch.isin(idx % N_CLS, torch.tensor(classes))], torch.tensor(list(extra), dtype=torch.long)])


def test_bias_layers_touch_only_the_classes_first_exposed_in_their_task():
    assert apply_bias(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([1.0, 1.0, 2.0, 2.0]),
                      torch.tensor([0.0, 0.0, 1.0, 1.0])).tolist() == [[1.0, 2.0, 7.0, 9.0]]
    m = make_bic()
    test = torch.arange(10)
    m.before_task(0, stream_of([0, 1]), test)
    # blurry-like task 1: classes 0 and 1 come back (samples 10, 11), 2 and 3 are new
    m.before_task(1, stream_of([2, 3], extra=[10, 11]), test)
    m.before_task(2, stream_of([4]), test)
    assert m.first_task.tolist() == [0, 0, 1, 1, 2, 0, 0, 0, 0, 0]
    m.layers[1] = torch.tensor([2.0, 1.0])  # alpha = 2, beta = 1 on classes 2, 3
    m.layers[2] = torch.tensor([0.5, -1.0])  # alpha = 0.5, beta = -1 on class 4
    m._refresh()
    m.model = FixedLogits([1.0, 2.0, 3.0, 4.0, 6.0, -1.0])
    out = m.eval_scores(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert out.tolist() == [[1.0, 2.0, 7.0, 9.0, 2.0, -1.0]] * 2


def test_bias_layer_step_matches_hand_computed_adam_step():
    p = torch.tensor([1.0, 0.0], requires_grad=True)
    opt = torch.optim.Adam([p], lr=1e-3)
    raw, y = torch.tensor([[0.0, 2.0]]), torch.tensor([0])  # the new class 1 is over-scored
    loss = bias_layer_step(p, opt, raw, y, torch.tensor([False, True]), torch.ones(2), torch.zeros(2))
    assert loss.item() == pytest.approx(math.log(1 + math.e ** 2), rel=1e-6)
    # dL/dalpha = 2 * sigma > 0, dL/dbeta = sigma > 0: Adam's first step moves each by -lr
    assert p.tolist() == pytest.approx([1.0 - 1e-3, -1e-3], abs=1e-7)


def test_stage2_on_a_tiny_held_out_set_lowers_alpha_and_beta_of_over_scored_new_classes():
    m = make_bic()
    test = torch.arange(10)
    m.before_task(0, stream_of([0, 1, 2, 3, 4]), test)
    m.update_memory(0)
    m.before_task(1, stream_of([5, 6, 7, 8, 9]), test)
    assert m.new_classes == [5, 6, 7, 8, 9] and len(m.heldout) == 10
    m.model = FixedLogits([0.0] * 5 + [3.0] * 5)  # every sample looks like a new class
    assert m.train_bias_layer(1)
    alpha, beta = m.layers[1].tolist()
    # 5 epochs x 1 batch of 10: five Adam steps of about -lr each
    assert 1 - 5.1e-3 < alpha < 1 - 4e-3 and -5.1e-3 < beta < -4e-3
    assert m.alpha[:5].tolist() == [1.0] * 5 and m.beta[:5].tolist() == [0.0] * 5
    assert m.alpha[5:].tolist() == pytest.approx([alpha] * 5) and m.layers[0].tolist() == [1.0, 0.0]
    assert not m.train_bias_layer(0)  # task 0 has no bias layer


def test_distillation_loss_matches_hand_computed_value():
    old = torch.tensor([[0.0, 0.0], [0.0, 2 * math.log(3)]])
    new = torch.tensor([[2 * math.log(2), 0.0, 9.0], [0.0, 0.0, -4.0]])  # the third column is cut off
    # row 1: targets (1/2, 1/2), log_softmax(new/2) = (ln 2/3, ln 1/3); row 2: -(1/4 + 3/4) ln 1/2
    expected = (0.5 * math.log(4.5) + math.log(2)) / 2
    assert kd_loss(old, new, T=2).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(old, new, T=2, t2_scale=True).item() == pytest.approx(4 * expected, rel=1e-6)


def test_train_step_loss_is_lam_kd_plus_one_minus_lam_ce():
    m = make_bic("--distilling")
    test = torch.arange(10)
    m.before_task(0, stream_of([0, 1, 2, 3, 4]), test)
    assert m.old_model is None and m.lam == 0.0
    m.before_task(1, stream_of([5, 6, 7, 8, 9]), test)
    assert m.old_model is not None and m.lam == 0.5  # 5 learned / 10 exposed
    y = torch.tensor([0, 5, 6, 7, 1, 8, 9, 2])
    chunk = m.train_aug(m.data.train.images[:24])
    extras = m.chunk_extras(chunk)  # the old model's scores of the whole chunk, handed to each step
    assert extras["old_logits"].shape == (24, 10)
    batch = chunk[8:16]
    cases = [(batch, {"old_logits": extras["old_logits"][8:16]}),  # a batch's rows of the chunk's extras
             (batch, {"old_logits": torch.zeros(8, 10)}),  # the extras are what is used: uniform targets
             (torch.randn(8, 1, 28, 28), None)]  # no extras: computed by the step
    for x, extra in cases:
        m.model.train()
        with torch.no_grad():
            new = m.model(x)
            old = m.old_model(x) if extra is None else extra["old_logits"]
            expected = 0.5 * kd_loss(old, new) + 0.5 * nn.functional.cross_entropy(new, y)
        loss, _, _ = m.train_step(x, y, None, extra)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        assert torch.allclose(extras["old_logits"][8:16], m.old_model(batch), atol=1e-6)


def test_held_out_is_ten_percent_of_memory_and_never_trained_on():
    m = make_bic()
    test = torch.arange(10)
    m.before_task(0, stream_of([0, 1, 2, 3, 4]), test)
    assert m.memory.size == 90 and len(m.heldout) == 10  # round(0.1 * 100) held out, 2 per exposed class
    assert torch.bincount(m.data.train_labels[m.heldout], minlength=10).tolist() == [2] * 5 + [0] * 5
    first = m.heldout.clone()
    assert not torch.isin(m.stream, m.heldout).any() and len(m.stream) == 90
    assert not torch.isin(torch.cat(m.epoch_batches("stream")), m.heldout).any()
    m.update_memory(0)
    m.before_task(1, stream_of([5, 6, 7, 8, 9]), test)
    assert len(m.heldout) == 10 and torch.bincount(m.data.train_labels[m.heldout], minlength=10).tolist() == [1] * 10
    old = m.heldout[m.data.train_labels[m.heldout] < 5]
    assert torch.isin(old, first).all()  # old classes keep (a subset of) their held-out samples
    m.update_memory(1)
    assert len(m.memory) == 90
    trained = torch.cat(m.epoch_batches("stream") + m.epoch_batches("memory"))
    assert not torch.isin(trained, m.heldout).any() and not torch.isin(m.memory.indices, m.heldout).any()


@pytest.mark.parametrize("split,env", [("blurry10", "online"), ("disjoint", "offline")])
@pytest.mark.parametrize("distill", [False, True])
def test_bic_runs_end_to_end(mnist_dir: Path, tmp_path: Path, split: str, env: str, distill: bool):
    args = ["--mode", "bic", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--out_dir", str(tmp_path),
            "--device", "cpu", "--exp_name", split, "--stream_env", env, "--n_epoch", "1", "--memory_size", "100",
            "--mem_manage", "random", "--transforms"] + (["--distilling"] if distill else [])
    assert rm_main.main(args) == 0
    (path,) = (tmp_path / "results" / "mnist").glob("*.json")
    res = json.loads(path.read_text())
    assert len(res["task_acc"]) == 5 and all(math.isfinite(a) and 0 <= a <= 100 for a in res["task_acc"])
    assert math.isfinite(res["A_last"]) and res["A_last"] == res["A_last_final"]  # BiC records the final model
    # chance is 10 (blurry10: 10 classes) or below (disjoint: 2 new classes of 10 learned last);
    # measured here for blurry10, seeds 1 and 2: 24.0 and 24.5 without distillation, 18.6 and 19.2 with
    # (from task 1 on the distilled model only distils its own task-0 self: see docs/baselines.md)
    assert res["A_last"] > (10 if split == "disjoint" else 14), res["task_acc"]
    assert all(sum(c) == 90 for c in res["memory_class_counts"])  # 100 - 10 held out
    log = (tmp_path / "logs" / "mnist" / f"{res['config']['run_name']}.log").read_text()
    if split == "disjoint":  # two new classes per task: stage 2 runs after tasks 1..4
        assert all(f"BiC stage 2, task {t}:" in log for t in range(1, 5))
    else:  # blurry10: every class is exposed in task 0, so no class is new later
        assert "BiC stage 2" not in log and "stage 2 skipped" in log


def test_default_memory_is_prototype():
    m = make_bic("--mem_manage", "default")
    assert m.mem_manage == "prototype"
    assert m.memory.size == 90 and m.valid_size == 10
