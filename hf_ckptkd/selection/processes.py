"""Selection under `accelerate launch`: each process runs its share of the candidates, the main
process scores them all, and every process returns the same report.

Running the models over the probe is what costs (one forward pass per candidate, after a
download for Hub revisions); estimating the information terms and searching ensembles needs every
candidate's features together and is cheap beside it. So the candidates are split into contiguous
shares in training order (`PartialState.split_between_processes`), each process's results are
gathered in rank order (which restores training order), the main process makes the choice, and the
report is broadcast so that `select_teachers` returns the same object everywhere. With one process
every function here is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

from ..config import launched_distributed_without_accelerator

T = TypeVar("T")


def selection_state() -> PartialState:
    """Accelerate's process state: a plain single process unless the script was launched with several
    (CPU processes on a machine without an accelerator, as `accelerate launch --multi_gpu` starts there)."""
    return PartialState(cpu=launched_distributed_without_accelerator())


def share_of(items: list[T], state: PartialState) -> list[T]:
    """This process's contiguous share of `items` (all of them with one process)."""
    if state.num_processes == 1:
        return list(items)
    with state.split_between_processes(list(items)) as mine:
        return list(mine)


def gather_in_order(mine: list[T], state: PartialState, to_cpu: Callable[[T], T]) -> list[T]:
    """Every process's results, concatenated in rank order, on every process.

    Tensors travel pickled between processes, so `to_cpu` first moves them off the accelerator
    (a CUDA tensor would otherwise be unpickled onto the sender's device).
    """
    if state.num_processes == 1:
        return mine
    return list(gather_object([to_cpu(item) for item in mine]))


def from_main(make: Callable[[], Any], state: PartialState) -> Any:
    """`make()` run on the main process only, its result handed to every process."""
    if state.num_processes == 1:
        return make()
    box = [make() if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def process_device(state: PartialState, requested: str | torch.device | None, default: torch.device) -> torch.device:
    """Where this process runs its models: the requested device, else the process's own accelerator
    when launched with several (each its own GPU), else `default`."""
    if requested is not None:
        return torch.device(requested)
    return state.device if state.num_processes > 1 else default


__all__ = ["from_main", "gather_in_order", "process_device", "selection_state", "share_of"]
