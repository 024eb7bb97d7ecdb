"""salnp.sweep on a real dask.distributed.LocalCluster (2 worker processes x 1 thread) and
on the local spawn pool, with workers killed and sweeps interrupted; networks that travel
(pickle and deepcopy as config + state).

Tiny trials (ResNet-8 of width 4, 300 Fashion-MNIST images, 2 epochs) at one thread each,
so every trial is bit-exact: an interrupted and resumed trial must give the very numbers
of an uninterrupted one, and the Dask run the numbers of the local pool.  Every wait has a
deadline (cluster start, futures, subprocesses)."""
import copy
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import salnp

FASHION = salnp.data.FASHION_MNIST_DEFAULT_ROOT
needs_data = pytest.mark.skipif(not os.path.isdir(FASHION),
                                reason=f"needs Fashion-MNIST at {FASHION} (dataset-fashion-mnist)")
TINY = dict(depth=8, width=4, epochs=2, subset=300, test_subset=100, batch_size=50)
CONFIGS = salnp.sweep.grid({"layer": ["cl", "sal"]}, seeds=[0, 1], **TINY)
TIMEOUT = 240            # seconds for any one sweep (the host may be busy)
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(salnp.__file__)))


def _env():
    """Children import the salnp under test (an in-place build or an install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PKG_PARENT] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    env["OMP_NUM_THREADS"] = "1"
    return env


class _deadline:
    """SIGALRM after `seconds`: a TimeoutError naming what hung (main thread only)."""

    def __init__(self, seconds, what):
        self.seconds, self.what = seconds, what

    def _fire(self, *_):
        raise TimeoutError(f"{self.what}: no result within {self.seconds} s")

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


def _numbers(result):
    """The table without what may differ between equal runs (wall time, folder)."""
    return [{k: v for k, v in r.items() if k not in ("wall_s", "dir")} for r in result]


# ---------------------------------------------------------------- networks that travel
def _tiny_net(layer, seed=3):
    net = salnp.models.resnet(8, 4, layer, seed=seed)
    x = np.random.default_rng(seed).standard_normal((6, 3, 16, 16)).astype(np.float32)
    net.forward(x, train=True)       # an engine exists, BN statistics moved
    net.beta = 37.5
    net.arena.momentum[:] = np.linspace(-1, 1, net.arena.momentum.size)
    return net, x


def _pickled_globals(blob):
    """The classes and functions a pickle refers to (NumPy's collapsed to "numpy")."""
    import io

    names = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            names.add("numpy" if module.split(".")[0] == "numpy" else f"{module}.{name}")
            return super().find_class(module, name)

    Recorder(io.BytesIO(blob)).load()
    return names


@pytest.mark.parametrize("layer", ["sal", "cl", "sl", "asl"])
def test_network_pickle_and_deepcopy_bit_identical(layer):
    net, x = _tiny_net(layer)
    net.eval()
    ref = net.forward(x)
    ref_hard = net.forward(x, hard=True)
    blob = pickle.dumps(net)
    # config + state: the rebuild function, the class and NumPy arrays; no module tree,
    # no initialiser lambdas, no C engine (PyCapsules do not pickle)
    assert _pickled_globals(blob) - {"numpy"} == {"salnp.nn._rebuild_module",
                                                   "salnp.models.ResNet"}
    for other in (pickle.loads(blob), copy.deepcopy(net), copy.copy(net)):
        assert type(other) is type(net) and other.config == net.config
        assert other.beta == net.beta and not other.training
        assert other._engine_ is None                # engines rebuilt lazily
        for k in ("params", "grads", "momentum", "buffers"):
            a, b = getattr(other.arena, k), getattr(net.arena, k)
            assert not np.shares_memory(a, b), k
            assert np.array_equal(a, b), k
        for (n1, p1), (n2, p2) in zip(other.named_parameters(), net.named_parameters()):
            assert n1 == n2 and np.shares_memory(p1, other.arena.params), n1
        for (n1, b1), (_, b2) in zip(other.named_buffers(), net.named_buffers()):
            assert np.array_equal(b1, b2) and not np.shares_memory(b1, b2), n1
        assert np.array_equal(other.forward(x), ref)
        assert np.array_equal(other.forward(x, hard=True), ref_hard)
    with pytest.raises(RuntimeError, match="forward"):
        copy.deepcopy(net).backward(np.zeros((6, 10), np.float32))


def test_deepcopy_owns_its_arena_training_and_saving(tmp_path):
    """Issue 14: a deep copy's parameter views were cut off from its arena (training the
    copy then saving it wrote the untrained weights)."""
    data = salnp.data.Dataset(
        np.random.default_rng(0).integers(0, 256, (64, 3, 12, 12), dtype=np.uint8),
        np.arange(64) % 10)
    net = salnp.models.resnet(8, 4, "sal", seed=1)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    twin = copy.deepcopy(net)
    salnp.fit(twin, data, epochs=1, batch_size=16, progress=False, threads=1)
    for k, v in net.state_dict().items():
        assert np.array_equal(v, before[k]), f"training the copy changed the original's {k}"
    trained = twin.state_dict()
    assert not np.array_equal(trained["conv1.weight"], before["conv1.weight"])
    salnp.save(twin, tmp_path / "twin.npz")
    back = salnp.load(tmp_path / "twin.npz")
    for k, v in trained.items():
        assert np.array_equal(back.state_dict()[k], v), f"saved {k} is not the copy's"


def test_inference_net_pickle_and_deepcopy():
    net, x = _tiny_net("sal")
    inf = salnp.export(net)
    ref = inf.forward(x)
    for other in (pickle.loads(pickle.dumps(inf)), copy.deepcopy(inf)):
        assert not other.engine._c
        assert not np.shares_memory(other.weights, inf.weights)
        assert np.array_equal(other.forward(x), ref)
        assert other.count((3, 16, 16)).macs == inf.count((3, 16, 16)).macs


def test_submodule_does_not_travel_alone():
    net = salnp.models.resnet(8, 4, "cl")
    with pytest.raises(TypeError, match="views into its network's arena"):
        copy.deepcopy(net.layer1)
    with pytest.raises(TypeError, match="pickle or copy the network"):
        pickle.dumps(net.linear)


# ---------------------------------------------------------------- configs
def test_grid_product_and_matched_pairs():
    g = salnp.sweep.grid({"layer": ["cl", "sal"], "width": [4, 8]}, seeds=2, epochs=1)
    assert len(g) == 8 and g[0] == dict(epochs=1, layer="cl", width=4, seed=0)
    assert [c["seed"] for c in g[:2]] == [0, 1]                # seeds vary fastest
    g = salnp.sweep.grid({"m": [dict(layer="cl", width=6), dict(layer="sal", width=16)]},
                         seeds=[5], prune_epochs=[1])
    assert g == [dict(prune_epochs=[1], layer="cl", width=6, seed=5),
                 dict(prune_epochs=[1], layer="sal", width=16, seed=5)]
    with pytest.raises(ValueError, match="axes\\['layer'\\].*list of values"):
        salnp.sweep.grid({"layer": "cl"})
    with pytest.raises(ValueError, match="seeds="):
        salnp.sweep.grid({}, seeds=[-1])
    with pytest.raises(ValueError, match="seeds="):
        salnp.sweep.grid({}, seed=1)


def test_normalized_config_and_stable_trial_id():
    a = salnp.runs.normalize({"layer": "cl", "width": 8, "test-subset": 50})
    b = salnp.runs.normalize({"width": 8, "layer": "cl", "test_subset": 50, "lr": 0.1,
                              "data": "fashion-mnist", "name": "a label"})
    assert a["epochs"] == 10 and a["root"] == os.path.abspath(FASHION)
    assert salnp.runs.trial_id(a) == salnp.runs.trial_id(b)     # defaults and labels ignored
    # the id is a SHA-256 of the canonical JSON of the non-default options (not hash())
    want = hashlib.sha256(json.dumps(
        {"layer": "cl", "root": os.path.abspath(FASHION), "test_subset": 50, "width": 8},
        sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert salnp.runs.trial_id(a) == want
    assert salnp.runs.trial_id(salnp.runs.normalize({"layer": "cl", "width": 8, "seed": 1})) != want


@pytest.mark.parametrize("config, match", [
    ({"widht": 8}, "'widht': not a field of RunConfig; did you mean 'width'"),
    ({"batch_size": 8, "batch-size": 16}, "'batch-size': given twice"),
    ({"lr": float("nan")}, "lr=nan: must be finite and > 0"),
    ({"out": "x"}, "'out': set by the runner"),
    ({"threads": 2}, "'threads': set by the runner"),
    ({"layer": "resnet"}, "layer='resnet': must be one of sal, cl"),
    ({"width": 8.5}, "width=8.5: must be an integer"),
    ({"width": True}, "width=True: must be an integer"),
    ({"shared": "yes"}, "shared='yes': must be True or False"),
    ({"prune_epochs": "2,4"}, "prune_epochs='2,4': must be a list"),
    ({"epochs": 0}, r"epochs=0: must be an integer in \[1, "),
    ({"data": "cifar10"}, "root: required for data='cifar10'"),
    ({"data": "cifar10", "root": "/no/such/folder"}, "root='/no/such/folder': no such folder"),
])
def test_bad_config_names_the_key(config, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        salnp.sweep([config], out=tmp_path)


def test_bad_sweep_arguments(tmp_path):
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="out= is required"):
        salnp.sweep(CONFIGS)
    with pytest.raises(ValueError, match=f"workers={cores + 1}.*\\[1, {cores}\\]"):
        salnp.sweep(CONFIGS, out=tmp_path, workers=cores + 1)
    if cores >= 2:
        with pytest.raises(ValueError, match="must be <= .* cores"):
            salnp.sweep(CONFIGS, out=tmp_path, workers=2, threads_per_trial=cores)
    with pytest.raises(TypeError, match="list of config dicts"):
        salnp.sweep({"layer": "cl"}, out=tmp_path)
    with pytest.raises(TypeError, match="client must be None"):
        salnp.sweep(CONFIGS, client=object(), out=tmp_path)


def test_result_summary_csv_dataframe():
    rows = [dict(layer="cl", width=4, seed=s, test_acc=a, test_acc_hard=None, params=10,
                 macs=100, train_macs=300, wall_s=1.0, dir=f"d{s}")
            for s, a in ((0, 0.5), (1, 0.7), (2, 0.6))]
    rows.append(dict(rows[0], layer="sal", test_acc_hard=0.4))
    res = salnp.sweep.SweepResult(rows, columns=["layer", "width", "seed"])
    s = res.summary()
    assert [r["n"] for r in s] == [3, 1] and s[0]["seeds"] == [0, 1, 2]
    assert s[0]["test_acc_mean"] == pytest.approx(0.6)
    assert s[0]["test_acc_std"] == pytest.approx(0.1)             # n - 1, as pandas
    assert s[0]["test_acc_hard_mean"] is None and s[1]["test_acc_std"] is None
    assert "60.00 ± 10.00" in s.table()
    text = res.to_csv()
    assert text.splitlines()[0].startswith("layer,width,seed,test_acc")
    pd = pytest.importorskip("pandas")
    df = res.to_dataframe()
    assert list(df["test_acc"]) == [0.5, 0.7, 0.6, 0.5]
    g = df.groupby(["layer", "width"])["test_acc"].agg(["mean", "std"])
    assert g.loc[("cl", 4), "std"] == pytest.approx(s[0]["test_acc_std"])
    assert isinstance(s.to_dataframe(), pd.DataFrame)


# ---------------------------------------------------------------- sweeps
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep on the local spawn pool, 2 workers x 1 thread."""
    if not os.path.isdir(FASHION):
        pytest.skip(f"needs Fashion-MNIST at {FASHION}")
    out = tmp_path_factory.mktemp("local")
    # a forked child would hang in its first OpenMP region after the parent ran a
    # 2-thread op; the pool starts its workers with spawn
    salnp.set_num_threads(2)
    x = np.random.default_rng(0).standard_normal((8, 16, 32, 32)).astype(np.float32)
    salnp.ops.conv2d(x, np.ones((16, 16, 3, 3), np.float32), padding=1)
    salnp.set_num_threads(1)
    t0 = time.perf_counter()
    res = salnp.sweep(CONFIGS, out=out, workers=2, threads_per_trial=1, progress=False,
                      timeout=TIMEOUT)
    print(f"local sweep of {len(CONFIGS)} trials: {time.perf_counter() - t0:.1f} s")
    return out, res


@needs_data
def test_local_sweep_table_and_folders(reference):
    out, res = reference
    assert not res.failed and len(res) == len(CONFIGS) == len(res.ran)
    assert res.columns == ["depth", "width", "epochs", "subset", "test_subset", "batch_size",
                           "layer", "seed"]
    for cfg, row in zip(CONFIGS, res):
        assert row["layer"] == cfg["layer"] and row["seed"] == cfg["seed"]
        assert 0 <= row["test_acc"] <= 1 and row["params"] > 0 and row["macs"] > 0
        assert row["train_macs"] > row["macs"] and row["wall_s"] > 0
        assert (row["test_acc_hard"] is None) == (cfg["layer"] != "sal")
        files = set(os.listdir(row["dir"]))
        assert {"summary.json", "history.json", "checkpoint.npz", "inference.npz",
                "config.json", "train.log"} <= files
        summ = json.loads(open(os.path.join(row["dir"], "summary.json")).read())
        assert summ["threads"] == 1 and summ["epochs"] == 2
        assert summ["test_acc"] == row["test_acc"]
        inf = salnp.export.load(os.path.join(row["dir"], "inference.npz"))
        assert inf.count((1, 28, 28)).macs == row["macs"]
    logged = [json.loads(l) for l in open(out / "results.jsonl")]
    assert sorted(r["dir"] for r in logged) == sorted(r["dir"] for r in res)
    assert salnp.sweep.load(out) == res
    assert (out / "results.csv").read_text() == res.to_csv()


@needs_data
def test_rerun_of_finished_sweep_trains_nothing(reference):
    out, res = reference
    stamps = {r["dir"]: os.stat(os.path.join(r["dir"], "summary.json")).st_mtime_ns for r in res}
    t0 = time.perf_counter()
    again = salnp.sweep(CONFIGS, out=out, workers=2, threads_per_trial=1, progress=False,
                        timeout=60)
    assert time.perf_counter() - t0 < 10
    assert again.ran == [] and len(again.skipped) == len(CONFIGS)
    assert again == res
    for d, st in stamps.items():
        assert os.stat(os.path.join(d, "summary.json")).st_mtime_ns == st
        assert open(os.path.join(d, "attempts.log")).read().count("\n") == 1


@needs_data
def test_interrupted_sweep_rerun_gives_the_same_table(reference, tmp_path):
    """kill -9 of the whole `python -m salnp sweep` process group while a trial has a
    checkpoint but no summary, then a rerun: the table of one uninterrupted run."""
    _, ref = reference
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"axes": {"layer": ["cl", "sal"]}, "seeds": [0, 1],
                                "fixed": TINY}))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "salnp", "sweep", str(grid), "--out", str(out),
           "--workers", "2", "--threads-per-trial", "1"]
    proc = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    killed_mid_trial = False
    try:
        t_end = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < t_end:
            trials = out / "trials"
            dirs = [trials / d for d in os.listdir(trials)] if trials.is_dir() else []
            if any((d / "checkpoint.npz").exists() and not (d / "summary.json").exists()
                   for d in dirs):
                os.killpg(proc.pid, signal.SIGKILL)
                killed_mid_trial = True
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and not killed_mid_trial:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert killed_mid_trial, "the sweep finished before it could be interrupted"
    time.sleep(0.2)    # let the killed workers go
    res = salnp.sweep(CONFIGS, out=out, workers=2, threads_per_trial=1, progress=False,
                      timeout=TIMEOUT)
    assert not res.failed
    assert _numbers(res) == _numbers(ref)
    assert res.ran, "the rerun had nothing left to do"
    resumed = [r["dir"] for r in res
               if json.loads(open(os.path.join(r["dir"], "summary.json")).read())["resumed"]]
    assert resumed, "no trial resumed from its checkpoint"
    # and from the shell: the finished sweep prints its table and trains nothing
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "0 trained, 4 already done, 0 failed" in done.stdout
    assert "mean ± std over seeds" in done.stdout


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed", reason="pip install 'salnp[sweep]'")
    env = {k: v for k, v in _env().items() if k in ("PYTHONPATH", "OMP_NUM_THREADS")}
    with _deadline(90, "LocalCluster start"):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, env=env)
        client = distributed.Client(cluster, timeout="60s")
        client.wait_for_workers(2, timeout=60)
    yield client
    with _deadline(60, "LocalCluster close"):
        client.close(timeout=30)
        cluster.close(timeout=30)


@needs_data
def test_dask_sweep_survives_a_killed_worker_and_matches_local(reference, dask_client, tmp_path):
    """2 worker processes x 1 thread; one worker is killed (SIGKILL) while a trial runs on
    it after another trial finished: nothing finished is lost, the sweep completes, and
    every number equals the local pool's."""
    _, ref = reference
    client = dask_client
    out = tmp_path / "dask"
    box = {}

    def run():
        try:
            box["res"] = salnp.sweep(CONFIGS, client=client, out=out, progress=False,
                                     timeout=TIMEOUT)
        except BaseException as e:  # reported below
            box["err"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    with _deadline(30, "client.run"):
        pids = client.run(os.getpid)
    victim, finished_before = None, []
    t_end = time.monotonic() + TIMEOUT
    while th.is_alive() and time.monotonic() < t_end:
        log = out / "results.jsonl"
        finished_before = [json.loads(l) for l in open(log)] if log.exists() else []
        if finished_before:
            busy = [w for w, keys in client.processing().items() if keys and w in pids]
            if busy:
                victim = busy[0]
                os.kill(pids[victim], signal.SIGKILL)
                break
        time.sleep(0.005)
    th.join(TIMEOUT)
    assert not th.is_alive(), "the sweep did not finish"
    if "err" in box:
        raise box["err"]
    res = box["res"]
    assert victim is not None, "no worker was busy after the first result"
    assert not res.failed and len(res) == len(CONFIGS)
    logged = [json.loads(l) for l in open(out / "results.jsonl")]
    assert logged[:len(finished_before)] == finished_before        # nothing finished was lost
    assert _numbers(res) == _numbers(ref)                           # Dask == local, bit for bit
    client.wait_for_workers(2, timeout=60)                         # the nanny restarted it


def test_plots_of_a_sweep_group_by_layer_with_error_bars(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot", reason="pip install 'salnp[notebooks]'")
    from matplotlib.container import ErrorbarContainer

    from salnp import viz

    rows = [dict(layer=layer, width=w, seed=s, test_acc=acc + 0.02 * s,
                 test_acc_hard=(acc - 0.01 + 0.02 * s) if layer == "sal" else None,
                 params=100 * w, macs=1000 * w * (1 if layer == "cl" else 0.2),
                 train_macs=1, wall_s=1.0, dir="-")
            for layer, acc in (("cl", 0.6), ("sal", 0.5)) for w in (4, 8) for s in (0, 1, 2)]
    res = salnp.sweep.SweepResult(rows, columns=["layer", "width", "seed"])
    for fn, key in ((viz.accuracy_vs_macs, "macs"), (viz.accuracy_vs_params, "params")):
        fig, ax = plt.subplots()
        assert fn(res, ax=ax) is ax
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 4 + 2                        # 4 configs + the SAL soft points
        filled = bars[0]                                 # cl, width 4: mean and std of 3 seeds
        x, y = filled.lines[0].get_data()
        assert x[0] == rows[0][key] and y[0] == pytest.approx(100 * 0.62)
        seg = filled.lines[2][0].get_segments()[0]       # the y error bar: mean -+ std
        assert seg[1][1] - seg[0][1] == pytest.approx(2 * 100 * 0.02)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["CL", "SAL"]
        assert "mean ± std over 3 seed(s)" in ax.get_title()
        assert [t.get_text() for t in ax.texts] == ["width=4", "width=8"] * 2
        plt.close(fig)
    pd = pytest.importorskip("pandas")
    fig, ax = plt.subplots()
    viz.accuracy_vs_params(pd.DataFrame(rows), ax=ax)     # a DataFrame of the rows
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 6
    plt.close(fig)


@needs_data
def test_cli_sweep_on_a_dask_scheduler(reference, dask_client, tmp_path):
    """python -m salnp sweep GRID.json --scheduler ADDRESS: the same numbers as the pool."""
    _, ref = reference
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(CONFIGS[:2]))                   # a list of configs
    out = tmp_path / "cli-dask"
    cmd = [sys.executable, "-m", "salnp", "sweep", str(grid), "--out", str(out),
           "--scheduler", dask_client.scheduler.address, "--timeout", str(TIMEOUT)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT + 60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 trained, 0 already done, 0 failed" in done.stdout
    assert "[2/2] done 2, running 0, failed 0" in done.stderr
    assert _numbers(salnp.sweep.load(out)) == _numbers(ref)[:2]


# ---------------------------------------------------------------- hostile states (issue 23)
def test_torn_jsonl_tail_is_repaired_and_whole_lines_appended(tmp_path):
    """A crash mid-append leaves a line without its end: the next row was glued onto it
    (and lost).  The torn tail is cut, with a warning, and each row is one write."""
    p = tmp_path / "results.jsonl"
    p.write_text('{"trial_id": "a", "x": 1}\n{"trial_id": "b", "x')
    with pytest.warns(RuntimeWarning, match=r"results.jsonl: a torn last line \(20 bytes"):
        salnp.sweep._append_jsonl(str(p), [{"trial_id": "c", "x": 3}])
    rows = [json.loads(line) for line in p.read_text().splitlines()]
    assert [r["trial_id"] for r in rows] == ["a", "c"]
    salnp.sweep._append_jsonl(str(p), [{"trial_id": "d"}, {"trial_id": "c"}])   # c: logged
    assert [json.loads(line)["trial_id"] for line in p.read_text().splitlines()] == ["a", "c", "d"]


def test_jsonl_rows_that_are_not_objects_are_skipped(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text('[1, 2]\n"text"\n3\nnull\n{"trial_id": "a"}\n{"trial_id": 7}\n')
    with pytest.warns(RuntimeWarning, match="results.jsonl: 4 line\\(s\\) are not JSON objects"):
        assert salnp.sweep._logged_ids(str(p)) == {"a", 7}


def _trial_dir(out, cfg):
    t = salnp.sweep._Trial(salnp.runs.normalize(cfg), str(out))
    os.makedirs(t.dir, exist_ok=True)
    return t


@pytest.mark.parametrize("summary", ["[]", '"done"', "3", '{"trial_id": "%s", "test_acc": "x"}'])
def test_summary_that_is_not_a_summary_reruns_the_trial(tmp_path, summary):
    """Valid JSON that is not a summary (not an object, or a metric that is no number)
    crashed the whole sweep with AttributeError (or a format error): the trial is not
    done, says so, and runs."""
    if not os.path.isdir(FASHION):
        pytest.skip(f"needs Fashion-MNIST at {FASHION}")
    cfg = dict(TINY, layer="cl", seed=0, epochs=1)
    out = tmp_path / "sweep"
    t = _trial_dir(out, cfg)
    path = os.path.join(t.dir, "summary.json")
    with open(path, "w") as f:
        f.write(summary.replace("%s", t.id))
    (out / "results.jsonl").write_text('["not", "a", "row"]\n')
    with pytest.warns(RuntimeWarning, match=r"summary.json: not a trial summary .*runs again"), \
            pytest.warns(RuntimeWarning, match=r"results.jsonl: 1 line\(s\) are not JSON objects"):
        res = salnp.sweep([cfg], out=out, workers=1, threads_per_trial=1, progress="lines",
                          timeout=TIMEOUT)
    assert not res.failed and res.ran == [t.dir] and len(res) == 1
    assert json.load(open(path))["trial_id"] == t.id
    with open(path, "w") as f:
        f.write(summary.replace("%s", t.id))
    with pytest.warns(RuntimeWarning, match="not a trial summary"):
        assert len(salnp.sweep.load(out)) == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other network"])
def test_corrupt_checkpoint_is_moved_aside_and_the_trial_restarts(tmp_path, damage):
    if not os.path.isdir(FASHION):
        pytest.skip(f"needs Fashion-MNIST at {FASHION}")
    cfg = dict(TINY, layer="sal", seed=1)
    out = tmp_path / "sweep"
    t = _trial_dir(out, cfg)
    ckpt = os.path.join(t.dir, "checkpoint.npz")
    if damage == "garbage":
        open(ckpt, "wb").write(os.urandom(3000))
    else:
        other = salnp.models.resnet(8, 4, "cl", in_channels=1)
        train = salnp.data.fashion_mnist(train=False).subset(60)
        salnp.fit(other, train, epochs=1, batch_size=30, progress=False, checkpoint=ckpt)
        if damage == "truncated":
            data = open(ckpt, "rb").read()
            open(ckpt, "wb").write(data[:len(data) // 2])
    with pytest.warns(RuntimeWarning, match=r"checkpoint.npz: cannot be resumed .*moved aside to "
                                             r"checkpoint\.npz\.corrupt-.*restarted"):
        res = salnp.sweep([cfg], out=out, workers=1, threads_per_trial=1, progress=False,
                          timeout=TIMEOUT)
    assert not res.failed and len(res) == 1
    assert [f for f in os.listdir(t.dir) if f.startswith("checkpoint.npz.corrupt-")]
    summ = json.load(open(os.path.join(t.dir, "summary.json")))
    assert summ["epochs"] == TINY["epochs"] and summ["resumed"] is False


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _worker_pids(out):
    pids = set()
    for d in (out / "trials").glob("*"):
        try:
            pids |= {int(line.split(" pid ")[1].split()[0])
                     for line in open(d / "attempts.log") if " pid " in line}
        except OSError:
            pass
    return pids


@needs_data
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
                         ids=["SIGTERM", "SIGHUP", "SIGKILL"])
def test_a_signalled_sweep_leaves_no_worker_training(tmp_path, sig):
    """SIGTERM (Slurm, timeout, docker stop), SIGHUP (a closed terminal) or SIGKILL to the
    sweep process alone: its workers stop too (before: an orphan kept training, and a
    rerun trained the same trial beside it)."""
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"axes": {"layer": ["cl", "sal"]}, "seeds": [0],
                                "fixed": dict(TINY, epochs=200)}))
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "salnp", "sweep", str(grid), "--out", str(out),
                             "--workers", "2", "--threads-per-trial", "1"], env=_env(),
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        t_end = time.monotonic() + TIMEOUT
        while len(_worker_pids(out)) < 2 and time.monotonic() < t_end and proc.poll() is None:
            time.sleep(0.05)
        pids = _worker_pids(out)
        assert len(pids) == 2 and all(_alive(p) for p in pids), proc.stderr.read()
        os.kill(proc.pid, sig)
        proc.wait(30)
        t_end = time.monotonic() + 15
        while any(_alive(p) for p in pids) and time.monotonic() < t_end:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids), f"workers {pids} still running after {sig!r}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for p in _worker_pids(out):
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    assert proc.returncode == -sig
    if sig != signal.SIGKILL:
        assert f"sweep: {signal.Signals(sig).name}" in proc.stderr.read()


@needs_data
def test_two_sweeps_on_one_folder_train_each_trial_once(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"axes": {"layer": ["cl", "sal"]}, "seeds": [0, 1],
                                "fixed": TINY}))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "salnp", "sweep", str(grid), "--out", str(out),
           "--workers", "1", "--threads-per-trial", "1"]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=2 * TIMEOUT) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
        assert "0 failed" in o
    trained = sum(int(o.split(" trained,")[0].split()[-1]) for o, _ in outs)
    assert trained == 4, outs
    for d in (out / "trials").iterdir():
        assert open(d / "attempts.log").read().count("\n") == 1, d
    assert len(salnp.sweep.load(out)) == 4


def test_a_claim_of_a_dead_process_is_taken_over(tmp_path):
    d = str(tmp_path / "trial")
    os.makedirs(d)
    code = ("import sys, time, salnp.sweep as s\n"
            "with s._claim(sys.argv[1]):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(float(sys.argv[2]))\n")
    # a live holder: the claim waits for it
    holder = subprocess.Popen([sys.executable, "-c", code, d, "1.5"], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    with salnp.sweep._claim(d):
        waited = time.monotonic() - t0
    holder.wait(30)
    assert waited > 0.5
    # a holder killed with its claim: taken over at once
    holder = subprocess.Popen([sys.executable, "-c", code, d, "600"], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(30)
    t0 = time.monotonic()
    with salnp.sweep._claim(d):
        assert time.monotonic() - t0 < 0.5
