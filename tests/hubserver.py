"""A small Hugging Face Hub-compatible HTTP server for tests and local experiments.

Standard library only. It speaks the subset of the Hub protocol that `huggingface_hub` (2.x),
`transformers` and `timm` use to push and pull model repos (see `/work/shared/HUB_PROTOCOL.md`):
repo creation, repo info, model search (`list_models`: author, search, tag filter), tree listing,
preupload, LFS batch/PUT/verify, NDJSON commits (to any branch), branches, tags, refs, commit
history, settings (visibility, gated access), whoami and `resolve` downloads, with the Hub's error
shapes.

Repos have a real, git-like history: each commit is an immutable snapshot `path -> blob`, its id is
the sha1 of (repo, parent, tree, message), and revisions resolve by branch, tag, full commit id or
(as on the Hub) a unique commit-id prefix of 7 or more characters. `HubServer.inject` makes chosen
requests fail or wait, to test how clients survive a flaky Hub.
A commit that would not change the tree makes no new commit: the branch head is returned instead.

Run by hand::

    python tests/hubserver.py --port 8080 --token alice:write:hf_alice
    export HF_ENDPOINT=http://127.0.0.1:8080 HF_HUB_DISABLE_XET=1

or from Python::

    server = HubServer(tokens={"hf_alice": ("alice", "write")}).start()
    ...  # point HF_ENDPOINT at server.url *before* importing huggingface_hub
    server.stop()   # simulates "Hub down"; server.start() brings it back on the same port
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import traceback
from collections import namedtuple
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# What a new repo's initial commit holds, like the Hub's default `.gitattributes`. Its `filter=lfs`
# patterns also decide, with the size threshold, which files preupload sends through LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx",
                    "*.msgpack", "*.npy", "*.npz", "*.pkl", "*.gz", "*.zip", "*.tar", "*.arrow",
                    "*.parquet")
)
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
SHA1_RE = re.compile(r"[0-9a-f]{40}")
SHORT_SHA_RE = re.compile(r"[0-9a-f]{7,40}")

# One file in a commit's tree: the content's sha256 (the blob store key), its size, and whether it
# is stored through LFS (which changes the oid and headers the client sees, not the bytes).
FileEntry = namedtuple("FileEntry", "sha256 size lfs")
User = namedtuple("User", "name role")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of `data`: what the client computes for regular files (`sha.git_hash`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_info(entry: FileEntry, sha_key: str) -> dict:
    """The `lfs` block of a listing; the model info API names the hash `sha256`, the tree API `oid`."""
    pointer = LFS_POINTER.format(oid=entry.sha256, size=entry.size)
    return {sha_key: entry.sha256, "size": entry.size, "pointerSize": len(pointer)}


def flag(params: dict, name: str) -> bool:
    return params.get(name, ["false"])[0].lower() in ("1", "true")


def now_iso() -> str:
    # The client's `parse_datetime` expects exactly `%Y-%m-%dT%H:%M:%S.%fZ`.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An HTTP error answered in the Hub's shape: JSON `{"error": ...}` plus X-Error-* headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None, extra=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


@dataclass
class Fault:
    """A failure or delay the server injects into the next `times` requests that match (see
    `HubServer.inject`); `hits` counts the requests it hit."""

    method: str
    path: re.Pattern
    status: int | None
    delay: float
    times: int
    after: int = 0  # matching requests to let through first
    hits: int = 0


@dataclass
class Commit:
    id: str
    parent: str | None
    tree: dict  # path -> FileEntry
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    type: str  # "model" or "dataset"
    id: str  # "owner/name"
    private: bool
    created: str
    commits: dict = field(default_factory=dict)  # id -> Commit
    branches: dict = field(default_factory=dict)  # name -> commit id
    tags: dict = field(default_factory=dict)  # name -> commit id
    lfs_objects: set = field(default_factory=set)  # sha256 of LFS blobs uploaded to this repo
    # Gated repos ("auto" or "manual", as `update_repo_settings(gated=...)` sets them): their files
    # download only for the owner and the users granted access; listings stay public, as on the Hub.
    gated: str | bool = False
    access: set = field(default_factory=set)

    @property
    def owner(self) -> str:
        return self.id.split("/")[0]

    def resolve(self, revision: str) -> Commit | None:
        """Branch, tag, `refs/heads/…`, `refs/tags/…`, full commit id, or (as on the Hub) a prefix of at
        least 7 characters of exactly one commit id -> commit (None if unknown)."""
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if revision.startswith(prefix) and revision[len(prefix):] in refs:
                return self.commits[refs[revision[len(prefix):]]]
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and SHORT_SHA_RE.fullmatch(revision):
            matches = [c for c in self.commits if c.startswith(revision)]
            sha = matches[0] if len(matches) == 1 else None
        return self.commits.get(sha) if sha else None


class HubState:
    """Repos, blobs and commits; every method that reads or mutates repos holds `self.lock`."""

    def __init__(self, storage: str | None = None):
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # used when there is no storage folder
        self.storage = storage
        if storage:
            os.makedirs(os.path.join(storage, "blobs"), exist_ok=True)
            self._load()

    # -- blobs: content-addressed by sha256, in memory or as files under <storage>/blobs --
    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if self.storage:
            path = os.path.join(self.storage, "blobs", sha)
            if not os.path.exists(path):
                with open(path + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(path + ".tmp", path)
        else:
            self.blobs[sha] = data
        return sha

    def get_blob(self, sha: str) -> bytes:
        if self.storage:
            with open(os.path.join(self.storage, "blobs", sha), "rb") as f:
                return f.read()
        return self.blobs[sha]

    def has_blob(self, sha: str) -> bool:
        if self.storage:
            return os.path.exists(os.path.join(self.storage, "blobs", sha))
        return sha in self.blobs

    def oid(self, entry: FileEntry) -> str:
        """The git oid the Hub reports: sha1 of the content, or of the LFS pointer for LFS files."""
        if entry.lfs:
            return git_blob_sha1(LFS_POINTER.format(oid=entry.sha256, size=entry.size).encode())
        return git_blob_sha1(self.get_blob(entry.sha256))

    # -- persistence (only with a storage folder): one JSON file rewritten after each change --
    def save(self):
        if not self.storage:
            return
        state = [{"type": r.type, "id": r.id, "private": r.private, "created": r.created,
                  "branches": r.branches, "tags": r.tags, "lfs_objects": sorted(r.lfs_objects),
                  "gated": r.gated, "access": sorted(r.access),
                  "commits": [{**c.__dict__, "tree": {p: list(e) for p, e in c.tree.items()}}
                              for c in r.commits.values()]} for r in self.repos.values()]
        path = os.path.join(self.storage, "state.json")
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(path + ".tmp", path)  # atomic, so a crash never leaves half a state file

    def _load(self):
        path = os.path.join(self.storage, "state.json")
        if not os.path.exists(path):
            return
        with open(path) as f:
            for r in json.load(f):
                commits = {c["id"]: Commit(**{**c, "tree": {p: FileEntry(*e) for p, e in c["tree"].items()}})
                           for c in r.pop("commits")}
                repo = Repo(**{**r, "lfs_objects": set(r["lfs_objects"]), "access": set(r.get("access", []))},
                            commits=commits)
                self.repos[(repo.type, repo.id)] = repo

    # -- commits --
    def make_commit(self, repo: Repo, parent: Commit | None, tree: dict, title: str, message: str,
                    author: str) -> Commit:
        # Deterministic id over what defines the snapshot; a timestamp is kept but not hashed, so
        # replaying the same history gives the same ids.
        listing = sorted((p, e.sha256, e.size, e.lfs) for p, e in tree.items())
        digest = json.dumps([repo.type, repo.id, parent.id if parent else None, listing, title, message])
        commit = Commit(hashlib.sha1(digest.encode()).hexdigest(), parent.id if parent else None,
                        dict(tree), title, message, author, now_iso())
        repo.commits[commit.id] = commit
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> Repo:
        repo = Repo(repo_type, repo_id, private, now_iso())
        sha = self.put_blob(DEFAULT_GITATTRIBUTES.encode())
        tree = {".gitattributes": FileEntry(sha, len(DEFAULT_GITATTRIBUTES), False)}
        repo.branches["main"] = self.make_commit(repo, None, tree, "initial commit", "", author).id
        self.repos[(repo_type, repo_id)] = repo
        self.save()
        return repo

    def card_tags(self, commit: Commit) -> list[str]:
        """`library_name` and `tags` of the README's YAML front matter, as the Hub lists a repo's tags.

        Reads the block style the client writes (`tags:` then `- tag` lines) and flow lists
        (`tags: [a, b]`); standard library only, so not a full YAML parser.
        """
        entry = commit.tree.get("README.md")
        if entry is None:
            return []
        lines = self.get_blob(entry.sha256).decode(errors="replace").splitlines()
        if not lines or lines[0].strip() != "---":
            return []
        tags, in_tags = [], False
        for line in lines[1:]:
            if line.strip() == "---":
                break
            item = re.fullmatch(r"\s*-\s+(.+)", line)
            if in_tags and item:
                tags.append(item[1].strip().strip("'\""))
                continue
            in_tags = line.rstrip() == "tags:"
            key, _, value = line.partition(":")
            if key == "library_name" and value.strip():
                tags.insert(0, value.strip().strip("'\""))
            elif key == "tags" and value.strip().startswith("["):
                tags += [t.strip().strip("'\"") for t in value.strip()[1:-1].split(",") if t.strip()]
        return tags

    def lfs_patterns(self, commit: Commit) -> list[str]:
        entry = commit.tree.get(".gitattributes")
        if entry is None:
            return []
        lines = self.get_blob(entry.sha256).decode(errors="replace").splitlines()
        return [line.split()[0] for line in lines if "filter=lfs" in line and line.split()]


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, as the client's pooled session expects; every response
    # therefore carries a Content-Length and every request body is read in full before answering.
    protocol_version = "HTTP/1.1"
    server_version = "hubserver/1.0"

    REPO = r"(?P<repo>[^/]+/[^/]+)"
    API = r"/api/(?P<type>models|datasets)/" + REPO
    REV = r"(?P<rev>[^/]+)"  # the client quotes revisions with safe="", so they are one segment
    ROUTES = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("GET", r"/api/models", "list_models"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("GET", API + r"(?:/revision/" + REV + ")?", "repo_info"),
        ("GET", API + r"/tree/" + REV + r"(?:/(?P<path>.*))?", "tree"),
        ("POST", API + r"/paths-info/" + REV, "paths_info"),
        ("POST", API + r"/preupload/" + REV, "preupload"),
        ("POST", API + r"/commit/" + REV, "commit"),
        ("GET", API + r"/commits/" + REV, "commits"),
        ("GET", API + r"/refs", "refs"),
        ("POST DELETE", API + r"/branch/" + REV, "branch"),
        ("POST DELETE", API + r"/tag/" + REV, "tag"),
        ("PUT", API + r"/settings", "settings"),
        ("POST", r"/(?:(?P<type>datasets)/)?" + REPO + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/__lfs/(?P<ticket>[\w-]+)/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("POST", r"/__lfs/(?P<ticket>[\w-]+)/(?P<oid>[0-9a-f]{64})/verify", "lfs_verify"),
        ("GET HEAD", r"/(?:(?P<type>datasets)/)?" + REPO + r"/resolve/" + REV + r"/(?P<path>.+)", "resolve"),
    ]
    ROUTES = [(methods.split(), re.compile(pattern), name) for methods, pattern, name in ROUTES]

    # -- plumbing --
    def setup(self):
        super().setup()
        self.server.hub._connections.add(self.connection)  # so stop() can cut keep-alive sockets

    def finish(self):
        self.server.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):
        if self.server.hub.verbose:
            super().log_message(format, *args)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = lambda self: self._handle()

    def _read_body(self) -> bytes:
        # LFS PUTs stream a file object, which may arrive chunked instead of with a Content-Length.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, up to the blank line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self):
        hub = self.server.hub
        self.body = self._read_body()  # drained before any early error, or keep-alive breaks
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        # URLs we hand out must use exactly the host the client used (127.0.0.1 and localhost differ).
        self.endpoint = hub.public_url or f"http://{self.headers.get('Host') or hub.netloc}"
        try:
            hub.apply_fault(self.command, url.path)
            for methods, pattern, name in self.ROUTES:
                match = pattern.fullmatch(url.path)
                if match and self.command in methods:
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    status, payload, headers = getattr(self, "h_" + name)(**args)
                    break
            else:
                raise HubError(404, f"Not found: {self.command} {url.path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            status, payload = err.status, {"error": err.message, **err.extra}
        except Exception as err:  # a server bug: say so loudly (5xx makes the client retry)
            traceback.print_exc()
            status, payload, headers = 500, {"error": f"hubserver bug: {err!r}"}, {}
        hub.requests.append((self.command, url.path, status))
        self._send(status, payload, headers)

    def _send(self, status: int, payload, headers: dict):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Request body is not valid JSON")

    # -- auth --
    @property
    def user(self) -> User | None:
        header = self.headers.get("Authorization")
        if not header:
            return None
        token = header.split(" ", 1)[-1].strip()
        if token not in self.server.hub.tokens:
            # This exact message makes the client report a token problem, not a missing repo.
            raise HubError(401, "Invalid credentials in Authorization header")
        return User(*self.server.hub.tokens[token])

    def require_write(self, owner: str) -> User:
        user = self.user
        if user is None:
            raise HubError(401, "You must be authenticated to do this (no token in Authorization header)")
        if user.role != "write":
            raise HubError(403, f"Your token for '{user.name}' is read-only")
        if user.name != owner:
            raise HubError(403, f"You don't have the rights to write in the namespace '{owner}'")
        return user

    def repo(self, type: str, repo: str, write: bool = False) -> Repo:
        """The repo if the caller may see it (404 RepoNotFound otherwise, also for hidden private
        repos); with `write`, also check write rights (401/403)."""
        repo_type = "dataset" if type in ("datasets", "dataset") else "model"
        user = self.user
        found = self.server.hub.state.repos.get((repo_type, repo))
        if found is None or (found.private and (user is None or user.name != found.owner)):
            raise HubError(404, f"Repository not found: {repo}", "RepoNotFound")
        if write:
            self.require_write(found.owner)
        return found

    def check_gate(self, repo: Repo):
        """A gated repo's files are for its owner and the users granted access (401 without a token,
        403 with another user's), with the Hub's `GatedRepo` error code."""
        if not repo.gated:
            return
        user = self.user
        if user is None:
            raise HubError(401, f"Access to model {repo.id} is restricted. You must have access to it and be "
                                "authenticated to access it. Please log in.", "GatedRepo")
        if user.name != repo.owner and user.name not in repo.access:
            raise HubError(403, f"Access to model {repo.id} is restricted and you are not in the authorized list. "
                                f"Visit {self.repo_url(repo)} to ask for access.", "GatedRepo")

    def commit_at(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{'datasets/' if repo.type == 'dataset' else ''}{repo.id}"

    # -- account and validation --
    def h_whoami(self):
        user = self.user
        if user is None:
            raise HubError(401, "You must be authenticated to call whoami")
        token = {"displayName": f"{user.name}-{user.role}", "role": user.role}
        return 200, {"type": "user", "id": user.name, "name": user.name, "fullname": user.name,
                     "orgs": [], "auth": {"type": "access_token", "accessToken": token}}, {}

    def h_validate_yaml(self):
        return 200, {"errors": [], "warnings": []}, {}

    # -- repos --
    def h_create_repo(self):
        body, state = self.json_body(), self.server.hub.state
        user = self.user
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        name, owner = body.get("name") or "", body.get("organization") or user.name
        if not NAME_RE.fullmatch(name) or not NAME_RE.fullmatch(owner) or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name: {owner}/{name}")
        repo_type = body.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise HubError(400, f"Repo type '{repo_type}' is not supported by this server")
        self.require_write(owner)
        private = body.get("visibility", "private" if body.get("private") else "public") == "private"
        with state.lock:
            existing = state.repos.get((repo_type, f"{owner}/{name}"))
            if existing is not None:
                raise HubError(409, "You already created this repo", extra={"url": self.repo_url(existing)})
            repo = state.create_repo(repo_type, f"{owner}/{name}", private, user.name)
        return 200, {"url": self.repo_url(repo), "name": repo.id, "id": repo.id}, {}

    def h_delete_repo(self):
        body, state = self.json_body(), self.server.hub.state
        owner = body.get("organization") or (self.user.name if self.user else "")
        with state.lock:
            repo = self.repo(body.get("type") or "model", f"{owner}/{body.get('name')}", write=True)
            del state.repos[(repo.type, repo.id)]
            state.save()
        return 200, {}, {}

    def h_settings(self, type, repo):
        body, state = self.json_body(), self.server.hub.state
        with state.lock:
            found = self.repo(type, repo, write=True)
            if "private" in body or "visibility" in body:
                found.private = body.get("visibility", "private" if body.get("private") else "public") == "private"
            if "gated" in body:
                if body["gated"] not in ("auto", "manual", False):
                    raise HubError(400, f"Invalid gated value {body['gated']!r}: 'auto', 'manual' or false")
                found.gated = body["gated"]
            state.save()
        return 200, {}, {}

    def sibling(self, path: str, entry: FileEntry, blobs: bool) -> dict:
        info = {"rfilename": path}
        if blobs:
            info.update(size=entry.size, blobId=self.server.hub.state.oid(entry))
            if entry.lfs:
                info["lfs"] = lfs_info(entry, "sha256")
        return info

    def h_repo_info(self, type, repo, rev="main"):
        with self.server.hub.state.lock:
            found = self.repo(type, repo)
            commit = self.commit_at(found, rev)
        blobs = flag(self.query, "blobs")
        return 200, {
            "_id": found.id, "id": found.id, "modelId": found.id, "author": found.owner,
            "sha": commit.id, "private": found.private, "gated": found.gated, "disabled": False,
            "lastModified": commit.date, "createdAt": found.created, "downloads": 0, "likes": 0,
            "tags": self.server.hub.state.card_tags(commit),
            "siblings": [self.sibling(p, e, blobs) for p, e in sorted(commit.tree.items())],
        }, {}

    def h_list_models(self):
        # The Hub's search: `author` (exact owner), `search` (substring of the repo id), `filter`
        # (tags, all required), `limit`; one page (no Link header). Private repos only for their owner.
        state, user, query = self.server.hub.state, self.user, self.query
        author, search = query.get("author", [None])[0], query.get("search", [""])[0].lower()
        wanted, limit = set(query.get("filter", [])), int(query.get("limit", ["1000"])[0])
        items = []
        with state.lock:
            for (repo_type, repo_id), repo in sorted(state.repos.items()):
                if repo_type != "model" or (repo.private and (user is None or user.name != repo.owner)):
                    continue
                if (author and repo.owner != author) or search not in repo_id.lower():
                    continue
                head = repo.commits[repo.branches["main"]]
                tags = state.card_tags(head)
                if wanted <= set(tags):
                    items.append({"_id": repo.id, "id": repo.id, "modelId": repo.id, "author": repo.owner,
                                  "sha": head.id, "private": repo.private, "lastModified": head.date,
                                  "createdAt": repo.created, "downloads": 0, "likes": 0, "tags": tags})
        return 200, items[:limit], {}

    # -- listing --
    def file_info(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        entry, state = commit.tree[path], self.server.hub.state
        info = {"type": "file", "path": path, "size": entry.size, "oid": state.oid(entry)}
        if entry.lfs:
            info["lfs"] = lfs_info(entry, "oid")
        if expand:  # the last commit that touched the file: walk back while the entry is unchanged
            last = commit
            while last.parent and repo.commits[last.parent].tree.get(path) == entry:
                last = repo.commits[last.parent]
            info["lastCommit"] = {"id": last.id, "title": last.title, "date": last.date}
        return info

    def dir_info(self, commit: Commit, path: str) -> dict:
        content = sorted((p, e.sha256) for p, e in commit.tree.items() if p.startswith(path + "/"))
        return {"type": "directory", "path": path, "size": 0,
                "oid": hashlib.sha1(json.dumps(content).encode()).hexdigest()}

    def h_tree(self, type, repo, rev, path=""):
        path = path.strip("/")
        recursive, expand = flag(self.query, "recursive"), flag(self.query, "expand")
        with self.server.hub.state.lock:
            found = self.repo(type, repo)
            commit = self.commit_at(found, rev)
            prefix = path + "/" if path else ""
            files, dirs = [], set()
            for p in commit.tree:
                if not p.startswith(prefix):
                    continue
                parts = p[len(prefix):].split("/")
                for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                    dirs.add(prefix + "/".join(parts[:depth]))
                if recursive or len(parts) == 1:
                    files.append(p)
            if path and not files and not dirs:
                raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound",
                               {"X-Repo-Commit": commit.id})
            entries = [self.file_info(found, commit, p, expand) for p in files]
            entries += [self.dir_info(commit, d) for d in dirs]
        return 200, sorted(entries, key=lambda e: e["path"]), {}

    def h_paths_info(self, type, repo, rev):
        form = parse_qs(self.body.decode())  # the client posts a form: paths=…&paths=…&expand=…
        expand = flag(form, "expand")
        with self.server.hub.state.lock:
            found = self.repo(type, repo)
            commit = self.commit_at(found, rev)
            result = []
            for path in form.get("paths", []):
                path = path.strip("/")
                if path in commit.tree:
                    result.append(self.file_info(found, commit, path, expand))
                elif any(p.startswith(path + "/") for p in commit.tree):
                    result.append(self.dir_info(commit, path))
        return 200, result, {}

    def h_commits(self, type, repo, rev):
        with self.server.hub.state.lock:
            found = self.repo(type, repo)
            commit, history = self.commit_at(found, rev), []
            while commit is not None:
                history.append({"id": commit.id, "title": commit.title, "message": commit.message,
                                "authors": [{"user": commit.author}], "date": commit.date})
                commit = found.commits.get(commit.parent) if commit.parent else None
        return 200, history, {}

    def h_refs(self, type, repo):
        with self.server.hub.state.lock:
            found = self.repo(type, repo)
            refs = {kind: [{"name": n, "ref": f"refs/{prefix}/{n}", "targetCommit": sha}
                           for n, sha in sorted(table.items())]
                    for kind, prefix, table in (("branches", "heads", found.branches),
                                                ("tags", "tags", found.tags))}
        return 200, {**refs, "converts": [], "pullRequests": []}, {}

    def h_branch(self, type, repo, rev):
        state = self.server.hub.state
        with state.lock:
            found = self.repo(type, repo, write=True)
            if self.command == "DELETE":
                if rev not in found.branches:
                    raise HubError(404, f"Branch {rev} does not exist", "RevisionNotFound")
                if rev == "main":
                    raise HubError(400, "Cannot delete the default branch")
                del found.branches[rev]
            else:
                if rev.startswith("refs/") or not re.fullmatch(r"[\w.\-/]+", rev):
                    raise HubError(400, f"Invalid branch name: {rev}")
                if rev in found.branches:
                    raise HubError(409, f"Branch {rev} already exists")
                start = self.json_body().get("startingPoint") or "main"
                found.branches[rev] = self.commit_at(found, start).id
            state.save()
        return 200, {}, {}

    def h_tag(self, type, repo, rev):
        # POST …/tag/{revision} with {"tag": name} creates; DELETE …/tag/{name} deletes.
        state = self.server.hub.state
        with state.lock:
            found = self.repo(type, repo, write=True)
            if self.command == "DELETE":
                if rev not in found.tags:
                    raise HubError(404, f"Tag {rev} does not exist", "RevisionNotFound")
                del found.tags[rev]
            else:
                tag = self.json_body().get("tag") or ""
                if not re.fullmatch(r"[\w.\-/]+", tag) or tag.startswith("refs/"):
                    raise HubError(400, f"Invalid tag name: {tag!r}")
                if tag in found.tags:
                    raise HubError(409, f"Tag {tag} already exists")
                found.tags[tag] = self.commit_at(found, rev).id
            state.save()
        return 200, {}, {}

    # -- uploads --
    def branch_head(self, repo: Repo, rev: str) -> Commit:
        if "create_pr" in self.query:
            raise HubError(400, "Pull requests are not supported by this server")
        if rev not in repo.branches:
            if repo.resolve(rev) is not None:
                raise HubError(400, f"Can only commit to a branch, not to '{rev}'")
            raise HubError(404, f"Branch {rev} does not exist", "RevisionNotFound")
        return repo.commits[repo.branches[rev]]

    def h_preupload(self, type, repo, rev):
        hub, files = self.server.hub, self.json_body().get("files", [])
        with hub.state.lock:
            head = self.branch_head(self.repo(type, repo, write=True), rev)
            patterns = hub.state.lfs_patterns(head)
        answer = []
        for f in files:
            path, size = f["path"], int(f.get("size", 0))
            sample = base64.b64decode(f.get("sample") or "")
            matched = any(fnmatch(path, p) or fnmatch(path.rsplit("/", 1)[-1], p) for p in patterns)
            lfs = size > 0 and (matched or size >= hub.lfs_threshold or b"\0" in sample)
            # The oid of the stored file, computed the way the client computes its local oid for the
            # mode we answer (sha256 for LFS, git sha1 otherwise): equal oids -> file skipped.
            oid, entry = None, head.tree.get(path)
            if entry is not None:
                oid = entry.sha256 if lfs else git_blob_sha1(hub.state.get_blob(entry.sha256))
            answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                           "shouldIgnore": False, "oid": oid})
        return 200, {"files": answer, "commitOid": head.id}, {}

    def h_lfs_batch(self, repo, type="models"):
        hub, body = self.server.hub, self.json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "This server only supports LFS uploads (downloads go through resolve)")
        with hub.state.lock:
            found = self.repo(type, repo, write=True)
            objects = []
            for obj in body.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                if oid in found.lfs_objects:  # already stored: no actions means "skip the upload"
                    objects.append({"oid": oid, "size": size})
                    continue
                # The PUT carries no Authorization header, so a one-off ticket in the URL authorises it.
                ticket = secrets.token_urlsafe(16)
                hub.tickets[ticket] = ((found.type, found.id), oid, size)
                href = f"{self.endpoint}/__lfs/{ticket}/{oid}"
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": href}, "verify": {"href": href + "/verify"}}})
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {}

    def h_lfs_put(self, ticket, oid):
        hub = self.server.hub
        key, expected_oid, size = hub.tickets.get(ticket, (None, None, None))
        if expected_oid != oid:
            raise HubError(403, "Invalid or expired LFS upload ticket")
        if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
        hub.state.put_blob(self.body)
        with hub.state.lock:
            if key in hub.state.repos:
                hub.state.repos[key].lfs_objects.add(oid)
                hub.state.save()
        return 200, b"", {}

    def h_lfs_verify(self, ticket, oid):
        hub = self.server.hub
        key, expected_oid, _ = hub.tickets.get(ticket, (None, None, None))
        with hub.state.lock:
            repo = hub.state.repos.get(key)
            if expected_oid != oid or repo is None or oid not in repo.lfs_objects:
                raise HubError(404, f"LFS object {oid} was not uploaded")
        hub.tickets.pop(ticket, None)
        return 200, {"success": True}, {}

    def h_commit(self, type, repo, rev):
        state = self.server.hub.state
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "Commit payload is not valid NDJSON")
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        header = lines[0].get("value", {})
        with state.lock:
            found = self.repo(type, repo, write=True)
            user, head = self.user, self.branch_head(found, rev)
            parent = header.get("parentCommit")
            if parent and parent != head.id:
                raise HubError(412, f"parentCommit {parent} is not the head of {rev} ({head.id})")
            tree = dict(head.tree)
            for line in lines[1:]:
                self.apply(found, tree, line.get("key"), line.get("value", {}))
            if tree == head.tree:
                # Nothing changes: answer the current head, as git would refuse an empty commit.
                commit = head
            else:
                commit = state.make_commit(found, head, tree, header.get("summary") or "Update",
                                           header.get("description") or "", user.name)
                found.branches[rev] = commit.id
                state.save()
        return 200, {"success": True, "commitOid": commit.id, "commitMessage": commit.title,
                     "commitUrl": f"{self.repo_url(found)}/commit/{commit.id}",
                     "hookOutput": "", "pullRequestUrl": None}, {}

    def apply(self, repo: Repo, tree: dict, key: str, op: dict):
        """Apply one NDJSON operation to `tree` (a copy of the parent's)."""
        state, path = self.server.hub.state, (op.get("path") or "").strip("/")
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise HubError(400, f"Invalid path in commit: {op.get('path')!r}")
        if key == "file":
            if op.get("encoding", "base64") != "base64":
                raise HubError(400, f"Unsupported encoding {op.get('encoding')!r}")
            data = base64.b64decode(op.get("content", ""))
            tree[path] = FileEntry(state.put_blob(data), len(data), False)
        elif key == "lfsFile":
            oid = op.get("oid", "")
            if oid not in repo.lfs_objects or not state.has_blob(oid):
                raise HubError(400, f"LFS object {oid} for {path} was never uploaded")
            tree[path] = FileEntry(oid, len(state.get_blob(oid)), True)
        elif key == "deletedFile":
            if tree.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            doomed = [p for p in tree if p.startswith(path + "/")]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del tree[p]
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    # -- downloads --
    def h_resolve(self, repo, rev, path, type="models"):
        state = self.server.hub.state
        with state.lock:
            found = self.repo(type, repo)
            self.check_gate(found)
            commit = self.commit_at(found, rev)
            entry = commit.tree.get(path)
        if entry is None:
            # X-Repo-Commit lets the client cache the miss (transformers/timm fallbacks rely on it).
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.id})
        data = state.get_blob(entry.sha256)
        etag = entry.sha256 if entry.lfs else state.oid(entry)
        headers = {"X-Repo-Commit": commit.id, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}  # never compressed: sizes must match
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        status, ranged = 200, re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged and self.command == "GET":  # resumed downloads ask for the missing tail
            start, end = int(ranged[1]), int(ranged[2]) if ranged[2] else len(data) - 1
            if start >= len(data):
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            status, data = 206, data[start:end + 1]
        return status, data, headers


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never keeps the test process alive
    allow_reuse_address = True  # restart on the same port right after stop()


