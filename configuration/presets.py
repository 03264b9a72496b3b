"""The public scripts' per-dataset settings (SPEC section 9), used for flags left unset."""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "mnist": dict(model_name="mlp400", n_epoch=5, batchsize=16, lr=0.05, opt_name="sgd", sched_name="cos",
                  memory_size=500, n_tasks=5, n_cls_a_task=2, n_init_cls=10, n_init_cls_disjoint=2, topk=1),
    "cifar10": dict(model_name="resnet18", n_epoch=256, batchsize=16, lr=0.05, opt_name="sgd", sched_name="cos",
                    memory_size=500, n_tasks=5, n_cls_a_task=2, n_init_cls=10, n_init_cls_disjoint=2, topk=1),
    "cifar100": dict(model_name="resnet32", n_epoch=256, batchsize=16, lr=0.03, opt_name="sgd", sched_name="cos",
                     memory_size=2000, n_tasks=5, n_cls_a_task=20, n_init_cls=100, n_init_cls_disjoint=20, topk=1),
    "imagenet": dict(model_name="resnet34", n_epoch=100, batchsize=256, lr=0.05, opt_name="sgd", sched_name="multistep",
                     memory_size=20000, n_tasks=10, n_cls_a_task=100, n_init_cls=1000, n_init_cls_disjoint=100, topk=5),
}
PRESETS["fashion_mnist"] = dict(PRESETS["mnist"])


def preset_for(dataset: str) -> dict:
    """Settings of the dataset, or of mnist-sized defaults for an unknown dataset."""
    return dict(PRESETS.get(dataset, PRESETS["mnist"]))
