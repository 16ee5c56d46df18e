#!/usr/bin/env python3
"""Pin and fill in manifest entries from the Hugging Face Hub: exact commits, sizes and sha256.

For every file whose url is {endpoint}/{owner}/{repo}/resolve/{revision}/{path}:
  * a revision that is not a 40-hex commit (a branch or tag such as "main") is resolved with
    GET {endpoint}/api/models/{owner}/{repo}/revision/{revision} and the url rewritten to the commit,
    so the entry names bytes that can never change under it;
  * size and sha256 come from GET {endpoint}/api/models/{owner}/{repo}/tree/{commit}/{folder}:
    LFS files carry both (lfs.size, lfs.oid); any other file is downloaded and hashed. A file that
    took its sha256 from the host at install ("sha256_from": "host") is pinned like the others.
Then each variant's disk_bytes is recomputed. Other urls (same-origin "/models/...") are left alone.

Usage: python models_manifest/refresh.py [--endpoint https://huggingface.co] [entry.json ...]
(default: every entry in models_manifest/). Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, unquote

HERE = Path(__file__).resolve().parent
COMMIT = re.compile(r"[0-9a-f]{40}")
CHUNK = 1 << 20


class RefreshError(Exception):
    pass


class Hub:
    """The few Hub API calls needed, each answered once per run."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint.rstrip("/")
        self.resolve_url = re.compile(re.escape(self.endpoint) + r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)")
        self._commits: dict[tuple[str, str], str] = {}
        self._trees: dict[tuple[str, str, str], dict[str, dict]] = {}

    def _open(self, url: str):
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "lantern-refresh"}),
                                          timeout=60)
        except urllib.error.HTTPError as exc:
            raise RefreshError(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise RefreshError(f"GET {url}: {exc.reason}") from None

    def _json(self, url: str):
        with self._open(url) as response:
            return json.load(response), response.headers.get("Link", "")

    def commit(self, repo: str, revision: str) -> str:
        if COMMIT.fullmatch(revision):
            return revision
        if (repo, revision) not in self._commits:
            doc, _ = self._json(f"{self.endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}")
            sha = doc.get("sha") if isinstance(doc, dict) else None
            if not (isinstance(sha, str) and COMMIT.fullmatch(sha)):
                raise RefreshError(f"{repo}@{revision}: the Hub gave no commit for this revision")
            self._commits[repo, revision] = sha
        return self._commits[repo, revision]

    def tree(self, repo: str, commit: str, folder: str) -> dict[str, dict]:
        """The folder's entries by path, following the listing's "next" pages."""
        key = (repo, commit, folder)
        if key not in self._trees:
            url = f"{self.endpoint}/api/models/{repo}/tree/{commit}" + (f"/{quote(folder)}" if folder else "")
            entries: dict[str, dict] = {}
            while url:
                page, link = self._json(url)
                entries.update({e["path"]: e for e in page if isinstance(e, dict) and "path" in e})
                url = next((m.group(1) for m in re.finditer(r'<([^>]+)>;\s*rel="next"', link)), "")
            self._trees[key] = entries
        return self._trees[key]

    def sha256_of(self, url: str) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        with self._open(url) as response:
            while block := response.read(CHUNK):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def refresh_file(self, f: dict) -> list[str]:
        """Pin and fill in one file entry in place; returns what changed, in words."""
        match = self.resolve_url.fullmatch(f.get("url", ""))
        if not match:
            return []
        owner, name, revision, repo_path = match.groups()
        repo, repo_path = f"{owner}/{name}", unquote(repo_path)
        commit = self.commit(repo, unquote(revision))
        url = f"{self.endpoint}/{repo}/resolve/{commit}/{quote(repo_path)}"
        node = self.tree(repo, commit, repo_path.rpartition("/")[0]).get(repo_path)
        if not node or node.get("type") != "file":
            raise RefreshError(f"{repo}@{commit[:12]} has no file {repo_path}")
        lfs = node.get("lfs")
        size, sha256 = (lfs["size"], lfs["oid"]) if lfs else self.sha256_of(url)
        changes = [f"{key} {f.get(key)} -> {value}" for key, value in (("url", url), ("size", size), ("sha256", sha256))
                   if f.get(key) != value]
        f.update(url=url, size=size, sha256=sha256)
        if f.pop("sha256_from", None):
            changes.append("sha256 from the host at install -> pinned")
        return changes


def refresh_entry(path: Path, hub: Hub, log=print) -> bool:
    """Refresh one entry file; True if it was rewritten."""
    text = path.read_text(encoding="utf-8")
    entry = json.loads(text)
    for variant in entry.get("variants", []):
        for f in variant.get("files", []):
            for change in hub.refresh_file(f):
                log(f"{entry.get('id')} {variant.get('id')} {f.get('path')}: {change}")
        sizes = [f.get("size") for f in variant.get("files", [])]
        if all(isinstance(s, int) for s in sizes):
            variant["disk_bytes"] = sum(sizes)
    new = json.dumps(entry, indent=2, ensure_ascii=False) + "\n"
    if new == text:
        return False
    path.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", default="https://huggingface.co", help="Hub address (default %(default)s)")
    ap.add_argument("entries", nargs="*", type=Path, help="entry files (default: models_manifest/*.json)")
    args = ap.parse_args(argv)
    paths = args.entries or sorted(p for p in HERE.glob("*.json") if p.name != "schema.json")
    hub, failed = Hub(args.endpoint), False
    for path in paths:
        try:
            print(f"{path}: {'updated' if refresh_entry(path, hub) else 'unchanged'}")
        except (RefreshError, OSError, ValueError) as exc:
            print(f"{path}: not refreshed: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