class HubServer:
    """A Hub-compatible server in a background thread.

    `tokens` maps token -> (username, role) with role "read" or "write". Writes need a write token
    of the namespace owner; private repos are visible only to their owner; public repos are readable
    without a token. Files are LFS when they match the repo's `.gitattributes`, hold a NUL byte in
    their first 512 bytes, or are at least `lfs_threshold` bytes.
    """

    def __init__(self, tokens: dict | None = None, host: str = "127.0.0.1", port: int = 0,
                 storage: str | None = None, lfs_threshold: int = 1 << 20,
                 public_url: str | None = None, verbose: bool = False):
        self.tokens = {token: User(*value) for token, value in (tokens or {}).items()}
        self.host, self.port = host, port
        self.state = HubState(storage)
        self.lfs_threshold = lfs_threshold
        self.public_url = public_url.rstrip("/") if public_url else None
        self.verbose = verbose
        self.tickets: dict[str, tuple] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for assertions
        self.faults: list[Fault] = []
        self._connections: set = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.netloc}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> "HubServer":
        """Bind (port 0 picks a free port, kept for later restarts) and serve in a daemon thread."""
        if self._httpd is None:
            self._httpd = _HTTPServer((self.host, self.port), _Handler)
            self._httpd.hub = self
            self.port = self._httpd.server_address[1]
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"hubserver-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        """Stop serving and cut open connections, so clients see the Hub as down (connection
        refused, also on pooled keep-alive connections). Repos are kept; `start()` resumes."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- failures on purpose --
    def inject(self, method: str, path: str, status: int | None = 503, delay: float = 0.0, times: int = 1,
               after: int = 0) -> Fault:
        """Make `times` requests with `method` whose path matches the regex `path` (after letting `after`
        of them through) wait `delay` seconds and then, with a `status`, fail with it (503: a transient
        error the client may retry). E.g. `inject("POST", r"/api/models/alice/x/commit/.*")` fails the
        next commit, `after=1` the one after it."""
        fault = Fault(method.upper(), re.compile(path), status, delay, times, after)
        with self.state.lock:
            self.faults.append(fault)
        return fault

    def apply_fault(self, method: str, path: str) -> None:
        with self.state.lock:
            fault = next((f for f in self.faults if f.times > 0 and f.method == method and f.path.fullmatch(path)),
                         None)
            if fault is not None and fault.after > 0:
                fault.after -= 1
                fault = None
            elif fault is not None:
                fault.times -= 1
                fault.hits += 1
        if fault is None:
            return
        time.sleep(fault.delay)  # outside the lock: other requests go on meanwhile
        if fault.status is not None:
            raise HubError(fault.status, f"Injected failure ({fault.status}) of {method} {path}")

    # -- helpers for tests: look at the server's state without going through HTTP --
    def add_token(self, token: str, user: str, role: str = "write"):
        self.tokens[token] = User(user, role)

    def grant_access(self, repo_id: str, user: str, repo_type: str = "model"):
        """Let `user` download a gated repo's files (as accepting its conditions does on the Hub)."""
        with self.state.lock:
            self.state.repos[(repo_type, repo_id)].access.add(user)
            self.state.save()

    def get_repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.state.repos.get((repo_type, repo_id))

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str | None:
        """The commit id `revision` resolves to, or None (no such repo or revision)."""
        with self.state.lock:
            repo = self.get_repo(repo_id, repo_type)
            commit = repo.resolve(revision) if repo else None
            return commit.id if commit else None

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        with self.state.lock:
            repo = self.get_repo(repo_id, repo_type)
            commit, history = (repo.resolve(revision) if repo else None), []
            while commit is not None:
                history.append(commit)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return history


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run a local Hugging Face Hub-compatible server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", action="append", default=[], metavar="NAME:ROLE:TOKEN",
                        help="a user token; ROLE is read or write (repeatable)")
    parser.add_argument("--storage", help="folder to keep repos in across restarts (default: memory)")
    parser.add_argument("--lfs-threshold", type=int, default=1 << 20, help="bytes from which files go LFS")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    tokens = {}
    for spec in args.token or ["user:write:hf_local_write_token"]:
        name, role, token = spec.split(":", 2)
        if role not in ("read", "write"):
            parser.error(f"--token {spec}: ROLE must be read or write")
        tokens[token] = (name, role)
    server = HubServer(tokens, args.host, args.port, args.storage, args.lfs_threshold, verbose=args.verbose)
    server.start()
    print(f"Hub-compatible server listening on {server.url}")
    print("Point the Hugging Face libraries at it (before they are imported):")
    print(f"  export HF_ENDPOINT={server.url} HF_HUB_DISABLE_XET=1")
    for token, user in server.tokens.items():
        print(f"  token for {user.name} ({user.role}): {token}")
    print("Storage:", args.storage or "in memory (lost on exit)", "- Ctrl+C to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
