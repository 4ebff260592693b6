"""Training infrastructure shared by every stage: seeding, exact-resume checkpoints, metrics, guards.

- `seed_everything(seed)`: python, numpy and torch RNGs, deterministic algorithms on.
- `save_training_state` / `load_training_state`: model(s), optimizer(s), step, RNG states
  (python, numpy, torch, CUDA, and any named `torch.Generator`) and free-form JSON extras
  in one safetensors file (through `worldmodel.checkpoint`, so never pickle). The write is
  atomic and the previous good file is kept as `<name>.prev.safetensors`; loading falls
  back to it when the newest file is missing or corrupt.
- `MetricsLogger`: JSONL (always) + TensorBoard (when installed) scalars.
- `check_finite`: the NaN/inf guard; raises `NonFiniteLossError` naming the step and loss.
- `progress`: a tqdm bar that shows loss and throughput.
- `StopSignals`, `claim_run_dir`, `config_changes`: what keeps a run from being lost: SIGINT/SIGTERM
  stop at a step boundary, one run per `run_dir` (a lock file), a finished or running run is never
  overwritten, and a resume must keep the settings it was started with.
- `help_node`: `--help` of the hydra entry points, written from the config dataclasses' field docs.

Optimizer state is flattened generically: every tensor leaf of `optimizer.state_dict()`
becomes a safetensors tensor under `optim.<name>.<path>`, and the rest (hyperparameters,
param-id lists, int dict keys, tuples) is kept as a JSON skeleton that records each leaf's
type, so `load_state_dict` gets back exactly what `state_dict` gave.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fcntl
import inspect
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from worldmodel.checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint

STATE_FORMAT = "train-state/1"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and CUDA); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


# ----------------------------------------------------------------------------- nested state <-> tensors + JSON


def flatten_state(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Move every tensor leaf of a nested dict/list/tuple into `tensors`; return a JSON skeleton."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().cpu()
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        # JSON keys are strings; record the items as pairs so int keys (param ids) survive.
        return {"__dict__": [[k, flatten_state(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}  # inf / nan are not JSON
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a training state; use tensors or JSON types")


def unflatten_state(skel: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(skel, list):
        return [unflatten_state(v, tensors) for v in skel]
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__dict__" in skel:
            return {k: unflatten_state(v, tensors) for k, v in skel["__dict__"]}
        if "__tuple__" in skel:
            return tuple(unflatten_state(v, tensors) for v in skel["__tuple__"])
        if "__float__" in skel:
            return float(skel["__float__"])
        raise ValueError(f"unknown node in training-state skeleton: {sorted(skel)}")
    return skel


def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot of python, numpy, torch (and CUDA) RNGs plus named generators, as nested tensors/JSON."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restore a `rng_state` snapshot."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
    for k, g in (generators or {}).items():
        if k not in state["generators"]:
            raise CheckpointError(f"training state has no generator {k!r}; it has {sorted(state['generators'])}")
        g.set_state(state["generators"][k])


# ----------------------------------------------------------------------------- training-state checkpoints


def previous_path(path: str | Path) -> Path:
    """Where the previous good training state is kept: `state.safetensors` -> `state.prev.safetensors`."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_training_state(
    path: str | Path,
    step: int,
    models: Mapping[str, nn.Module | Mapping[str, Tensor]],
    optimizers: Mapping[str, torch.optim.Optimizer | Mapping[str, Any]] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write models, optimizers, step, RNG states and JSON `extra`; keep the previous file.

    Models and optimizers may be given as objects or as their (full) state dicts, which is how
    a sharded job hands over what its ranks gathered (train/sharded_state.py).
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    for name, m in models.items():
        sd = m.state_dict() if isinstance(m, nn.Module) else m
        tensors.update({f"model.{name}.{k}": v for k, v in sd.items()})
    optim_states = {n: o.state_dict() if isinstance(o, torch.optim.Optimizer) else o for n, o in (optimizers or {}).items()}
    skeleton = {
        "optimizers": {n: flatten_state(o, f"optim.{n}", tensors) for n, o in optim_states.items()},
        "rng": flatten_state(rng_state(generators), "rng", tensors),
    }
    meta = {"kind": STATE_FORMAT, "step": int(step), "models": sorted(models), "skeleton": skeleton,
            "extra": dict(extra or {}), "saved_at": time.time()}
    if path.exists():
        # Keep the last good state: a hard link costs nothing and is replaced atomically.
        prev, tmp = previous_path(path), path.with_name(path.name + ".prevtmp")
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copy2(path, tmp)
        os.replace(tmp, prev)
    save_checkpoint(path, tensors, meta)


