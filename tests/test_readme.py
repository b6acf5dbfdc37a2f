"""The README's Python snippets run as written, in order, as one script (on tiny data)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# The README's sizes, shrunk so the snippets run in seconds; each must still be found in the README,
# so a snippet that changes its sizes changes this table too.
TINY = [
    ('load_fashion_mnist("train", limit=4000)', 'load_fashion_mnist("train", limit=256)'),
    ('load_fashion_mnist("test", limit=1000)', 'load_fashion_mnist("test", limit=200)'),
    ("num_train_epochs=8", "num_train_epochs=3"),
    ("epoch-0006", "epoch-0002"),
    ('"train", limit=2000), tokenizer', '"train", limit=120), tokenizer'),
    ('"test", limit=400), tokenizer', '"test", limit=40), tokenizer'),
    ("num_train_epochs=2, learning_rate=3e-3", "max_steps=2, learning_rate=3e-3"),
]


def python_snippets(text: str) -> list[str]:
    """The bodies of the ```python blocks, dedented when the block is indented (inside a list)."""
    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", text, flags=re.M | re.S)
    return ["\n".join(line[len(indent):] for line in body.splitlines()) for indent, body in blocks]


def test_readme_has_the_snippets_the_table_shrinks():
    script = "\n".join(python_snippets(README.read_text()))
    for old, _ in TINY:
        assert old in script, f"the README's snippets no longer contain {old!r}: update TINY in this test"


@pytest.mark.slow
def test_readme_python_snippets_run_in_order(tmp_path):
    script = "\n\n".join(python_snippets(README.read_text()))
    assert script.count("\n") > 20
    for old, new in TINY:
        script = script.replace(old, new)
    (tmp_path / "readme_snippets.py").write_text(script)
    done = subprocess.run([sys.executable, "readme_snippets.py"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # What the snippets say they make is there.
    assert (tmp_path / "runs" / "teacher" / "snapshots" / "epoch-0003" / "snapshot.json").is_file()
    assert (tmp_path / "runs" / "teacher" / "selection" / "selection.json").is_file()
    assert list((tmp_path / "runs" / "student").glob("checkpoint-*"))
    assert "epoch-0003" in done.stdout  # the snapshot listing printed every snapshot
    assert (tmp_path / "runs" / "lm_teacher" / "snapshots" / "epoch-0004" / "tokenizer.json").is_file()
    # The keep-top run scored every snapshot and kept the 2 best and the final one (3 epochs: all three).
    kept = json.loads((tmp_path / "runs" / "teacher-top2" / "snapshots" / "index.json").read_text())["snapshots"]
    assert [e["name"] for e in kept] == ["epoch-0001", "epoch-0002", "epoch-0003"]
    assert all(isinstance(e["score"]["value"], float) for e in kept)
