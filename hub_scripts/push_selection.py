"""Publish the teachers of a selection directory to the Hugging Face Hub, with model cards.

Usage::

    python hub_scripts/push_selection.py runs/teacher/selection --repo_id alice/fmnist-teacher \
        [--as_revisions] [--private] [--dataset fashion_mnist] [--json]

A selection directory is what `hf-ckptkd select` writes (selection.json, table.md,
information_plane.png); its chosen snapshots are found through `selection.json`. One teacher goes
to `--repo_id`; an ensemble to `<repo_id>-<snapshot name>` per member, or with `--as_revisions`
to `--repo_id` with one tag per member. Pushing again without changes makes no new commit.

The token is read by huggingface_hub from `HF_TOKEN` or `hf auth login` (prefer those to
`--token`, which other users can see in the process list). `HF_ENDPOINT` selects another Hub.
Prints one line per member (`--json`: one JSON object per line) and the `hf-ckptkd distill`
references to use.
"""

import argparse
import json
import sys

from hf_ckptkd.hub import HubError, push_teachers_to_hub
from hf_ckptkd.snapshots import SnapshotError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("selection_dir", help="A selection directory (holding selection.json).")
    parser.add_argument("--repo_id", required=True, help="OWNER/NAME")
    parser.add_argument("--as_revisions", action="store_true", help="One repo, one tag per member.")
    parser.add_argument("--private", action="store_true", help="Create new repos private.")
    parser.add_argument("--dataset", default=None, help="The run's dataset, for the card (e.g. fashion_mnist).")
    parser.add_argument("--token", default=None, help="A write token (default: HF_TOKEN / hf auth login).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object per pushed member.")
    args = parser.parse_args(argv)
    try:
        pushed = push_teachers_to_hub(args.selection_dir, args.repo_id, as_revisions=args.as_revisions,
                                      private=args.private, dataset=args.dataset, token=args.token)
    except (HubError, SnapshotError, FileNotFoundError) as e:
        print(f"push_selection: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ValueError, SnapshotError, FileNotFoundError)) else 1
    for p in pushed:
        if args.json:
            print(json.dumps({"name": p.name, "repo_id": p.repo_id, "revision": p.revision, "commit": p.commit,
                              "url": p.url, "created": p.created, "reference": p.reference}))
        else:
            print(f"{p.name}: {p.url} tag {p.revision} commit {p.commit} ({'new' if p.created else 'unchanged'})")
    if pushed and not args.json:
        print("distil with: hf-ckptkd distill --teachers " + " ".join(p.reference for p in pushed) + " ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