def _read_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state (kind={meta.get('kind')!r}, expected {STATE_FORMAT!r})")
    return tensors, meta


def load_training_state(
    path: str | Path,
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Restore a `save_training_state` file into the given objects; returns (step, extra).

    Falls back to the previous good file if the newest is missing or corrupt; raises
    CheckpointError naming both files if neither loads.
    """
    tensors, meta = read_training_state(path)
    restore_training_state(tensors, meta, path, models, optimizers, generators, restore_rng)
    return int(meta["step"]), meta["extra"]


def restore_training_state(
    tensors: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    path: str | Path,
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
    load_full: Callable[[dict[str, dict[str, Tensor]], dict[str, Any]], None] | None = None,
) -> None:
    """Put a read training state (`read_training_state`) into the given objects.

    `load_full(model_states, optimizer_states)` replaces the plain `load_state_dict` calls, e.g.
    for sharded models that keep only their slices of the full state (train/sharded_state.py).
    """
    missing = sorted(set(models) - set(meta["models"]))
    if missing:
        raise CheckpointError(f"training state {path} has no model(s) {missing}; it has {meta['models']}")
    model_states = {name: _state_model(tensors, name) for name in models}
    skel = meta["skeleton"]["optimizers"]
    for name in optimizers or {}:
        if name not in skel:
            raise CheckpointError(f"training state {path} has no optimizer {name!r}; it has {sorted(skel)}")
    optim_states = {name: unflatten_state(skel[name], tensors) for name in optimizers or {}}
    if load_full is not None:
        load_full(model_states, optim_states)
    else:
        for name, m in models.items():
            load_state_strict(m, model_states[name], path)
        for name, opt in (optimizers or {}).items():
            opt.load_state_dict(optim_states[name])
    if restore_rng:
        set_rng_state(unflatten_state(meta["skeleton"]["rng"], tensors), generators)


def _state_model(tensors: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """The state dict of model `name` inside a training state's tensors."""
    p = f"model.{name}."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def read_training_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, meta) of a training state, falling back to the previous good file."""
    path = Path(path)
    try:
        tensors, meta = _read_state(path)
    except CheckpointError as first:
        prev = previous_path(path)
        if not prev.exists():
            raise
        try:
            tensors, meta = _read_state(prev)
        except CheckpointError as second:
            raise CheckpointError(f"neither {path} ({first}) nor {prev} ({second}) is a readable training state") from second
        print(f"warning: {path} unreadable ({first}); resuming from the previous state {prev}")
    return tensors, meta


# ----------------------------------------------------------------------------- metrics, guard, progress


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a torn last line (the process died mid-write) is dropped."""
    lines = [(i, r) for i, r in enumerate(Path(path).read_text().splitlines(), 1) if r.strip()]
    rows = []
    for n, (i, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n == len(lines) - 1:
                break  # only the last write can be cut short by a crash
            raise ValueError(f"{path} line {i} is not a JSON row ({e}); delete or repair that line, then resume") from e
    return rows


class MetricsLogger:
    """Scalars to `<dir>/metrics.jsonl` (one JSON object per line) and TensorBoard event files."""

    def __init__(self, log_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Rows logged after the checkpoint we resume from will be logged again: drop them.
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._f = self.path.open("a")  # never truncated: the training loop refuses a used run_dir instead
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=resume_step)
            except ImportError:  # tensorboard is optional at runtime
                self.tb = None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one row; values are converted to float."""
        row = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        """Flush and close both sinks."""
        self._f.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; training stopped before touching the last good checkpoint."""


def check_finite(step: int, losses: Mapping[str, Tensor | float], checkpoint: str | Path | None = None) -> None:
    """Raise NonFiniteLossError naming the step and every non-finite loss (call before optimizer.step)."""
    vals = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in losses.items()}
    bad = {k: v for k, v in vals.items() if not math.isfinite(v)}
    if bad:
        where = f"; the last good checkpoint {checkpoint} is untouched" if checkpoint else ""
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {bad}{where}. Lower the learning rate, check the inputs for "
            f"NaN/inf, or resume from the checkpoint with a different seed."
        )


