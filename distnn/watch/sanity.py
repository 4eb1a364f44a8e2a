"""distnn sanity CONFIG: the checks before training (CS231n, "babysitting the learning
process") on the config's model as training builds it (same seed) and real training samples
of its dataset, read and normalised as training does (--data-dir, else data.data_dir). One
line per check, with its figure and `ok` or `FAILED`:

1. initial loss: the data loss of the fresh model, in training mode as training's first step
   computes it, on training's first batch (at most 256 samples) is within 10 % of ln(C) for
   softmax, C - 1 for the SVM (C classes). The line also gives the scores' spread: a large one
   means initial weights too large for diffuse scores.
2. regularisation: adding L2 (train.l2, or 1e-2 if that is 0; with train.l1's L1 when that is
   > 0) raises that loss, with the same parameters, samples and dropout masks (BatchNorm
   statistics restored).
3. overfit: the first 20 of those samples, full batch, no L2 (AdamW's weight_decay 0 too), the
   configured update rule (clipping as configured) at the configured base_lr (scaled as
   configured) behind the configured warmup, counted in training's steps per epoch; the
   schedule's decay is left out. Passes when the evaluation-mode accuracy on them reaches
   100 % within --steps updates. Why the warmup: at base_lr 0.05 with momentum 0.9 from the
   first step, the mnist and fashion_mnist nets with a He-initialised output layer (as bundled
   before `init: small`; gradient norm 32-37 at initialisation) jump to a loss of 10-23 after
   one update; within 5 updates 97 % of the units of two ReLU layers are dead, and the nets
   stay at the commonest class's 20-25 % for all 200 steps. Their configs warm up from
   0.1 x base_lr, and with that they reach 100 % in about 10 steps.
4. gradient check: the model in float64 (same specs and seed) on the first 4 samples plus
   N(0, 1e-2) noise (constant backgrounds otherwise tie max-pool windows exactly, where there
   is no derivative to check), f = data loss + 1e-3/2 ||W||^2 with fixed dropout masks, in
   training mode; centred differences (h = 1e-6) on 10 random entries of every parameter array
   and of the input. Passes when the largest relative error (distnn.nn.gradcheck.rel_error)
   is at most 1e-5. Kinks: an entry above that is skipped, counted in the line and replaced by
   another (at most 30 drawn per array) when a ReLU, max-pool or hinge switch within +-h
   explains its error: the one-sided slopes differ, or the centred difference changes from h
   to h/10, by at least half the error. Why h = 1e-6: at 1e-5, 1.4-3.3 % of the entries drawn
   on the bundled nets were at kinks (23 of 30 draws of a cifar10 first-layer bias on one
   sample set: its ~4e5 ReLUs all move with it), and overlapping kinks once gave an error of
   4.5e-4 that only the h/10 test explains; at 1e-6 there were none. Threshold: over 48
   sample sets and seeds (16 quickstart, 8 mnist, 8 fashion_mnist, 16 of the cifar10 model on
   32x32x3 stand-in data) the worst scored entry was 5.1e-7 (1.8e-6 for the cifar10 model),
   and on a BatchNorm/tanh/sigmoid/ELU/dropout/SVM model every entry agreed within rounding; a
   Dense weight gradient scaled by 1.05 gives 2.6e-2 to 4.7e-2.

Exit 0 when every check passes, 1 when one fails, 2 for bad input (config, data, arguments).
"""

from __future__ import annotations

import argparse

from distnn import console
from distnn.exit_codes import ExitCode

BATCH_CAP = 256  # check 1 and 2: at most this many samples of training's first batch
OVERFIT_SAMPLES = 20
GRAD_SAMPLES = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file or bundled config name (quickstart, mnist, "
                                       "fashion_mnist, cifar10)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder (default: the config's data.data_dir)")
    parser.add_argument("--steps", type=int, default=200,
                        help="most updates of the overfitting check (default 200)")


def main(args: argparse.Namespace) -> int:
    from distnn.config import ConfigError
    from distnn.data import DataError
    from distnn.nn import ShapeError, SpecError

    if args.steps < 1:
        console.err(f"distnn sanity: --steps {args.steps}, expected an integer >= 1")
        return ExitCode.BAD_INPUT
    try:
        setup = _Setup(args)
    except (ConfigError, DataError, SpecError, ShapeError) as exc:
        console.err(f"distnn sanity: {console.one_line(exc)}")
        return ExitCode.BAD_INPUT
    return setup.run(args.steps)


