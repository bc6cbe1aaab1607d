"""A local, in-memory Hugging Face Hub for tests (standard library only).

`LocalHub` is a small HTTP server on 127.0.0.1 that speaks the subset of the Hub's HTTP API that
``huggingface_hub`` (2.x), ``transformers`` and ``datasets`` use to create repositories, push files
(regular and Git LFS) and read them back. Repository state (refs, commits, trees) lives in memory;
file contents live in a temporary directory, addressed by their sha256. Every commit has a sha, so
``revision=<commit sha>`` works, as do branches, tags and ``refs/pr/N``.

Point the libraries at it *before* importing them (they read the variables at import time)::

    HF_ENDPOINT=http://127.0.0.1:<port>  HF_HUB_DISABLE_XET=1  HF_TOKEN=<LocalHub.token>

``HF_HUB_DISABLE_XET=1`` matters: with ``hf_xet`` installed, uploads and downloads would otherwise
try the Xet protocol, which this server does not implement. Standalone use::

    python tests/hub_server.py --port 8765 [--token hf_xxx] [--user test-user]

Endpoints (``{t}`` = models | datasets | spaces; ``{p}`` = "" | "datasets/" | "spaces/";
``{rev}`` = a branch, tag, ``refs/pr/N`` or commit sha, URL-quoted as one path segment):

=========================================================  =============================================
Endpoint                                                    Served huggingface_hub calls
=========================================================  =============================================
GET  /api/whoami-v2                                         whoami, auth checks in transformers/datasets
GET  /api/agent-harnesses                                   user-agent registry (served empty)
POST /api/repos/create                                      create_repo (409 when it exists -> exist_ok)
DELETE /api/repos/delete                                    delete_repo
PUT  /api/{t}/{repo}/settings                               update_repo_settings (private, gated)
POST /api/validate-yaml                                     README.md front-matter check in create_commit
GET  /api/{t}/{repo}[/revision/{rev}]                       model_info / dataset_info / repo_info,
                                                            repo_exists, revision_exists, snapshot_download,
                                                            HfFileSystem (``sha``, ``siblings``; ``blobs=1``
                                                            adds sizes and LFS info; ``expand`` filters)
GET  /api/{t}/{repo}/tree/{rev}[/{path}]                    list_repo_tree (``recursive``, ``expand``),
                                                            list_repo_files, snapshot_download, HfFileSystem
POST /api/{t}/{repo}/paths-info/{rev}                       get_paths_info, file_exists, HfFileSystem.info
POST /api/{t}/{repo}/preupload/{rev}                        upload mode (regular / lfs), gitignore, remote oid
POST /api/{t}/{repo}/commit/{rev}                           create_commit (NDJSON: header, file, lfsFile,
                                                            deletedFile, deletedFolder; parentCommit -> 412;
                                                            ``create_pr=1`` opens refs/pr/N)
GET  /api/{t}/{repo}/refs                                   list_repo_refs
GET  /api/{t}/{repo}/commits/{rev}                          list_repo_commits
POST|DELETE /api/{t}/{repo}/branch/{branch}                 create_branch / delete_branch
POST /api/{t}/{repo}/tag/{rev}, DELETE .../tag/{tag}        create_tag / delete_tag
POST /{p}{repo}.git/info/lfs/objects/batch                  LFS batch API (basic transfer, upload + verify)
PUT  /lfs-objects/{sha256}?sig=...                          LFS content upload (the "pre-signed" URL)
POST /lfs-verify/{sha256}                                   LFS verify action
GET|HEAD /{p}{repo}/resolve/{rev}/{path}                    hf_hub_download, snapshot_download,
                                                            from_pretrained, HfFileSystem reads (Range)
=========================================================  =============================================

Hub behaviour reproduced because clients rely on it:

- Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and
  ``X-Error-Message`` so that huggingface_hub raises ``RepositoryNotFoundError``,
  ``RevisionNotFoundError`` and ``RemoteEntryNotFoundError``; private repos answer 404 without a
  valid token; writes need the token (401 otherwise, 403 outside the user's namespaces).
- ``create_repo`` makes an initial commit holding a ``.gitattributes`` with the Hub's default LFS
  patterns (``*.safetensors``, ``*.bin``, ``*.parquet``, ``*.arrow``, images for datasets, ...).
  Preupload answers "lfs" for a path matched by the ``.gitattributes`` of the target revision, a file
  over 10 MiB or a binary sample (NUL byte), and "regular" otherwise. A regular file over 10 MiB in
  a commit is refused (400), as on the Hub.
- Resolve answers 200 with the content directly (no CDN redirect) and the headers file_download
  reads: ``ETag`` (git blob sha1, or sha256 for LFS files), ``X-Repo-Commit``, ``X-Linked-Etag`` /
  ``X-Linked-Size`` for LFS files, ``Content-Length``; ``Range: bytes=a-b`` gives 206 / 416.
- LFS uploads are checked against the announced sha256 and size; a commit referencing an LFS object
  that was never uploaded is refused (422).

``LocalHub.fail_requests(count, status, method=, contains=)`` makes the next matching requests fail
(no side effect), to test retries and warnings of code that pushes. ``LocalHub.request_log()`` /
``LocalHub.requests`` record every request (method, path, status) to check which calls a client made.

Not implemented (answered 501 with the route in the message): discussions, Xet, multipart LFS
transfers, pagination (every listing fits in one page), Spaces runtime, collections, jobs.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

logger = logging.getLogger("local_hub")

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Same limit as the Hub: bigger files must go through LFS.
MAX_REGULAR_FILE_SIZE = 10 * 1024 * 1024
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")

# Default LFS patterns written into every new repository's .gitattributes (the Hub does the same).
_LFS_PATTERNS_COMMON = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
    "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
    "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
    "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
    "*.zst", "*tfevents*",
]  # fmt: skip
_LFS_PATTERNS_DATASET = [
    "*.lz4", "*.mds", "*.mp3", "*.ogg", "*.wav", "*.flac", "*.bmp", "*.gif", "*.png",
    "*.tiff", "*.jpg", "*.jpeg", "*.webp", "*.mp4", "*.webm",
]  # fmt: skip


def _default_gitattributes(repo_type: str) -> bytes:
    patterns = _LFS_PATTERNS_COMMON + (_LFS_PATTERNS_DATASET if repo_type == "dataset" else [])
    return "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in patterns).encode()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + "000Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _gitattributes_lfs_patterns(content: bytes) -> list[str]:
    patterns = []
    for line in content.decode("utf-8", errors="replace").splitlines():
        parts = line.strip().split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a gitattributes/gitignore glob with a slash (anchored at the root) into a regex."""
    out, i = [], 0
    pattern = pattern.lstrip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _path_matches(path: str, pattern: str) -> bool:
    """gitattributes semantics: a pattern without '/' matches the basename at any depth."""
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return _glob_to_regex(pattern).match(path) is not None


