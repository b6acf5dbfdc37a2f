"""Running the Python blocks of the README and the documentation pages, on tiny data.

Only ```python blocks run: a block that cannot run anywhere is written ```py. Each document's blocks
run in order as one script. The Hub the blocks push to and load from is a local Hub server, with a
write token for the user `you` in `HF_TOKEN`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hubserver import HubServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
# A rendered model card: its blocks load the teacher from the Hub repo it was pushed to, which
# tests/hub/test_model_cards.py does for every kind of card against the local Hub server.
# The pages with a test of their own that runs their code (against the local Hub server, or with
# its own checks of the output): tests/hub/test_hub_checkpoints.py.
RUN_ELSEWHERE = {DOCS / "example_model_card" / "README.md", DOCS / "hub-checkpoints.md"}

# The sizes of the README and the pages, shrunk so the blocks run in seconds; each must still be found
# in some block, so a block that changes its sizes changes this table too.
TINY = [
    ('load_fashion_mnist("train", limit=4000)', 'load_fashion_mnist("train", limit=128)'),
    ('load_fashion_mnist("test", limit=1000)', 'load_fashion_mnist("test", limit=100)'),
    ("num_train_epochs=8", "num_train_epochs=3"),
    ("epoch-0006", "epoch-0002"),
    ("epoch-0008", "epoch-0003"),
    ('"train", limit=2000), tokenizer', '"train", limit=120), tokenizer'),
    ('"test", limit=400), tokenizer', '"test", limit=40), tokenizer'),
    ("num_train_epochs=2, learning_rate=3e-3", "max_steps=2, learning_rate=3e-3"),
    ("max_probe_samples=500, probe_context=32", "max_probe_samples=200, probe_context=32"),
]


def python_snippets(text: str) -> list[str]:
    """The bodies of the ```python blocks, dedented when the block is indented (inside a list)."""
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.M | re.S)
    return ["\n".join(line[len(indent):] for line in body.splitlines()) for indent, body in blocks]


def nav_pages() -> list[Path]:
    """The site's pages in navigation order."""
    def walk(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from (walk(value) if isinstance(value, list) else [DOCS / value])
    return list(walk(yaml.safe_load(MKDOCS.read_text())["nav"]))


def pages_with_blocks() -> list[Path]:
    """The pages whose blocks the tests run, in navigation order."""
    return [page for page in nav_pages() if page not in RUN_ELSEWHERE and python_snippets(page.read_text())]


def run_blocks(text: str, name: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run the ```python blocks of `text`, shrunk by TINY, as one script `name` in `cwd`."""
    script = "\n\n".join(python_snippets(text))
    for old, new in TINY:
        script = script.replace(old, new)
    (cwd / name).write_text(script)
    return subprocess.run([sys.executable, name], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture
def hub_env(tmp_path):
    """The environment of a user whose HF_TOKEN writes the namespace `you` of a fresh local Hub."""
    server = HubServer(tokens={"hf_docs_you_write": ("you", "write")}).start()
    yield {**os.environ, "OMP_NUM_THREADS": "1", "HF_ENDPOINT": server.url, "HF_TOKEN": "hf_docs_you_write",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    server.stop()
