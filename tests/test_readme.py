"""The README's and the documentation's Python blocks run as written, on tiny data; the site builds strictly.

The README's blocks run in order as one script; each documentation page's blocks run in order as one
script too, page after page in the site's navigation order and in one folder, so a page can use what
an earlier page made (the snapshots page trains `runs/teacher`, later pages distil from it). Only
```python blocks run: a block that cannot run anywhere is written ```py. The Hub the blocks push to
and load from is the local Hub server, with a write token for the user `you`.
"""

import importlib.util
import json
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
# tests/test_model_cards.py does for every kind of card against the local Hub server.
RUN_ELSEWHERE = {DOCS / "example_model_card" / "README.md"}

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
    return [page for page in nav_pages() if page not in RUN_ELSEWHERE and python_snippets(page.read_text())]


def tiny(script: str) -> str:
    for old, new in TINY:
        script = script.replace(old, new)
    return script


def run_script(script: str, name: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    (cwd / name).write_text(tiny(script))
    return subprocess.run([sys.executable, name], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture
def hub_env(tmp_path):
    """The environment of a user whose HF_TOKEN writes the namespace `you` of a fresh local Hub."""
    server = HubServer(tokens={"hf_docs_you_write": ("you", "write")}).start()
    yield {**os.environ, "OMP_NUM_THREADS": "1", "HF_ENDPOINT": server.url, "HF_TOKEN": "hf_docs_you_write",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    server.stop()


def test_every_page_with_python_blocks_is_in_the_site_and_run():
    on_disk = {page for page in DOCS.rglob("*.md") if python_snippets(page.read_text())} - RUN_ELSEWHERE
    assert on_disk and on_disk <= set(pages_with_blocks()), \
        f"pages with ```python blocks that are not in mkdocs.yml's nav: {sorted(map(str, on_disk - set(nav_pages())))}"


def test_the_blocks_have_the_sizes_the_table_shrinks():
    scripts = "\n".join(python_snippets(README.read_text()) +
                        [block for page in pages_with_blocks() for block in python_snippets(page.read_text())])
    for old, _ in TINY:
        assert old in scripts, f"no block of the README or the docs contains {old!r} any more: update TINY in this test"


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    assert "make demo" in "\n".join(lines[:6]) and "make test" in "\n".join(lines[:6])
    # Its links into the docs resolve (the site's own links are checked by the strict build).
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README.read_text())
    assert targets and [t for t in targets if not (ROOT / t).exists()] == []


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(tmp_path, hub_env):
    script = "\n\n".join(python_snippets(README.read_text()))
    assert script.count("\n") > 20
    done = run_script(script, "readme_blocks.py", tmp_path, hub_env)
    assert done.returncode == 0, done.stderr[-3000:]
    # What the blocks say they make is there.
    assert (tmp_path / "runs" / "teacher" / "snapshots" / "epoch-0003" / "snapshot.json").is_file()
    assert "epoch-0003" in done.stdout  # the snapshot listing printed every snapshot
    selection = json.loads((tmp_path / "runs" / "teacher" / "selection" / "selection.json").read_text())
    assert len(selection["selected"]) == 2
    assert list((tmp_path / "runs" / "student").glob("checkpoint-*"))
    assert (tmp_path / "runs" / "lm_teacher" / "snapshots" / "epoch-0004" / "tokenizer.json").is_file()
    assert list((tmp_path / "runs" / "lm_student").glob("checkpoint-*"))


@pytest.mark.slow
def test_docs_python_blocks_run_page_by_page(tmp_path, hub_env):
    for page in pages_with_blocks():
        name = page.relative_to(DOCS).with_suffix(".py").as_posix().replace("/", "_")
        done = run_script("\n\n".join(python_snippets(page.read_text())), name, tmp_path, hub_env)
        assert done.returncode == 0, f"the Python blocks of docs/{page.relative_to(DOCS)} failed:\n{done.stderr[-3000:]}"
    runs = tmp_path / "runs"
    assert (runs / "teacher" / "snapshots" / "epoch-0003" / "snapshot.json").is_file()
    # The keep-top run scored every snapshot and kept the 2 best and the final one (3 epochs: all three).
    kept = json.loads((runs / "teacher-top2" / "snapshots" / "index.json").read_text())["snapshots"]
    assert [e["name"] for e in kept] == ["epoch-0001", "epoch-0002", "epoch-0003"]
    assert all(isinstance(e["score"]["value"], float) for e in kept)
    assert list((runs / "student").glob("checkpoint-*")) and list((runs / "student-mixin").glob("checkpoint-*"))
    assert (runs / "teacher" / "selection" / "selection.json").is_file()
    assert (runs / "lm_teacher" / "snapshots" / "epoch-0004" / "tokenizer.json").is_file()
    assert (runs / "lm" / "selection" / "selection.json").is_file()


@pytest.mark.slow
def test_the_docs_site_builds_strictly(tmp_path):
    """Every page, link, anchor, snippet include and docstring of the API reference resolves."""
    assert importlib.util.find_spec("mkdocs"), "the docs extra is not installed: pip install -e '.[docs]'"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS),
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "select_teachers" in reference and "CheckpointKDMixin" in reference
    # ARCHITECTURE.md is included, not copied: its first line is the page's heading.
    heading = (ROOT / "ARCHITECTURE.md").read_text().splitlines()[0].lstrip("# ")
    assert f"{heading}<" in (tmp_path / "site" / "architecture" / "index.html").read_text()
