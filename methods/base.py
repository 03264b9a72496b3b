"""The Method base: the hooks a method may override, its model, memory and loss, and its state as data.

The trainer (methods.engine) owns every loop and both protocols; a method answers events, never knowing
which protocol sends them. Per task: ``before_task`` (with the classes the task shows at its start) ->
``expose`` for each class that appears later (sample-wise) -> the stream: per chunk of new samples
``remember`` (first when ``remember_first``), ``steps_due`` steps of ``replay_batch`` -> ``train_step`` (the
base step calls ``after_step`` after its optimizer step), ``remember`` -> ``after_stream`` -> for each
training call of ``training_calls``: ``before_fit``, epochs of ``epoch_batches`` / ``chunk_extras`` /
``train_step``, ``after_fit`` -> ``after_training`` -> ``update_memory`` (before the first call on the memory,
else after training) -> ``after_task``. Evaluation asks ``before_eval``, ``eval_scores`` and
``predict_labels``. ``cfg.follow`` names whose rules a method keeps where they differ: "cvpr21" (the CVPR'21
code, blurry/disjoint), "clib" (the CLIB code, i-Blurry) or "paper" (--as_intended, and settings no public
code runs)."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.base_head import ModelHead
from methods.base_scoring import MemoryScoring
from methods.base_state import StateAsData
from methods.memory import MemoryManager, build_manager
from methods.engine.graph_step import GraphStep, autocast, compile_engine
from methods.engine.online_protocol import StepCounter
from methods.engine.optim import clip_grad_norm_unfolded
from utils.data.augment import TrainAugment, cutmix, normalize
from utils.data.batches import shuffled_batches
from utils.data.run_data import RunData
from utils.run import dist

logger = logging.getLogger("rm")


class Method(ModelHead, MemoryScoring, StateAsData):
    """Fine-tuning on stream + memory; subclasses override only what differs. Its model, head and optimizer are
    methods.base_head's; its memory's scorers methods.base_scoring's; its state as data methods.base_state's."""

    name = "base"
    default_memory = "random"
    exact_grey_fold = True  # False: the fold is not exact for this method (EWC/RWalk); --grey_fold all forces it
    single_task = False  # joint: every task merged into one
    stream_pass = True  # an online run trains on the stream once (gdumb and joint do not)
    replays = False  # True: each step draws its replay from a memory that learns from every step (ER's family)
    remember_first = False  # True: a chunk's samples enter the memory before its steps (CLIB)
    eval_every_epoch = True  # False: evaluated once per task, after the memory update (iCaRL)
    task_acc_is_final = False  # True: a task's accuracy is its final model's, not the best epoch's (BiC)
    grad_clip: float | None = None  # a gradient-norm limit for train_step (the CLIB code's rm on its memory)
    graph_auto = True  # False: --compile auto leaves the step eager (ER: every new class grows the head, a rebuild)
    after_fit_timer: str | None = None  # the phase timer of after_fit's work (EWC/RWalk: "importance")

    def __init__(self, cfg, data: RunData, device: torch.device, writer=None) -> None:
        self.cfg = cfg
        self.data = data
        self.device = device
        self.writer = writer
        ch = getattr(cfg, "in_channels", None)
        self.in_channels = ch if ch is not None else (3 if cfg.model_name == "mlp400" else data.train.images.shape[1])
        self.follow = getattr(cfg, "follow", "cvpr21")
        self.head = "initial"  # how the current head was made: "initial" (new_model) or "linear" (replace_head)
        self.model = self.new_model(cfg.n_init_cls)
        mem = cfg.mem_manage if cfg.mem_manage not in (None, "default") else self.default_memory
        self.mem_manage = mem
        self.memory: MemoryManager = build_manager(mem, self.memory_size(), data.train_labels)
        self.cutmix = "cutmix" in cfg.transforms
        self.train_aug = TrainAugment(list(cfg.transforms), data.mean, data.std)
        self.exposed: set[int] = set()
        self.num_learning_class = cfg.n_init_cls
        self.stream = torch.empty(0, dtype=torch.long, device=device)  # this task's training indices
        self.optimizer = None
        self.scheduler = None
        self.samples: dict[str, int] = {}  # work beyond training and evaluation (uncertainty views, ...)
        self._net: tuple[tuple, nn.Module] | None = None  # (what it was built for, the data-parallel model)
        self.amp = getattr(cfg, "amp", "off")
        choice = getattr(cfg, "compile", "off")
        engine = compile_engine(choice, device) if choice != "auto" or self.graph_auto else None
        self.graph = GraphStep(engine, self.graph_sizes(), device, self.amp, strict=choice != "auto") \
            if engine is not None and self.graph_step_ok() and not dist.info().active else None

    @classmethod
    def hyper_defaults(cls, follow: str) -> dict:
        """The method's own optimiser settings where ``follow`` runs it, unless given (else the dataset's preset)."""
        return {}

    @classmethod
    def form(cls, follow: str) -> type:
        """The class that runs this method when ``follow`` (cfg.follow) names whose rules it keeps: itself."""
        return cls

    def graph_sizes(self) -> tuple[int, ...]:
        """The whole-batch sizes of this method's steps, each a compiled graph (methods.engine.graph_step)."""
        return (self.cfg.batchsize,)

    @classmethod
    def graph_step_ok(cls) -> bool:
        """Whether this method's step can run as a compiled graph (methods.engine.graph_step): the base step and
        loss (a method with its own step or loss takes the eager step)."""
        return (cls.train_step is Method.train_step and cls.criterion is Method.criterion
                and cls.extra_loss is Method.extra_loss)

    def autocast(self):
        """The context of a training step and an evaluation: bf16 autocast with --amp bf16, else none."""
        return autocast(self.device, self.amp)

    def memory_size(self) -> int:
        return self.cfg.memory_size

    @staticmethod
    def default_temp_batchsize(batchsize: int, follow: str) -> int:
        """--temp_batchsize when not given: the stream samples of a step, half the batch (the CLIB code)."""
        return max(1, batchsize // 2)

    # ----------------------------------------------------------------- protocol
    def training_calls(self, online: bool) -> list[tuple[str, int]]:
        """The task's training calls, (phase, epochs): online, one pass over the stream then epochs on
        the memory; offline, epochs on stream + memory. The memory is updated before the first
        "memory" call, or after training when there is none."""
        return [("stream", 1), ("memory", self.cfg.n_epoch)] if online else [("offline", self.cfg.n_epoch)]

    # ----------------------------------------------------------------- hooks
    def before_task(self, task_id: int, stream: torch.Tensor, test_idx: torch.Tensor,
                    shown: list[int] | None = None) -> None:
        """Expose the classes ``shown`` at the task's start (None: every class of the stream); the head: the
        CVPR'21 code replaces it every task (a fresh nn.Linear with bias), elsewhere it grows keeping its rows;
        reset optimizer and scheduler."""
        self.stream = stream[torch.randperm(len(stream), device=self.device)]
        shown = torch.unique(self.data.train_labels[stream]).tolist() if shown is None else shown
        self.exposed |= set(int(c) for c in shown)
        self.num_learning_class = max(len(self.exposed), self.num_learning_class)
        new_out = max(self.n_out, self.head_size())
        if self.cfg.init_model:
            self.model = self.new_model(new_out)
        elif self.follow == "cvpr21":
            self.replace_head(new_out)
        elif new_out > self.n_out or self.head == "initial":
            self.expand_head(new_out)
        self.build_optimizer()
        logger.info("Task %d: %d stream samples, %d memory, head %d outputs", task_id, len(stream), len(self.memory),
                    new_out)

    def expose(self, labels: list[int]) -> None:
        """Classes ``labels`` appear for the first time mid-task: the head grows (old rows kept) and the
        optimizer is rebuilt over the new parameters."""
        self.exposed |= set(labels)
        self.num_learning_class = max(len(self.exposed), self.num_learning_class)
        if self.head_size() > self.n_out:
            self.expand_head(self.head_size())
            self.build_optimizer()

    # ----------------------------------------------------------------- the stream, a chunk at a time
    def chunk_ends(self, n: int, temp_batchsize: int) -> list[int]:
        """Ends of the chunks of ``n`` new stream samples that train together: every --temp_batchsize samples
        (BiC ends a chunk where its temporary batch fills, its held-out samples skipped)."""
        return list(range(temp_batchsize, n, temp_batchsize)) + [n] if n else []

    def steps_due(self, counter: StepCounter, n_samples: int) -> int:
        """Training steps a full chunk of ``n_samples`` earns (the counter's rule: ``online_iter`` each)."""
        return counter.add(n_samples) if self.stream_pass else 0

    def replay_batch(self, temp: torch.Tensor) -> torch.Tensor:
        """A step's samples: the chunk's, then up to --batchsize - len(temp) memory samples drawn uniformly."""
        mem = self.memory.indices
        k = min(self.cfg.batchsize - len(temp), len(mem))
        if k <= 0:
            return temp
        return torch.cat([temp, mem[torch.randperm(len(mem), device=mem.device)[:k]]])

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """A trained chunk's samples and the memory: nothing here, it is chosen at the task end (update_memory)."""

    def after_stream(self, task_id: int) -> None:
        """After the task's stream, before its training calls and its evaluation."""

    def before_fit(self, phase: str) -> None:
        """Before each training call."""

    def epoch_batches(self, phase: str) -> list[torch.Tensor]:
        """Index batches of one epoch. Fine-tuning: stream + memory shuffled, last partial batch dropped."""
        return shuffled_batches(self.call_pool(phase), self.cfg.batchsize, drop_last=True)

    def call_pool(self, phase: str) -> torch.Tensor:
        """The samples a training call of ``phase`` trains on."""
        return self.memory.indices if phase == "memory" else torch.cat([self.stream, self.memory.indices])

    def chunk_extras(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Per-sample tensors a step needs beyond (x, y, idx), computed once per augmented chunk
        ``x``; the trainer hands each step its rows (``train_step``'s ``extra``)."""
        return None

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None,
                   extra: dict[str, torch.Tensor] | None = None):
        """One step on augmented images ``x``, labels ``y`` of training-set indices ``idx``: SGD step
        with cutmix (p=0.5 per batch, loss mixed by area) when configured. Returns (loss, logits, y)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cutmix and np.random.rand() < 0.5:
            xm, ya, yb, lam = cutmix(x, y, alpha=1.0)
        else:
            xm, ya, yb, lam = x, y, None, 1.0
        if self.graph is not None and self.graph.takes(xm):  # base methods only: criterion and extra_loss are ours
            loss, logits = self.graph(self.model, xm, ya, yb, lam)
        elif yb is None:
            logits = self.net(x)
            loss = self.criterion(logits, y)
        else:
            logits = self.net(xm)
            loss = lam * self.criterion(logits, ya) + (1 - lam) * self.criterion(logits, yb)
        extra_loss = self.extra_loss(x, y, logits)
        if extra_loss is not None:
            loss = loss + extra_loss
        loss.backward()
        if self.grad_clip is not None:
            clip_grad_norm_unfolded(self.model, self.grad_clip)
        self.optimizer.step()
        self.after_step()
        return loss, logits, y

    def after_step(self) -> None:
        """After each optimizer step of ``train_step`` (ER: the CLIB code's per-step lr decay)."""

    def criterion(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def extra_loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """Hook for regularisers (none here)."""
        return None

    def train_mode(self, phase: str) -> bool:
        """The model's mode in the epochs of ``phase``: train mode (the CLIB code's rm keeps the stream's)."""
        return True

    def after_fit(self, task_id: int, phase: str) -> None:
        """After every training call (EWC/RWalk compute their importance here)."""

    def after_training(self, task_id: int) -> bool:
        """After the task's last training call; True when it changed the model (BiC's bias correction),
        so that the task is evaluated again."""
        return False

    def update_memory(self, task_id: int) -> None:
        scorer = self.uncertainty if self.memory.needs_scorer else None
        featurizer = self.featurizer() if self.memory.needs_features else None
        self.memory.update(self.stream, task_id, self.num_learning_class, scorer, featurizer)
        logger.info("Memory (%s) after task %d: %d samples, per class %s", self.mem_manage, task_id, len(self.memory),
                    self.memory.class_counts(self.data.n_classes))

    def after_task(self, task_id: int) -> None:
        pass

    def count(self, key: str, n: int) -> None:
        self.samples[key] = self.samples.get(key, 0) + n

    # ----------------------------------------------------------------- evaluation
    def before_eval(self) -> None:
        """Before each evaluation (the model is in eval mode)."""

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(x, self.data.mean, self.data.std))

    @torch.no_grad()
    def eval_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores used for test accuracy (iCaRL: nearest mean of exemplars)."""
        return self.predict_logits(x)

    def predict_labels(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1)
