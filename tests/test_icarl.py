"""iCaRL and the prototype (herding) memory: hand-computed herding, nearest means, head growth, distillation, runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import main as rm_main
from configuration.config import base_parser, resolve
from methods.icarl import ICaRL, class_means, distillation_loss, new_class_ce, nme_scores
from methods.memory import build_manager
from methods.memory.herding import herding
from utils.data.augment import normalize
from utils.data.folder import ImageSet
from utils.data.run_data import RunData

# five unit features: a=(1,0) b=(.6,.8) c=(.6,-.8) d=(0,1) e=(.8,.6)
FIVE = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [0.0, 1.0], [0.8, 0.6]])


def test_herding_order_hand_computed():
    # mu = (1,0); each step maximises mu.u/|u|, u = phi_i + S (equivalently minimises |mu - u/|u||)
    # 1: a 1, b .6, c .6, d 0, e .8                                   -> a, S=(1,0)
    # 2: b (1.6,.8) .894, c (1.6,-.8) .894, d (1,1) .707, e (1.8,.6) .949 -> e, S=(1.8,.6)
    # 3: b (2.4,1.4) .864, c (2.4,-.2) .997, d (1.8,1.6) .747          -> c, S=(2.4,-.2)
    # 4: b (3,.6) .981, d (2.4,.8) .949                                -> b, then d
    assert herding(FIVE, torch.tensor([1.0, 0.0]), 5).tolist() == [0, 4, 2, 1, 3]
    assert herding(FIVE, torch.tensor([1.0, 0.0]), 3).tolist() == [0, 4, 2]
    # mu = (0,1): 1: d; 2 (S=(0,1)): a (1,1) .707, b (.6,1.8) .949, c (.6,.2) .316, e (.8,1.6) .894 -> b
    assert herding(FIVE, torch.tensor([0.0, 1.0]), 2).tolist() == [3, 1]
    assert herding(FIVE, torch.tensor([1.0, 0.0]), 9).tolist() == [0, 4, 2, 1, 3]  # m > n: all


def test_herding_matches_the_public_loop_on_random_features():
    """The public code's loop (recompute normalise(phi + S)/(j+1), argmin distance, delete the pick)."""
    g = torch.Generator().manual_seed(0)
    for n, d, m in ((40, 8, 10), (200, 32, 50), (7, 3, 7)):
        phi = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
        mu = torch.nn.functional.normalize(phi.mean(0), dim=0)
        ids, rest, picked, ref = list(range(n)), phi.clone(), [], []
        for j in range(m):
            s = torch.stack(picked).sum(0) if picked else torch.zeros(d, dtype=torch.float64)
            mu_p = torch.nn.functional.normalize((rest + s) / (j + 1), dim=1)
            i = int(((mu - mu_p) ** 2).sum(1).sqrt().argmin())
            ref.append(ids.pop(i))
            picked.append(rest[i])
            rest = torch.cat([rest[:i], rest[i + 1:]])
        assert herding(phi, mu, m).tolist() == ref


def test_class_means_and_nearest_mean_prediction():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    means = class_means(feats, torch.tensor([0, 0, 2]), 3)
    s = math.sqrt(0.5)  # class 0: mean (.5,.5) normalised; class 1: no exemplar -> zeros
    assert torch.allclose(means, torch.tensor([[s, s], [0.0, 0.0], [0.6, 0.8]]))
    # squared distances to means (1,0), (0,1), zeros:
    # (1,0): 0, 2, 1 | (.6,.8): .8, .4, 1 | (0,-1): 2, 4, 1 (an empty class sits at distance 1)
    f = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    m = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    scores = nme_scores(f, m)
    assert torch.allclose(scores, -torch.tensor([[0.0, 2.0, 1.0], [0.8, 0.4, 1.0], [2.0, 4.0, 1.0]]), atol=1e-6)
    assert scores.argmax(1).tolist() == [0, 1, 2]


def _lookup(table: torch.Tensor):
    return lambda idx: table[idx]