class _Setup:
    """The config, data, model and optimizer of a run, built the way distnn.train builds
    them (distnn/train/setup.py, run.py's normalisation)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import dataclasses

        import numpy as np

        from distnn.comm import LocalCommunicator
        from distnn.config import load_config, schedule_spec
        from distnn.data import ShardSampler, to_float
        from distnn.data.preprocess import model_shape
        from distnn.optim import make_schedule
        from distnn.train.run import normalization_for
        from distnn.train.setup import build_model, load_splits
        from distnn.watch.sanity_checks import Samples

        cfg = load_config(args.config, args.overrides)
        if args.data_dir is not None:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                                    data_dir=args.data_dir))
        self.cfg = cfg
        self.train = load_splits(cfg).train
        norm = normalization_for(cfg, self.train, LocalCommunicator())  # data.preprocess
        self.model = build_model(cfg, model_shape(norm, self.train.image_shape),
                                 self.train.num_classes)
        self.sampler = ShardSampler(len(self.train), cfg.train.global_batch, 0, 1, cfg.seed)
        # Training's first batch (epoch 0's order); the other checks take its first samples.
        order = self.sampler.order()
        idx = order[:max(min(cfg.train.global_batch, BATCH_CAP), OVERFIT_SAMPLES)]
        self.samples = Samples(to_float(self.train.read(idx), norm),
                               self.train.labels[idx].astype(np.int64), idx)
        spec = schedule_spec(cfg)
        keys = ("base_lr", "warmup_epochs", "warmup_start_factor")
        self.warmup = make_schedule({"name": "constant", **{k: spec[k] for k in keys if k in spec}})

    def run(self, steps: int) -> int:
        import numpy as np

        from distnn.nn import Sequential
        from distnn.nn import threads as nn_threads
        from distnn.train.setup import rank_threads
        from distnn.watch import sanity_checks as sc

        cfg, model, train = self.cfg, self.model, self.train
        loss, seed = cfg.train.loss, cfg.seed
        print(f"sanity {cfg.name}: {train.name}, {len(train)} training samples, "
              f"{train.num_classes} classes, {loss} loss, seed {seed}", flush=True)
        batch = self.samples.head(min(cfg.train.global_batch, BATCH_CAP))
        checks = []
        # A check that overflows (a diverging overfit, huge initial scores) reports NaN or inf
        # and fails; the warnings would only repeat that.
        with nn_threads.limit(rank_threads(cfg.train.threads, 1)), \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            check, data_loss = sc.initial_loss(model, batch, loss, seed)
            checks.append(_show(check))
            checks.append(_show(sc.regularisation(model, batch, loss, seed, cfg.train.l2,
                                                  data_loss, cfg.train.l1)))
            checks.append(_show(sc.overfit(model, self._optimizer(), self._lr_at,
                                           self.samples.head(OVERFIT_SAMPLES), loss, seed,
                                           steps, self._clip())))
            wide = Sequential(list(cfg.model), model.input_shape, seed=seed, dtype=np.float64)
            checks.append(_show(sc.gradient_check(wide, self.samples.head(GRAD_SAMPLES), loss,
                                                  seed)[0]))
        return ExitCode.OK if all(c.ok for c in checks) else ExitCode.FAILED

    def _optimizer(self):
        from distnn.optim import make_optimizer

        params = dict(self.cfg.optimizer.params)
        if "weight_decay" in params:  # AdamW: the check runs without any L2
            params["weight_decay"] = 0.0
        return make_optimizer(self.cfg.optimizer.name, decay_mask=self.model.decay_mask,
                              **params)

    def _lr_at(self, step: int) -> float:
        """base_lr (scaled as configured) behind the configured warmup at training step `step`,
        with epochs counted as the coordinator counts them; the schedule's decay left out."""
        per_epoch = max(self.sampler.steps_per_epoch, 1)
        epoch = step / per_epoch if self.cfg.schedule.per == "step" else float(step // per_epoch)
        return float(self.warmup.lr(step, epoch))

    def _clip(self):
        from distnn.train.step import clip_grad_norm_

        limit = self.cfg.train.clip_grad_norm
        return (lambda grads: clip_grad_norm_(grads, limit)) if limit > 0 else None


def _show(check):
    print(check.line(), flush=True)
    return check
