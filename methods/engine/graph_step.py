"""The training step's forward, loss and backward as compiled graphs (CUDA graphs on a GPU), at whole batches.

``--compile`` picks the engine (``torch.compile``; nothing home-made):
- ``graphs``: ``backend="cudagraphs"``: dynamo and AOT autograd capture the forward and the backward, whose
  eager kernels are replayed as CUDA graphs (one launch each instead of hundreds); compiles in seconds. CUDA only.
- ``inductor``: inductor's generated kernels, with ``mode="reduce-overhead"`` (CUDA graphs) on a GPU; on the
  CPU, its fused C++ kernels (how the tests check the path against the eager step).
- ``auto`` (default): ``graphs`` on CUDA, eager on the CPU (the CPU's numbers stay those of the eager step); a step
  that fails to compile or to run as a graph turns the graphs off for the run, with a warning in the log, and the run
  goes on eagerly (``graphs`` and ``inductor`` raise instead).
- ``off``: eager.

What is compiled is ``f(x, ya, yb, lam) = (lam * CE(m(x), ya) + (1 - lam) * CE(m(x), yb), m(x))`` with cutmix's
lambda a 0-d tensor input, so that one graph serves mixed and plain batches (a plain batch is lam = 1, yb = ya:
the same loss to the bit, and the same gradient, since 1 * g + 0 * g = g). Outside the graph stay the
augmentation (batched, on whole chunks), cutmix's draws (the same random calls as the eager step, in the same
order, so that a run draws the same batches either way) and the optimizer's step, which is already one fused
multi-tensor kernel (``fused=True``) and reads a Python-float learning rate that the schedule changes per epoch.

A compiled function is built for one (model, head, trained parameters, image shape, dtype, train mode) and holds
one graph per whole-batch size (``sizes``: --batchsize, and RM's half batches of its memory epochs). When any of
them changes (the head grows at a new task, gdumb rebuilds its model, a layer is frozen) the function is dropped
(``torch._dynamo.reset``) and built again at the next step: never a stale graph. A batch of another size (the last
partial batch of an epoch) runs eagerly. Under torchrun, and for methods with their own step (ewc, bic,
icarl, the i-Blurry methods but er...), the step is eager; er's graphs are built only when --compile asks for them
(``Method.graph_auto``: its head grows at every new class, each growth a rebuild).

A step's outputs must be read before the next step: a CUDA graph's outputs live in memory its next replay
overwrites (the trainer reads the loss and the logits at once)."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("rm")

COMPILE_CHOICES = ("auto", "off", "graphs", "inductor")
AMP_CHOICES = ("off", "bf16")


def compile_engine(choice: str, device: torch.device) -> str | None:
    """The engine ``--compile choice`` means on ``device``: "graphs", "inductor" or None (eager)."""
    if choice == "auto":
        return "graphs" if device.type == "cuda" else None
    return None if choice == "off" else choice


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``--amp bf16``; with ``off``, no context at all (the fp32 step, untouched)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def mixed_loss(model: nn.Module, device: torch.device, amp: str) -> Callable:
    """The function a graph captures: (x, ya, yb, lam) -> (cutmix's mixed cross-entropy, logits)."""
    def step(x: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor, lam: torch.Tensor):
        with autocast(device, amp):
            logits = model(x)
            loss = lam * F.cross_entropy(logits, ya) + (1 - lam) * F.cross_entropy(logits, yb)
        return loss, logits
    return step


class GraphStep:
    """Forward + loss (+ its backward, through autograd) of whole batches (``sizes``), compiled by ``engine``."""

    def __init__(self, engine: str, sizes: tuple[int, ...], device: torch.device, amp: str = "off",
                 strict: bool = True) -> None:
        if engine not in ("graphs", "inductor", "aot_eager"):  # aot_eager: dynamo + AOT autograd, no codegen (tests)
            raise ValueError(f"unknown graph engine '{engine}'")
        if engine == "graphs" and device.type != "cuda":
            raise ValueError("--compile graphs needs CUDA")
        self.engine, self.sizes, self.device, self.amp = engine, tuple(sizes), device, amp
        self._for: tuple | None = None  # what the compiled function was built for
        self._fn: Callable | None = None
        self._lam = torch.ones((), device=device)
        self.builds = 0  # compiled functions built so far
        self.steps = 0  # steps run through a compiled function
        self.strict = strict  # False (--compile auto): a step that fails to compile turns the graphs off, loudly
        self.failed: str | None = None  # why the graphs were turned off

    def report(self) -> str:
        """A run's summary of the compiled step: steps through graphs, builds, and why it was turned off or where
        torch.compile fell back to running a graph without CUDA graphs (its warning names the reason)."""
        from torch._dynamo.utils import counters
        out = f"{self.steps} steps through {self.builds} build(s) ({self.engine}); the rest eager"
        skips = counters["inductor"]["cudagraph_skips"] if self.device.type == "cuda" else 0
        if skips:
            out += f"; CUDA graphs skipped {skips} time(s), those graphs ran without them (torch's warning says why)"
        return out + (f"; turned off: {self.failed}" if self.failed else "")

    def takes(self, x: torch.Tensor) -> bool:
        """Whether a batch runs through the graph: whole batches (of one of ``sizes``) only; a partial one (another
        size, a graph of its own for a step or two) runs eagerly."""
        return self.failed is None and x.shape[0] in self.sizes

    def _key(self, model: nn.Module, x: torch.Tensor) -> tuple:
        """What the compiled function serves; each of ``sizes`` is a graph of its own inside it (dynamo compiles a
        new shape as a new graph; it never reuses one for another shape)."""
        return (model, getattr(model, "fc", None), tuple(p.requires_grad for p in model.parameters()),
                tuple(x.shape[1:]), x.dtype, model.training)

    def _stale(self, key: tuple) -> bool:
        old = self._for
        return old is None or old[0] is not key[0] or old[1] is not key[1] or old[2:] != key[2:]

    def _build(self, model: nn.Module) -> Callable:
        torch._dynamo.reset()  # the graphs of the old head or model can never run again
        self.builds += 1
        fn = mixed_loss(model, self.device, self.amp)
        if self.engine == "graphs":
            return torch.compile(fn, backend="cudagraphs", fullgraph=True, dynamic=False)
        if self.engine == "aot_eager":
            return torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=False)
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        return torch.compile(fn, mode=mode, fullgraph=True, dynamic=False)

    def __call__(self, model: nn.Module, x: torch.Tensor, ya: torch.Tensor, yb: torch.Tensor | None,
                 lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one whole batch (``yb`` None or ``ya``: a plain batch); ``loss.backward()`` runs the
        compiled backward."""
        key = self._key(model, x)
        if self._stale(key):
            self._fn = self._build(model)
            self._for = key
        if self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are no longer read
        self._lam.fill_(lam)
        # a plain batch passes its labels twice: a copy, so that dynamo does not build a second graph for the aliasing
        yb = ya.clone() if yb is None or yb is ya else yb
        if self.strict:
            out = self._fn(x, ya, yb, self._lam)
        else:
            try:
                out = self._fn(x, ya, yb, self._lam)
            except Exception as e:  # noqa: BLE001 - whatever the compiler raises, the run goes on eagerly
                self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                logger.warning("--compile auto: the compiled step failed (%s); this run's steps are eager from here "
                               "(its numbers as with --compile off). Please report it", self.failed)
                self._fn = self._for = None
                torch._dynamo.reset()
                return mixed_loss(model, self.device, self.amp)(x, ya, yb, self._lam)
        self.steps += 1
        return out
