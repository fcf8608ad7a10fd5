"""train_fused against train: the same runs, fused and one at a time, give the same histories.

Tolerance (tests/_numerics.py, where the numbers are derived). vmap's batched convolutions
and BatchNorms reduce in another order than one network's, an order that depends on the CPU's
kernels: the first loss (one forward pass) agrees to FIRST_LOSS_RTOL; training carries the
rounding forward and amplifies it, so over the <= 48 SGD steps of these tests losses agree
to FUSED_LOSS_RTOL (relative) and accuracies to FUSED_ACC_IMAGES images; everything else
(epochs, steps, lr, status, the diverged step) is exact.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from _numerics import FIRST_LOSS_RTOL, FUSED_ACC_IMAGES, FUSED_LOSS_RTOL

from nfstudy.clip import GradientClipper
from nfstudy.data import load_dataset
from nfstudy.models import create_model
from nfstudy.train import LoopState, TrainConfig, train, train_fused

BATCH = 256  # 1498 digits: 6 steps per epoch


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=8)


def build(norm: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("resnet8", norm, num_classes=10)


def config(lr: float, epochs: int = 3, **kwargs) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=BATCH, lr=lr, augment=False, sync_every=2, eval_batch_size=512, **kwargs)


def one_at_a_time(models, data, configs, seeds, clips=None, out_dirs=None):
    clips = clips or [None] * len(models)
    out_dirs = out_dirs or [None] * len(models)
    return [train(m, data, c, seed=s, device="cpu", clip=k, out_dir=o) for m, c, s, k, o in zip(models, configs, seeds, clips, out_dirs)]


def assert_same_history(fused: pd.DataFrame, alone: pd.DataFrame, n_images: int):
    assert list(fused.columns) == list(alone.columns)
    assert len(fused) == len(alone) > 0
    for col in ("epoch", "step", "progress_pct", "lr"):
        assert fused[col].tolist() == alone[col].tolist(), col
    for col in ("train_loss", "test_loss"):
        np.testing.assert_allclose(fused[col], alone[col], rtol=FUSED_LOSS_RTOL, err_msg=col)
    for col in ("train_accuracy", "test_accuracy"):
        np.testing.assert_allclose(fused[col], alone[col], atol=(FUSED_ACC_IMAGES + 0.01) / n_images, rtol=0, err_msg=col)


def check_against_train(data, norm, configs, seeds, clips=None):
    models = [build(norm, s) for s in seeds]
    alone = one_at_a_time([copy.deepcopy(m) for m in models], data, configs, seeds, clips)
    fused = train_fused(models, data, configs, seeds=seeds, device="cpu", clips=clips)
    for f, a in zip(fused, alone):
        assert (f.status, f.epochs, f.budget, f.steps, f.diverged_step) == (a.status, a.epochs, a.budget, a.steps, a.diverged_step)
        assert f.initial_loss == pytest.approx(a.initial_loss, rel=FIRST_LOSS_RTOL, abs=0)  # one forward pass: the same batch and weights
        assert_same_history(f.history, a.history, len(data.test_labels))
    return fused, alone


@pytest.mark.numerics
def test_fused_bn_matches_train_with_schedule_warmup_and_plateau(digits):
    # BatchNorm (stacked running stats), three learning rates, one warming up, one extending its
    # budget by the plateau rule (a longer run: the others leave the stack before it ends).
    configs = [
        config(0.1, milestones=(0.5,)),
        config(0.02, warmup_epochs=1.0),
        config(0.02, epochs=4, milestones=(0.5,), extend_until_plateau=True, plateau_window=1, plateau_tol=0.0, max_extensions=1),
    ]
    fused, alone = check_against_train(digits, "bn", configs, [0, 0, 0])
    assert [r.budget for r in fused] == [3, 3, 8]  # the plateau rule doubled the third budget
    assert fused[0].history["lr"].tolist() == pytest.approx([0.1, 0.01, 0.01])
    state = fused[2].model.state_dict()
    ref = alone[2].model.state_dict()
    assert int(state["bn1.num_batches_tracked"]) == int(ref["bn1.num_batches_tracked"]) == 8 * 6
    # Running statistics follow the weights, which after 48 steps differ by the amplified rounding above.
    torch.testing.assert_close(state["bn1.running_var"], ref["bn1.running_var"], rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(state["bn1.running_mean"], ref["bn1.running_mean"], rtol=2e-2, atol=1e-3)


@pytest.mark.numerics
def test_fused_without_bn_matches_train_across_seeds(digits):
    # Different seeds: each run sees its own batch order (stacked batches, not one broadcast).
    configs = [config(0.01), config(0.003)]
    fused, _ = check_against_train(digits, "none", configs, [0, 1])
    assert fused[0].history["train_loss"].tolist() != fused[1].history["train_loss"].tolist()


@pytest.mark.numerics
def test_fused_with_agc_matches_train(digits):
    # AGC per run (its own lambda, the head found by module in the run's own model), beside an unclipped run.
    configs = [config(0.4), config(0.4), config(0.4)]
    clips = [GradientClipper("adaptive", 0.01), GradientClipper("adaptive", 0.16), None]
    fused, _ = check_against_train(digits, "nf", configs, [0, 0, 0], clips)
    losses = [r.history["train_loss"].iloc[-1] for r in fused]
    assert len(set(losses)) == 3  # the thresholds did act differently


@pytest.mark.numerics
def test_diverging_run_leaves_its_neighbours_unchanged(digits):
    configs = [config(0.05), config(1e4), config(0.01)]
    with_it = train_fused([build("bn") for _ in configs], digits, configs, device="cpu")
    without = train_fused([build("bn") for _ in configs[::2]], digits, configs[::2], device="cpu")
    alone = train(build("bn"), digits, configs[1], device="cpu")
    assert with_it[1].status == alone.status == "diverged"
    assert with_it[1].diverged_step == alone.diverged_step <= 2  # within the first sync window
    assert with_it[1].epochs == 0 and with_it[1].history.empty
    for f, w in zip([with_it[0], with_it[2]], without):
        assert f.status == w.status == "completed"
        # Once the diverged run has left, the others' stack is the one trained without it; before
        # that its two steps changed nothing in theirs. To rounding: a stack of three runs and one of
        # two are convolutions of other shapes, which a CPU's kernels may reduce in other orders.
        assert_same_history(f.history, w.history, len(digits.test_labels))


def test_interrupted_fused_run_resumes_to_the_same_csvs(digits, tmp_path):
    configs = [config(0.1, epochs=5, checkpoint_every=2), config(0.03, epochs=4, checkpoint_every=2)]
    clips = [GradientClipper("adaptive", 0.08), None]

    def models():
        return [build("nf"), build("nf")]

    whole = [tmp_path / "whole" / str(i) for i in range(2)]
    train_fused(models(), digits, configs, device="cpu", clips=clips, out_dirs=whole)

    class Stop(Exception):
        pass

    def stop_at_epoch_3(i, row):
        if row["epoch"] == 3:
            raise Stop

    parts = [tmp_path / "parts" / str(i) for i in range(2)]
    with pytest.raises(Stop):
        train_fused(models(), digits, configs, device="cpu", clips=clips, out_dirs=parts, on_epoch=stop_at_epoch_3)
    assert len(pd.read_csv(parts[0] / "history.csv")) == 3  # written before the stop; the checkpoint is at epoch 2
    resumed = train_fused(models(), digits, configs, device="cpu", clips=clips, out_dirs=parts)
    assert [r.resumed_from for r in resumed] == [2, 2]
    for w, p in zip(whole, parts):
        assert (w / "history.csv").read_bytes() == (p / "history.csv").read_bytes()
    # train() resumes a fused run's checkpoint: the files are train's.
    again = train(build("nf"), digits, configs[0], device="cpu", clip=clips[0], out_dir=parts[0])
    assert again.resumed_from == 5 and again.epochs == 5


def test_both_engines_write_one_checkpoint_format(digits, tmp_path):
    # One owner (nfstudy.train.state.Trainee): the same keys, the run's LoopState as a dict, and
    # the same bookkeeping for a plateau-extended run; only the weights differ by rounding.
    cfg = config(0.02, epochs=4, milestones=(0.5,), extend_until_plateau=True, plateau_window=1, plateau_tol=0.0, max_extensions=1)
    train(build("bn"), digits, cfg, device="cpu", out_dir=tmp_path / "alone")
    train_fused([build("bn")], digits, cfg, device="cpu", out_dirs=[tmp_path / "fused"])
    alone, fused = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("alone", "fused"))
    assert sorted(alone) == sorted(fused) == ["description", "fingerprint", "format", "model", "optimizer", "rng", "state"]
    fields = [f.name for f in dataclasses.fields(LoopState)]
    assert list(alone["state"]) == list(fused["state"]) == fields
    bookkeeping = ("epoch", "budget", "extensions", "step", "status", "diverged_step")
    assert [alone["state"][k] for k in bookkeeping] == [fused["state"][k] for k in bookkeeping] == [8, 8, 1, 48, "completed", None]
    assert [r["step"] for r in alone["state"]["history"]] == [r["step"] for r in fused["state"]["history"]] == [6 * e for e in range(1, 9)]


def test_fused_refuses_mixed_architectures_and_batches(digits):
    with pytest.raises(ValueError, match="not built like model 0"):
        train_fused([build("bn"), build("none")], digits, config(0.1), device="cpu")
    with pytest.raises(ValueError, match="must share batch_size"):
        train_fused([build("bn"), build("bn")], digits, [config(0.1), TrainConfig(epochs=3, batch_size=128)], device="cpu")
