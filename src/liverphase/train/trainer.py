"""The training loop: seeded, resumable to the same bytes, single-process or DDP on one code path.

Per epoch: train on the training items (augmented), validate on the inner validation items (loss,
AUC), keep the best epoch's weights as the bundle, stop early on a stalled metric, and write the
checkpoint (RUN/checkpoint), the bundle (RUN/bundle), RUN/log.csv and TensorBoard (RUN/tensorboard)
from rank 0. The test fold never reaches the trainer.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from liverphase.data.augment import Augmenter
from liverphase.data.dataset import CachedStudyDataset, model_kwargs
from liverphase.data.forward import predict_batch
from liverphase.errors import ConfigError
from liverphase.models.registry import ModelOutput, MultiPhaseModel, accepts_phase_mask
from liverphase.ssl.bundle import init_record, load_encoder, read_encoder_meta, set_encoder_frozen
from liverphase.train.bundle import save_bundle, state_tensors
from liverphase.train.config import TrainConfig
from liverphase.train.distributed import (
    barrier,
    gather_objects,
    is_main,
    on_main,
    padded_share,
    rank_world,
    real_loss,
    wrap_ddp,
)
from liverphase.train.logs import open_tensorboard, write_log_csv, write_scalars
from liverphase.train.losses import training_loss
from liverphase.train.recipe import (
    build_optimizer,
    build_scheduler,
    bundle_metrics,
    check_model_config,
    class_weights,
    default_device,
    derived_seed,
    epoch_record,
    mask_dice,
    seed_everything,
    selection_score,
    slice_output,
    val_metrics,
)
from liverphase.train.state import (
    capture_rng,
    check_resumable,
    load_state,
    restore_modules,
    restore_rng,
    save_state,
)

EpochCallback = Callable[[int, dict[str, Any]], None]


class Trainer:
    """Fit a model on train items with model selection on validation items; predict afterwards."""

    def __init__(
        self,
        config: TrainConfig,
        model_factory: Callable[[], MultiPhaseModel],
        train_items: Sequence[dict[str, Any]],
        val_items: Sequence[dict[str, Any]],
        out_dir: str | Path,
        class_names: Sequence[str],
        device: str | torch.device | None = None,
        bundle_meta: dict[str, Any] | None = None,
        progress: bool = True,
        callbacks: Sequence[EpochCallback] = (),
        tensorboard: bool = True,
        reference_phase_index: int | None = None,
        roi_channel: bool = False,
    ) -> None:
        self.config = config
        self.roi_channel = roi_channel
        self.model_factory = model_factory
        self.rank, self.world = rank_world()
        if config.batch_size % self.world:
            raise ConfigError(
                f"batch size {config.batch_size} does not split over {self.world} processes",
                "batch_size",
            )
        self.local_batch = config.batch_size // self.world
        self.device = torch.device(device) if device is not None else default_device()
        self.class_names = [str(c) for c in class_names]
        # the mask belongs to the reference phase: per-phase shifts must leave that phase in place
        augment = (
            Augmenter(config.augment_params, reference_phase_index) if config.augment else None
        )
        self.train_set, self.val_set = self._dataset(train_items, augment), self._dataset(val_items)
        self.out_dir = Path(out_dir)
        self.bundle_dir = self.out_dir / "bundle"
        self.checkpoint_dir = self.out_dir / "checkpoint"
        self.bundle_meta = dict(bundle_meta or {})
        self.progress = progress
        self.callbacks = list(callbacks)
        self.tensorboard = tensorboard
        self.model: MultiPhaseModel | None = None
        self.use_amp = config.amp == "auto" and self.device.type == "cuda"
        self.amp_dtype = (
            torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        )

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train (continuing RUN/checkpoint when `resume`); return history and the best epoch."""
        cfg = self.config
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.backends.cudnn.benchmark = True
        try:
            seed_everything(cfg.seed)
            model = self.model_factory().to(self.device)
            self.model = model
            self.segments = bool(getattr(model, "segments", False))
            check_model_config(model, cfg, self.roi_channel, self.train_set.spatial_size())
            net = wrap_ddp(model, self.device)
            opt = build_optimizer(cfg, model)
            sched = build_scheduler(cfg, opt)
            scaler = (
                torch.amp.GradScaler("cuda")
                if self.use_amp and self.amp_dtype == torch.float16
                else None
            )
            self.class_weights = class_weights(
                cfg.class_weights, self.train_set.labels(), len(self.class_names), self.device
            )
            st = self._fresh_state()
            loaded = load_state(self.checkpoint_dir) if resume else None
            if loaded is not None:
                st = self._restore(loaded, model, opt, sched, scaler)
            self._start_from_encoder(model, resumed=loaded is not None)
            writer = (
                open_tensorboard(self.out_dir / "tensorboard", purge_step=st["epoch"] + 1)
                if self.tensorboard and is_main()
                else None
            )
            if loaded is not None and is_main() and st["best_model"] is not None:
                self._save_bundle(model, st)  # a kill between checkpoint and bundle
            barrier()
            while not st["finished"]:
                epoch = st["epoch"]
                if cfg.freeze_epochs:
                    set_encoder_frozen(model, epoch < cfg.freeze_epochs)
                train_loss, n_seen, seconds = self._train_epoch(net, opt, scaler, epoch)
                val = self._evaluate(self.val_set, with_loss=True)[0] if len(self.val_set) else {}
                record = epoch_record(
                    epoch + 1, train_loss, val, opt.param_groups[0]["lr"], seconds, n_seen
                )
                if sched is not None:
                    sched.step()
                improved = self._update_selection(st, record, model)
                st["epoch"] = epoch + 1
                st["finished"] = st["epoch"] >= cfg.epochs or bool(
                    cfg.early_stopping_patience and st["bad_epochs"] >= cfg.early_stopping_patience
                )
                st["stopped_early"] = st["finished"] and st["epoch"] < cfg.epochs
                self._write(st, model, opt, sched, scaler, improved, writer, record)
                for callback in self.callbacks:
                    callback(epoch + 1, record)
            if writer is not None:
                writer.close()
            if cfg.freeze_epochs:
                set_encoder_frozen(model, False)
            if st["best_model"] is not None:
                model.load_state_dict(st["best_model"])
            best = st["history"][st["best_epoch"] - 1] if st["best_epoch"] else None
            return {
                "history": st["history"],
                "best_epoch": st["best_epoch"],
                "best": best,
                "epochs_run": st["epoch"],
                "stopped_early": st["stopped_early"],
                "bundle": str(self.bundle_dir),
            }
        finally:
            torch.use_deterministic_algorithms(was_deterministic)

    def _start_from_encoder(self, model: MultiPhaseModel, resumed: bool) -> None:
        """`init`: the encoder bundle's weights into the fresh model (a resumed run has them in its
        checkpoint already), and what it started from into the bundle meta."""
        if self.config.init:
            init = self.config.init
            meta = read_encoder_meta(init) if resumed else load_encoder(model, init)
            self.bundle_meta["init"] = init_record(init, meta)

    def _fresh_state(self) -> dict[str, Any]:
        return {
            "epoch": 0,
            "history": [],
            "best_score": None,
            "best_epoch": None,
            "best_model": None,
            "bad_epochs": 0,
            "finished": False,
            "stopped_early": False,
        }

    # --------------------------------------------------------------- epochs
    def _train_epoch(
        self, net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any, epoch: int
    ) -> tuple[float, int, float]:
        cfg = self.config
        self.train_set.set_epoch(epoch)
        sampler = DistributedSampler(
            self.train_set, self.world, self.rank, shuffle=True, seed=cfg.seed
        )
        sampler.set_epoch(epoch)
        loader = self._loader(self.train_set, sampler, derived_seed(cfg.seed, epoch))
        net.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (self.progress and is_main() and sys.stderr.isatty()),
            leave=False,
        )
        for step, batch in enumerate(bar):
            x = batch["image"].to(self.device, non_blocking=True)
            # DDP: the mean over this rank's real cases, weighted to its share of the global batch
            keep, share = padded_share(len(self.train_set), cfg.batch_size, step, len(x))
            with self._autocast():
                loss = real_loss(self._loss, net(x, **self._kwargs(batch)), batch, keep)
            if not torch.isfinite(loss.detach()):
                raise ConfigError(
                    f"training diverged: loss {float(loss.detach())} in epoch {epoch + 1}; "
                    "lower the learning rate or set grad_clip",
                    "lr",
                )
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss * share).backward()
                scaler.unscale_(opt)
                self._clip(net)
                scaler.step(opt)
                scaler.update()
            else:
                (loss * share).backward()
                self._clip(net)
                opt.step()
            total += float(loss.detach()) * len(keep)
            seen += len(keep)
            bar.set_postfix(
                loss=f"{total / max(seen, 1):.4f}",  # a rank may hold only repeats so far
                samples_s=f"{seen * self.world / (time.perf_counter() - start):.1f}",
            )
        sums = gather_objects((total, seen))
        total, seen = sum(s[0] for s in sums), sum(s[1] for s in sums)
        return total / max(seen, 1), seen, time.perf_counter() - start

    def _kwargs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The batch's phase mask for a model that takes one (absent phases, phase dropout)."""
        takes = self.model is not None and accepts_phase_mask(self.model)
        return model_kwargs(batch, self.device, phase_mask=takes)

    def _clip(self, net: torch.nn.Module) -> None:
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.config.grad_clip)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loader(self, dataset: CachedStudyDataset, sampler: Any, seed: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset,
            batch_size=self.local_batch,
            sampler=sampler,
            num_workers=self.config.num_workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    def _loss(self, out: ModelOutput, batch: dict[str, Any]) -> torch.Tensor:
        mask = batch["mask"].to(self.device) if self.segments else None
        cfg = self.config
        return training_loss(
            out,
            batch["label"].to(self.device),
            mask,
            cfg.seg_weight,
            cfg.cls_weight,
            cfg.mtl_lambda,
            self.class_weights,
            cfg.loss,
        )

    # ----------------------------------------------------------- evaluation
    def _evaluate(
        self,
        dataset: CachedStudyDataset,
        with_loss: bool = False,
        with_lesion: bool = False,
        with_slices: bool = False,
    ) -> tuple[dict[str, float], np.ndarray, list[np.ndarray] | None]:
        """Metrics, probabilities (N, K) in item order, and lesion probabilities (or, with
        `with_slices`, per-slice class probabilities (D, K) of a slice-wise model), gathered over
        ranks."""
        if self.model is None:
            raise RuntimeError("Trainer.predict needs a trained model: call fit() first")
        model = self.model
        sampler = DistributedSampler(dataset, self.world, self.rank, shuffle=False)
        loader = self._loader(dataset, sampler, self.config.seed)
        was_training = model.training
        model.eval()
        records, out, dice, lesion = [], None, None, None
        with torch.no_grad(), self._autocast():
            for batch in loader:
                if with_loss:  # validation scores the plain model, with its loss and mask Dice
                    out = model(batch["image"].to(self.device), **self._kwargs(batch))
                    probs = torch.softmax(out.logits.float(), dim=1).cpu().numpy()
                    dice = mask_dice(out.seg_logits, batch["mask"], batch["has_mask"])
                else:  # test predictions: the shared path, with the recipe's flips
                    pred = predict_batch(model, batch, self.config.tta_flip_axes, self.device)
                    probs = pred.probs
                    lesion = pred.lesion if with_lesion else pred.slices if with_slices else None
                for i, idx in enumerate(batch["index"].tolist()):
                    loss = math.nan
                    if with_loss and out is not None:
                        one = {k: v[i : i + 1] for k, v in batch.items() if torch.is_tensor(v)}
                        loss = float(self._loss(slice_output(out, i), one))
                    one_lesion = lesion[i] if lesion is not None else None
                    records.append((idx, probs[i], loss, one_lesion, dice[i] if dice else math.nan))
        model.train(was_training)
        merged = {r[0]: r for part in gather_objects(records) for r in part}  # drops padding
        order = sorted(merged)
        k = len(self.class_names)
        probs = np.stack([merged[i][1] for i in order]) if order else np.zeros((0, k))
        labels = dataset.labels()[order]
        metrics = val_metrics(labels, probs, np.array([merged[i][2] for i in order]))
        dice = [merged[i][4] for i in order if not math.isnan(merged[i][4])]
        if dice:
            metrics["dice"] = float(np.mean(dice))
        lesions = [merged[i][3] for i in order] if with_lesion or with_slices else None
        return metrics, probs, lesions

    def predict(
        self,
        items: Sequence[dict[str, Any]],
        return_lesion_prob: bool = False,
        return_slice_prob: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[np.ndarray | None]]:
        """Class probabilities (N, K) in the order of `items` (and each lesion probability map,
        float32 on the crop grid, None without a segmentation head, if asked; or each study's
        per-slice class probabilities (D, K), None for a model that does not score slices)."""
        labelled = [{**it, "label": it.get("label") or self.class_names[0]} for it in items]
        _, probs, extra = self._evaluate(
            self._dataset(labelled),
            with_lesion=return_lesion_prob,
            with_slices=return_slice_prob and not return_lesion_prob,
        )
        return (probs, extra) if return_lesion_prob or return_slice_prob else probs

    def _dataset(
        self, items: Sequence[dict[str, Any]], augment: Augmenter | None = None
    ) -> CachedStudyDataset:
        index = {c: i for i, c in enumerate(self.class_names)}
        seed, roi = self.config.seed, self.roi_channel
        return CachedStudyDataset(items, index, augment, seed=seed, roi_channel=roi)

    # ------------------------------------------------------ selection, I/O
    def _update_selection(
        self, st: dict[str, Any], record: dict[str, Any], model: MultiPhaseModel
    ) -> bool:
        """Is this epoch the best so far? AUC, ties (and undefined AUC) broken by lower loss."""
        score = selection_score(record, self.config.select_metric, bool(len(self.val_set)))
        st["history"].append(record)
        improved = st["best_score"] is None or score > st["best_score"]
        if improved:
            st["best_score"], st["best_epoch"] = score, record["epoch"]
            st["best_model"] = state_tensors(model)
            st["bad_epochs"] = 0
        else:
            st["bad_epochs"] += 1
        return improved

    def _write(self, st, model, opt, sched, scaler, improved, writer, record) -> None:  # noqa: ANN001
        """Checkpoint, then bundle, log.csv and TensorBoard; rank 0 writes, and every rank learns
        whether it could (a full disk stops each rank with its one line, none waits forever)."""
        rngs = gather_objects(capture_rng())

        def files() -> None:
            save_state(
                self.checkpoint_dir,
                {
                    **st,
                    "config": self.config.to_dict(),
                    "model": state_tensors(model),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rngs,
                },
            )
            if improved or not self.bundle_dir.exists():
                self._save_bundle(model, st)
            write_log_csv(self.out_dir / "log.csv", st["history"])
            if writer is not None:
                write_scalars(writer, record)

        on_main(files)

    def _save_bundle(self, model: MultiPhaseModel, st: dict[str, Any]) -> None:
        best = st["history"][st["best_epoch"] - 1]
        meta = {
            **self.bundle_meta,
            "model": self.config.model,
            "model_options": self.config.model_options,
            "class_names": self.class_names,
            "training": self.config.to_dict(),
            "seed": self.config.seed,
            "metrics": bundle_metrics(best),
        }
        save_bundle(self.bundle_dir, model, meta, tensors=st["best_model"])

    def _restore(self, loaded, model, opt, sched, scaler) -> dict[str, Any]:  # noqa: ANN001
        """Put a saved checkpoint back: weights, optimiser, scheduler, RNGs and loop state."""
        check_resumable(loaded["config"], self.config.to_dict(), self.checkpoint_dir)
        restore_modules(loaded, model=model, optimizer=opt, scheduler=sched, scaler=scaler)
        rngs = loaded["rng"]
        restore_rng(rngs[self.rank] if len(rngs) == self.world else rngs[0])
        return {k: loaded[k] for k in self._fresh_state()}
