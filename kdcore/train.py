"""The one training loop every method and scheme runs through.

It is deterministic on CPU for a given seed (one torch.Generator drives shuffling and
augmentation; the global RNG, used by dropout, is seeded and checkpointed), checkpoints at epoch
ends (by time: see `fit`), and resumes from the last checkpoint so that an
interrupted-then-resumed run ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.callbacks import Callbacks, EpochRecord
from kdcore.checkpoint import CheckpointStore
from kdcore.data.dataset import Dataset
from kdcore.errors import Cancelled, InputError
from kdcore.evaluate import accuracy, predict_logits
from kdcore.features import FeatureHooks
from kdcore.methods.base import Method, StepOutputs
from kdcore.spec import OptimizerSpec, SchedulerSpec, TrainSpec

Augment = Callable[[Tensor, torch.Generator], Tensor]

#: The training loss is read back from the device (a sync on GPU) every this many steps and at
#: each epoch's last step; progress callbacks see the latest value read.
LOSS_SYNC_EVERY = 25
#: Rows per forward when the student's validation accuracy is measured after each epoch.
EVAL_BATCH = 4096


def select_device(name: str) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA where there is none is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "train.device", "cuda was asked for but no GPU is visible; use auto or cpu"
        )
    return torch.device(name)


def make_optimizer(params: list[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, spec: SchedulerSpec, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if spec.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if spec.name == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=spec.step_size, gamma=spec.gamma
        )
    return None


def freeze(model: nn.Module, mode: str = "eval") -> nn.Module:
    """A frozen teacher: no parameter requires a gradient, and

    - `eval` (default): eval mode, BatchNorm normalises with its running statistics;
    - `train`: train mode (dropout on), BatchNorm normalises with each batch's statistics and
      never updates its running statistics (`track_running_stats` off; in eval mode, e.g. when
      the teacher's accuracy is measured, it still uses the stored ones).
    """
    if mode == "train":
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False
    else:
        model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A seeded shuffle split into batches; a trailing batch of one row joins the previous one
    (BatchNorm cannot train on a single row)."""
    parts = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    resumed_from_epoch: int = 0
    teacher_cache_used: bool = False

    @property
    def best_accuracy(self) -> float:
        return max((r.student_accuracy for r in self.history), default=0.0)


class _TeacherOutputs:
    """Teacher logits for a batch: looked up from a one-off pass when the inputs never change
    (frozen teacher, no random augmentation), else computed on the batch."""

    def __init__(self, teacher: nn.Module | None, x_all: Tensor, cache: bool, device: torch.device):
        self.teacher = teacher
        self.cached: Tensor | None = None
        if teacher is not None and cache:
            self.cached = predict_logits(teacher, x_all, device=device).to(device)

    def __call__(self, idx: Tensor, xb: Tensor) -> Tensor | None:
        if self.teacher is None:
            return None
        if self.cached is not None:
            return self.cached[idx]
        with torch.no_grad():
            return self.teacher(xb).float()


def _attach_feature_hooks(
    student: nn.Module, teacher: nn.Module | None, method: Method, example: Tensor
) -> tuple[FeatureHooks, FeatureHooks]:
    """Hooks on the layers the method names, and one dry forward (eval mode, no gradients: no
    state or RNG changes) so the method can size its learnable parts to the real features."""
    s_hooks = FeatureHooks(student, method.student_layers(), "method.student_layers", example)
    t_hooks = (
        FeatureHooks(teacher, method.teacher_layers(), "method.teacher_layers", example)
        if teacher is not None
        else FeatureHooks(student, [], "", example)
    )
    if method.student_layers() or method.teacher_layers():
        was_training = student.training
        student.eval()
        with torch.no_grad():
            logits = student(example)
            if teacher is not None:
                teacher(example)
        student.train(was_training)
        if isinstance(logits, Tensor):
            method.num_classes = int(logits.shape[-1])
        method.setup(s_hooks.take(), t_hooks.take())
        method.to(example.device)
    return s_hooks, t_hooks


_NO_AUTOCAST = contextlib.nullcontext()


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"generator": generator.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class _Stepper:
    """The per-batch work of one stage: the student's (and teacher's) forward, the method's
    loss, one optimizer step; everything that does not change from batch to batch."""

    student: nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    teacher_out: _TeacherOutputs
    hooks: tuple[FeatureHooks, FeatureHooks]
    augment: Augment | None
    generator: torch.Generator
    device: torch.device
    amp: bool
    grad_clip: float | None
    start_step: Callable[[int, int], None] | None  # a multi-teacher drawing one teacher a step

    def run_epoch(
        self, x: Tensor, y: Tensor, batch_size: int, epoch: int, stage: str, cb: Callbacks
    ) -> float:
        """One pass over the shuffled data (0-based `epoch`); returns the mean training loss.
        Raises `Cancelled` at a batch boundary when a callback asks to stop.

        The loss stays a tensor: it is read back (`.item()`, a device sync on GPU) every
        `LOSS_SYNC_EVERY` steps and at the epoch's last step only; `on_step` gets the latest
        value read."""
        parts = batches(len(x), batch_size, self.generator)
        losses: list[Tensor] = []
        last, final = float("nan"), len(parts) - 1
        for step, idx in enumerate(parts):
            if cb.should_cancel():
                raise Cancelled(f"{stage} cancelled at epoch {epoch + 1}, step {step}")
            loss = self.step(x, y, idx.to(self.device), epoch, step)
            losses.append(loss)
            if step % LOSS_SYNC_EVERY == 0 or step == final:
                last = loss.item()
            cb.on_step(stage, epoch + 1, step + 1, last)
        if not losses:
            return 0.0
        sizes = torch.tensor([len(idx) for idx in parts], dtype=torch.float64)
        total = torch.stack(losses).double().cpu() @ sizes
        return total.item() / len(x)

    def step(self, x: Tensor, y: Tensor, idx: Tensor, epoch: int, step: int) -> Tensor:
        """One optimizer step; returns the (detached) loss, not read back."""
        xb, yb = x[idx], y[idx]
        if self.augment is not None:
            xb = self.augment(xb, self.generator)
        if self.start_step is not None:
            self.start_step(epoch + 1, step)
        with self.autocast:
            teacher_logits = self.teacher_out(idx, xb)
            out = StepOutputs(
                self.student(xb), yb, teacher_logits, self.hooks[0].take(), self.hooks[1].take()
            )
            loss = self.method(out)
        self.optimizer.zero_grad(set_to_none=True)
        if not self.scaler.is_enabled():  # CPU, or AMP in bfloat16: no loss scaling to do
            loss.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            return loss.detach()
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    @property
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return _autocast(self.device, self.amp) if self.amp else _NO_AUTOCAST

    @property
    def params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]


