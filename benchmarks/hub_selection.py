"""Selection among a Hub repo's revisions: seconds per revision, the share spent downloading, and a warm cache.

    OMP_NUM_THREADS=1 python benchmarks/hub_selection.py [--model timm:cifar_resnet20] [--revisions 10]
                                                          [--probe_samples 1000]

A local Hub-compatible server (tests/hubserver.py, in this process) holds a repo with `--revisions`
branches `step<N>` of the demo's teacher, as a third-party training run publishes them: config and
safetensors weights (and an optimizer state that selection must not download), each branch a few
SGD steps on Fashion-MNIST after the last. Then, each time from the first request:

1. cold: `select_teachers(repo, probe, revisions="step*")` with an empty Hub cache;
2. download only: listing the refs and downloading every revision's files, with another empty cache
   (what the cold selection spent on the Hub);
3. warm: the same selection again with the cache of step 1, counting the files it downloads.

Figures: seconds per revision (cold), the share of the cold time spent downloading (2 / 1), and the
files downloaded by the warm call (goal 0). The server is local, so downloads run at loopback speed:
over the internet, and with a larger model, the download share is larger.
"""

from __future__ import annotations

import argparse
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
from huggingface_hub import HfApi, constants  # noqa: E402

from hf_ckptkd import select_teachers  # noqa: E402
from hf_ckptkd.data import (  # noqa: E402
    ImageTransformConfig,
    build_image_transform,
    label_names,
    load_fashion_mnist,
)
from hf_ckptkd.hub import hub_revisions  # noqa: E402
from hf_ckptkd.models.folders import save_model  # noqa: E402
from hf_ckptkd.models import build_model  # noqa: E402


def use_cache(folder: str) -> None:
    """Point every later download at `folder` (the client reads this constant at each call)."""
    constants.HF_HUB_CACHE = constants.HUGGINGFACE_HUB_CACHE = folder


def publish(repo: str, model_spec: str, n: int, steps_between: int) -> None:
    api = HfApi(token="hf_bench")
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
            folder = Path(tmp) / f"step{i * steps_between}"
            save_model(model.eval(), folder)
            (folder / "optimizer.pt").write_bytes(os.urandom(1 << 20))  # not needed to load
            api.create_branch(repo, branch=folder.name)
            api.upload_folder(repo_id=repo, folder_path=str(folder), revision=folder.name)


def resolves(since: int) -> list[str]:
    return [p for method, p, _ in SERVER.requests[since:] if method == "GET" and "/resolve/" in p]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:cifar_resnet20")
    parser.add_argument("--revisions", type=int, default=10)
    parser.add_argument("--steps_between", type=int, default=2, help="SGD steps between two revisions")
    parser.add_argument("--probe_samples", type=int, default=1000)
    args = parser.parse_args()
    repo = "bench/teacher-run"
    t0 = time.perf_counter()
    publish(repo, args.model, args.revisions, args.steps_between)
    publish_s = time.perf_counter() - t0
    probe = load_fashion_mnist("train", limit=4 * args.probe_samples)

    def select():
        return select_teachers(repo, probe, revisions="step*", max_probe_samples=args.probe_samples, progress=False)

    use_cache(tempfile.mkdtemp(prefix="cold-"))
    cold_cache = constants.HF_HUB_CACHE
    since = len(SERVER.requests)
    t0 = time.perf_counter()
    report = select()
    cold_s = time.perf_counter() - t0
    cold_files = len(resolves(since))

    use_cache(tempfile.mkdtemp(prefix="download-"))
    t0 = time.perf_counter()
    for revision in hub_revisions(repo, "step*"):
        revision.download()
    download_s = time.perf_counter() - t0

    use_cache(cold_cache)
    since = len(SERVER.requests)
    t0 = time.perf_counter()
    warm = select()
    warm_s = time.perf_counter() - t0
    warm_files, warm_requests = len(resolves(since)), len(SERVER.requests) - since

    n = len(report.scores)
    weights_mb = sum(f.stat().st_size for f in Path(cold_cache).rglob("*.safetensors")) / 2**20
    print(f"device: {report.extra['device']} ({torch.get_num_threads()} threads; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); {args.model}, {n} revisions "
          f"({weights_mb:.1f} MiB of weights in all), probe {report.probe_size} examples; "
          f"publishing took {publish_s:.1f} s; local server {SERVER.url}")
    print(f"cold selection:      {cold_s:7.2f} s  = {cold_s / n:.2f} s per revision  ({cold_files} files downloaded)")
    print(f"  of which forward passes {report.extra['timing_s']['forward']:.2f} s (load + run), probe "
          f"{report.extra['timing_s']['probe']:.2f} s, scoring {report.extra['timing_s']['scoring']:.2f} s")
    print(f"download only:       {download_s:7.2f} s  = share of the cold selection {download_s / cold_s:.3f}")
    print(f"warm selection:      {warm_s:7.2f} s  = {warm_s / n:.2f} s per revision  ({warm_files} files downloaded, "
          f"{warm_requests} request(s) in all: listing the refs)   goal 0 files: {'PASS' if warm_files == 0 else 'MISS'}")
    print(f"chosen: {', '.join(report.selected)} (warm call: {', '.join(warm.selected)})")
    SERVER.stop()


if __name__ == "__main__":
    main()
