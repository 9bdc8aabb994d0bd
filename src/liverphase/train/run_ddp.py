"""`python -m liverphase.train.run_ddp --config FILE.json`: train a config on toy cached data.

A smoke and equality check for the distributed path: launch it with `torchrun --nproc_per_node=N`
(or plainly, as one process) and compare RUN/metrics.json across launches. The JSON holds `out`,
`train` (a TrainConfig mapping), `class_names`, `phases`, `toy` (write_toy_items arguments for the
`train` and `val` sets: n_train, n_val, shape, signal, seed) and optional `plugins` (Python files
imported first; each one's `register()`, if any, is called: e.g. to register a test model).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from liverphase.atomic import atomic_write_json
from liverphase.data.dataset import write_toy_items
from liverphase.train.config import TrainConfig
from liverphase.train.distributed import barrier, cleanup, init_distributed, is_main
from liverphase.train.recipe import model_factory_from_config
from liverphase.train.trainer import Trainer


def load_plugin(path: str | Path) -> None:
    """Import a Python file by path and call its `register()` if it has one (e.g. test models)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"liverphase_plugin_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import plugin {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if callable(getattr(module, "register", None)):
        module.register()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train `spec` (see the module docstring) on toy data; rank 0 writes out/metrics.json."""
    rank, world, _, device = init_distributed()
    try:
        for plugin in spec.get("plugins", []):
            load_plugin(plugin)
        out = Path(spec["out"])
        cfg = TrainConfig.from_dict(spec["train"], source="run_ddp config")
        classes = list(spec.get("class_names", ["HCC", "ICC"]))
        toy = spec.get("toy", {})
        common = {
            "shape": tuple(toy.get("shape", (2, 1, 8, 16, 16))),
            "classes": classes,
            "signal": float(toy.get("signal", 1.0)),
        }
        seed = int(toy.get("seed", 0))
        # Every rank writes the same bytes under its own folder: no rank reads a half-written file.
        data = out / "data" / f"rank{rank}"
        train = write_toy_items(data / "train", toy.get("n_train", 16), seed=seed, **common)
        val = write_toy_items(data / "val", toy.get("n_val", 8), seed=seed + 1, **common)
        shape = common["shape"]
        phases = spec.get("phases", [f"P{k}" for k in range(shape[0])])
        factory = model_factory_from_config(cfg, len(classes), phases, in_channels=shape[1])
        trainer = Trainer(
            cfg, factory, train, val, out / "run", classes, device=device, progress=False
        )
        result = trainer.fit(resume=bool(spec.get("resume", False)))
        probs = trainer.predict(val)
        summary = {
            "world": world,
            "history": result["history"],
            "best_epoch": result["best_epoch"],
            "val_probs": probs.tolist(),
        }
        if is_main():
            atomic_write_json(out / "metrics.json", summary)
        barrier()
        return summary
    finally:
        cleanup()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: --config FILE.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON file (see the module docstring)")
    args = parser.parse_args(argv)
    run(json.loads(Path(args.config).read_text()))


if __name__ == "__main__":
    main()