def test_prototype_manager_per_class_counts_and_kept_means():
    torch.manual_seed(0)
    # ids 0-4: class 0 (FIVE); 5-6: class 1; 7-9: class 2
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2])
    table = torch.cat([FIVE, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])])
    mem = build_manager("prototype", 6, labels)
    # m = 3. Class 0's mean = mean of its 5 candidates = (3, 1.6)/5 -> mu = (.882, .471):
    # 1: a .882, b .906, c .153, d .471, e .988                                -> e, S=(.8,.6)
    # 2: a (1.8,.6) .986, b (1.4,1.4) .957, c (1.4,-.2) .807, d (.8,1.6) .816    -> a, S=(1.8,.6)
    # 3: b (2.4,1.4) .999, c (2.4,-.2) .840, d (1.8,1.6) .972                  -> b
    # class 1 has 2 <= 3 candidates: kept whole; the unused slot stays empty
    mem.update(torch.arange(7), 0, 2, featurizer=_lookup(table))
    assert mem.indices.tolist() == [4, 0, 1, 5, 6]
    mean0 = mem.class_mean[0].clone()
    assert torch.allclose(mean0, torch.nn.functional.normalize(torch.tensor([3.0, 1.6]), dim=0))
    # 3 classes -> m = 2: old sets cut to 2 at random (full: kept), class 2 herded (3 > 2)
    mem.update(torch.arange(7, 10), 1, 3, featurizer=_lookup(table))
    assert torch.bincount(labels[mem.indices], minlength=3).tolist() == [2, 2, 2]
    assert set(mem.indices[:2].tolist()) <= {4, 0, 1} and mem.indices[2:4].tolist() in ([5, 6], [6, 5])
    assert torch.equal(mem.class_mean[0], mean0)
    # a stored mean is never replaced: herding class 0 again follows the stored (0,1), not the data
    mem2 = build_manager("prototype", 4, labels)
    mem2.class_mean[0] = torch.tensor([0.0, 1.0])
    mem2.update(torch.arange(7), 0, 2, featurizer=_lookup(table))
    assert mem2.indices.tolist()[:2] == [3, 1]


def _tiny_icarl(n=40):
    """ICaRL on 40 random 28x28 images, classes 0-3 (ten each), two classes per task."""
    torch.manual_seed(0)
    cfg = resolve(base_parser(["icarl"]).parse_args(["--mode", "icarl", "--device", "cpu", "--n_init_cls", "2",
                                                     "--memory_size", "8", "--feature_size", "32",
                                                     "--transforms"]))
    imgs = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(n) % 4
    s = ImageSet(imgs, [f"train/{int(c)}/{i}.png" for i, c in enumerate(y)], ["0", "1", "2", "3"], y)
    data = RunData(s, s, y, y, (0.1307,), (0.3081,), 4, [[0, 1], [2, 3]])
    return ICaRL(cfg, data, torch.device("cpu")), y


def test_icarl_head_grows_keeping_old_rows_and_frozen_like_public():
    method, y = _tiny_icarl()
    first = torch.nonzero(y < 2).squeeze(1)
    method.before_task(0, first, first)
    w0 = method.model.fc.weight.detach().clone()
    assert w0.shape == (2, 32) and method.model.fc.bias is None
    method.after_task(0)
    method.before_task(1, torch.nonzero(y >= 2).squeeze(1), torch.arange(40))
    w1 = method.model.fc.weight.detach()
    assert w1.shape == (4, 32) and torch.equal(w1[:2], w0) and method.model.fc.bias is None
    # public code: the optimizer covers the feature extractor only
    opt_params = {id(p) for g in method.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in method.model.extractor.parameters()}


def test_distillation_and_new_class_losses_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0), 7.0], [5.0, 5.0, -2.0]])
    q = torch.tensor([[0.5, 1.0], [0.2, 0.3]])
    old = torch.tensor([True, False])
    # row 0: BCE(.5 | .5) + BCE(.75 | 1) = ln 2 + ln(4/3); column 2 (new class) is not distilled
    assert distillation_loss(logits, q, old, 2).item() == pytest.approx(math.log(2) + math.log(4 / 3), rel=1e-5)
    assert distillation_loss(logits, q, old, 1).item() == pytest.approx(math.log(2), rel=1e-5)
    # CE of row 1 only (label 1): logsumexp(5, 5, -2) - 5
    y = torch.tensor([0, 1])
    expect = math.log(2 * math.exp(5) + math.exp(-2)) - 5
    assert new_class_ce(logits, y, ~old).item() == pytest.approx(expect, rel=1e-5)
    assert distillation_loss(logits, q, torch.tensor([False, False]), 2).item() == 0.0


