"""Progress bars (tqdm, on stderr) for training epochs and evaluations."""

from __future__ import annotations

import sys
import time

import torch

__all__ = ["Progress", "say"]


def say(message: str) -> None:
    """Print one line on stderr without breaking a progress bar that is being drawn."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(message, file=sys.stderr)
        return
    tqdm.write(message, file=sys.stderr)


class Progress:
    """A tqdm bar over the batches of one pass, showing running loss, accuracy and images/s.

    Disabled (every method a no-op) when ``enabled`` is false, e.g. on ranks other than 0
    or with ``--no-progress``.

    Args:
        enabled: show the bar.
        total: number of batches of the pass.
        desc: the bar's label (e.g. ``"epoch 2/3"``, ``"test"``).
        leave: keep the finished bar on the screen.
    """

    def __init__(self, enabled: bool, total: int, desc: str, leave: bool = True) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr, leave=leave
            )
        self.last = 0.0

    def update(self, sums: torch.Tensor, images: int, elapsed: float, final: bool = False) -> None:
        """Advance one batch (or, with ``final``, only refresh the numbers).

        Args:
            sums: float64 ``[3]``: summed loss (nats), number correct, number of examples so
                far.
            images: examples processed so far (of all processes), for the rate.
            elapsed: seconds since the pass started.
            final: refresh the numbers without advancing.
        """
        if self.bar is None:
            return
        if not final:
            self.bar.update(1)
        now = time.perf_counter()
        # Reading the running sums synchronises a GPU; do it a few times per second only.
        if final or now - self.last > 0.5:
            self.last = now
            loss, correct, n = sums.tolist()
            self.bar.set_postfix(
                loss=f"{loss / max(n, 1):.4f}",
                acc=f"{100 * correct / max(n, 1):.2f}%",
                img_s=f"{images / max(elapsed, 1e-9):.0f}",
                refresh=final,
            )

    def close(self) -> None:
        """Finish the bar (a no-op when disabled)."""
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
