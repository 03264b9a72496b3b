"""Si-Blurry-N-M task splits (Moon et al., ICCV 2023; SPEC section 13): stochastic task boundaries, generated
from a seed with the official sampler's draws (KHU-AGI/Si-Blurry at 61bd5eb, ``utils/online_sampler.py``,
``OnlineSampler`` with its stochastic path), cached as split files in the CLIB format.

Draws, all from one ``torch.Generator`` seeded with --rnd_seed, in this order (C classes, T tasks):
1. D = floor(C*N/100) rounded down to a multiple of T disjoint classes, B = C - D rounded down to a multiple
   of T blurry classes (the rest unused); a permutation of the C classes: its first D disjoint, next B blurry.
2. If D > 0: T - 1 cuts uniform in [0, D - 1], sorted: task t gets the disjoint classes between cuts t and t+1
   (possibly none). 3. The same for the B blurry classes.
4. Every sample goes to the task owning its class, in dataset order; K = floor(S_b*M/100) of the S_b samples of
   blurry classes are pooled. If K > 0: T - 1 cuts uniform in [0, K - 1], sorted, give k_0..k_{T-1}; task t
   gives up the first k_t of its blurry samples (all of them if it has fewer); one permutation of the pool;
   task t receives the next k_t pooled samples, so the last tasks receive fewer (or none) when the pool is short.
5. One permutation per task of its samples (disjoint ones first, then blurry, then received).

Dataset order is the order of the official dataset classes: for a split whose file names are all integers (the
prepared MNIST, Fashion-MNIST, CIFAR: the original index), that index; else the image-folder order (sorted class
folders, sorted names), as torchvision's ImageFolder. A class's id is its rank among the sorted class folders
(torchvision's targets for these datasets)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from utils.data.iblurry import load_or_make_clib_split, parse_nm
from utils.data.splits import Record, SplitError, folder_of


@dataclass(frozen=True)
class SiBlurry:
    """Si-Blurry-N-M: ``n`` percent of the classes disjoint, ``m`` percent of all blurry samples pooled."""

    n: int
    m: int

    @property
    def name(self) -> str:
        return f"siblurry{self.n}_{self.m}"

    def train_name(self, dataset: str, n_tasks: int, seed: int, t: int) -> str:
        """The cached split file of task t (the CLIB format; a name of its own beside i-Blurry's)."""
        return f"{dataset}_siblurry_split{n_tasks}_n{self.n}_m{self.m}_rand{seed}_task{t}.json"


def parse_siblurry(exp: str) -> SiBlurry | None:
    """SiBlurry(N, M) for "siblurryN_M" (0 <= N, M <= 100), None for any other exp name."""
    nm = parse_nm("siblurry", exp)
    return None if nm is None else SiBlurry(*nm)


@dataclass
class SiBlurrySplit:
    """One generated split: per task its dataset indices (in stream order), its disjoint and blurry classes,
    the blurry samples it gave to the pool and received from it."""

    tasks: list[list[int]]
    disjoint: list[list[int]]
    blurry: list[list[int]]
    given: list[int]
    received: list[int]


def class_groups(n_classes: int, n_tasks: int, spec: SiBlurry) -> tuple[int, int]:
    """(D, B): the disjoint and blurry class counts, each rounded down to a multiple of the task count."""
    d = (n_classes * spec.n // 100) // n_tasks * n_tasks
    b = (n_classes - d) // n_tasks * n_tasks
    return d, b


def _cuts(total: int, n_tasks: int, g: torch.Generator) -> list[int]:
    """0, T - 1 sorted draws uniform in [0, total - 1], total: the bounds of T consecutive groups."""
    return [0] + torch.randint(0, total, (n_tasks - 1,), generator=g).sort().values.tolist() + [total]


def make_siblurry(targets: list[int], n_classes: int, n_tasks: int, spec: SiBlurry, seed: int) -> SiBlurrySplit:
    """The official sampler's split of a dataset whose sample i has class ``targets[i]`` (dataset order)."""
    if n_tasks < 1:
        raise SplitError(f"n_tasks must be at least 1, got {n_tasks}")
    g = torch.Generator().manual_seed(seed)
    d, b = class_groups(n_classes, n_tasks, spec)
    order = torch.randperm(n_classes, generator=g).tolist()
    disjoint = [order[lo:hi] for lo, hi in zip(*_pairs(_cuts(d, n_tasks, g)))] if d else [[] for _ in range(n_tasks)]
    blurry = ([order[d + lo:d + hi] for lo, hi in zip(*_pairs(_cuts(b, n_tasks, g)))] if b
              else [[] for _ in range(n_tasks)])
    owner = {c: ("d", t) for t, cs in enumerate(disjoint) for c in cs}
    owner.update({c: ("b", t) for t, cs in enumerate(blurry) for c in cs})
    own_d: list[list[int]] = [[] for _ in range(n_tasks)]
    own_b: list[list[int]] = [[] for _ in range(n_tasks)]
    for i, c in enumerate(targets):
        kind, t = owner.get(int(c), (None, 0))
        if kind == "d":
            own_d[t].append(i)
        elif kind == "b":
            own_b[t].append(i)
    k_total = sum(map(len, own_b)) * spec.m // 100
    given, received = [0] * n_tasks, [0] * n_tasks
    if k_total > 0:
        cuts = _cuts(k_total, n_tasks, g)
        share = [cuts[t + 1] - cuts[t] for t in range(n_tasks)]
        pool: list[int] = []
        for t in range(n_tasks):
            pool += own_b[t][:share[t]]
            given[t] = len(own_b[t][:share[t]])
            own_b[t] = own_b[t][share[t]:]
        pool = [pool[j] for j in torch.randperm(len(pool), generator=g).tolist()]
        for t in range(n_tasks):
            own_b[t] += pool[:share[t]]
            received[t] = len(pool[:share[t]])
            pool = pool[share[t]:]
    tasks = []
    for t in range(n_tasks):
        mine = own_d[t] + own_b[t]
        tasks.append([mine[j] for j in torch.randperm(len(mine), generator=g).tolist()])
    return SiBlurrySplit(tasks, disjoint, blurry, given, received)


def _pairs(cuts: list[int]) -> tuple[list[int], list[int]]:
    return cuts[:-1], cuts[1:]


def dataset_order(files: list[str]) -> list[str]:
    """The training files in the official dataset's order (see the module's docstring)."""
    stems = [Path(f).stem for f in files]
    if all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return [f for _, f in sorted(zip(map(int, stems), files))]
    return sorted(files, key=lambda f: (folder_of(f), Path(f).name))


def load_or_make_siblurry(folder: Path | str, dataset: str, spec: SiBlurry, seed: int, n_tasks: int,
                          train_files: list[str], classes: list[str],
                          test_class_files: dict[str, list[str]]) -> tuple[list[list[Record]], list[list[Record]]]:
    """This seed's split files from ``folder``, generated and written first when missing (existing files are
    never rewritten), with the test-set file; relabelled by exposure order (utils.data.iblurry.relabel)."""
    def make() -> list[list[str]]:
        files = dataset_order(train_files)
        class_id = {c: k for k, c in enumerate(sorted(classes))}
        split = make_siblurry([class_id[folder_of(f)] for f in files], len(classes), n_tasks, spec, seed)
        return [[files[i] for i in task] for task in split.tasks]
    return load_or_make_clib_split(folder, dataset, spec, seed, n_tasks, make, test_class_files)


def task_lines(task_classes: list[list[str]]) -> list[str]:
    """One log line per task from the class of each of its samples, in stream order: its size, the classes
    it shows first (those found in this task only are disjoint, the others blurry) and its samples of
    classes first shown by an earlier task."""
    tasks_of: dict[str, set[int]] = {}
    for t, classes in enumerate(task_classes):
        for c in set(classes):
            tasks_of.setdefault(c, set()).add(t)
    key = (lambda c: (len(c), c))
    lines = []
    for t, classes in enumerate(task_classes):
        new = sorted({c for c in classes if min(tasks_of[c]) == t}, key=key)
        older = sum(1 for c in classes if min(tasks_of[c]) < t)
        lines.append(f"task {t}: {len(classes)} samples; new disjoint classes "
                     f"{[c for c in new if len(tasks_of[c]) == 1]}, new blurry classes "
                     f"{[c for c in new if len(tasks_of[c]) > 1]}; {older} samples of classes shown earlier")
    return lines
