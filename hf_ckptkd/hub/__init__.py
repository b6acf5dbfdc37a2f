"""Publish teacher snapshots to the Hugging Face Hub, and load teachers back from it.

`push_teachers_to_hub(source, repo_id, ...)` (`push.py`) uploads snapshot folders (each already a
Hub-ready model repo in its family's own format, plus `snapshot.json`, and a text teacher's
tokenizer) with a model card (`card.py`, rendered from `card_template.md`) and the selection's
information-plane plot. `load_hub_teacher("owner/name@revision")` (`load.py`) loads one back
through the family's own loader (`timm.create_model("hf-hub:…")` or transformers'
`AutoModelFor….from_pretrained`), after checking the weights against the repo's `snapshot.json`.
A repo's checkpoints are selection candidates (`HubCandidate`, `candidates.py`): its branches and
tags (`hub_revisions(repo_id, "step*")`, `revisions.py`), the folders a `Trainer` with
`hub_strategy="all_checkpoints"` pushed (`hub_subfolders(repo_id, "checkpoint-*")`,
`subfolders.py`), or the commits of a branch (`hub_commits(repo_id, 5)`, `commits.py`), which is
what `select_teachers("owner/name", probe, revisions=... | subfolders=... | commits=...)` scores
(`selection_source.py` registers that source with the selector).
`hub_scripts/list_teachers.py` lists an owner's teacher repos and revisions with their card metrics
(the card's `checkpoint_kd` metadata block).

Where the members go (`sources.py`):
- one snapshot: to `repo_id`;
- several (an ensemble): one repo per member, `<repo_id>-<snapshot name>` (e.g.
  `alice/fmnist-teacher-epoch-0012`);
- `as_revisions=True`: all members to `repo_id`, each as its own commit on `main`, tagged with
  its snapshot name (`epoch-0012`); `main` ends on the first member (a selection's rank-1 teacher).
Every pushed commit is also tagged with `<revision_prefix><snapshot name>`, so
`owner/name@epoch-0012` loads exactly that member's weights even after later pushes.

Tokens are passed to `huggingface_hub` as given (or read by it from `HF_TOKEN` / `hf auth login`),
and are never logged, written to disk or put in a card. The client's errors become the errors of
`errors.py`, each naming the repo or reference and what to change.
"""

from .card import CITATION, TAGS, build_model_card
from .errors import HubError, HubInputError, HubReferenceError, HubUnavailableError
from .load import load_hub_teacher
from .push import PushedTeacher, is_main_process, push_teachers_to_hub
from .candidates import HubCandidate
from .commits import hub_commits
from .revisions import hub_revisions
from .selection_source import hub_candidates  # importing it registers the Hub source with select_teachers
from .subfolders import hub_subfolders

__all__ = ["push_teachers_to_hub", "load_hub_teacher", "hub_candidates", "hub_commits", "hub_revisions", "hub_subfolders",
           "HubCandidate", "build_model_card", "PushedTeacher", "HubError", "HubInputError", "HubReferenceError",
           "HubUnavailableError", "is_main_process", "TAGS", "CITATION"]
