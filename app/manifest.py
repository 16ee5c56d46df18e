"""Model manifest entries: what a bundle is made of, and a digest that names its exact bytes."""

import hashlib


def bundle_sha256(entry: dict) -> str:
    """sha256 over "path sha256" lines of every file: changes whenever any file of the bundle does."""
    lines = sorted(f"{f['path']} {f['sha256']}\n" for f in entry["files"])
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def models_by_id(manifest: dict) -> dict:
    return {m["id"]: m for m in manifest["models"]}