def progress(total: int, initial: int = 0, desc: str = "train", unit: str = "step"):
    """A tqdm bar from `initial` to `total`; update with `bar.update(1)` and `bar.set_postfix(loss=...)`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1)


# ----------------------------------------------------------------------------- runs that lose nothing


class ConfigError(ValueError):
    """A training setting is invalid, or would destroy or silently change a run; the message says what to do."""


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training at a step boundary, after a resumable state was saved."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM ask the training loop to stop at the next step boundary.

    A step cut short (batch and noise drawn, optimizer maybe stepped, step counter not yet
    advanced) is no state to resume from, so the first signal only sets `received`; the loop
    reads it between steps, saves and stops. A second signal aborts at once and leaves the last
    saved state as it is. The handler prints nothing: a print could land inside the progress
    bar's own write to stderr. Off the main thread (no handlers there) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): aborted without saving")
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def claim_run_dir(run_dir: str | Path, resume: bool, run_files: Iterable[str]) -> Iterator[Path]:
    """Hold `<run_dir>/run.lock` for the block; refuse a run_dir that another process holds, or
    that already holds a run (any of `run_files`) when not resuming.

    The lock is an flock on an open file: the kernel drops it when the process ends, however it
    ends, so a SIGKILLed run leaves no stale lock behind.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / "run.lock"
    with lock.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ConfigError(f"another training run (pid {f.read().strip() or '?'}) is using {run_dir}; "
                              f"wait for it to finish or choose another run_dir") from None
        used = [name for name in run_files if (run_dir / name).exists()]
        if used and not resume:
            raise ConfigError(f"{run_dir} already holds a run ({', '.join(used)}); continue it with resume=true, "
                              f"or choose a new run_dir (delete the old one to start over)")
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        yield run_dir


def flat_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """A config (dataclass or nested dicts) as {'dotted.key': JSON value}."""
    if dataclasses.is_dataclass(cfg):
        cfg = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))  # the form a training state stores
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        out.update(flat_config(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def config_changes(saved: Mapping[str, Any], now: Any, free: Iterable[str]) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, now)} of the settings that differ between a saved config and `now`, except keys
    under `free` prefixes; keys the saved config does not know (fields added since) are skipped."""
    old, new, free = flat_config(saved), flat_config(now), tuple(free)
    return {k: (old[k], v) for k, v in new.items()
            if k in old and old[k] != v and not any(k == f or k.startswith(f + ".") for f in free)}


@contextlib.contextmanager
def command_line_exits() -> Iterator[None]:
    """How a training command ends on the expected failures: the message without a traceback, and
    exit status 2 for a refused setting, 1 for a non-finite loss, 128 + the number for a signal."""
    try:
        yield
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e
    except Interrupted as e:  # the state is saved: resume=true continues
        print(e, file=sys.stderr)
        raise SystemExit(128 + e.signum) from e


# ----------------------------------------------------------------------------- --help of the entry points


def field_docs(cls: type) -> dict[str, str]:
    """{field: first line of the docstring under it} of a dataclass and its bases (the house style)."""
    names = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = ast.parse(inspect.getsource(klass)).body[0].body
        except (OSError, TypeError, IndexError, AttributeError):
            continue
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = nxt.value.value.strip().splitlines()[0]
    return {k: v for k, v in docs.items() if k in names}  # not the ClassVars


def help_node(app: str, description: str, sections: Iterable[tuple[str, type]], footer: str = "",
              groups: bool = True) -> dict[str, Any]:
    """A `hydra/help` config: what the command does, each section's keys with their field docs, the config groups."""
    lines = [f"{app}: {description.strip()}", ""]
    for prefix, cls in sections:
        lines.append(f"{prefix + '* ' if prefix else 'Main '}keys (key=value on the command line):")
        # hydra fills the template with string.Template: a '$' of a doc must be written '$$'.
        lines += [f"  {prefix}{name:<{24 - len(prefix)}} {doc.replace('$', '$$')}" for name, doc in field_docs(cls).items()]
        lines.append("")
    lines += ["Config groups (group=option):", "$APP_CONFIG_GROUPS", ""] if groups else []
    lines += [footer,
              "Print the composed config with --cfg job; hydra's own flags with --hydra-help."]
    return {"app_name": app, "header": "", "footer": "", "template": "\n".join(lines)}
