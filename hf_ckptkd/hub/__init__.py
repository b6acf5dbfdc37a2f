"""Publish teacher snapshots to the Hugging Face Hub, and load teachers back from it.

`push_teachers_to_hub(source, repo_id, ...)` (`push.py`) uploads snapshot folders (each already a
Hub-ready model repo in its family's own format, plus `snapshot.json`, and a text teacher's
tokenizer) with a model card (`card.py`, rendered from `card_template.md`) and the selection's
information-plane plot. `load_hub_teacher("owner/name@revision")` (`load.py`) loads one back
through the family's own loader (`timm.create_model("hf-hub:…")` or transformers'
`AutoModelFor….from_pretrained`), after checking the weights against the repo's `snapshot.json`.
`hub_revisions(repo_id, "step*")` (`revisions.py`) lists a repo's published revisions as selection
candidates, which is what `select_teachers("owner/name", probe, revisions="step*")` scores.
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
from .revisions import HubRevision, hub_revisions  # also registers the Hub source with select_teachers

__all__ = ["push_teachers_to_hub", "load_hub_teacher", "hub_revisions", "HubRevision", "build_model_card", "PushedTeacher",
           "HubError", "HubInputError", "HubReferenceError", "HubUnavailableError", "is_main_process", "TAGS", "CITATION"]
