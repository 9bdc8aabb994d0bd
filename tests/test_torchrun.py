"""`torchrun --nproc_per_node=2 -m liverphase train|cv` (gloo, CPU) against one process.

The model is std_net, small (base_channels 4, scales 3): it has no BatchNorm (instance norm works
per sample) and no dropout, so a rank's half of a batch computes exactly what one process computes
for those cases, and SGD without a schedule keeps the update a plain function of the gradient.
With a BatchNorm model the comparison would not be meaningful on CPU: each rank normalises over its
own half batch (SyncBatchNorm needs GPUs).

DistributedSampler deals rank r the positions r, r+2, ... of the one-process permutation, so with a
local batch of batch_size / 2 each step sees the one-process batch; the training fold here has 13
cases, so the sampler pads the last step with a repeat, which the trainer weighs out
(`distributed.padded_share`). In float64 the averaged half-batch gradient equals the one-process
one to 1e-15. What remains in float32 is summation order (two half-batch convolutions and an
all-reduce vs one batch), which instance norm over small maps amplifies: after one epoch the
weights differ by ~3e-6 (running the one-process job with 2 threads instead of 1 moves them about
as much). The weights are compared at atol 5e-5 and shown to have moved far more than that; logged
losses at rel 1e-4, cv probabilities at atol 1e-5. A killed and resumed two-process run restores
every rank's RNG and the sampler order, so it must equal the uninterrupted one bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

from liverphase.cli import app
from liverphase.errors import ConfigError, LiverphaseError
from liverphase.train import distributed

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside python")
MODEL = ["--model", "std_net", "-o", "base_channels=4", "-o", "scales=3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
WEIGHT_ATOL = 5e-5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("torchrun") / "ds"
    result = CliRunner().invoke(
        app, ["synth", str(root), "--cases", "16", "--seed", "3", "--preset", "tiny"]
    )
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(
        "train:\n  batch_size: 4\n  optimizer: sgd\n  lr: 0.01\n  scheduler: none\n"
        "  num_workers: 0\npreprocess:\n  size: [8, 32, 32]\n  register: false\n"
    )
    return path


def liverphase(args: list[str], nproc: int = 1, **kw) -> subprocess.CompletedProcess:
    """The CLI as its own process: plainly, or under torchrun with `nproc` processes."""
    launch = [sys.executable, "-m", "liverphase"]
    if nproc > 1:
        launch = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "liverphase"]
    return subprocess.run(
        [*launch, *args], env=ENV, capture_output=True, text=True, timeout=600, **kw
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    noise = "find_unused_parameters=True was specified"
    stderr = "\n".join(line for line in proc.stderr.splitlines() if noise not in line)
    assert proc.returncode == 0, stderr[-6000:]
    return proc.stdout


def weights(run: Path, name: str = "bundle/model.safetensors") -> dict[str, np.ndarray]:
    tensors = load_file(str(run / name))
    return {k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith("rng")}


def log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def initial_weights(run: Path) -> dict[str, np.ndarray]:
    """The weights the run started from: its model, built after the trainer's seeding."""
    from liverphase.models.registry import create_model
    from liverphase.train.recipe import seed_everything

    meta = json.loads((run / "bundle" / "bundle.json").read_text())
    seed_everything(meta["seed"])
    model = create_model(
        meta["model"],
        num_classes=len(meta["class_names"]),
        phases=meta["phases"],
        **meta["model_options"],
    )
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_two_processes_train_like_one(cohort: Path, config: Path, tmp_path: Path) -> None:
    common = [str(cohort), *MODEL, "--epochs", "1", "--config", str(config)]
    ok(liverphase(["train", *common, "--out", str(tmp_path / "one")]))
    # a fresh RUN/cache: rank 0 preprocesses while rank 1 waits, then reads the finished entries
    out = ok(liverphase(["train", *common, "--out", str(tmp_path / "two")], nproc=2))
    one, two = tmp_path / "one", tmp_path / "two"
    assert out.count("bundle:") == 1  # rank 1 prints nothing
    assert list(two.rglob("log.csv")) == [two / "log.csv"]
    assert list(two.rglob("bundle.json")) == [two / "bundle" / "bundle.json"]
    assert len(list((two / "tensorboard").iterdir())) == 1
    meta = json.loads((two / "bundle" / "bundle.json").read_text())
    assert len(meta["split"]["train"]) % 2 == 1  # the sampler pads the last step: weighed out
    for a, b in zip(log_rows(one), log_rows(two), strict=True):
        for key in ("train_loss", "val_loss", "val_dice"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4), key
    w1, w2, w0 = weights(one), weights(two), initial_weights(one)
    assert w1.keys() == w2.keys()
    for key in w1:
        np.testing.assert_allclose(w2[key], w1[key], atol=WEIGHT_ATOL, rtol=0, err_msg=key)
    # not vacuous: one epoch moved the weights far more than the tolerance
    moved = max(float(np.abs(w1[k] - w0[k]).max()) for k in w1 if w1[k].dtype.kind == "f")
    assert moved > 100 * WEIGHT_ATOL


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def rank_pid(torchrun_pid: int, rank: int) -> int:
    for pid in descendants(torchrun_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"liverphase" in cmdline:
            return pid
    raise AssertionError(f"no rank {rank} below torchrun {torchrun_pid}")


@pytest.mark.slow
def test_kill_one_rank_then_resume(cohort: Path, config: Path, tmp_path: Path) -> None:
    epochs = 6
    common = [str(cohort), *MODEL, "--epochs", str(epochs), "--config", str(config)]
    common += ["--cache", str(tmp_path / "cache")]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    ok(liverphase(["train", *common, "--out", str(whole)], nproc=2))
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "liverphase", "train"]
    proc = subprocess.Popen(
        [*cmd, *common, "--out", str(killed)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not (killed / "log.csv").exists():  # the first epoch's checkpoint is written
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            time.sleep(0.02)
        os.kill(rank_pid(proc.pid, 0), signal.SIGKILL)  # the writer, mid-training
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "SIGKILL" in stderr
    assert 1 <= len(log_rows(killed)) < epochs
    out = ok(liverphase(["train", *common, "--out", str(killed), "--resume"], nproc=2))
    assert out.count("bundle:") == 1
    for name in ("bundle/model.safetensors", "checkpoint/state.safetensors"):
        a, b = weights(whole, name), weights(killed, name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(b[key], a[key], err_msg=f"{name}: {key}")
    for a, b in zip(log_rows(whole), log_rows(killed), strict=True):
        assert {k: a[k] for k in ("epoch", "train_loss", "val_loss", "val_dice")} == {
            k: b[k] for k in ("epoch", "train_loss", "val_loss", "val_dice")
        }


@pytest.mark.slow
def test_cv_under_torchrun_matches_one_process(cohort: Path, config: Path, tmp_path: Path) -> None:
    common = ["cv", str(cohort), *MODEL, "--folds", "2", "--epochs", "1", "--config", str(config)]
    common += ["--cache", str(tmp_path / "cache")]
    ok(liverphase([*common, "--out", str(tmp_path / "one")]))
    out = ok(liverphase([*common, "--out", str(tmp_path / "two")], nproc=2))
    assert out.count("report:") == 1
    two = tmp_path / "two"
    assert [p.name for p in two.rglob("report.md")] == ["report.md"]
    assert sorted(p.relative_to(two).as_posix() for p in two.rglob("log.csv")) == [
        "fold_0/log.csv",
        "fold_1/log.csv",
    ]

    def table(run: Path) -> list[dict[str, str]]:
        with open(run / "predictions.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    a, b = table(tmp_path / "one"), table(two)
    assert [(r["case_id"], r["fold"]) for r in a] == [(r["case_id"], r["fold"]) for r in b]
    for key in ("prob_HCC", "prob_ICC"):
        np.testing.assert_allclose(
            [float(r[key]) for r in b], [float(r[key]) for r in a], atol=1e-5, rtol=0
        )


def test_bad_input_fails_on_every_rank_before_the_group(
    cohort: Path, config: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    launch = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", f"--log-dir={logs}"]
    missing = tmp_path / "no_such_dataset"
    proc = subprocess.run(
        [*launch, "--redirects=3", "-m", "liverphase.cli", "train", str(missing), "--out", "X"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr
    errors = sorted(logs.rglob("stderr.log"))
    assert len(errors) == 2
    for path in errors:  # torchrun may stop the slower rank once the first exits: its line stands
        assert path.read_text().splitlines() == [f"error: {missing}: dataset folder not found"]
    assert not (tmp_path / "X").exists()
    # Each rank on its own, told of a group whose address answers nothing: exit 2 with one line,
    # so no rank tried to join (that would wait for the rendezvous, then fail otherwise).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bad = [
        ([str(missing)], "dataset folder not found"),
        ([str(cohort), *MODEL, "--config", str(config), "--batch-size", "3"], "does not split"),
    ]
    launched = []
    for (args, message), rank in zip(bad, (1, 0), strict=True):
        env = {**ENV, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-m", "liverphase", "train", *args, "--out", "Y"]
        launched.append(
            (
                message,
                subprocess.Popen(cmd, env=env, cwd=tmp_path, text=True, stderr=subprocess.PIPE),
            )
        )
    for message, one in launched:
        stderr = one.communicate(timeout=120)[1]
        assert one.returncode == 2, stderr[-3000:]
        lines = stderr.splitlines()
        assert len(lines) == 1 and message in lines[0], lines


def test_padded_share_matches_one_process_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against torch's own DistributedSampler: each step's kept items over all ranks are exactly the
    one-process batch, and the shares turn the ranks' mean losses into that batch's mean."""
    from torch.utils.data import DistributedSampler

    for n in range(1, 20):
        data = list(range(n))
        order = list(DistributedSampler(data, 1, 0, shuffle=True, seed=5))
        for world, batch in ((2, 2), (2, 4), (3, 6), (4, 4)):
            local = batch // world
            shards = [
                list(DistributedSampler(data, world, r, shuffle=True, seed=5)) for r in range(world)
            ]
            for step in range(-(-n // batch)):
                kept, mean = [], 0.0
                for rank in range(world):
                    monkeypatch.setattr(distributed, "rank_world", lambda r=rank, w=world: (r, w))
                    items = shards[rank][step * local : (step + 1) * local]
                    keep, share = distributed.padded_share(n, batch, step, len(items))
                    kept += [items[j] for j in keep]
                    values = [float(items[j]) for j in keep]
                    mean += share * (np.mean(values) if values else 0.0) / world  # DDP's average
                expected = order[step * batch : (step + 1) * batch]
                assert sorted(kept) == sorted(expected), (n, world, batch, step)
                assert mean == pytest.approx(np.mean(expected))


def _group_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a real gloo group (spawned by the test below)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    log = Path(out) / "turns.txt"
    seen: dict[str, object] = {}

    def turn() -> int:
        if rank == 0:
            time.sleep(0.5)  # the others must wait for this turn, however slow
        with open(log, "a") as fh:
            fh.write(str(rank))
        return rank

    def fail(kind: type[Exception]) -> None:
        raise kind("bad value") if kind is RuntimeError else ConfigError("bad value", "field")

    with distributed.torchrun_session():
        distributed.join_group(batch_size=world)
        seen["in_turn"] = distributed.in_turn(turn)
        seen["on_main"] = distributed.on_main(lambda: f"from rank {rank}")
        for kind in (ConfigError, RuntimeError):
            try:
                distributed.on_main(fail, kind)
            except LiverphaseError as exc:
                seen[kind.__name__] = ["user", str(exc)]
            except RuntimeError as exc:
                seen[kind.__name__] = ["bug", str(exc)]
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(seen))


def test_shared_outcomes_in_a_gloo_group(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(
        _group_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    assert (tmp_path / "turns.txt").read_text() == "01"  # rank 0 first, however slow
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["in_turn"] for s in seen] == [0, 1]
    assert [s["on_main"] for s in seen] == ["from rank 0", "from rank 0"]
    # a user error on rank 0 is the same one line on every rank; a bug names the rank
    assert [s["ConfigError"] for s in seen] == [["user", "field: bad value"]] * 2
    assert seen[0]["RuntimeError"] == ["bug", "bad value"]
    assert seen[1]["RuntimeError"] == ["bug", "rank 0 failed: RuntimeError: bad value"]


def test_commands_that_do_not_join_a_group_refuse_torchrun(tmp_path, monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) only train and cv run; the rest say so in one line."""
    from typer.testing import CliRunner

    from liverphase.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    for args in (["evaluate", str(tmp_path), "--data", str(tmp_path)], ["models"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "does not run under torchrun" in res.output, res.output
        assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 1
