"""Ending a process started by `accelerate launch` (torchrun) without an abort at exit.

With the gloo backend (CPU processes) a worker thread of torch's process group may still be
freeing a gathered tensor when the interpreter shuts down; it then needs the GIL, cannot have it,
and the process aborts (SIGABRT, "terminate called without an active exception") after a run that
succeeded, so torchrun reports it failed. `destroy_process_group` does not stop those threads while
`Trainer`'s DDP model still holds the group. A gloo process therefore leaves with `os._exit` once
its output is flushed, skipping the interpreter's teardown.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import torch.distributed as dist


def exit_launched_process(code: int = 0) -> NoReturn:
    """End a script (`exit_launched_process()` as its last line); any process, launched or not.

    After success the process group is destroyed first. After a failure it is left alone: the
    other ranks may still wait in a collective, and destroying it would wait with them.
    """
    initialized = dist.is_available() and dist.is_initialized()
    gloo = initialized and dist.get_backend() == "gloo"
    if code == 0 and initialized:
        dist.destroy_process_group()
    if not gloo:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