def test_icarl_targets_are_pre_training_outputs_and_the_step_uses_them():
    method, y = _tiny_icarl()
    first, second = torch.nonzero(y < 2).squeeze(1), torch.nonzero(y >= 2).squeeze(1)
    method.before_task(0, first, first)
    method.after_task(0)
    method.memory.indices = first[:6]  # old-class samples in memory
    method.before_task(1, second, torch.arange(40))
    pool = torch.cat([method.stream, method.memory.indices])
    method.store_targets(pool)
    x_all = normalize(method.data.train.images, method.data.mean, method.data.std)
    method.model.eval()
    with torch.no_grad():
        q_all = torch.sigmoid(method.model(x_all))[:, :2]
    old = first[:6]
    assert torch.allclose(method.targets[method.target_row[old]], q_all[old])
    assert (method.target_row[second] == -1).all()
    batch = method.epoch_batches("offline")[0]
    x, yb = x_all[batch], y[batch]
    method.model.train()
    with torch.no_grad():
        logits = method.model(x)
    new = yb >= 2
    expect = new_class_ce(logits, yb, new) + distillation_loss(logits, q_all[batch], ~new, 2)
    loss, _, _ = method.train_step(x, yb, batch)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


def _run(data_dir: Path, out: Path, *extra: str) -> dict:
    assert rm_main.main(["--dataset", "mnist", "--data_dir", str(data_dir), "--out_dir", str(out), "--device", "cpu",
                         "--n_epoch", "1", "--memory_size", "100", "--transforms", *extra]) == 0
    (res,) = [json.loads(p.read_text()) for p in (out / "results" / "mnist").glob("*.json")]
    return res


def test_icarl_online_blurry10_runs_and_learns(mnist_dir, tmp_path):
    res = _run(mnist_dir, tmp_path, "--mode", "icarl", "--batchsize", "32")
    assert res["config"]["mem_manage_resolved"] == "prototype"
    assert res["memory_class_counts"][-1] == [10] * 10  # 100 slots // 10 classes
    # iCaRL evaluates once per task (after training), so both accuracies are the same number
    assert res["task_acc"] == res["task_acc_final"]
    assert res["A_last"] > 40, res["task_acc"]  # chance 10%; measured 68.4, 62.6 (seeds 1, 2)


def test_icarl_offline_disjoint_runs_and_learns(mnist_dir, tmp_path):
    res = _run(mnist_dir, tmp_path, "--mode", "icarl", "--exp_name", "disjoint", "--stream_env", "offline",
               "--batchsize", "32")
    counts = res["memory_class_counts"]
    # m = 100 // classes seen: 50, 25, 16, 12, 10 per seen class, herded ones exactly m
    for t, m in enumerate([50, 25, 16, 12, 10]):
        assert counts[t] == [m] * (2 * t + 2) + [0] * (8 - 2 * t), counts[t]
    assert res["A_last"] > 40, res["task_acc"]  # measured 62.3, 68.8 (seeds 1, 2)


@pytest.mark.parametrize("mode", ["rm", "finetune"])
def test_prototype_memory_for_other_methods(mnist_dir, tmp_path, mode):
    from configuration.config import mem_manager_choices
    assert "prototype" in mem_manager_choices(), "--mem_manage must offer prototype (SPEC section 4)"
    # herding on the model's penultimate features; measured A_last: rm 61.1, 59.9; finetune 43.4, 49.3 (seeds 1, 2)
    res = _run(mnist_dir, tmp_path, "--mode", mode, "--mem_manage", "prototype", "--exp_name", "blurry30")
    assert res["config"]["mem_manage_resolved"] == "prototype"
    assert all(c == [10] * 10 for c in res["memory_class_counts"])
    assert res["A_last"] > 30, res["task_acc"]
