"""sha256s taken from the host, for Hub files whose hash nobody publishes ("sha256_from": "host").

At install, before any byte of such a file is fetched, the Hugging Face Hub API is asked which commit
the url's revision is (GET /api/models/{repo}/revision/{revision}) and what it stores at that path
(POST /api/models/{repo}/paths-info/{commit}: an LFS file's size and sha256 "oid"). The host's size
must equal the manifest's, or the install stops with nothing kept; the file is then downloaded from
that commit and checked against the host's sha256 like any pinned one. The answer is recorded in the
model's folder (host_hashes.json), so the bytes on disk keep their names and the install is checked
against the same hash on every later visit, offline included.

A checkpoint file may also take its size from there ("size_from": "host"): its tensor data is known
exactly, its header only to within what its writer put in it (HEADER_SLACK). A file that another model
was installed from ("reuse": {"if_same_as": url}) is compared with that url's sha256 at the same time.
"""

import json
from urllib.parse import quote, urlencode

from .layout import InstallError
from .manifest import HEADER_SLACK, HUB_FILE

ENDPOINT = "https://huggingface.co"


class HostError(InstallError):
    """The host's answer does not fit the manifest (or there is none): nothing is downloaded."""


def hub_location(url: str) -> tuple[str, str, str]:
    """(owner/repo, revision, path in the repo) of a Hub resolve url."""
    repo, revision, path = HUB_FILE.fullmatch(url).groups()
    return repo, revision, path


def host_file(f: dict, commit: str, info: dict | None) -> dict:
    """The record for manifest file `f` from the Hub's paths-info entry for its path at `commit`."""
    repo, _, path = hub_location(f["url"])
    lfs = (info or {}).get("lfs") or {}
    if not info:
        raise HostError(f"huggingface.co has no {path} in {repo} at commit {commit[:12]}; it was not downloaded.")
    if not (isinstance(lfs.get("oid"), str) and len(lfs["oid"]) == 64 and isinstance(lfs.get("size"), int)):
        raise HostError(f"huggingface.co gives no sha256 for {path} in {repo}; it was not downloaded.")
    if f.get("size_from") == "host":
        if f["size"] is not None and abs(lfs["size"] - f["size"]) > HEADER_SLACK:
            raise HostError(f"huggingface.co says {path} in {repo} is {lfs['size']:,} bytes, but this site expects "
                            f"about {f['size']:,}: it is not the file offered here, so it was not downloaded.")
    elif lfs["size"] != f["size"]:
        raise HostError(f"huggingface.co says {path} in {repo} is {lfs['size']:,} bytes, but this site lists "
                        f"{f['size']:,}: it is not the file offered here, so it was not downloaded.")
    return {"url": f["url"], "size": lfs["size"], "sha256": lfs["oid"].lower(), "commit": commit,
            "resolved_url": f"{ENDPOINT}/{repo}/resolve/{commit}/{quote(path)}"}


def with_host_hashes(entry: dict, record: dict | None) -> dict:
    """`entry` with the recorded host hashes filled in; a record made for another url or size is ignored."""
    files = []
    for f in entry["files"]:
        got = (record or {}).get(f["path"])
        if f.get("sha256_from") == "host" and got and got["url"] == f["url"] and (
                got["size"] == f["size"] or f.get("size_from") == "host"):
            f = dict(f, sha256=got["sha256"], size=got["size"], url=got["resolved_url"], commit=got["commit"])
            if "reuse" in f and "same_as" in got:
                f["reuse"] = dict(f["reuse"], same=got["same_as"] == got["sha256"])
        files.append(f)
    return dict(entry, files=files)


def unresolved(entry: dict) -> list[dict]:
    return [f for f in entry["files"] if f["sha256"] is None]


async def ask_host(files: list[dict], get_json) -> dict:
    """{path: record} for `files` (all without a sha256); `await get_json(url, form=None)` is the HTTP call.
    A file with "reuse" also records the sha256 of the file it may be the same as ("same_as")."""
    records = await _ask(files, get_json)
    others = [{"path": f["path"], "url": f["reuse"]["if_same_as"], "size": None, "size_from": "host"}
              for f in files if "reuse" in f]
    for path, other in (await _ask(others, get_json)).items():
        records[path]["same_as"] = other["sha256"]
    return records


async def _ask(files: list[dict], get_json) -> dict:
    records, commits = {}, {}
    for f in files:
        repo, revision, _ = hub_location(f["url"])
        if (repo, revision) not in commits:
            doc = await get_json(f"{ENDPOINT}/api/models/{repo}/revision/{quote(revision, safe='')}")
            commit = doc.get("sha") if isinstance(doc, dict) else None
            if not (isinstance(commit, str) and len(commit) == 40):
                raise HostError(f"huggingface.co did not say which commit {repo}@{revision} is.")
            commits[repo, revision] = commit
    for (repo, revision), commit in commits.items():
        mine = [f for f in files if hub_location(f["url"])[:2] == (repo, revision)]
        paths = [hub_location(f["url"])[2] for f in mine]
        listing = await get_json(f"{ENDPOINT}/api/models/{repo}/paths-info/{commit}", form={"paths": paths})
        by_path = {e.get("path"): e for e in listing if isinstance(e, dict)} if isinstance(listing, list) else {}
        for f, path in zip(mine, paths):
            records[f["path"]] = host_file(f, commit, by_path.get(path))
    return records


async def fetch_json(url: str, form: dict | None = None):
    """GET (or POST a urlencoded form) in the browser; a failure is a HostError that says what happened."""
    import js
    from pyodide.ffi import to_js

    init = {}
    if form is not None:
        init = {"method": "POST", "body": urlencode(form, doseq=True),
                "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
    try:
        response = await js.fetch(url, to_js(init, dict_converter=js.Object.fromEntries))
    except Exception:
        raise HostError("huggingface.co could not be reached to look up the file's sha256; Install tries again.") from None
    if not response.ok:
        raise HostError(f"huggingface.co answered HTTP {response.status} when asked for the file's sha256 ({url}).")
    try:
        return json.loads(await response.text())
    except ValueError:
        raise HostError(f"huggingface.co's answer to {url} is not JSON.") from None
