"""The training loop: determinism, resume = uninterrupted, teacher cache = no cache, cancel."""

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from kdcore.callbacks import Callbacks, EpochRecord
from kdcore.checkpoint import FolderCheckpoints
from kdcore.data.dataset import Dataset
from kdcore.errors import Cancelled
from kdcore.methods import registry
from kdcore.spec import TrainSpec
from kdcore.train import StageContext, Teaching, batches, fit


def tiny_data(n: int = 90, dim: int = 6, classes: int = 3) -> Dataset:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, dim, generator=g) + nn.functional.one_hot(y, dim).float() * 2
    y_train = y.clone()
    y_train[::4] = -1  # a quarter unlabelled: the transfer-set path
    return Dataset(x[:70], y_train[:70], x[70:], y[70:], classes, (dim,), None, "tiny")


def student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def teacher() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))


def noise(x: Tensor, g: torch.Generator) -> Tensor:
    return x + 0.1 * torch.randn(x.shape, generator=g)


SPEC = TrainSpec(
    epochs=4,
    batch_size=16,
    seed=3,
    device="cpu",
    optimizer={"name": "sgd", "lr": 0.1, "weight_decay": 1e-4},
    scheduler={"name": "cosine"},
)


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_same_seed_same_weights() -> None:
    a, b = student(), student()
    fit(
        a,
        registry.build("kd"),
        StageContext(
            name="d", data=tiny_data(), train=SPEC, teacher=Teaching(teacher()), augment=noise
        ),
    )
    fit(
        b,
        registry.build("kd"),
        StageContext(
            name="d", data=tiny_data(), train=SPEC, teacher=Teaching(teacher()), augment=noise
        ),
    )
    assert_same_weights(a, b)


class Crash(Exception):
    pass


class CrashAfter(Callbacks):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, record: EpochRecord) -> None:
        if record.epoch == self.epoch:
            raise Crash


@pytest.mark.parametrize("augment", [None, noise])
def test_resume_equals_uninterrupted(tmp_path: Path, augment) -> None:
    whole = student()
    full = fit(
        whole,
        registry.build("kd"),
        StageContext(
            name="d", data=tiny_data(), train=SPEC, teacher=Teaching(teacher()), augment=augment
        ),
    )

    ckpt = FolderCheckpoints(tmp_path)
    with pytest.raises(Crash):
        fit(
            student(),
            registry.build("kd"),
            StageContext(
                name="d",
                data=tiny_data(),
                train=SPEC,
                teacher=Teaching(teacher()),
                augment=augment,
                callbacks=CrashAfter(2),
                checkpoints=ckpt,
            ),
        )
    assert ckpt.path("d").exists()
    # A new process: fresh (even differently initialised) model, same spec and checkpoints.
    resumed = student(seed=99)
    res = fit(
        resumed,
        registry.build("kd"),
        StageContext(
            name="d",
            data=tiny_data(),
            train=SPEC,
            teacher=Teaching(teacher()),
            augment=augment,
            checkpoints=ckpt,
        ),
    )
    assert res.resumed_from_epoch == 2
    assert [r.train_loss for r in res.history] == [r.train_loss for r in full.history]
    assert_same_weights(whole, resumed)


class Resumes(Callbacks):
    def __init__(self) -> None:
        self.resumed: list[tuple[str, list[EpochRecord]]] = []

    def on_resume(self, stage: str, history: list[EpochRecord]) -> None:
        self.resumed.append((stage, history))


def test_a_resumed_stage_hands_back_the_epochs_its_checkpoint_holds(tmp_path: Path) -> None:
    """Killed after epoch 2's checkpoint but before epoch 2's callbacks ran (CrashAfter raises
    there): the resumed stage gives its callbacks both epochs, so their metrics can be kept."""
    ckpt = FolderCheckpoints(tmp_path)
    seen: list[EpochRecord] = []

    class Keep(CrashAfter):
        def on_epoch_end(self, record: EpochRecord) -> None:
            seen.append(record)
            super().on_epoch_end(record)

    context = StageContext(name="s", data=tiny_data(), train=SPEC, checkpoints=ckpt)
    with pytest.raises(Crash):
        fit(student(), registry.build("ce"), dataclasses.replace(context, callbacks=Keep(2)))
    resumes = Resumes()
    fit(student(), registry.build("ce"), dataclasses.replace(context, callbacks=resumes))
    [(stage, history)] = resumes.resumed
    assert stage == "s" and history == seen[:2]
    assert Resumes().resumed == []  # a stage that starts fresh reports no resume


def test_finished_stage_is_not_retrained(tmp_path: Path) -> None:
    ckpt = FolderCheckpoints(tmp_path)
    first = student()
    fit(
        first,
        registry.build("ce"),
        StageContext(name="s", data=tiny_data(), train=SPEC, checkpoints=ckpt),
    )
    again = student(seed=5)
    res = fit(
        again,
        registry.build("ce"),
        StageContext(name="s", data=tiny_data(), train=SPEC, checkpoints=ckpt),
    )
    assert res.resumed_from_epoch == SPEC.epochs and len(res.history) == SPEC.epochs
    assert_same_weights(first, again)


def test_teacher_cache_gives_the_same_training() -> None:
    cached, live = student(), student()
    a = fit(
        cached,
        registry.build("kd"),
        StageContext(name="d", data=tiny_data(), train=SPEC, teacher=Teaching(teacher())),
    )
    b = fit(
        live,
        registry.build("kd"),
        StageContext(
            name="d", data=tiny_data(), train=SPEC, teacher=Teaching(teacher(), cache=False)
        ),
    )
    assert a.teacher_cache_used and not b.teacher_cache_used
    for ra, rb in zip(a.history, b.history, strict=True):
        assert ra.train_loss == pytest.approx(rb.train_loss, rel=1e-6, abs=1e-7)
    for k, v in weights(cached).items():
        torch.testing.assert_close(v, weights(live)[k], rtol=1e-5, atol=1e-6)


