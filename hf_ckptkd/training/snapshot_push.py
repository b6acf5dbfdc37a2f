"""Snapshots pushed to the Hub while training: `SnapshotPusher`, which `SnapshotCallback(push_to_hub=...)` drives.

Each snapshot goes to one repo as a commit on `main` tagged with its name (`epoch-0006`): the layout
`push_teachers_to_hub(..., as_revisions=True)` makes, with a model card per snapshot, so
`select_teachers("owner/name", probe, revisions="epoch-*")` finds them and `owner/name@epoch-0006`
loads one. What makes that safe during a long run:

- the token's write access to the repo is checked, and the repo created, when the pusher is made,
  that is before training starts (`check`), not at the first snapshot;
- uploads run in one background thread, in the order the snapshots were written, so a training step
  never waits for one; `wait()` (at the end of training) returns once the last is on the Hub;
- a transient Hub error (unreachable, a 5xx, a concurrent push) is retried with doubling waits, up to
  `PUSH_ATTEMPTS` tries; a refused token is not retried;
- a snapshot is never pushed twice: when its tag already holds a `snapshot.json` with the same
  weight SHA-256 (and the same `final` flag), nothing is sent, so a restarted run pushes only what
  the killed one had not;
- its files are hard-linked into a staging folder when it is submitted (a temporary folder of the
  snapshot dir, which `snapshots.folders.remove_partial_snapshots` clears after a kill), so keep-top pruning
  may delete the local copy before the upload is done.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from ..files import TEMP_PREFIX
from ..hub import HubError, HubInputError, HubUnavailableError, is_main_process, push_teachers_to_hub
from ..hub.errors import endpoint, push_errors
from ..hub.push import check_write_access
from ..hub.sources import check_repo_id
from ..snapshots.folders import METADATA_NAME, Snapshot

logger = logging.getLogger(__name__)

PUSH_ATTEMPTS = 4
FIRST_RETRY_S = 2.0  # then 4 s, 8 s: about 14 s of waiting in all, beside the client's own retries


class SnapshotPusher:
    """Pushes snapshots to `repo_id` in the background (see the module docstring).

    `token` is a write token (None: `HF_TOKEN` or `hf auth login`); `private` makes a new repo private.
    Made on the main process, it checks the token and creates the repo at once (`HubInputError`
    when the token cannot write there); on other processes it does nothing.
    """

    def __init__(self, repo_id: str, *, token: str | None = None, private: bool = False):
        check_repo_id(repo_id)
        self.repo_id, self.token, self.private = repo_id, token, bool(private)
        self._executor: ThreadPoolExecutor | None = None
        self._pushes: list[tuple[str, Future]] = []
        if is_main_process():
            self.check()

    def check(self) -> None:
        """Refuse a token that cannot write `repo_id`, and create the repo (idempotent)."""
        api = HfApi(token=self.token)
        check_write_access(api, [self.repo_id])
        with push_errors(self.repo_id):
            api.create_repo(self.repo_id, private=self.private, exist_ok=True)

    def submit(self, snapshot: Snapshot) -> None:
        """Queue `snapshot` for upload; returns at once (its files are staged first, by hard links)."""
        staged = _stage(snapshot)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-push")
        self._pushes.append((snapshot.name, self._executor.submit(self._push, staged)))

    def wait(self) -> list[str]:
        """Wait for every queued upload; the names of the snapshots this pusher sent. A push that still
        failed after its retries raises `HubError` here (after the others have finished)."""
        pushes, self._pushes = self._pushes, []
        sent, failed = [], []
        for name, push in pushes:
            try:
                if push.result():
                    sent.append(name)
            except HubError as e:
                failed.append(e)
        if failed:
            raise failed[0]
        return sent

    def _push(self, staged: Path) -> bool:
        """Push one staged snapshot unless the Hub already holds its weights; True if it was sent."""
        try:
            snapshot = Snapshot.read(staged)
            for attempt in range(1, PUSH_ATTEMPTS + 1):
                try:
                    if self._on_the_hub(snapshot):
                        logger.info("snapshot %s is already on the Hub as %s@%s: not pushed again", snapshot.name,
                                    self.repo_id, snapshot.name)
                        return False
                    push_teachers_to_hub(snapshot, self.repo_id, as_revisions=True, token=self.token)
                    logger.info("snapshot %s pushed to %s@%s", snapshot.name, self.repo_id, snapshot.name)
                    return True
                except HubInputError:
                    raise
                except HubError as e:
                    if attempt == PUSH_ATTEMPTS:
                        raise HubError(
                            f"pushing snapshot {snapshot.name} to {self.repo_id} failed {attempt} times (last: {e}); "
                            f"the snapshot is on disk unless keep_top removed it: push it with `hf-ckptkd push "
                            f"<snapshot_dir> --repo_id {self.repo_id} --as_revisions --names {snapshot.name}`") from e
                    wait = FIRST_RETRY_S * 2 ** (attempt - 1)
                    logger.warning("pushing snapshot %s to %s failed (%s); retrying in %.0f s (try %d of %d)",
                                   snapshot.name, self.repo_id, e, wait, attempt + 1, PUSH_ATTEMPTS)
                    time.sleep(wait)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _on_the_hub(self, snapshot: Snapshot) -> bool:
        """Whether the repo's tag `snapshot.name` holds a snapshot.json with the same weight SHA-256 and `final` flag."""
        api = HfApi(token=self.token)
        with push_errors(self.repo_id):
            tags = {t.name: t.target_commit for t in api.list_repo_refs(self.repo_id).tags}
            if snapshot.name not in tags:
                return False
            try:
                remote = hf_hub_download(self.repo_id, METADATA_NAME, revision=tags[snapshot.name], token=self.token)
            except EntryNotFoundError:  # a tag of that name made by something else
                return False
            except LocalEntryNotFoundError:
                raise HubUnavailableError(f"could not reach the Hub at {endpoint()} to check {self.repo_id}@"
                                          f"{snapshot.name}") from None
        pushed = json.loads(Path(remote).read_text())
        return pushed.get("sha256") == snapshot.sha256 and bool(pushed.get("final")) == bool(snapshot.final)


def _stage(snapshot: Snapshot) -> Path:
    """A temporary copy of the snapshot folder beside it, made of hard links (a copy where links fail)."""
    staged = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}push-{snapshot.name}-", dir=snapshot.path.parent))
    for source in snapshot.path.rglob("*"):
        target = staged / source.relative_to(snapshot.path)
        if source.is_dir():
            target.mkdir(exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return staged


__all__ = ["FIRST_RETRY_S", "PUSH_ATTEMPTS", "SnapshotPusher"]
