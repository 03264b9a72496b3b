"""Memory managers on hand-made inputs with hand-computed selections."""
import torch

from methods.memory import build_manager
from methods.memory.base import class_balanced_random
from methods.memory.reservoir import ReservoirMemory
from methods.memory.uncertainty import diverse_by_uncertainty


def test_unknown_manager_lists_valid_names():
    try:
        build_manager("nope", 3, torch.zeros(3, dtype=torch.long))
    except ValueError as e:
        assert "random" in str(e) and "uncertainty" in str(e)
    else:
        raise AssertionError("no error")


def test_small_candidate_set_is_kept_whole():
    labels = torch.tensor([0, 1, 0, 1, 2])
    for name in ("random", "reservoir", "uncertainty", "class_balanced"):
        m = build_manager(name, 10, labels)
        m.update(torch.tensor([4, 2, 0]), 0, 3)
        assert m.indices.tolist() == [4, 2, 0]
        assert m.seen == 3


def test_random_memory_is_a_subset_without_duplicates():
    torch.manual_seed(0)
    labels = torch.arange(20) % 4
    m = build_manager("random", 5, labels)
    m.update(torch.arange(10), 0, 4)
    m.update(torch.arange(10, 20), 1, 4)
    got = m.indices.tolist()
    assert len(got) == 5 and len(set(got)) == 5
    assert set(got) <= set(range(20))


def test_class_balanced_random_counts():
    torch.manual_seed(0)
    # class 0: 4 samples, class 1: 3, class 2: 1 (label 2 >= num_class is not balanced in)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    cand = torch.arange(8)
    out = class_balanced_random(cand, labels, size=4, num_class=2)
    assert len(out) == 4 and len(set(out.tolist())) == 4
    assert torch.bincount(labels[out], minlength=3).tolist() == [2, 2, 0]
    # 3 classes, size 7 -> 2 per class = 5, class 2 has 1 -> 5 chosen + 2 random fills
    out = class_balanced_random(cand, labels, size=7, num_class=3)
    c = torch.bincount(labels[out], minlength=3).tolist()
    assert len(set(out.tolist())) == 7 and c[2] == 1 and c[0] >= 2 and c[1] >= 2


def test_diverse_by_uncertainty_hand_computed():
    torch.manual_seed(0)
    # class 0: six candidates (ids 10..15), class 1: one candidate (id 16), class 2: three (17..19)
    cand = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 2, 2])
    unc = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.4, 0.6, 0.0, 0.3])
    # size 6, 3 classes -> m = 2 per class.
    # class 0 sorted: 11(.1) 15(.2) 13(.3) 10(.5) 14(.7) 12(.9); jump = 6//2 = 3 -> ranks 0, 3 -> 11, 10
    # class 1: 1 <= m -> keep 16. class 2 sorted: 18(0) 19(.3) 17(.6); jump = 3//2 = 1 -> 18, 19
    # one free slot, filled from the rest at random
    out = diverse_by_uncertainty(cand, unc, y, size=6, num_class=3).tolist()
    assert out[:5] == [11, 10, 16, 18, 19]
    assert len(out) == 6 and out[5] in {12, 13, 14, 15, 17}


def test_uncertainty_manager_first_task_is_class_balanced_then_uses_scores():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 6 + [1] * 6 + [0, 0, 1, 1])
    m = build_manager("uncertainty", 4, labels)
    m.update(torch.arange(12), 0, 2, scorer=lambda c: (_ for _ in ()).throw(AssertionError("no scoring in task 0")))
    assert torch.bincount(labels[m.indices], minlength=2).tolist() == [2, 2]
    old = m.indices.tolist()
    a0, a1 = min(i for i in old if labels[i] == 0), min(i for i in old if labels[i] == 1)
    # task 1: stream 12..15 + the 4 old samples = 8 candidates, 4 per class, 2 slots per class.
    # scores = index / 100, so per class the sorted order is: the two old ids, then the new ones;
    # jump = 4 // 2 = 2 keeps ranks 0 and 2: the smaller old id and the first new one
    scored = []

    def scorer(c: torch.Tensor) -> torch.Tensor:
        scored.append(sorted(c.tolist()))
        return c.float() / 100
    m.update(torch.tensor([12, 13, 14, 15]), 1, 2, scorer=scorer)
    assert scored == [sorted(old + [12, 13, 14, 15])]
    assert m.indices.tolist() == [a0, 12, a1, 14]
    assert m.scores is not None and len(m.scores) == 8


def test_reservoir_sequential_semantics_hand_computed():
    labels = torch.zeros(100, dtype=torch.long)

    class Fixed(ReservoirMemory):
        def __init__(self, size, labels, draws):
            super().__init__(size, labels)
            self.draws = draws
            self.asked = []

        def draw_slots(self, seen_at):
            self.asked.append(seen_at.tolist())
            return torch.tensor(self.draws)

    m = Fixed(2, labels, draws=[1, 5, 1, 0])
    m.update(torch.tensor([10, 11]), 0, 1)  # fits: memory = [10, 11], seen = 2
    assert m.indices.tolist() == [10, 11] and m.seen == 2
    # stream 20..23 with j = 1, 5, 1, 0 drawn from U[0, seen) with seen = 2, 3, 4, 5:
    # 20 -> slot 1; 21 misses; 22 -> slot 1 (overwrites 20); 23 -> slot 0
    m.update(torch.tensor([20, 21, 22, 23]), 1, 1)
    assert m.asked == [[2.0, 3.0, 4.0, 5.0]]
    assert m.indices.tolist() == [23, 22]
    assert m.seen == 6


def test_reservoir_fills_before_replacing():
    """Free slots are filled in stream order first; only the samples after them draw a slot."""
    labels = torch.zeros(100, dtype=torch.long)

    class Fixed(ReservoirMemory):
        def draw_slots(self, seen_at):
            self.asked = seen_at.tolist()
            return torch.tensor(self.draws)

    m = Fixed(5, labels)
    m.draws = []
    m.update(torch.arange(3), 0, 1)  # fits
    assert m.indices.tolist() == [0, 1, 2] and m.seen == 3
    m.draws = [7, 5, 2, 9, 6]  # for samples 5..9, seen = 5..9: only sample 7 hits (slot 2)
    m.update(torch.arange(3, 10), 1, 1)
    assert m.asked == [5.0, 6.0, 7.0, 8.0, 9.0]  # 3 and 4 took the free slots without a draw
    assert m.indices.tolist() == [0, 1, 7, 3, 4] and m.seen == 10


def test_every_manager_state_round_trips_as_data(tmp_path):
    """state_dict -> torch.save -> torch.load(weights_only=True) -> load_state_dict gives the same memory."""
    torch.manual_seed(0)
    labels = torch.arange(40) % 4
    feats = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    for name in ("random", "reservoir", "uncertainty", "class_balanced", "prototype"):
        m = build_manager(name, 8, labels)
        for t in range(2):
            m.update(torch.arange(20 * t, 20 * t + 20), t, 4, scorer=lambda c: c.float(), featurizer=lambda i: feats[i])
        torch.save(m.state_dict(), tmp_path / "m.pt")
        fresh = build_manager(name, 8, labels)
        fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
        assert fresh.indices.tolist() == m.indices.tolist() and fresh.seen == m.seen, name
        if name == "prototype":
            assert sorted(fresh.class_mean) == [0, 1, 2, 3]
            assert all(torch.equal(fresh.class_mean[c], m.class_mean[c]) for c in m.class_mean)
