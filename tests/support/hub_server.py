"""A Hugging Face Hub of local folders on 127.0.0.1, for the fetch path of `python -m src.assets`:
the real huggingface_hub client (`HfApi`, `snapshot_download`) downloads from it, with
`HF_ENDPOINT` pointing here, as it would from huggingface.co. It answers the calls a snapshot
download makes and nothing else: a repository's info at a revision, its file tree, and each file
(`resolve`) with the headers the client reads (the commit, the ETag: an LFS file's sha256, else
git's blob id, and the size). Every request is recorded, so a test can check what was downloaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".model")  # stored in LFS, as the Hub does


@dataclass
class Repo:
    folder: Path
    commit: str
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def of(cls, repo_id: str, folder: Path) -> Repo:
        files = {
            p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()
        }
        return cls(folder, hashlib.sha1(repo_id.encode()).hexdigest(), files)


def blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def tree_entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(data), "oid": blob_id(data)}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {
            "oid": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "pointerSize": 134,
        }
    return entry


class LocalHub:
    """`repos[(repo_type, repo_id)] = folder`; `url` once started; `requests`: (method, path)."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the test reads `requests`
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo_type: str, repo_id: str, folder: Path) -> Repo:
        self.repos[(repo_type, repo_id)] = Repo.of(repo_id, folder)
        return self.repos[(repo_type, repo_id)]

    def __enter__(self) -> LocalHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloaded(self) -> list[str]:
        """The files fetched whole (GET of a resolve URL), as 'repo_id/path'."""
        return [
            p.split("/resolve/")[0].removeprefix("/datasets/").lstrip("/")
            + "/"
            + p.split("/resolve/")[1].split("/", 1)[1]
            for m, p in self.requests
            if m == "GET" and "/resolve/" in p
        ]

    # --- the routes -------------------------------------------------------------------------

    def answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append((request.command, path))
        if path.startswith("/api/"):
            kind, _, rest = path[len("/api/") :].partition("/")
            repo_type = {"models": "model", "datasets": "dataset"}.get(kind)
            for (t, repo_id), repo in self.repos.items():
                if t == repo_type and rest.startswith(repo_id + "/"):
                    return self.api(request, repo_id, repo, rest[len(repo_id) + 1 :], repo_type)
            return self.send(request, 404, b'{"error": "Repository not found"}', body=body)
        repo_type = "dataset" if path.startswith("/datasets/") else "model"
        rest = path.removeprefix("/datasets/").lstrip("/")
        for (t, repo_id), repo in self.repos.items():
            if t == repo_type and rest.startswith(repo_id + "/resolve/"):
                _, name = rest[len(repo_id + "/resolve/") :].split("/", 1)
                return self.resolve(request, repo, name, body)
        return self.send(request, 404, b"not found", body=body)

    def api(self, request, repo_id: str, repo: Repo, rest: str, repo_type: str) -> None:
        if rest.startswith("revision/"):
            info = {
                "id": repo_id,
                "sha": repo.commit,
                "private": False,
                "siblings": [{"rfilename": name} for name in repo.files],
            }
            return self.send(request, 200, json.dumps(info).encode(), "application/json")
        if rest.startswith("tree/"):
            entries = [tree_entry(n, p.read_bytes()) for n, p in repo.files.items()]
            return self.send(request, 200, json.dumps(entries).encode(), "application/json")
        return self.send(request, 404, b"{}")

    def resolve(self, request, repo: Repo, name: str, body: bool) -> None:
        if name not in repo.files:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit}
            return self.send(request, 404, b"Entry not found", headers=headers, body=body)
        data = repo.files[name].read_bytes()
        entry = tree_entry(name, data)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"'}
        if "lfs" in entry:
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))}
        return self.send(request, 200, data, "application/octet-stream", headers, body)

    @staticmethod
    def send(request, status: int, data: bytes, ctype: str = "text/plain", headers=None, body=True):
        request.send_response(status)
        request.send_header("Content-Type", ctype)
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if body:
            request.wfile.write(data)
