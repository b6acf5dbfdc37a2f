"""The documentation site builds strictly, and every page's Python blocks run as written (on tiny data).

Each page's blocks run in order as one script, page after page in the site's navigation order and in
one folder, so a page can use what an earlier page made (the snapshots page trains `runs/teacher`;
later pages distil from it, select among its snapshots and push the selection to the Hub).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from doc_blocks import DOCS, MKDOCS, ROOT, RUN_ELSEWHERE, hub_env, nav_pages, pages_with_blocks, python_snippets, \
    run_blocks  # noqa: F401


def test_every_page_with_python_blocks_is_in_the_site_and_run():
    on_disk = {page for page in DOCS.rglob("*.md") if python_snippets(page.read_text())} - RUN_ELSEWHERE
    assert on_disk and on_disk <= set(pages_with_blocks()), \
        f"pages with ```python blocks that are not in mkdocs.yml's nav: {sorted(map(str, on_disk - set(nav_pages())))}"


@pytest.mark.slow
def test_docs_python_blocks_run_page_by_page(tmp_path, hub_env):
    for page in pages_with_blocks():
        name = page.relative_to(DOCS).with_suffix(".py").as_posix().replace("/", "_")
        done = run_blocks(page.read_text(), name, tmp_path, hub_env)
        assert done.returncode == 0, f"the Python blocks of docs/{page.relative_to(DOCS)} failed:\n{done.stderr[-3000:]}"
    runs = tmp_path / "runs"
    assert (runs / "teacher" / "snapshots" / "epoch-0003" / "snapshot.json").is_file()
    # The keep-top run scored every snapshot and kept the 2 best and the final one (3 epochs: all three).
    kept = json.loads((runs / "teacher-top2" / "snapshots" / "index.json").read_text())["snapshots"]
    assert [e["name"] for e in kept] == ["epoch-0001", "epoch-0002", "epoch-0003"]
    assert all(isinstance(e["score"]["value"], float) for e in kept)
    # The mixin page's custom-loss block checks its own output (tests/training/test_loss_composition.py).
    assert list((runs / "student").glob("checkpoint-*"))
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
