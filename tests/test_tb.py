"""TensorBoard content of a run: memory grid by hand, and what a real run writes (read back)."""
from __future__ import annotations

import torch

import main as rm_main
from utils.run.tb import memory_grid


def test_memory_grid_puts_each_class_on_its_row_by_hand():
    images = torch.arange(6, dtype=torch.uint8).mul(40).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    mem = torch.tensor([5, 1, 4, 3])  # class 0: sample 5; class 1: samples 1, 4 (3 is the third: cut)
    g = memory_grid(images, labels, mem, n_classes=2, per_class=2)
    # 2 rows x 2 columns of 2x2 cells, padding 1: (2 * 3 + 1) square, grey turned into 3 channels
    assert g.shape == (3, 7, 7)
    cell = lambda r, c: g[0, 1 + 3 * r:3 + 3 * r, 1 + 3 * c:3 + 3 * c]
    assert (cell(0, 0) == 200).all() and (cell(0, 1) == 0).all()  # sample 5 = 200; empty cell black
    assert (cell(1, 0) == 40).all() and (cell(1, 1) == 160).all()  # samples 1 and 4
    assert g[0, 0, 0] == 80  # padding


def test_run_writes_matrix_memory_grid_histogram_and_hparams(mnist_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert rm_main.main(["--mode", "finetune", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--out_dir",
                         str(tmp_path), "--device", "cpu", "--n_epoch", "1", "--memory_size", "100",
                         "--transforms", "--run_name", "tb"]) == 0
    ea = EventAccumulator(str(tmp_path / "tensorboard" / "mnist" / "tb"), size_guidance={"images": 0, "histograms": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"Accuracy/matrix", "Memory/samples"} <= set(tags["images"])
    grid = ea.Images("Memory/samples")
    assert [e.step for e in grid] == [0, 1, 2, 3, 4]
    # 10 classes x 8 per class of 28x28 cells, padding 1
    assert (grid[-1].height, grid[-1].width) == (10 * 29 + 1, 8 * 29 + 1)
    import json
    counts = json.loads((tmp_path / "results" / "mnist" / "tb.json").read_text())["memory_class_counts"][-1]
    hist = ea.Histograms("Memory/class_histogram")[-1].histogram_value
    assert hist.num == 100  # one bucket per class (limits c + 0.5); leading empty buckets are dropped
    assert {round(lim - 0.5): n for lim, n in zip(hist.bucket_limit, hist.bucket)} == \
        {c: n for c, n in enumerate(counts) if c >= round(hist.bucket_limit[0] - 0.5)}
    assert [ea.Scalars(f"MemoryCount/class_{c}")[-1].value for c in range(10)] == counts
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(ea.PluginTagToContent("hparams"))
    assert {"hparam/A_last", "hparam/A_last_final"} <= set(tags["scalars"])


def test_image_grid_equals_torchvision_make_grid():
    """The tensor-only grid is torchvision's make_grid, pixel for pixel (grey and RGB, partial last row)."""
    from torchvision.utils import make_grid
    from utils.run.tb import image_grid
    gen = torch.Generator().manual_seed(0)
    for n, c, h, w, per_row in [(80, 1, 28, 28, 8), (13, 3, 5, 7, 4), (3, 1, 2, 2, 5), (6, 3, 32, 32, 6)]:
        cells = torch.randint(0, 256, (n, c, h, w), generator=gen, dtype=torch.uint8)
        assert torch.equal(image_grid(cells, per_row), make_grid(cells, nrow=per_row, padding=1, pad_value=80))