def _gitignored(path: str, gitignore: str) -> bool:
    """Whether ``path`` is ignored by a .gitignore text (later lines win, '!' re-includes)."""
    parts = path.split("/")
    # A pattern matching a parent folder ignores everything inside it.
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    ignored = False
    for raw in gitignore.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        dir_only = pattern.endswith("/")
        pattern = pattern.strip("/") if "/" in pattern.rstrip("/") else pattern.rstrip("/")
        targets = candidates[:-1] if dir_only else candidates
        if any(_path_matches(target, pattern) for target in targets):
            ignored = not negate
    return ignored


class HubError(Exception):
    """An HTTP error answered to the client, with the Hub's X-Error-Code when there is one."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        body: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit tree. ``sha256`` addresses the content in the blob store."""

    path: str
    size: int
    sha256: str
    git_oid: str  # git blob sha1 of the content (regular) or of the LFS pointer (LFS)
    lfs: bool

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256, self.size))

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    parents: list[str]
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    gated: Any = False
    sdk: str | None = None
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def url_prefix(self) -> str:
        return URL_PREFIXES[self.repo_type]

    def resolve(self, revision: str) -> Commit:
        rev = unquote(revision)
        for prefix in ("refs/heads/",):
            if rev.startswith(prefix):
                rev = rev[len(prefix) :]
        if rev.startswith("refs/tags/"):
            rev = rev[len("refs/tags/") :]
        if rev in self.branches:
            return self.commits[self.branches[rev]]
        if rev in self.tags:
            return self.commits[self.tags[rev]]
        match = re.fullmatch(r"refs/pr/(\d+)", rev)
        if match and int(match.group(1)) in self.pull_requests:
            return self.commits[self.pull_requests[int(match.group(1))]]
        if rev in self.commits:
            return self.commits[rev]
        if re.fullmatch(r"[0-9a-f]{7,39}", rev):
            found = [c for oid, c in self.commits.items() if oid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


class BlobStore:
    """Content-addressed files on disk (sha256 -> bytes)."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def path(self, sha256: str) -> str:
        return os.path.join(self.root, sha256)

    def has(self, sha256: str) -> bool:
        return os.path.exists(self.path(sha256))

    def size(self, sha256: str) -> int:
        return os.path.getsize(self.path(sha256))

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has(sha):
            tmp = self.path(sha) + f".tmp{threading.get_ident()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path(sha))
        return sha

    def read(self, sha256: str, start: int = 0, length: int | None = None) -> bytes:
        with open(self.path(sha256), "rb") as f:
            f.seek(start)
            return f.read() if length is None else f.read(length)


class LocalHub:
    """An in-process Hugging Face Hub on 127.0.0.1.

    Args:
        port: TCP port; 0 picks a free one (read it back from ``endpoint`` after ``start()``).
        token: the only accepted write token (a random ``hf_...`` one if not given).
        user: the user name the token belongs to (``namespace``).
        orgs: extra namespaces the user may create repositories in.
        storage_dir: where blobs are written (a fresh temp dir, removed by ``stop()``, if not given).
    """

    def __init__(
        self,
        port: int = 0,
        token: str | None = None,
        user: str = "test-user",
        orgs: tuple[str, ...] = ("test-org",),
        storage_dir: str | None = None,
    ):
        self.host = "127.0.0.1"
        self.port = port
        self.token = token or "hf_local" + secrets.token_hex(16)
        self.namespace = user
        self.orgs = tuple(orgs)
        self._own_storage = storage_dir is None
        self._storage_dir = storage_dir or tempfile.mkdtemp(prefix="local_hub_")
        if self._own_storage:  # also cleaned when the process ends without stop()
            atexit.register(shutil.rmtree, self._storage_dir, True)
        self.blobs = BlobStore(os.path.join(self._storage_dir, "blobs"))
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), in arrival order
        self._secret = secrets.token_bytes(16)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._commit_counter = 0
        self._faults: list[list[Any]] = []  # [remaining, status, method, contains]

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalHub:
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_storage:
            shutil.rmtree(self._storage_dir, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request_log(self, contains: str = "") -> list[str]:
        """``"METHOD path status"`` lines of the requests received so far whose path contains ``contains``."""
        with self.lock:
            return [f"{m} {p} {s}" for m, p, s in self.requests if contains in p]

    def fail_requests(self, count: int, status: int = 500, *, method: str = "", contains: str = "") -> None:
        """Answer the next ``count`` requests whose method is ``method`` (any if "") and whose path contains
        ``contains`` with HTTP ``status`` and no side effect: lets tests check how clients survive a Hub outage
        (e.g. ``fail_requests(1, 500, method="POST", contains="/commit/")`` makes the next commit fail)."""
        if count < 1 or not 400 <= status <= 599:
            raise ValueError(f"fail_requests: need count >= 1 and a 4xx/5xx status, got {count}, {status}")
        with self.lock:
            self._faults.append([count, status, method.upper(), contains])

    def _take_fault(self, method: str, path: str) -> int | None:
        with self.lock:
            for fault in self._faults:
                if (not fault[2] or fault[2] == method) and fault[3] in path:
                    fault[0] -= 1
                    if fault[0] == 0:
                        self._faults.remove(fault)
                    return fault[1]
        return None

    # ------------------------------------------------------------------ helpers used by handlers
    def user_for(self, authorization: str | None) -> str | None:
        """The user name for an ``Authorization: Bearer`` header; None when anonymous; 401 when wrong."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), self.token):
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.namespace

    def get_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            kind = {"model": "Repository", "dataset": "Dataset", "space": "Space"}[repo_type]
            raise HubError(404, f"{kind} Not Found: {repo_id} ({repo_type})", "RepoNotFound")
        return repo

    def check_write(self, repo_id: str, user: str | None) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated (a write token) to do this")
        if repo_id.split("/")[0] not in (self.namespace, *self.orgs):
            raise HubError(403, f"You don't have the rights to create or write {repo_id}")

    def lfs_signature(self, sha256: str) -> str:
        return hmac.new(self._secret, sha256.encode(), hashlib.sha256).hexdigest()[:32]

    def new_commit(
        self, repo: Repo, parent: Commit | None, files: dict[str, FileEntry], title: str, message: str
    ) -> Commit:
        self._commit_counter += 1
        date = _now_iso()
        listing = json.dumps(sorted((p, e.git_oid) for p, e in files.items()))
        seed = (
            f"{listing}\n{parent.oid if parent else ''}\n{title}\n{message}\n{date}\n{self._commit_counter}"
        )
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            parents=[parent.oid] if parent else [],
            title=title,
            message=message,
            author=self.namespace,
            date=date,
            files=files,
        )
        repo.commits[commit.oid] = commit
        return commit

    def regular_entry(self, path: str, data: bytes) -> FileEntry:
        return FileEntry(path, len(data), self.blobs.put_bytes(data), _git_blob_sha1(data), lfs=False)

    def lfs_entry(self, path: str, sha256: str, size: int) -> FileEntry:
        return FileEntry(path, size, sha256, _git_blob_sha1(_lfs_pointer(sha256, size)), lfs=True)

    def create_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None = None) -> Repo:
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now_iso(), sdk=sdk)
        files = {".gitattributes": self.regular_entry(".gitattributes", _default_gitattributes(repo_type))}
        repo.branches["main"] = self.new_commit(repo, None, files, "initial commit", "").oid
        self.repos[(repo_type, repo_id)] = repo
        return repo


