"""List the teacher repos and revisions of a run on the Hub, with the metrics their cards record.

Usage::

    python hub_scripts/list_teachers.py --author alice [--search fmnist-teacher] [--json]
    python hub_scripts/list_teachers.py --repo_id alice/fmnist-teacher [--repo_id ...] [--json]

With `--author` it searches the author's model repos tagged `checkpoint-kd` whose id contains
`--search` (`HfApi.list_models(author=, search=, filter="checkpoint-kd")`); with `--repo_id` it
reads the given repos. For each repo it lists `main` and every tag, reading the model card at that
revision: the `checkpoint_kd` metadata block hf-ckptkd writes (snapshot, epoch, evaluation
metrics, selection scores). Needs only huggingface_hub; `HF_ENDPOINT` and `HF_TOKEN` work as usual.
"""

import argparse
import json
import sys

from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

SCORES = ("rank", "i_xf", "i_yf", "i_xp", "i_yp", "j")


def list_teachers(api: HfApi, repo_ids: list[str]) -> list[dict]:
    """One row per repo revision (`main` and each tag) whose card has hf-ckptkd's metadata."""
    rows = []
    for repo_id in repo_ids:
        refs = api.list_repo_refs(repo_id)
        revisions = [(b.name, b.target_commit) for b in refs.branches if b.name == "main"]
        revisions += [(t.name, t.target_commit) for t in refs.tags]
        for revision, commit in revisions:
            try:
                card = ModelCard.load(hf_hub_download(repo_id, "README.md", revision=commit))
            except EntryNotFoundError:
                continue
            meta = card.data.to_dict().get("checkpoint_kd")
            if not meta:
                continue
            selection = meta.get("selection") or {}
            rows.append({"reference": f"{repo_id}@{revision}", "repo_id": repo_id, "revision": revision,
                         "commit": commit, "snapshot": meta.get("snapshot"), "run": meta.get("run"),
                         "epoch": meta.get("epoch"), "family": meta.get("family"),
                         "eval_metrics": meta.get("eval_metrics") or {},
                         "scores": {k: selection[k] for k in SCORES if k in selection}})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--author", help="The owner whose checkpoint-kd repos to list.")
    parser.add_argument("--search", default=None, help="Only repos whose id contains this (e.g. a run's prefix).")
    parser.add_argument("--repo_id", action="append", default=None, help="A repo to list (repeatable).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object per revision.")
    args = parser.parse_args(argv)
    if not args.author and not args.repo_id:
        parser.error("give --author (optionally with --search) or --repo_id")
    api = HfApi()
    try:
        repo_ids = list(args.repo_id or [])
        if args.author:
            repo_ids += [m.id for m in api.list_models(author=args.author, search=args.search, filter="checkpoint-kd")]
        rows = list_teachers(api, list(dict.fromkeys(repo_ids)))
    except HfHubHTTPError as e:
        print(f"list_teachers: {e}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'reference':<60} {'snapshot':<12} {'epoch':>6} {'eval acc':>9} {'J':>7} {'rank':>5}  commit")
    for row in rows:
        acc = row["eval_metrics"].get("eval_accuracy")
        j, rank = row["scores"].get("j"), row["scores"].get("rank")
        print(f"{row['reference']:<60} {row['snapshot'] or '-':<12} {row['epoch'] if row['epoch'] is not None else '-':>6} "
              f"{f'{acc:.4f}' if acc is not None else '-':>9} {f'{j:.3f}' if j is not None else '-':>7} "
              f"{rank if rank is not None else '-':>5}  {row['commit'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
