"""The README is a short front door whose Python blocks run as written, in order, as one script (on tiny data)."""

import json
import re

import pytest
from doc_blocks import README, ROOT, TINY, hub_env, pages_with_blocks, python_snippets, run_blocks  # noqa: F401


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    assert "make demo" in "\n".join(lines[:6]) and "make test" in "\n".join(lines[:6])
    # Its links into the docs resolve (the site's own links are checked by its strict build).
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README.read_text())
    assert targets and [t for t in targets if not (ROOT / t).exists()] == []


def test_the_blocks_have_the_sizes_the_table_shrinks():
    scripts = "\n".join(python_snippets(README.read_text()) +
                        [block for page in pages_with_blocks() for block in python_snippets(page.read_text())])
    for old, _ in TINY:
        assert old in scripts, f"no block of the README or the docs contains {old!r} any more: update TINY"


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(tmp_path, hub_env):
    assert "\n".join(python_snippets(README.read_text())).count("\n") > 20
    done = run_blocks(README.read_text(), "readme_blocks.py", tmp_path, hub_env)
    assert done.returncode == 0, done.stderr[-3000:]
    # What the blocks say they make is there.
    runs = tmp_path / "runs"
    assert (runs / "teacher" / "snapshots" / "epoch-0003" / "snapshot.json").is_file()
    assert "epoch-0003" in done.stdout  # the snapshot listing printed every snapshot
    assert len(json.loads((runs / "teacher" / "selection" / "selection.json").read_text())["selected"]) == 2
    assert list((runs / "student").glob("checkpoint-*"))
    assert (runs / "lm_teacher" / "snapshots" / "epoch-0004" / "tokenizer.json").is_file()
    assert list((runs / "lm_student").glob("checkpoint-*"))