# ---------------------------------------------------------------------- tree views of a commit
def _dir_paths(files: dict[str, FileEntry]) -> set[str]:
    dirs = set()
    for path in files:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return dirs


def _dir_oid(files: dict[str, FileEntry], directory: str) -> str:
    prefix = directory + "/" if directory else ""
    listing = sorted((p[len(prefix) :], e.git_oid) for p, e in files.items() if p.startswith(prefix))
    return hashlib.sha1(("tree\0" + json.dumps(listing)).encode()).hexdigest()


def _last_commit_touching(repo: Repo, head: Commit, path: str, is_dir: bool) -> Commit:
    """The most recent first-parent ancestor of ``head`` that changed ``path`` (git log -1 -- path)."""

    def state(commit: Commit) -> Any:
        if not is_dir:
            entry = commit.files.get(path)
            return entry.git_oid if entry else None
        return _dir_oid(commit.files, path) if path in _dir_paths(commit.files) or not path else None

    commit = head
    while commit.parents:
        parent = repo.commits[commit.parents[0]]
        if state(parent) != state(commit):
            return commit
        commit = parent
    return commit


def _file_json(repo: Repo, head: Commit, entry: FileEntry, expand: bool) -> dict:
    out: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": entry.path}
    if entry.lfs:
        out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    if expand:
        last = _last_commit_touching(repo, head, entry.path, is_dir=False)
        out["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
    return out


def _dir_json(repo: Repo, head: Commit, path: str, expand: bool) -> dict:
    out: dict[str, Any] = {"type": "directory", "oid": _dir_oid(head.files, path), "size": 0, "path": path}
    if expand:
        last = _last_commit_touching(repo, head, path, is_dir=True)
        out["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
    return out


def _is_true(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


# ---------------------------------------------------------------------- HTTP handler
class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive: clients pool connections
    server_version = "LocalHub/1.0"

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler API
        logger.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        with self.hub.lock:
            self.hub.requests.append((self.command, self.path, status))

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _dispatch(self) -> None:
        body = b""
        try:
            if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
                body = self._read_body()
            status = self.hub._take_fault(self.command, self.path)
            if status is not None:
                raise HubError(status, f"local hub: injected failure {status} for {self.command} {self.path}")
            self._route(body)
        except HubError as err:
            headers = {"X-Error-Message": err.message.replace("\n", " "), **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json(err.status, {"error": err.message, **err.body}, headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a server bug must surface as a readable 500, not a hang
            logger.exception("local hub: error while serving %s %s", self.command, self.path)
            with contextlib.suppress(Exception):
                self._json(500, {"error": f"local hub internal error: {type(exc).__name__}: {exc}"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch  # noqa: N815

    # ------------------------------------------------------------------ routing
    def _route(self, body: bytes) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query, keep_blank_values=True)
        # Split on the raw path first: revisions and paths are URL-quoted as single segments.
        segs = [unquote(s) for s in split.path.split("/")[1:]]
        method = self.command
        hub = self.hub
        with hub.lock:
            user = hub.user_for(self.headers.get("Authorization"))

        if segs[:1] == ["api"]:
            rest = segs[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami(user)
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(user, _loads(body))
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(user, _loads(body))
            if rest == ["agent-harnesses"] and method == "GET":
                # Registry used by huggingface_hub to tag its user agent: an empty one detects nothing.
                return self._json(200, {"standardEnvVars": [], "harnesses": {}})
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(_loads(body))
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id, action = REPO_TYPES[rest[0]], "/".join(rest[1:3]), rest[3:]
                return self._repo_api(method, user, repo_type, repo_id, action, body)
        elif segs and segs[0] in ("lfs-objects", "lfs-verify") and len(segs) == 2:
            return (
                self._lfs_upload(segs[1], body) if segs[0] == "lfs-objects" else self._lfs_verify(user, body)
            )
        else:
            repo_type = "model"
            if segs and segs[0] in REPO_TYPES and segs[0] != "models":
                repo_type, segs = REPO_TYPES[segs[0]], segs[1:]
            if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(user, repo_type, "/".join(segs[:2]), segs[3], "/".join(segs[4:]))
            if (
                len(segs) == 6
                and segs[1].endswith(".git")
                and segs[2:] == ["info", "lfs", "objects", "batch"]
            ):
                return self._lfs_batch(user, repo_type, segs[0] + "/" + segs[1][:-4], _loads(body))
        raise HubError(501, f"local hub: endpoint not implemented: {method} {split.path}")

    def _repo_api(
        self, method: str, user: str | None, repo_type: str, repo_id: str, action: list[str], body: bytes
    ):
        hub = self.hub
        with hub.lock:
            repo = hub.get_repo(repo_type, repo_id, user)
        name = action[0] if action else ""
        if method == "GET" and (not action or (name == "revision" and len(action) == 2)):
            return self._repo_info(repo, action[1] if action else "main")
        if method == "GET" and name == "tree" and len(action) >= 2:
            return self._tree(repo, action[1], "/".join(action[2:]).strip("/"))
        if method == "POST" and name == "paths-info" and len(action) == 2:
            return self._paths_info(repo, action[1], body)
        if method == "POST" and name == "preupload" and len(action) == 2:
            hub.check_write(repo_id, user)
            return self._preupload(repo, action[1], _loads(body))
        if method == "POST" and name == "commit" and len(action) == 2:
            hub.check_write(repo_id, user)
            return self._commit(repo, action[1], body)
        if method == "GET" and name == "refs" and len(action) == 1:
            return self._refs(repo)
        if method == "GET" and name == "commits" and len(action) == 2:
            return self._commits(repo, action[1])
        if name == "branch" and len(action) == 2 and method in ("POST", "DELETE"):
            hub.check_write(repo_id, user)
            return self._branch(repo, method, action[1], _loads(body))
        if name == "tag" and len(action) == 2 and method in ("POST", "DELETE"):
            hub.check_write(repo_id, user)
            return self._tag(repo, method, action[1], _loads(body))
        if name == "settings" and len(action) == 1 and method == "PUT":
            hub.check_write(repo_id, user)
            return self._settings(repo, _loads(body))
        raise HubError(
            501,
            f"local hub: endpoint not implemented: {method} /api/{repo_type}s/{repo_id}/{'/'.join(action)}",
        )

    # ------------------------------------------------------------------ account / repos
    def _whoami(self, user: str | None) -> None:
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        hub = self.hub
        self._json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": "Local Test User",
                "email": f"{user}@localhost",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [
                    {"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in hub.orgs
                ],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "local-hub", "role": "write", "createdAt": _now_iso()},
                },
            },
        )

    def _create_repo(self, user: str | None, payload: dict) -> None:
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name):
            raise HubError(400, f"Invalid repo name: {name!r}")
        namespace = payload.get("organization") or user or ""
        repo_id = f"{namespace}/{name}"
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type!r}")
        self.hub.check_write(repo_id, user)
        private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
        hub = self.hub
        url = f"{hub.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        with hub.lock:
            if (repo_type, repo_id) in hub.repos:
                # create_repo(exist_ok=True) reads the url from this 409 answer, as from the Hub's.
                raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
            hub.create_repo(repo_type, repo_id, private, payload.get("sdk"))
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, user: str | None, payload: dict) -> None:
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        repo_type = payload.get("type") or "model"
        self.hub.check_write(repo_id, user)
        with self.hub.lock:
            self.hub.get_repo(repo_type, repo_id, user)
            del self.hub.repos[(repo_type, repo_id)]
        self._json(200, {})

    def _settings(self, repo: Repo, payload: dict) -> None:
        with self.hub.lock:
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "visibility" in payload:
                repo.private = payload["visibility"] == "private"
            if "gated" in payload:
                repo.gated = payload["gated"]
        self._json(200, {})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content")
        if not isinstance(content, str):
            raise HubError(400, "'content' must be a string")
        lines = content.splitlines()
        if lines and lines[0].strip() == "---" and not any(line.strip() == "---" for line in lines[1:]):
            self._json(400, {"errors": [{"message": "YAML front matter is not closed by a '---' line"}]})
            return
        self._json(200, {"errors": [], "warnings": []})

    # ------------------------------------------------------------------ reads
    def _repo_info(self, repo: Repo, revision: str) -> None:
        with self.hub.lock:
            commit = repo.resolve(revision)
            blobs = _is_true(self.query.get("blobs"))
            siblings = []
            for entry in sorted(commit.files.values(), key=lambda e: e.path):
                sib: dict[str, Any] = {"rfilename": entry.path}
                if blobs:
                    sib.update(size=entry.size, blobId=entry.git_oid)
                    if entry.lfs:
                        sib["lfs"] = {
                            "size": entry.size,
                            "sha256": entry.sha256,
                            "pointerSize": entry.pointer_size,
                        }
                siblings.append(sib)
            info: dict[str, Any] = {
                "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "createdAt": repo.created_at,
                "lastModified": commit.date,
                "private": repo.private,
                "gated": repo.gated,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(e.size for e in commit.files.values()),
            }
            if repo.repo_type == "model":
                info["modelId"] = repo.repo_id
            if repo.repo_type == "space":
                info["sdk"] = repo.sdk
        expand = self.query.get("expand") or self.query.get("expand[]")
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        self._json(200, info)

    def _tree(self, repo: Repo, revision: str, path: str) -> None:
        recursive = _is_true(self.query.get("recursive"))
        expand = _is_true(self.query.get("expand"))
        with self.hub.lock:
            commit = repo.resolve(revision)
            dirs = _dir_paths(commit.files)
            if path and path not in dirs:
                if path in commit.files:  # the Hub lists a file path as itself
                    self._json(200, [_file_json(repo, commit, commit.files[path], expand)])
                    return
                raise HubError(
                    404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid}
                )
            prefix = path + "/" if path else ""

            def wanted(p: str) -> bool:
                return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

            entries = [_dir_json(repo, commit, d, expand) for d in sorted(dirs) if wanted(d)]
            entries += [
                _file_json(repo, commit, e, expand) for p, e in sorted(commit.files.items()) if wanted(p)
            ]
        # Git order: a folder's content after the folder itself, siblings sorted.
        entries.sort(key=lambda e: e["path"].split("/"))
        self._json(200, entries, {"X-Repo-Commit": commit.oid})

    def _paths_info(self, repo: Repo, revision: str, body: bytes) -> None:
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            payload = _loads(body)
            paths, expand = payload.get("paths") or [], bool(payload.get("expand"))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _is_true(form.get("expand"))
        with self.hub.lock:
            commit = repo.resolve(revision)
            dirs = _dir_paths(commit.files)
            out = []
            for raw in paths:
                path = raw.strip("/")
                if path in commit.files:
                    out.append(_file_json(repo, commit, commit.files[path], expand))
                elif path in dirs:
                    out.append(_dir_json(repo, commit, path, expand))
        self._json(200, out, {"X-Repo-Commit": commit.oid})

    def _refs(self, repo: Repo) -> None:
        with self.hub.lock:
            payload = {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()
                ],
                "converts": [],
                "tags": [
                    {"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in repo.tags.items()
                ],
                "pullRequests": [
                    {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
                    for n, c in repo.pull_requests.items()
                ],
            }
        self._json(200, payload)

    def _commits(self, repo: Repo, revision: str) -> None:
        with self.hub.lock:
            commit, out = repo.resolve(revision), []
            while True:
                out.append(
                    {
                        "id": commit.oid,
                        "title": commit.title,
                        "message": commit.message,
                        "authors": [{"user": commit.author}],
                        "date": commit.date,
                    }
                )
                if not commit.parents:
                    break
                commit = repo.commits[commit.parents[0]]
        self._json(200, out)

    def _resolve(self, user: str | None, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.hub.lock:
            repo = self.hub.get_repo(repo_type, repo_id, user)
            commit = repo.resolve(revision)
            entry = commit.files.get(path)
        if entry is None:
            raise HubError(
                404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid}
            )
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{entry.etag}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        start, end = 0, entry.size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
            if not match or (not match.group(1) and not match.group(2)):
                raise HubError(416, f"Unsupported Range header: {range_header}")
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), entry.size - 1) if match.group(2) else entry.size - 1
            else:  # suffix range: the last N bytes
                start = max(entry.size - int(match.group(2)), 0)
            if start >= entry.size or start > end:
                raise HubError(
                    416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{entry.size}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(end - start + 1, 0)
        headers["Content-Length"] = str(length)
        data = (
            b"" if self.command == "HEAD" or length == 0 else self.hub.blobs.read(entry.sha256, start, length)
        )
        self._send(status, data, headers)

    # ------------------------------------------------------------------ writes
    def _preupload(self, repo: Repo, revision: str, payload: dict) -> None:
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "preupload: 'files' must be a list")
        with self.hub.lock:
            commit = repo.resolve(revision)
            attributes = commit.files.get(".gitattributes")
            patterns = (
                _gitattributes_lfs_patterns(self.hub.blobs.read(attributes.sha256)) if attributes else []
            )
            gitignore = payload.get("gitIgnore")
            if gitignore is None and ".gitignore" in commit.files:
                gitignore = self.hub.blobs.read(commit.files[".gitignore"].sha256).decode("utf-8", "replace")
            out = []
            for item in files:
                path, size = item.get("path"), item.get("size")
                if not isinstance(path, str) or not isinstance(size, int):
                    raise HubError(
                        400, f"preupload: each file needs a 'path' and an integer 'size', got {item}"
                    )
                sample = base64.b64decode(item.get("sample") or "")
                lfs = (
                    size > MAX_REGULAR_FILE_SIZE
                    or b"\0" in sample
                    or any(_path_matches(path, p) for p in patterns)
                )
                existing = commit.files.get(path)
                oid = None
                if existing is not None:
                    oid = existing.sha256 if existing.lfs else existing.git_oid
                out.append(
                    {
                        "path": path,
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": bool(gitignore) and _gitignored(path, gitignore),
                        "oid": oid,
                    }
                )
        self._json(200, {"files": out, "commitOid": commit.oid})

    def _commit(self, repo: Repo, revision: str, body: bytes) -> None:
        hub = self.hub
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit: the first NDJSON line must be the header")
        header = lines[0].get("value") or {}
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary:
            raise HubError(400, "commit: the header needs a non-empty 'summary'")
        branch = unquote(revision)
        if branch.startswith("refs/heads/"):
            branch = branch[len("refs/heads/") :]
        create_pr = _is_true(self.query.get("create_pr"))
        with hub.lock:
            pr_match = re.fullmatch(r"refs/pr/(\d+)", branch)
            if pr_match:
                pr_num = int(pr_match.group(1))
                if pr_num not in repo.pull_requests:
                    raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                parent = repo.commits[repo.pull_requests[pr_num]]
            elif branch in repo.branches:
                parent = repo.commits[repo.branches[branch]]
            elif _COMMIT_SHA.fullmatch(branch) or branch in repo.tags:
                raise HubError(400, f"commit: can only commit to a branch, not to {branch!r}")
            else:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if header.get("parentCommit") and header["parentCommit"] != parent.oid:
                raise HubError(412, f"A commit has happened since. Please refresh and try again. ({branch})")
            files = dict(parent.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = value.get("path", "")
                if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"commit: invalid path {path!r} in a '{key}' line")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(
                            400, f"commit: unsupported encoding {value.get('encoding')!r} for {path}"
                        )
                    data = base64.b64decode(value.get("content", ""))
                    if len(data) > MAX_REGULAR_FILE_SIZE:
                        raise HubError(
                            400,
                            f"commit: {path} is {len(data)} bytes; files over 10 MiB must be uploaded with LFS",
                        )
                    self._check_no_dir_clash(files, path)
                    files[path] = hub.regular_entry(path, data)
                elif key == "lfsFile":
                    oid = value.get("oid", "")
                    if value.get("algo", "sha256") != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", oid):
                        raise HubError(400, f"commit: invalid LFS oid {oid!r} for {path}")
                    if not hub.blobs.has(oid):
                        raise HubError(422, f"commit: LFS object {oid} for {path} was never uploaded")
                    size = hub.blobs.size(oid)
                    if value.get("size") is not None and value["size"] != size:
                        raise HubError(
                            422, f"commit: {path} announced {value['size']} bytes, LFS object has {size}"
                        )
                    self._check_no_dir_clash(files, path)
                    files[path] = hub.lfs_entry(path, oid, size)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(
                            404, f"A file with this name doesn't exist: {path}", "EntryNotFound",
                            headers={"X-Repo-Commit": parent.oid},
                        )  # fmt: skip
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(
                            404, f"A folder with this name doesn't exist: {path}", "EntryNotFound",
                            headers={"X-Repo-Commit": parent.oid},
                        )  # fmt: skip
                    for p in doomed:
                        del files[p]
                else:
                    raise HubError(400, f"commit: unknown operation key {key!r}")
            commit = hub.new_commit(repo, parent, files, summary, header.get("description") or "")
            pr_url = None
            if create_pr and not pr_match:
                pr_num = max(repo.pull_requests, default=0) + 1
                repo.pull_requests[pr_num] = commit.oid
                pr_url = f"{hub.endpoint}/{repo.url_prefix}{repo.repo_id}/discussions/{pr_num}"
            elif pr_match:
                repo.pull_requests[int(pr_match.group(1))] = commit.oid
            else:
                repo.branches[branch] = commit.oid
        commit_url = f"{hub.endpoint}/{repo.url_prefix}{repo.repo_id}/commit/{commit.oid}"
        self._json(
            200, {"success": True, "commitOid": commit.oid, "commitUrl": commit_url, "pullRequestUrl": pr_url}
        )

    @staticmethod
    def _check_no_dir_clash(files: dict[str, FileEntry], path: str) -> None:
        if path in _dir_paths(files):
            raise HubError(400, f"commit: {path} is a folder in the repo; it cannot also be a file")
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise HubError(400, f"commit: {'/'.join(parts[:i])} is a file; it cannot contain {path}")

    def _branch(self, repo: Repo, method: str, branch: str, payload: dict) -> None:
        with self.hub.lock:
            if method == "DELETE":
                if branch not in repo.branches:
                    raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                if branch == "main":
                    raise HubError(403, "Cannot delete the main branch")
                del repo.branches[branch]
            else:
                if branch in repo.branches:
                    raise HubError(409, f"Reference already exists: refs/heads/{branch}")
                start = repo.resolve(payload.get("startingPoint") or "main")
                repo.branches[branch] = start.oid
        self._json(200, {})

    def _tag(self, repo: Repo, method: str, name: str, payload: dict) -> None:
        with self.hub.lock:
            if method == "DELETE":
                if name not in repo.tags:
                    raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
                del repo.tags[name]
            else:
                tag = payload.get("tag")
                if not isinstance(tag, str) or not tag:
                    raise HubError(400, "create_tag: 'tag' is required")
                if tag in repo.tags:
                    raise HubError(409, f"Tag already exists: {tag}")
                repo.tags[tag] = repo.resolve(name).oid
        self._json(200, {})

    # ------------------------------------------------------------------ LFS
    def _lfs_batch(self, user: str | None, repo_type: str, repo_id: str, payload: dict) -> None:
        hub = self.hub
        with hub.lock:
            hub.get_repo(repo_type, repo_id, user)
        if payload.get("operation") != "upload":
            raise HubError(501, "local hub: only the LFS 'upload' batch operation is implemented")
        hub.check_write(repo_id, user)
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if (
                not isinstance(oid, str)
                or not re.fullmatch(r"[0-9a-f]{64}", oid)
                or not isinstance(size, int)
            ):
                objects.append(
                    {
                        "oid": str(oid),
                        "size": int(size or 0),
                        "error": {"code": 422, "message": "Invalid oid or size"},
                    }
                )
                continue
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not (hub.blobs.has(oid) and hub.blobs.size(oid) == size):
                href = f"{hub.endpoint}/lfs-objects/{oid}?size={size}&sig={hub.lfs_signature(oid)}"
                entry["actions"] = {
                    "upload": {"href": href, "expires_in": 3600},
                    "verify": {"href": f"{hub.endpoint}/lfs-verify/{oid}", "header": {}},
                }
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, oid: str, body: bytes) -> None:
        if self.command != "PUT":
            raise HubError(405, "LFS objects are uploaded with PUT")
        # Like the Hub's pre-signed storage URLs: no Authorization header, the signature is in the URL.
        sig = (self.query.get("sig") or [""])[-1]
        if not hmac.compare_digest(sig, self.hub.lfs_signature(oid)):
            raise HubError(403, "Invalid or missing LFS upload signature")
        expected_size = int((self.query.get("size") or ["-1"])[-1])
        actual = hashlib.sha256(body).hexdigest()
        if actual != oid:
            raise HubError(400, f"LFS upload: content sha256 {actual} does not match the object id {oid}")
        if expected_size >= 0 and len(body) != expected_size:
            raise HubError(400, f"LFS upload: got {len(body)} bytes, announced {expected_size}")
        self.hub.blobs.put_bytes(body)
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def _lfs_verify(self, user: str | None, body: bytes) -> None:
        if user is None:
            raise HubError(401, "LFS verify needs the write token")
        payload = _loads(body)
        oid, size = payload.get("oid", ""), payload.get("size")
        if not self.hub.blobs.has(oid):
            raise HubError(404, f"LFS object {oid} not found")
        if size is not None and self.hub.blobs.size(oid) != size:
            raise HubError(422, f"LFS object {oid} has {self.hub.blobs.size(oid)} bytes, expected {size}")
        self._json(200, {"message": "Everything good"})


def _loads(body: bytes) -> dict:
    if not body:
        return {}
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as err:
        raise HubError(400, f"Request body is not valid JSON: {err}") from err
    if not isinstance(payload, dict):
        raise HubError(400, "Request body must be a JSON object")
    return payload


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Hugging Face Hub for manual tests.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=None, help="write token to accept (random if not given)")
    parser.add_argument("--user", default="test-user")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    hub = LocalHub(port=args.port, token=args.token, user=args.user).start()
    # Stop cleanly (and remove the blob dir) on `kill` as on Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    print(f"Local Hub at {hub.endpoint} (user {hub.namespace}). In the client shell:")
    print(f"  export HF_ENDPOINT={hub.endpoint} HF_HUB_DISABLE_XET=1 HF_TOKEN={hub.token}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
