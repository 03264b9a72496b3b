"""Sweeps on Ray (``ENGINE=ray bash experiment.sh``): each run a Ray task that runs ``python main.py ...
--resume`` in its own process, retried with --resume when it fails or its worker dies.

  printf '%q ' <main.py flags>; echo   # one run per line, shell-quoted
  ... | python -m utils.run.sweep [--cpus_per_run 1] [--gpus_per_run 0] [--retries 2]

Ray is local by default (started for the sweep, ``RAY_CPUS`` cores); with ``RAY_ADDRESS`` the runs go
to that cluster, whose machines must see this folder at the same path (a shared file system)."""
from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
USER_ERROR = 2  # main.py's exit code for bad flags or data: a retry would fail the same way


class RunFailed(Exception):
    """main.py ended with an error that a retry with --resume may get past (a crash, a kill)."""


class RunRefused(Exception):
    """main.py refused the run (exit 2: flags or data): not retried."""


def parse_runs(text: str) -> list[list[str]]:
    """One run per non-empty line, shell-quoted main.py arguments."""
    return [shlex.split(line) for line in text.splitlines() if line.strip()]


def run_label(argv: list[str]) -> str:
    """A short name of a run for the progress lines: its mode and seed (or its run name)."""
    get = lambda flag: argv[argv.index(flag) + 1] if flag in argv[:-1] else "?"  # noqa: E731
    return get("--run_name") if "--run_name" in argv else f"{get('--mode')} seed {get('--rnd_seed')}"


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the Ray worker that started it dies (Linux), so that a retried
    run never meets a stale copy of itself."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_main(argv: list[str], python: str, threads: int, progress) -> int:
    """One run as a process: ``python main.py argv --resume`` in the project folder (the body of a Ray task)."""
    label = run_label(argv)
    progress.started.remote(label)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [python, str(ROOT / "main.py"), *argv] + ([] if "--resume" in argv else ["--resume"])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          preexec_fn=_die_with_parent)
    if proc.returncode == 0:
        progress.finished.remote(label)
        return 0
    tail = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
    progress.ended.remote(label, proc.returncode)
    if proc.returncode == USER_ERROR:
        raise RunRefused(f"{label}: main.py refused the run: {tail[0]}")
    raise RunFailed(f"{label}: main.py exited with {proc.returncode}: {tail[0]}")


class Progress:
    """Runs started, running, done and failed attempts (a Ray actor the tasks report to)."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.done: set[str] = set()
        self.attempts_failed = 0

    def started(self, label: str) -> None:
        self.running[label] = self.running.get(label, 0) + 1

    def finished(self, label: str) -> None:
        self._stop(label)
        self.done.add(label)

    def ended(self, label: str, code: int) -> None:
        self._stop(label)
        self.attempts_failed += 1

    def _stop(self, label: str) -> None:
        self.running[label] = self.running.get(label, 1) - 1
        if self.running[label] <= 0:
            del self.running[label]

    def snapshot(self) -> tuple[int, int, int]:
        return len(self.done), len(self.running), self.attempts_failed


def start_ray(ray, cpus: int | None):
    """Join RAY_ADDRESS's cluster, or start a local one for this sweep (``cpus`` cores, a small object store)."""
    address = os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}}
    if address:
        return ray.init(address=address, log_to_driver=False, runtime_env=env)
    return ray.init(num_cpus=cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                    object_store_memory=200 * 1024 ** 2, runtime_env=env)


def sweep(runs: list[list[str]], cpus_per_run: float, gpus_per_run: float, retries: int, cpus: int | None,
          python: str) -> int:
    """Every run as a Ray task; progress lines as they go; 0 when every run finished."""
    import ray
    start_ray(ray, cpus)
    try:
        progress = ray.remote(Progress).options(num_cpus=0).remote()
        task = ray.remote(run_main).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries,
                                            retry_exceptions=[RunFailed])
        threads = max(1, math.floor(cpus_per_run))
        refs = {task.remote(argv, python, threads, progress): run_label(argv) for argv in runs}
        failed: list[str] = []
        pending, shown = list(refs), None
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=2.0)
            for ref in ready:
                try:
                    ray.get(ref)
                except (RunFailed, RunRefused, ray.exceptions.RayError) as e:
                    cause = getattr(e, "cause", None) or e
                    failed.append(f"{refs[ref]}: {str(cause).strip().splitlines()[-1][:300]}")
            done, running, retried = ray.get(progress.snapshot.remote())
            line = (f"[sweep] done {done} / running {running} / failed {len(failed)} / waiting "
                    f"{len(refs) - done - running - len(failed)} (of {len(refs)}; {retried} failed attempts)")
            if line != shown:
                print(time.strftime("%H:%M:%S"), line, flush=True)
                shown = line
        for text in failed:
            print(f"[sweep] FAILED {text}", flush=True)
        return 1 if failed else 0
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpus_per_run", type=float, default=1.0, help="Ray CPUs per run (also its torch threads)")
    p.add_argument("--gpus_per_run", type=float, default=0.0, help="Ray GPUs per run; 0.25 packs 4 runs on a GPU")
    p.add_argument("--retries", type=int, default=2, help="retries (with --resume) of a failed or lost run")
    p.add_argument("--cpus", type=int, default=None, help="cores of the local Ray (default: all)")
    p.add_argument("--python", default=sys.executable)
    a = p.parse_args(argv)
    python = os.path.abspath(a.python) if os.sep in a.python else a.python  # the tasks run in another folder
    if a.cpus_per_run <= 0 or a.gpus_per_run < 0 or a.retries < 0:
        print("error: --cpus_per_run must be > 0, --gpus_per_run and --retries >= 0", file=sys.stderr)
        return 2
    try:
        import ray  # noqa: F401
    except ImportError:
        print("error: ENGINE=ray needs Ray, which is not installed: .venv/bin/pip install 'ray>=2.9' (or run the "
              "sweep with ENGINE=local, the default)", file=sys.stderr)
        return 2
    runs = parse_runs(sys.stdin.read())
    if not runs:
        print("error: no runs given (one line of main.py flags per run on stdin)", file=sys.stderr)
        return 2
    return sweep(runs, a.cpus_per_run, a.gpus_per_run, a.retries, a.cpus, python)


if __name__ == "__main__":  # run as utils.run.sweep, so that Ray's workers import these functions by name
    from utils.run import sweep as _module
    sys.exit(_module.main())
