"""Training end to end: schedules, checkpoint/resume bit for bit, a real short run."""
import json
import os

import numpy as np
import pytest

import salnp
from salnp.train import beta_at, lr_at

CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-subset")


def _cifar(train, n):
    if not os.path.isdir(CIFAR):
        pytest.skip(f"CIFAR-10 subset not found at {CIFAR}")
    return salnp.data.cifar10(CIFAR, train=train).subset(n, seed=0)


def test_schedules():
    assert lr_at(0, 300, 0.1) == pytest.approx(0.1)
    assert lr_at(100, 300, 0.1) == pytest.approx(0.01)
    assert lr_at(250, 300, 0.1, milestones=(100, 200)) == pytest.approx(0.001)
    assert lr_at(150, 300, 0.1, "cosine") == pytest.approx(0.05)
    # geometric: beta_t = beta0 * gamma^t with gamma = exp(ln(b1/b0)/T)
    g = np.exp(np.log(70 / 20) / 1000)
    assert beta_at(0, 1000, 20, 70) == pytest.approx(20)
    assert beta_at(10, 1000, 20, 70) == pytest.approx(20 * g ** 10)
    assert beta_at(1000, 1000, 20, 70) == pytest.approx(70)
    assert beta_at(500, 1000, 20, 70, "linear") == pytest.approx(45)
    with pytest.raises(ValueError, match="beta_schedule"):
        beta_at(1, 10, 1, 2, "exp")


def test_resume_is_bit_exact(tmp_path):
    """2 epochs straight == 1 epoch, checkpoint, resume for the second (1 thread)."""
    train, test = _cifar(True, 96), _cifar(False, 50)
    kw = dict(epochs=2, batch_size=32, lr=0.05, progress=False, threads=1, seed=5)
    a = salnp.models.resnet(20, 4, "sal", seed=1)
    ha = salnp.fit(a, train, test, **kw)
    b = salnp.models.resnet(20, 4, "sal", seed=1)
    ck = tmp_path / "ck.npz"
    # the same 2-epoch run, stopped by its callback after epoch 1, then resumed elsewhere
    hb1 = salnp.fit(b, train, test, **kw, checkpoint=ck, callback=lambda rec: rec["epoch"] == 1)
    assert len(hb1) == 1
    c = salnp.models.resnet(20, 4, "sal", seed=99)          # different init: all state comes from the file
    hc = salnp.fit(c, train, test, **kw, resume=ck)
    np.testing.assert_array_equal(a.arena.params, c.arena.params)
    np.testing.assert_array_equal(a.arena.momentum, c.arena.momentum)
    np.testing.assert_array_equal(a.arena.buffers, c.arena.buffers)
    assert a.beta == c.beta
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hc]


def test_checkpoint_is_loadable_network(tmp_path):
    train = _cifar(True, 64)
    net = salnp.models.resnet(20, 4, "cl", seed=2)
    salnp.fit(net, train, None, epochs=1, batch_size=32, progress=False, checkpoint=tmp_path / "c.npz")
    net2 = salnp.load(tmp_path / "c.npz")
    x = train.batch(np.arange(4))
    np.testing.assert_array_equal(net.forward(x, train=False), net2.forward(x, train=False))


def test_corrupted_checkpoint_clear_error(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        salnp.load(p)
    net = salnp.models.resnet(20, 4, "cl")
    salnp.save(net, tmp_path / "ok.npz")
    raw = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="trunc.npz"):
        salnp.load(tmp_path / "trunc.npz")


def test_fit_bad_arguments():
    train = _cifar(True, 32)
    net = salnp.models.resnet(20, 4, "cl")
    with pytest.raises(ValueError, match="epochs=0"):
        salnp.fit(net, train, epochs=0)
    with pytest.raises(ValueError, match="channels"):
        salnp.fit(salnp.models.resnet(20, 4, "cl", in_channels=1), train, epochs=1)
    with pytest.raises(ValueError, match="beta"):
        salnp.fit(net, train, epochs=1, beta=(float("nan"), 1.0))


def test_nan_loss_stops_with_step(monkeypatch):
    train = _cifar(True, 64)
    net = salnp.models.resnet(20, 4, "cl")
    net.arena.params[:10] = np.nan
    with pytest.raises(FloatingPointError, match="step 1"):
        salnp.fit(net, train, epochs=1, batch_size=32, progress=False)


@pytest.mark.slow
def test_short_real_training_run_beats_chance():
    """SAL-ResNet-20 (w=8), 2000 real CIFAR-10 images, 4 epochs: test accuracy on 1000
    held-out images must exceed 25 % (chance: 10 %).  Seeds are fixed; the runs we made
    reach about 0.35-0.40, and a broken gradient or update stays near 0.10-0.15."""
    train, test = _cifar(True, 2000), _cifar(False, 1000)
    net = salnp.models.resnet(20, 8, "sal", seed=0)
    hist = salnp.fit(net, train, test, epochs=4, batch_size=64, lr=0.05, progress=False, seed=0)
    losses = [h["train_loss"] for h in hist]
    assert losses[-1] < losses[0] - 0.1, losses
    assert hist[-1]["test_acc"] > 0.25, hist[-1]
    assert hist[-1]["test_acc_hard"] > 0.25, hist[-1]
    json.dumps(hist)    # plain, serialisable records
