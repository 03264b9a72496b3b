"""Under torchrun: the ranks' shares of the memory update, the features and the evaluation, put
together, equal what one process computes for the same model. Trains task 0 data-parallel (a few
epochs of the real trainer), then compares on every rank; rank 0 writes the comparison as JSON.
Usage: shares.py MNIST_DIR OUT_DIR OUT.json"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import main as rm_main  # noqa: E402
from methods import build_method  # noqa: E402
from methods.engine.evaluation import evaluate  # noqa: E402
from methods.memory import model_featurizer  # noqa: E402
from methods.memory.uncertainty import diverse_by_uncertainty, vote_uncertainty  # noqa: E402
from methods.engine.trainer import Settings, Trainer  # noqa: E402
from utils.run import dist  # noqa: E402


def main(data_dir: str, out_dir: str, out: str) -> None:
    args = ["--mode", "rm", "--dataset", "mnist", "--data_dir", data_dir, "--out_dir", out_dir, "--device", "cpu",
            "--transforms", "--uncert_metric", "vr", "--memory_size", "200", "--n_epoch", "2"]
    cfg = rm_main.resolve(rm_main.base_parser(rm_main.method_names()).parse_args(args))
    d = dist.init("cpu", 120)
    device, data, tasks = rm_main.main_first(lambda: rm_main.build_run(cfg))
    method = build_method("rm", cfg, data, device, None)
    trainer = Trainer(method, data, tasks, Settings.from_config(cfg))
    trainer.run_task(0)  # data-parallel: every rank ends with the same model
    cand = tasks[1][0][:700]  # an odd share size: 350 per rank
    rng = torch.get_rng_state()
    unc_shared = method.uncertainty(cand)
    method.model.eval()
    torch.set_rng_state(rng)  # the same random views
    unc_alone, _ = vote_uncertainty(method.predict_logits, data.train.images, cand, "vr", method.n_out)
    sel = []
    for u in (unc_shared, unc_alone):
        torch.set_rng_state(rng)  # the same random fill of unused slots
        sel.append(diverse_by_uncertainty(cand, u, data.train_labels[cand], 200, 10))
    feats_shared = method.featurizer()(cand)
    feats_alone = model_featurizer(method.model, data.train.images, data.mean, data.std)(cand)
    test = trainer.eval_indices(0)
    ev_shared = trainer.evaluate(test)
    method.model.eval()
    ev_alone = evaluate(method.eval_scores, method.predict_labels, data.test.images, data.test_labels, test,
                        data.n_classes, 1)
    params = torch.cat([p.detach().flatten() for p in method.model.parameters()])
    spread = dist.all_sum(params.clone()) / d.world - params  # ranks hold the same model: 0
    report = {"world": d.world, "uncertainty_equal": bool(torch.equal(unc_shared, unc_alone)),
              "uncertainty_levels": len(torch.unique(unc_alone)),
              "selection_equal": bool(torch.equal(sel[0], sel[1])), "n_selected": len(sel[0]),
              "feature_diff": float((feats_shared - feats_alone).abs().max()),
              "acc": [ev_shared["avg_acc"], ev_alone["avg_acc"]],
              "cls_acc_equal": ev_shared["cls_acc"] == ev_alone["cls_acc"],
              "loss": [ev_shared["avg_loss"], ev_alone["avg_loss"]], "param_spread": float(spread.abs().max()),
              "task0_acc": trainer.rec["task_acc"][-1] if trainer.rec["task_acc"] else None}
    if d.main:
        Path(out).write_text(json.dumps(report))
    dist.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
