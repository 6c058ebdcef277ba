"""In-process stand-in of the Hugging Face Hub HTTP API, for publish tests (127.0.0.1 only).

It answers the routes huggingface_hub 2.x calls for create_repo, upload_folder (legacy LFS path,
HF_HUB_DISABLE_XET=1), create_tag, list_repo_refs, repo_info, list_repo_tree and hf_hub_download,
with the request and response shapes read from the installed client sources. Repos are kept in
memory as a list of commits (full file snapshots); LFS objects by sha256.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool
    gated: str | bool = False
    commits: list[dict] = field(default_factory=list)  # {"oid", "files": {path: bytes}, "lfs": set, "summary"}
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> dict | None:
        oid = self.branches.get(rev) or self.tags.get(rev) or rev
        return next((c for c in self.commits if c["oid"] == oid), None)


class HubState:
    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # --- helpers ------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        return repo

    def _commit(self, repo: Repo, rev: str) -> dict | None:
        commit = repo.resolve(unquote(rev))
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    def _entry(self, commit: dict, path: str) -> dict:
        content = commit["files"][path]
        entry = {"type": "file", "path": path, "size": len(content), "oid": git_blob_oid(content)}
        if path in commit["lfs"]:
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
        return entry

    # --- dispatch -----------------------------------------------------------------------------
    def _route(self) -> None:
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.state.requests.append((self.command, path))
        with self.state.lock:
            for pattern, method, fn in ROUTES:
                m = re.fullmatch(pattern, path)
                if m and method == self.command:
                    return fn(self, *m.groups(), query=query)
        self._error(404, "NotFound", f"no route for {self.command} {path}")

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _route

    # --- routes -------------------------------------------------------------------------------
    def create_repo(self, query) -> None:
        payload = json.loads(self._body())
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials")
        repo_id = f"{payload['organization']}/{payload['name']}"
        if payload.get("type") != "dataset":
            return self._error(400, "BadRequest", "the stand-in only hosts datasets")
        url = f"http://{self.headers['Host']}/datasets/{repo_id}"
        if repo_id in self.state.repos:  # the Hub's 409 body still carries the url (create_repo reads it)
            return self._send(
                409, {"error": "You already created this dataset repo", "url": url}, {"X-Error-Code": "RepoExists"}
            )
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id, private)
        files = {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}
        oid = hashlib.sha1(f"init {repo_id}".encode()).hexdigest()
        repo.commits.append({"oid": oid, "files": files, "lfs": set(), "summary": "initial commit"})
        repo.branches["main"] = oid
        self.state.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id})

    def validate_yaml(self, query) -> None:
        content = json.loads(self._body())["content"]
        m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as exc:
            return self._send(400, {"errors": [{"message": str(exc)}], "warnings": []})
        errors = []
        for cfg in (meta or {}).get("configs", []):
            if "config_name" not in cfg or "data_files" not in cfg:
                errors.append({"message": f"config {cfg} lacks config_name/data_files"})
        self._send(400 if errors else 200, {"errors": errors, "warnings": []})

    def settings(self, repo_id, query) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials")
        payload = json.loads(self._body())
        repo.gated = payload.get("gated", repo.gated)
        if "visibility" in payload:
            repo.private = payload["visibility"] == "private"
        self._send(200, {})

    def info(self, repo_id, rev=None, query=None) -> None:
        repo = self._repo(repo_id)
        commit = repo and self._commit(repo, rev or "main")
        if commit is None:
            return
        self._send(
            200,
            {
                "id": repo_id,
                "sha": commit["oid"],
                "private": repo.private,
                "gated": repo.gated,
                "siblings": [{"rfilename": p} for p in sorted(commit["files"])],
                "tags": [],
            },
        )

    def refs(self, repo_id, query) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        fmt = lambda kind, items: [  # noqa: E731
            {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(items.items())
        ]
        self._send(
            200,
            {
                "branches": fmt("heads", repo.branches),
                "tags": fmt("tags", repo.tags),
                "converts": [],
                "pullRequests": [],
            },
        )

    def tree(self, repo_id, rev, sub, query) -> None:
        repo = self._repo(repo_id)
        commit = repo and self._commit(repo, rev)
        if commit is None:
            return
        prefix = (sub or "").strip("/")
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        paths = [p for p in commit["files"] if not prefix or p == prefix or p.startswith(prefix + "/")]
        if prefix and not paths:
            return self._error(404, "EntryNotFound", f"{prefix} does not exist on {rev}")
        entries, dirs = [], set()
        for p in sorted(paths):
            rel = p[len(prefix) + 1 :] if prefix else p
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                d = "/".join(([prefix] if prefix else []) + parts[:depth])
                if d not in dirs and (recursive or depth == 1):
                    dirs.add(d)
                    entries.append({"type": "directory", "path": d, "oid": git_blob_oid(d.encode()), "size": 0})
            if recursive or len(parts) == 1:
                entries.append(self._entry(commit, p))
        self._send(200, entries)

    def preupload(self, repo_id, rev, query) -> None:
        repo = self._repo(repo_id)
        commit = repo and self._commit(repo, rev)
        if commit is None:
            return
        files = []
        for f in json.loads(self._body())["files"]:
            sample = base64.b64decode(f["sample"])
            binary = b"\0" in sample or f["path"].endswith((".parquet", ".png"))
            existing = commit["files"].get(f["path"])
            oid = None
            if existing is not None:
                oid = hashlib.sha256(existing).hexdigest() if binary else git_blob_oid(existing)
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._send(200, {"files": files, "commitOid": commit["oid"]})

    def lfs_batch(self, repo_id, query) -> None:
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials")
        payload = json.loads(self._body())
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:
                href = f"http://{self.headers['Host']}/_lfs/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_put(self, oid, query) -> None:
        body = self._body()
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "BadRequest", "sha256 mismatch")
        self.state.lfs[oid] = body
        self._send(200, b"", {"ETag": '"' + oid[:32] + '"'})

    def commit(self, repo_id, rev, query) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials")
        branch = unquote(rev)
        parent = self._commit(repo, branch)
        if parent is None:
            return
        files, lfs = dict(parent["files"]), set(parent["lfs"])
        summary = ""
        for line in self._body().splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value["summary"]
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return self._error(400, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.state.lfs[value["oid"]]
                lfs.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(value["path"].rstrip("/") + "/")]:
                    files.pop(p)
        digest = hashlib.sha1(parent["oid"].encode())
        for p in sorted(files):
            digest.update(p.encode() + hashlib.sha256(files[p]).digest())
        oid = digest.hexdigest()
        repo.commits.append({"oid": oid, "files": files, "lfs": lfs, "summary": summary})
        repo.branches[branch] = oid
        host = self.headers["Host"]
        self._send(
            200, {"commitUrl": f"http://{host}/datasets/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}
        )

    def tag(self, repo_id, rev, query) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if not self._authorized():
            return self._error(401, "Unauthorized", "Invalid credentials")
        commit = self._commit(repo, rev)
        if commit is None:
            return
        name = json.loads(self._body())["tag"]
        if name in repo.tags:
            return self._error(409, "Conflict", f"tag {name} already exists")
        repo.tags[name] = commit["oid"]
        self._send(200, {})

    def resolve(self, repo_id, rev, path, query) -> None:
        repo = self._repo(repo_id)
        commit = repo and self._commit(repo, rev)
        if commit is None:
            return
        if path not in commit["files"]:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}")
        content = commit["files"][path]
        etag = hashlib.sha256(content).hexdigest() if path in commit["lfs"] else git_blob_oid(content)
        self._send(
            200,
            content,
            {"X-Repo-Commit": commit["oid"], "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"},
        )


ID = r"([^/]+/[^/]+)"
ROUTES = [
    (r"/api/repos/create", "POST", Handler.create_repo),
    (r"/api/validate-yaml", "POST", Handler.validate_yaml),
    (rf"/api/datasets/{ID}/settings", "PUT", Handler.settings),
    (rf"/api/datasets/{ID}", "GET", Handler.info),
    (rf"/api/datasets/{ID}/revision/([^/]+)", "GET", Handler.info),
    (rf"/api/datasets/{ID}/refs", "GET", Handler.refs),
    (rf"/api/datasets/{ID}/tree/([^/]+)(/.*)?", "GET", Handler.tree),
    (rf"/api/datasets/{ID}/preupload/([^/]+)", "POST", Handler.preupload),
    (rf"/datasets/{ID}\.git/info/lfs/objects/batch", "POST", Handler.lfs_batch),
    (r"/_lfs/([0-9a-f]{64})", "PUT", Handler.lfs_put),
    (rf"/api/datasets/{ID}/commit/([^/]+)", "POST", Handler.commit),
    (rf"/api/datasets/{ID}/tag/([^/]+)", "POST", Handler.tag),
    (rf"/datasets/{ID}/resolve/([^/]+)/(.+)", "GET", Handler.resolve),
    (rf"/datasets/{ID}/resolve/([^/]+)/(.+)", "HEAD", Handler.resolve),
]


class HubStandin:
    """``with HubStandin(token) as hub: hub.url`` — a Hub on 127.0.0.1 with a random port."""

    def __init__(self, token: str = "hf_standin_secret_token") -> None:
        self.state = HubState(token)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandin":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo(self, repo_id: str) -> Repo:
        return self.state.repos[repo_id]

    def files_at(self, repo_id: str, rev: str) -> dict[str, bytes]:
        commit = self.repo(repo_id).resolve(rev)
        assert commit is not None, f"no revision {rev}"
        return commit["files"]
