"""The quickstart's model from the Hugging Face hub, into the usual HF cache (`HF_HOME`, ~/.cache/huggingface),
with huggingface_hub: a progress bar, and an interrupted download resumed where it stopped on the next run.

Before: the hub's metadata (size, and the LFS file's sha256 as its ETag) and a free-space check. After: the
file's sha256 against that ETag; a corrupt file is deleted. A file already in the cache is used as it is,
without the network. `HF_ENDPOINT` (a mirror, e.g. https://hf-mirror.com) is honoured, as by every HF tool."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from gateway.quickstart import QuickstartError
from gateway.recipes.sizing import human

SPARE = 256 << 20  # left free on the disk beyond the file
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
NO_HUB_FIX = ("check the network (or HTTPS_PROXY); set HF_ENDPOINT to a mirror you can reach (e.g. "
              "https://hf-mirror.com); or download a GGUF yourself and pass --model /path/to/model.gguf")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def fetch(repo: str, filename: str, say: Callable[[str], None], revision: str = "main") -> Path:
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    except ImportError:
        raise QuickstartError("huggingface_hub is not installed", fix="pip install huggingface_hub") from None
    cached = try_to_load_from_cache(repo, filename, revision=revision, cache_dir=hub_cache())
    if isinstance(cached, str) and Path(cached).is_file():
        say(f"model: {cached} (downloaded earlier)")
        return Path(cached)
    where = f"{endpoint()}/{repo} ({filename})"
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision, endpoint=endpoint()), timeout=15)
    except Exception as exc:  # requests' and the hub's errors alike: one message
        raise QuickstartError(f"cannot get {where} from the Hugging Face hub: {_short(exc)}", fix=NO_HUB_FIX) \
            from None
    cache = hub_cache()
    cache.mkdir(parents=True, exist_ok=True)
    if meta.size is not None and shutil.disk_usage(cache).free < meta.size + SPARE:
        raise QuickstartError(
            f"not enough disk space for {filename} ({human(meta.size)}) in {cache}: "
            f"{human(shutil.disk_usage(cache).free)} free",
            fix="free some space there, point HF_HOME at a disk with room, or pass --model /path/to/model.gguf")
    size = f" ({human(meta.size)})" if meta.size is not None else ""
    say(f"model: downloading {where}{size} into {cache}; if it is interrupted, the next run resumes it")
    try:
        path = Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache, endpoint=endpoint(),
                                    etag_timeout=15))
    except Exception as exc:
        raise QuickstartError(f"the download of {where} stopped: {_short(exc)}",
                              fix="run the same command again: it resumes where it stopped; " + NO_HUB_FIX) from None
    expected = (meta.etag or "").lower()
    if _SHA256.match(expected):  # LFS files: the ETag is the content's sha256
        say(f"model: checking {filename}'s sha256")
        got = sha256_of(path)
        if got != expected:
            blob = path.resolve()
            path.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            raise QuickstartError(f"the download of {filename} is corrupt: sha256 {got}, the hub says {expected}; "
                                  "the file was deleted", fix="run the same command again to download it anew")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
