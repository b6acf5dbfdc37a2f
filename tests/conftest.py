"""Shared test set-up: a local Hub server and an isolated Hugging Face environment.

KEEP THIS BLOCK FIRST. It must stay the first thing that configures the environment: the Hub
endpoint, the cache folders, the token file path and a module-level `HfApi` are all fixed when
`huggingface_hub` is first imported (transformers, timm, datasets and hf_ckptkd import it too).
pytest imports this conftest before any test module, so everything below runs before those
imports, provided nothing is imported above it. Do not import those libraries above this block.
"""

import os
import sys
import tempfile

# hubserver.py sits beside this file and uses only the standard library, so importing it does not
# import huggingface_hub.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubserver import HubServer  # noqa: E402

# `make test` runs two workers on two cores: one thread each, or their torch threads fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
             "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE",
             "HF_TOKEN_PATH", "HF_ENDPOINT"):
    os.environ.pop(_var, None)

# The users and tokens of the test Hub: alice writes her namespace, "alice-read" only reads it,
# bob writes his own namespace (and so is "another user" for alice's repos).
HUB_WRITE_TOKEN = "hf_test_alice_write"
HUB_READ_TOKEN = "hf_test_alice_read"
HUB_OTHER_TOKEN = "hf_test_bob_write"
HUB_TOKENS = {
    HUB_WRITE_TOKEN: ("alice", "write"),
    HUB_READ_TOKEN: ("alice", "read"),
    HUB_OTHER_TOKEN: ("bob", "write"),
}

# Port 0: the OS picks a free port, so parallel sessions of the suite never collide.
HUB_SERVER = HubServer(tokens=HUB_TOKENS, host="127.0.0.1", port=0).start()

os.environ["HF_ENDPOINT"] = HUB_SERVER.url  # exactly 127.0.0.1: the client compares hosts
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf-ckptkd-tests-hf-home-")  # no token, empty cache
os.environ["HF_HUB_DISABLE_XET"] = "1"  # Xet uploads need a CAS server we do not have
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
# A proxy from the developer's shell must not intercept requests to the local server.
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
os.environ["no_proxy"] = os.environ["NO_PROXY"]

# ---------------------------------------------------------------------------------------------
# From here on, importing the Hugging Face libraries is safe.

import itertools  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402

_repo_counter = itertools.count()


@dataclass
class Hub:
    """What the `hub` fixture gives: the running server and its users."""

    server: HubServer
    url: str
    write_token: str = HUB_WRITE_TOKEN  # alice, write
    read_token: str = HUB_READ_TOKEN  # alice, read-only
    other_token: str = HUB_OTHER_TOKEN  # bob, write
    user: str = "alice"
    other_user: str = "bob"

    def new_repo_id(self, name: str = "repo", owner: str | None = None) -> str:
        """A repo id no other test uses (the server lives for the whole session)."""
        return f"{owner or self.user}/{name}-{next(_repo_counter)}-{uuid.uuid4().hex[:6]}"

    def head(self, repo_id: str, revision: str = "main") -> str | None:
        """The commit `revision` points to on the server (None if missing), without HTTP."""
        return self.server.head(repo_id, revision)


@pytest.fixture(scope="session")
def hub() -> Hub:
    """The session's Hub server (`.url`, `.server`, tokens, `new_repo_id()`, `head()`)."""
    assert HUB_SERVER.running, "a test stopped the shared Hub server without starting it again"
    return Hub(server=HUB_SERVER, url=HUB_SERVER.url)


@pytest.fixture(scope="session")
def hub_write_token() -> str:
    """A write token for the user `alice`."""
    return HUB_WRITE_TOKEN


@pytest.fixture(scope="session")
def hub_read_token() -> str:
    """A read-only token for the user `alice`."""
    return HUB_READ_TOKEN


@pytest.fixture(scope="session")
def hub_other_token() -> str:
    """A write token for another user, `bob`."""
    return HUB_OTHER_TOKEN


@pytest.fixture
def fresh_hf_cache(tmp_path, monkeypatch):
    """An empty Hub cache folder, active for this test only; returns its path.

    Needed for negative tests: after a failed HEAD (401, 404 RepoNotFound, server down) the client
    silently falls back to files already cached, so a warm cache hides the error.

    `huggingface_hub.constants.HF_HUB_CACHE` is a module constant read when `hf_hub_download`,
    `snapshot_download`, transformers' `cached_files` and timm's Hub loader are *called* (when
    they get no `cache_dir`), so patching it switches all three. Setting the `HF_HUB_CACHE`
    environment variable alone does nothing once huggingface_hub is imported (it only reaches
    subprocesses, so it is set too). Passing `cache_dir=` explicitly also works.
    """
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


# --- other fixtures below ---


@pytest.fixture
def accelerate_launch():
    """The command prefix for a 2-process CPU launch, on a free port (tests may run beside other launches)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
            "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]
