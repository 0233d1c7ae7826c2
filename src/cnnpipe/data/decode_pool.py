"""Image files read on every core, a bounded number of batches at a time, in order.

`pull` checks every header, then decodes the images batch by batch into the store: a batch holds at most
BATCH_BYTES of pixels and at most IN_FLIGHT batches per process are decoded or waiting, so memory stays flat
however many images a folder holds. Results come back in file order, so the store, and the first bad file named
in an error, do not depend on the number of processes.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from cnnpipe.console import console
from cnnpipe.data.decode import GREYSCALE_MODES, decode, read_mode
from cnnpipe.data.store import Batch, channel_histogram
from cnnpipe.errors import CnnpipeError

BATCH_BYTES = 8 << 20  # decoded pixels per batch at most
BATCH_IMAGES = 256  # and images per batch at most: small images still give every process work
HEADER_BATCH = 256  # files per batch of header checks
IN_FLIGHT = 2  # batches per process submitted ahead of the one being written


class _Rate(ProgressColumn):
    def render(self, task: Any) -> Text:
        return Text(f"{task.speed or 0:,.0f} images/s")


def _greyscale(task: tuple[list[str], int, str]) -> bool:
    """Checks the headers of a batch of files; True when every one is greyscale."""
    paths, max_pixels, key = task
    return all(read_mode(path, max_pixels, key) in GREYSCALE_MODES for path in paths)


def _decoded(task: tuple[list[str], int, tuple[int, int] | None, int, str, tuple[int, int, int], bool]) -> Batch:
    """A batch of files as uint8 [n, H, W, C], with its channel histogram when `histogram`; an image of another
    size than `shape` is refused by name."""
    paths, channels, size, max_pixels, key, shape, histogram = task
    out = np.empty((len(paths), *shape), dtype=np.uint8)
    for index, path in enumerate(paths):
        image = decode(path, channels, size, max_pixels, key)
        if image.shape != shape:
            raise CnnpipeError(
                f"data.image_size: images differ in size ({path} is {image.shape[0]}x{image.shape[1]}, others "
                f"{shape[0]}x{shape[1]}, H x W); set data.image_size: [H, W] to resize them"
            )
        out[index] = image
    return out, channel_histogram(out) if histogram else None


class DecodePool:
    """A pool of `workers` processes (default: every core this process may run on, as taskset or SLURM allow)
    that checks headers and decodes images."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or len(os.sched_getaffinity(0))
        self._pool: Any = None

    def __enter__(self) -> DecodePool:
        self._pool = ProcessPoolExecutor(self.workers)  # unlike multiprocessing.Pool, a killed worker is an error
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(cancel_futures=True)  # after a failed batch the queued ones are pointless

    def _ordered(self, function: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """`function` of every task, in order, with at most IN_FLIGHT tasks per process submitted ahead."""
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(self._pool.submit(function, task))
                if len(pending) > IN_FLIGHT * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise CnnpipeError(
                f"data.workers: a process decoding images was killed (out of memory?) with data.workers "
                f"{self.workers}; lower data.workers or data.image_size, or give pull more memory"
            ) from None

    def _progress(self, description: str) -> Progress:
        columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn())
        return Progress(*columns, console=console, transient=True)

    def all_greyscale(self, paths: Sequence[str], max_pixels: int, key: str) -> bool:
        """Checks every file's header (size, mode) before anything is decoded: a bad file is refused in seconds,
        not after minutes of decoding. True when every image is greyscale."""
        batches = [paths[start : start + HEADER_BATCH] for start in range(0, len(paths), HEADER_BATCH)]
        greyscale = True
        with self._progress("Checking headers") as progress:
            bar = progress.add_task("", total=len(paths))
            tasks = ((batch, max_pixels, key) for batch in batches)
            for batch, grey in zip(batches, self._ordered(_greyscale, tasks), strict=True):
                greyscale &= grey
                progress.advance(bar, len(batch))
        return greyscale

    def images(
        self,
        paths: Sequence[str],
        channels: int,
        size: tuple[int, int] | None,
        shape: tuple[int, int, int],
        limits: tuple[int, str],
        description: str,
        histograms: bool,
    ) -> Iterator[Batch]:
        """The images of `paths` as uint8 batches [n, H, W, C] in order, each of `shape` (H, W, C), with their
        channel histograms when `histograms` (taken here, on every core); `limits` is
        (data.limits.max_image_pixels, the key errors name)."""
        per_batch = max(1, min(BATCH_IMAGES, BATCH_BYTES // int(np.prod(shape))))
        batches = [list(paths[start : start + per_batch]) for start in range(0, len(paths), per_batch)]
        tasks = ((batch, channels, size, *limits, shape, histograms) for batch in batches)
        started = time.perf_counter()
        with self._progress(description) as progress:
            bar = progress.add_task("", total=len(paths))
            for batch in self._ordered(_decoded, tasks):
                yield batch
                progress.advance(bar, len(batch[0]))
        seconds = time.perf_counter() - started
        rate = len(paths) / seconds if seconds else 0
        console.print(f"{description}: {len(paths):,} images, {seconds:.1f} s, {rate:,.0f}/s, {self.workers} processes")
