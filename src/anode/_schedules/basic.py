"""The two schedules of the ANODE paper's cost model: keep every state, or only the input."""

from __future__ import annotations

from .base import Schedule


class Store(Schedule):
    """Keep all ``N_t`` step-start states in the forward; the backward recomputes nothing.

    Memory between forward and backward: ``N_t`` states per block. Time: F + (F + B) for the
    backward's rebuild of each step's graph. Prefer it when memory is plentiful.
    """

    name = "store"
    forward_needs_length = False

    def keeps(self, j: int, n_steps: int) -> bool:
        return True

    def reversed_states(self, kept, n_steps, advance):
        for j in range(n_steps - 1, -1, -1):
            yield j, kept.pop(j)

    def recomputed_steps(self, n_steps: int) -> int:
        return 0

    def peak_states(self, n_steps: int) -> int:
        return n_steps


class Recompute(Schedule):
    """Keep only the block input; the backward recomputes all states, then walks back.

    The ANODE paper's scheme (Gholami, Keutzer, Biros, IJCAI 2019, §3 and Fig. 2): memory
    between forward and backward is one state per block, O(L) for L blocks; the backward of
    one block holds its ``N_t`` states plus one step's graph, O(N_t). Time: about 3F + B.
    """

    name = "recompute"
    forward_needs_length = False

    def keeps(self, j: int, n_steps: int) -> bool:
        return j == 0

    def reversed_states(self, kept, n_steps, advance):
        y0 = kept.pop(0)
        # The recomputed states go into one buffer per state component, allocated and
        # freed at once: states allocated one by one between each step's temporaries
        # fragment the CPU heap, and glibc's malloc then keeps up to twice the live memory.
        buffers = tuple(y.new_empty((n_steps - 1, *y.shape)) for y in y0)
        y = y0
        for j in range(n_steps - 1):
            y = tuple(b[j].copy_(v) for b, v in zip(buffers, advance(j, y)))
        del y
        for j in range(n_steps - 1, 0, -1):
            yield j, tuple(b[j - 1] for b in buffers)
        del buffers
        yield 0, y0

    def recomputed_steps(self, n_steps: int) -> int:
        return n_steps - 1

    def peak_states(self, n_steps: int) -> int:
        return n_steps