@dataclass(frozen=True)
class Teaching:
    """Who teaches a stage: a model (frozen by `fit` in `mode`, see `freeze`), and whether its
    logits may be computed once and cached (never for a `train`-mode teacher, whose logits depend
    on the batch). A teacher with `start_step(epoch, step)` is told each step before it runs (a
    multi-teacher drawing one teacher per step)."""

    model: nn.Module | None
    mode: str = "eval"
    cache: bool = True


#: A stage nobody teaches (a teacher trained with CE, the baseline, self-distillation).
NO_TEACHER = Teaching(None)


@dataclass(frozen=True)
class StageContext:
    """Everything one training stage needs besides the model and the method.

    A checkpoint of stage `name` is resumed only when its `fingerprint` (a digest of the settings
    that shape this stage) matches; a stale one from another job is ignored and overwritten."""

    name: str
    data: Dataset
    train: TrainSpec
    teacher: Teaching = NO_TEACHER
    augment: Augment | None = None
    callbacks: Callbacks = field(default_factory=Callbacks)
    checkpoints: CheckpointStore | None = None
    fingerprint: str = ""
    #: 0: a checkpoint after every epoch (a killed worker loses at most the epoch it was in;
    #: what the service relies on); more: at most this often, and at the last epoch and when
    #: the stage stops on an exception (a small model's write can cost as much as an epoch)
    checkpoint_every_s: float = 0.0


