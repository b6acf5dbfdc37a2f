"""Selection among a Hub repo's checkpoints: seconds per candidate, the share spent downloading, the bytes
downloaded against the checkpoints' size, and a warm cache; for branches and for Trainer's folders.

    OMP_NUM_THREADS=1 python benchmarks/hub_selection.py [--model timm:cifar_resnet20] [--checkpoints 10]
                                                          [--probe_samples 1000] [--cases revisions subfolders]

A local Hub-compatible server (tests/hubserver.py, in this process) holds `--checkpoints` checkpoints
of the demo's teacher (each a few SGD steps on Fashion-MNIST after the last), published two ways:

- revisions: one branch `step<N>` per checkpoint, as a third-party run publishes them: config and
  safetensors weights, and an optimizer state that selection must not download;
- subfolders: one folder `checkpoint-<N>/` per checkpoint on main, laid out as
  `Trainer(push_to_hub=True, hub_strategy="all_checkpoints")` uploads them: config, safetensors
  weights and `trainer_state.json` (step, epoch, the evaluation at that step) beside what only
  resuming needs: `optimizer.pt` (Adam's two moments: twice the weights), `scheduler.pt`,
  `rng_state.pth`, `training_args.bin`.

For each case, each time from the first request:
1. cold: `select_teachers(repo, probe, revisions="step*" | subfolders="checkpoint-*")`, empty cache;
2. download only: listing and downloading every candidate's files, with another empty cache (what
   the cold selection spent on the Hub);
3. warm: the same selection again with the cache of step 1, counting the files it downloads.

Figures: seconds per candidate (cold), the share of the cold time spent downloading (2 / 1), the
bytes downloaded in 1 against the total size of the checkpoints' files on the Hub, and the files
downloaded by the warm call (goal 0). The server is local, so downloads run at loopback speed:
over the internet, and with a larger model, the download share is larger.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from hubserver import HubServer  # noqa: E402  (standard library only)

# The endpoint and cache are fixed when huggingface_hub is imported: set them first.
SERVER = HubServer(tokens={"hf_bench": ("bench", "write")}).start()
os.environ.update(HF_ENDPOINT=SERVER.url, HF_HOME=tempfile.mkdtemp(prefix="hub-bench-"), HF_HUB_DISABLE_XET="1",
                  HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
    os.environ.pop(var, None)

import torch  # noqa: E402
from huggingface_hub import HfApi, RepoFile, constants  # noqa: E402

from hf_ckptkd import select_teachers  # noqa: E402
from hf_ckptkd.data import (  # noqa: E402
    ImageTransformConfig,
    build_image_transform,
    label_names,
    load_fashion_mnist,
)
from hf_ckptkd.hub import hub_candidates  # noqa: E402
from hf_ckptkd.models.folders import save_model  # noqa: E402
from hf_ckptkd.models import build_model  # noqa: E402

REQUESTS = {"revisions": "step*", "subfolders": "checkpoint-*"}


def use_cache(folder: str) -> None:
    """Point every later download at `folder` (the client reads this constant at each call)."""
    constants.HF_HUB_CACHE = constants.HUGGINGFACE_HUB_CACHE = folder


def _trainer_state(step: int, epoch: float, accuracy: float) -> bytes:
    return json.dumps({"global_step": step, "epoch": epoch, "log_history": [
        {"step": step, "epoch": epoch, "eval_accuracy": accuracy, "eval_loss": 2.0 - accuracy}]}).encode()


def _resume_state(folder: Path, weights_bytes: int) -> None:
    """What a Trainer checkpoint holds for resuming only, at its usual sizes."""
    (folder / "optimizer.pt").write_bytes(os.urandom(2 * weights_bytes))
    buffer = io.BytesIO()
    torch.save({"last_epoch": 1, "_step_count": 2, "base_lrs": [0.05]}, buffer)
    (folder / "scheduler.pt").write_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    torch.save({"python": list(range(625)), "numpy": list(range(625)), "cpu": torch.get_rng_state()}, buffer)
    (folder / "rng_state.pth").write_bytes(buffer.getvalue())
    (folder / "training_args.bin").write_bytes(os.urandom(6 << 10))


def publish(model_spec: str, n: int, steps_between: int) -> dict[str, str]:
    """The same n checkpoints published as branches of one repo and as folders of another."""
    api = HfApi(token="hf_bench")
    repos = {"revisions": "bench/teacher-run", "subfolders": "bench/trainer-run"}
    for repo in repos.values():
        api.create_repo(repo)
    raw = load_fashion_mnist("train", limit=512)
    transform = build_image_transform(ImageTransformConfig(), train=False)
    images, labels = torch.stack([transform(im) for im in raw["image"]]), torch.tensor(raw["label"])
    torch.manual_seed(0)
    model = build_model(model_spec, 10, label_names=label_names(raw))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            model.train()
            for s in range(steps_between):
                batch = slice(64 * (s % 8), 64 * (s % 8 + 1))
                loss = model(pixel_values=images[batch], labels=labels[batch]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            step = i * steps_between
            branch = Path(tmp) / f"step{step}"
            save_model(model.eval(), branch)
            weights_bytes = (branch / "model.safetensors").stat().st_size
            (branch / "optimizer.pt").write_bytes(os.urandom(1 << 20))  # not needed to load
            api.create_branch(repos["revisions"], branch=branch.name)
            api.upload_folder(repo_id=repos["revisions"], folder_path=str(branch), revision=branch.name)
            folder = Path(tmp) / f"checkpoint-{step}"
            save_model(model, folder)
            _resume_state(folder, weights_bytes)
            (folder / "trainer_state.json").write_bytes(_trainer_state(step, step / 8, 0.1 + i / (2 * n)))
            api.upload_folder(repo_id=repos["subfolders"], folder_path=str(folder), path_in_repo=folder.name,
                              commit_message=f"Training in progress, step {step}, checkpoint")
    return repos


def resolves(since: int) -> list[str]:
    return [p for method, p, _ in SERVER.requests[since:] if method == "GET" and "/resolve/" in p]


def _bytes_in(cache: str) -> int:
    return sum(f.stat().st_size for f in Path(cache).rglob("blobs/*") if f.is_file())


def _checkpoints_bytes(repo: str, case: str) -> int:
    """The size of every file of the checkpoints on the Hub (all branches' files, or all folders' files)."""
    api = HfApi()
    if case == "subfolders":
        return sum(e.size for e in api.list_repo_tree(repo, recursive=True)
                   if isinstance(e, RepoFile) and e.path.startswith("checkpoint-"))
    branches = [b.name for b in api.list_repo_refs(repo).branches if b.name != "main"]
    return sum(e.size for b in branches for e in api.list_repo_tree(repo, revision=b, recursive=True)
               if isinstance(e, RepoFile) and not e.path.startswith("."))


def measure(case: str, repo: str, probe, probe_samples: int) -> None:
    request = {case: REQUESTS[case]}

    def select():
        return select_teachers(repo, probe, **request, max_probe_samples=probe_samples, progress=False)

    use_cache(tempfile.mkdtemp(prefix="cold-"))
    cold_cache = constants.HF_HUB_CACHE
    since = len(SERVER.requests)
    t0 = time.perf_counter()
    report = select()
    cold_s = time.perf_counter() - t0
    cold_files, downloaded = len(resolves(since)), _bytes_in(cold_cache)

    use_cache(tempfile.mkdtemp(prefix="download-"))
    t0 = time.perf_counter()
    for candidate in hub_candidates(repo, **request):
        candidate.download()
    download_s = time.perf_counter() - t0

    use_cache(cold_cache)
    since = len(SERVER.requests)
    t0 = time.perf_counter()
    warm = select()
    warm_s = time.perf_counter() - t0
    warm_files, warm_requests = len(resolves(since)), len(SERVER.requests) - since

    n, total = len(report.scores), _checkpoints_bytes(repo, case)
    timing = report.extra["timing_s"]
    print(f"{case} ({repo}, {request[case]!r}): {n} candidates, probe {report.probe_size} examples")
    print(f"  cold selection:   {cold_s:7.2f} s  = {cold_s / n:.2f} s per candidate  ({cold_files} files downloaded)")
    print(f"    of which forward passes {timing['forward']:.2f} s (load + run), probe {timing['probe']:.2f} s, "
          f"scoring {timing['scoring']:.2f} s")
    print(f"  download only:    {download_s:7.2f} s  = share of the cold selection {download_s / cold_s:.3f}")
    print(f"  bytes downloaded: {downloaded / 2**20:7.2f} MiB of the checkpoints' {total / 2**20:.2f} MiB on the Hub "
          f"= {downloaded / total:.3f}")
    print(f"  warm selection:   {warm_s:7.2f} s  = {warm_s / n:.2f} s per candidate  ({warm_files} files downloaded, "
          f"{warm_requests} request(s) in all: listings)   goal 0 files: {'PASS' if warm_files == 0 else 'MISS'}")
    print(f"  chosen: {', '.join(report.selected)} (warm call: {', '.join(warm.selected)})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:cifar_resnet20")
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--steps_between", type=int, default=2, help="SGD steps between two checkpoints")
    parser.add_argument("--probe_samples", type=int, default=1000)
    parser.add_argument("--cases", nargs="+", default=list(REQUESTS), choices=list(REQUESTS))
    args = parser.parse_args()
    t0 = time.perf_counter()
    repos = publish(args.model, args.checkpoints, args.steps_between)
    publish_s = time.perf_counter() - t0
    probe = load_fashion_mnist("train", limit=4 * args.probe_samples)
    print(f"{torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"{args.model}, {args.checkpoints} checkpoints published two ways in {publish_s:.1f} s; local server "
          f"{SERVER.url}")
    for case in args.cases:
        measure(case, repos[case], probe, args.probe_samples)
    SERVER.stop()


if __name__ == "__main__":
    main()