def test_augmentation_disables_cache() -> None:
    res = fit(
        student(),
        registry.build("kd"),
        StageContext(
            name="d", data=tiny_data(), train=SPEC, teacher=Teaching(teacher()), augment=noise
        ),
    )
    assert not res.teacher_cache_used


def test_teacher_stays_frozen() -> None:
    t = teacher()
    before = weights(t)
    fit(
        student(),
        registry.build("kd"),
        StageContext(name="d", data=tiny_data(), train=SPEC, teacher=Teaching(t, cache=False)),
    )
    assert not t.training
    assert all(not p.requires_grad and p.grad is None for p in t.parameters())
    for k, v in weights(t).items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats included


def test_training_learns_and_records_history() -> None:
    spec = SPEC.model_copy(update={"epochs": 15})
    res = fit(student(), registry.build("ce"), StageContext(name="s", data=tiny_data(), train=spec))
    assert [r.epoch for r in res.history] == list(range(1, 16))
    assert res.history[-1].train_loss < res.history[0].train_loss
    assert res.best_accuracy > 60  # three well-separated classes; chance is 33%
    # cosine schedule: the last epoch runs at a far lower rate than the first
    assert res.history[-1].lr < 0.1 * res.history[0].lr


class CancelAt(Callbacks):
    def __init__(self, step: int):
        self.calls, self.step = 0, step

    def should_cancel(self) -> bool:
        self.calls += 1
        return self.calls > self.step


def test_cancel_stops_at_a_batch_boundary() -> None:
    cb = CancelAt(step=6)
    with pytest.raises(Cancelled, match="epoch 2, step 1"):
        fit(
            student(),
            registry.build("ce"),
            StageContext(name="s", data=tiny_data(), train=SPEC, callbacks=cb),
        )


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("sched", ["none", "cosine", "step"])
def test_optimizers_and_schedules_run(opt: str, sched: str) -> None:
    spec = TrainSpec(
        epochs=2,
        batch_size=32,
        device="cpu",
        optimizer={"name": opt, "lr": 0.01, "weight_decay": 0.01},
        scheduler={"name": sched, "step_size": 1, "gamma": 0.5},
    )
    res = fit(student(), registry.build("ce"), StageContext(name="s", data=tiny_data(), train=spec))
    if sched == "step":
        assert res.history[1].lr == pytest.approx(0.005)
    if sched == "none":
        assert res.history[1].lr == pytest.approx(0.01)


def test_single_row_tail_joins_previous_batch() -> None:
    parts = batches(33, 16, torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [16, 17]
    assert sorted(torch.cat(parts).tolist()) == list(range(33))


class CrashAtStep(Callbacks):
    """Stops the stage mid-epoch (at `step` of 1-based `epoch`), as a cancel or a crash would."""

    def __init__(self, epoch: int, step: int):
        self.at = (epoch, step)

    def on_step(self, stage: str, epoch: int, step: int, loss: float) -> None:
        if (epoch, step) == self.at:
            raise Crash


class CountingStore(FolderCheckpoints):
    def __init__(self, folder: Path):
        super().__init__(folder)
        self.epochs: list[int] = []

    def save(self, stage: str, state: dict) -> None:
        self.epochs.append(int(state["epoch"]))
        super().save(stage, state)


def test_checkpoints_are_written_every_epoch_or_by_time_and_at_the_end(tmp_path: Path) -> None:
    """By default after every epoch; within `checkpoint_every_s` only the last epoch."""
    every = CountingStore(tmp_path / "a")
    fit(student(), registry.build("ce"), StageContext("s", tiny_data(), SPEC, checkpoints=every))
    assert every.epochs == list(range(1, SPEC.epochs + 1))

    hourly = CountingStore(tmp_path / "b")
    context = StageContext("s", tiny_data(), SPEC, checkpoints=hourly, checkpoint_every_s=3600)
    fit(student(), registry.build("ce"), context)
    assert hourly.epochs == [SPEC.epochs]


def test_crash_mid_epoch_resumes_exactly_from_the_last_finished_epoch(tmp_path: Path) -> None:
    """The unwritten checkpoint of the last finished epoch is written when the stage stops on
    an exception; resuming from it ends with the uninterrupted run's weights."""
    whole = student()
    full = fit(
        whole, registry.build("kd"), StageContext("d", tiny_data(), SPEC, Teaching(teacher()))
    )
    ckpt = CountingStore(tmp_path)
    crashing = StageContext(
        "d",
        tiny_data(),
        SPEC,
        Teaching(teacher()),
        callbacks=CrashAtStep(3, 2),
        checkpoints=ckpt,
        checkpoint_every_s=3600,  # epochs 1 and 2 only in memory when the crash comes
    )
    with pytest.raises(Crash):
        fit(student(), registry.build("kd"), crashing)
    assert ckpt.epochs == [2]
    resumed = student(seed=99)
    res = fit(
        resumed,
        registry.build("kd"),
        StageContext("d", tiny_data(), SPEC, Teaching(teacher()), checkpoints=ckpt),
    )
    assert res.resumed_from_epoch == 2
    assert [r.train_loss for r in res.history] == [r.train_loss for r in full.history]
    assert_same_weights(whole, resumed)