def fit(student: nn.Module, method: Method, ctx: StageContext) -> FitResult:
    """Train `student` with `method` (and `ctx.teacher`, frozen, when the method needs one)."""
    cb, train, data, stage = ctx.callbacks, ctx.train, ctx.data, ctx.name
    device = select_device(train.device)
    student.to(device)
    method.to(device)
    teacher = ctx.teacher.model
    if method.needs_teacher:
        if teacher is None:
            raise ValueError(f"{stage}: the method needs a teacher")
        freeze(teacher, ctx.teacher.mode).to(device)
    else:
        teacher = None
    hooks = _attach_feature_hooks(student, teacher, method, data.x_train[:2].to(device))

    optimizer = make_optimizer(
        [p for p in [*student.parameters(), *method.parameters()] if p.requires_grad],
        train.optimizer,
    )
    scheduler = make_scheduler(optimizer, train.scheduler, train.epochs)
    amp = train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    generator = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)

    result = FitResult()
    saved = ctx.checkpoints.load(stage) if ctx.checkpoints else None
    if saved is not None and saved.get("fingerprint", "") == ctx.fingerprint:
        student.load_state_dict(saved["student"])
        method.load_state_dict(saved["method"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        _restore_rng(saved["rng"], generator)
        result.history = [EpochRecord(**r) for r in saved["history"]]
        result.resumed_from_epoch = int(saved["epoch"])
        cb.on_resume(stage, list(result.history))

    x_train = data.x_train.to(device)
    y_train = data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    # Cached logits skip the teacher's forward, so a method reading teacher features needs it live.
    use_cache = (
        ctx.teacher.cache
        and ctx.augment is None
        and teacher is not None
        and ctx.teacher.mode == "eval"
        and not method.teacher_layers()
    )
    teacher_out = _TeacherOutputs(teacher, data.x_train, use_cache, device)
    result.teacher_cache_used = teacher_out.cached is not None
    stepper = _Stepper(
        student,
        method,
        optimizer,
        scaler,
        teacher_out,
        hooks,
        ctx.augment,
        generator,
        device,
        amp,
        train.grad_clip,
        getattr(teacher, "start_step", None),
    )
    steps = len(batches(len(x_train), train.batch_size, torch.Generator()))
    cb.on_stage_start(stage, train.epochs, steps)

    # Checkpoints: the state after every epoch is kept in memory; it is written to the store at
    # the last epoch, when `ctx.checkpoint_every_s` have passed since the last write (0: every
    # epoch), and when the stage stops on an exception.
    pending: dict[str, Any] | None = None
    last_write = time.monotonic()
    try:
        for epoch in range(result.resumed_from_epoch, train.epochs):
            started = time.perf_counter()
            method.start_epoch(epoch + 1, train.epochs)
            student.train()
            method.train()
            train_loss = stepper.run_epoch(x_train, y_train, train.batch_size, epoch, stage, cb)
            train_seconds = time.perf_counter() - started
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            record = EpochRecord(
                stage=stage,
                epoch=epoch + 1,
                train_loss=train_loss,
                student_accuracy=accuracy(student, x_val, y_val, EVAL_BATCH, device=device),
                lr=lr,
                seconds=time.perf_counter() - started,
                train_seconds=train_seconds,
            )
            result.history.append(record)
            if ctx.checkpoints is not None:
                state = _checkpoint(
                    student,
                    method,
                    optimizer,
                    scheduler,
                    scaler,
                    generator,
                    epoch + 1,
                    result.history,
                    ctx.fingerprint,
                )
                now = time.monotonic()
                if epoch + 1 == train.epochs or now - last_write >= ctx.checkpoint_every_s:
                    ctx.checkpoints.save(stage, state)
                    pending, last_write = None, now
                else:
                    pending = _snapshot(state)
            cb.on_epoch_end(record)
        cb.on_stage_end(stage)
    except BaseException:
        # Stopped by an exception (a cancel, a crash in a callback, Ctrl-C): keep the last
        # finished epoch so a rerun resumes from it. Only a killed process loses more (at most
        # `checkpoint_every_s` of training), and resuming from an older epoch is still exact.
        if pending is not None and ctx.checkpoints is not None:
            with contextlib.suppress(Exception):
                ctx.checkpoints.save(stage, pending)
        raise
    finally:
        for h in hooks:
            h.remove()
    return result


def _snapshot(obj: Any) -> Any:
    """A copy of a checkpoint whose tensors (on CPU) no longer follow training."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = type(obj)((k, _snapshot(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module's state_dict: versions for load_state_dict
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


def _checkpoint(
    student: nn.Module,
    method: Method,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    epoch: int,
    history: list[EpochRecord],
    fingerprint: str,
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "student": student.state_dict(),
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict(),
        "rng": _rng_state(generator),
        "epoch": epoch,
        "history": [r.to_dict() for r in history],
    }
