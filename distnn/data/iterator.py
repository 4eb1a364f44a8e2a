"""One epoch of this rank's batches, prepared one step ahead in a background thread."""

from __future__ import annotations

import queue
import threading

import numpy as np

from distnn.data.transforms import to_float

_DONE = object()  # end-of-epoch marker on the queue
_POLL = 0.05  # seconds between checks of the stop flag while the queue is full


def prepare_batch(dataset, sampler, step: int, normalization=None, augment=None,
                  epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (k, H, W, C), y int64 (k,)) of this rank's share of `step`.

    epoch: the epoch the caller expects the sampler to be at (checked, so that a set_epoch
    during a prefetching epoch fails loudly instead of mixing two epochs' batches).
    """
    if epoch is not None and sampler.epoch != epoch:
        raise RuntimeError(f"sampler.set_epoch({sampler.epoch}) was called while the batches "
                           f"of epoch {epoch} were being read; close the BatchIterator first")
    idx = sampler.local_indices(step)
    images = dataset.read(idx)
    if augment is not None:
        images = augment(images, idx, sampler.seed, sampler.epoch)
    return to_float(images, normalization), np.asarray(dataset.labels[idx], dtype=np.int64)


def _put(q: queue.Queue, stop: threading.Event, item) -> bool:
    """Block until the consumer makes room or stop is set; False if stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _produce(dataset, sampler, normalization, augment, epoch, steps, q, stop) -> None:
    try:
        for step in steps:
            batch = prepare_batch(dataset, sampler, step, normalization, augment, epoch)
            if not _put(q, stop, batch):
                return
        _put(q, stop, _DONE)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        _put(q, stop, exc)


class BatchIterator:
    """Yields (x float32 (k, H, W, C) normalised, y int64 (k,)) for steps start_step ..
    sampler.steps_per_epoch - 1 of the sampler's current epoch (call sampler.set_epoch first).

    k is this rank's local batch size at that step (may be 0 on a last partial batch: the step
    must still be taken, its collectives are shared). augment(images, indices, seed, epoch) is
    applied to the uint8 images before normalisation. With prefetch, a daemon thread prepares
    the next batch while the current one is used (a queue of one), so at most two batches are
    in memory; exceptions in the thread are re-raised in the consumer. Stop early with close()
    or a `with` block; iteration is single-pass.
    """

    def __init__(self, dataset, sampler, normalization=None, augment=None, prefetch: bool = True,
                 start_step: int = 0):
        steps = sampler.steps_per_epoch
        if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) \
                or not 0 <= start_step <= steps:
            raise ValueError(f"start_step {start_step!r} out of range [0, {steps}]")
        if sampler.num_samples != len(dataset):
            raise ValueError(f"sampler covers {sampler.num_samples} samples but the dataset has "
                             f"{len(dataset)}")
        self.dataset, self.sampler = dataset, sampler
        self.normalization, self.augment, self.prefetch = normalization, augment, prefetch
        self.step, self.stop_step, self.epoch = int(start_step), steps, sampler.epoch
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False

    def __len__(self) -> int:
        """Steps left to yield."""
        return self.stop_step - self.step

    def prepare(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) of one step, computed in the calling thread."""
        return prepare_batch(self.dataset, self.sampler, step, self.normalization, self.augment,
                             self.epoch)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._closed or self.step >= self.stop_step:
            self.close()
            raise StopIteration
        if not self.prefetch:
            batch = self.prepare(self.step)
        else:
            if self._thread is None:
                self._queue = queue.Queue(maxsize=1)
                # The thread gets no reference to self, so a dropped iterator is collected
                # and its __del__ stops the thread.
                args = (self.dataset, self.sampler, self.normalization, self.augment, self.epoch,
                        range(self.step, self.stop_step), self._queue, self._stop)
                self._thread = threading.Thread(target=_produce, args=args,
                                                name="distnn-prefetch", daemon=True)
                self._thread.start()
            assert self._queue is not None  # set with the thread
            batch = self._queue.get()
            if isinstance(batch, BaseException):
                self.close()
                raise batch
            assert batch is not _DONE, "producer ended before the last step"
        self.step += 1
        return batch

    def close(self) -> None:
        """Stop the prefetch thread (if any) and wait for it; idempotent."""
        self._closed = True
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # A consumer that just drops the iterator must not leave the thread polling forever.
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
