"""
Where checkpoints come from: a local directory, the local Hugging Face cache, or (only if the
optional `huggingface_hub` package is installed and HF_HUB_OFFLINE is not set) a download.
nanoirl itself never needs huggingface_hub; `resolve` is shared by model.py and tokenizer.py.
"""
import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

PYTHIA = ["pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b",
          "pythia-6.9b", "pythia-12b"]
KNOWN = PYTHIA + [name + "-deduped" for name in PYTHIA]  # short names of EleutherAI/<name>
# weight files in order of preference; an index.json names the shards of a sharded checkpoint
WEIGHTS = ["model.safetensors", "pytorch_model.bin",
           "model.safetensors.index.json", "pytorch_model.bin.index.json"]
FETCH = ["config.json", "model.safetensors", "tokenizer.json"]  # what a model directory needs


def cache_dir():
    """The Hugging Face hub cache, found the way huggingface_hub finds it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home).expanduser() / "hub"


def split_revision(name):
    """'owner/name@revision' -> ('owner/name', 'revision'); without '@', the revision is 'main'.
    (The TL;DR reference models keep their weights on branches: their main holds no weights.)"""
    name, _, revision = str(name).partition("@")
    return name, revision or "main"


def repo_id(name):
    """'pythia-1b' -> 'EleutherAI/pythia-1b'; a Hub id 'owner/name' is kept as it is (an
    '@revision' after either is dropped here: split_revision reads it)."""
    name = split_revision(name)[0]
    if name.removeprefix("EleutherAI/") in KNOWN:
        return "EleutherAI/" + name.removeprefix("EleutherAI/")
    if re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name):
        return name
    raise ValueError(f"{name!r} is not a directory and not a known model name. Known names: "
                     f"{', '.join(KNOWN)}; a Hub id 'owner/name' or a local directory also works")


def reachable(timeout=3.0):
    """None if the Hub ($HF_ENDPOINT, else huggingface.co) accepts a connection within `timeout`
    seconds, else why not: offline, huggingface_hub would retry for ~25 s before failing."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname} is not reachable ({e.strerror or type(e).__name__})"
    return None


def cached(repo, files, revision="main"):
    """The snapshot directory of `repo` in the HF cache that holds all `files`, or None.
    Cache layout: models--{owner}--{name}/snapshots/{commit}/, refs/{branch} names a branch's
    commit. For main, any snapshot will do (the newest first); for another revision, only its own."""
    root = cache_dir() / ("models--" + repo.replace("/", "--"))
    ref = root / "refs" / revision
    candidates = [root / "snapshots" / (ref.read_text().strip() if ref.is_file() else revision)]
    if revision == "main":
        candidates += sorted((root / "snapshots").glob("*"), key=lambda d: d.stat().st_mtime, reverse=True)
    return next((d for d in candidates if all((d / f).is_file() for f in files)), None)


def resolve(name_or_path, files, download=True):
    """A directory holding every file in `files`: the local directory `name_or_path`, else the
    HF cache snapshot of that model, else (if allowed and possible) a fresh download of just those
    files. Raises FileNotFoundError saying what was looked for, where, and how to fetch it."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"directory {path} has no {', '.join(missing)}")
        return path
    repo, revision = repo_id(str(name_or_path)), split_revision(name_or_path)[1]
    snapshot = cached(repo, files, revision)
    if snapshot is not None:
        return snapshot
    if not download:
        why = "not downloading"
    elif os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        why = "HF_HUB_OFFLINE is set"
    elif (offline := reachable()) is not None:
        why = offline
    else:
        try:
            from huggingface_hub import hf_hub_download  # optional: only to fetch missing files
            return Path([hf_hub_download(repo, f, revision=revision) for f in files][-1]).parent
        except ImportError:
            why = "huggingface_hub is not installed"
        except Exception as e:  # no network, no such repo or file, ...
            why = f"the download failed ({type(e).__name__}: {e})"
    at = "" if revision == "main" else f" --revision {revision}"
    raise FileNotFoundError(
        f"{', '.join(files)} of {repo}{'@' + revision if at else ''} not found: {str(name_or_path)!r} is not "
        f"a local directory, the Hugging Face cache {cache_dir()} has no snapshot of {repo} with those "
        f"files, and {why}. Fetch the model with (`hf download` in newer huggingface_hub)\n"
        f"  huggingface-cli download {repo}{at} {' '.join(dict.fromkeys(FETCH + files))}\nor\n"
        f"  git lfs install && git clone{' -b ' + revision if at else ''} https://huggingface.co/{repo}\n"
        f"and pass the model name again or the cloned directory (a local directory path works too).")


def resolve_weights(name_or_path):
    """[paths] of a model's weight files, next to its config.json: model.safetensors, else
    pytorch_model.bin, else the shards an index names. The cache is searched before any download."""
    errors = []
    for download in (False, True):
        for weights in WEIGHTS:
            try:
                directory = resolve(name_or_path, ["config.json", weights], download)
                if not weights.endswith(".index.json"):
                    return [directory / weights]
                shards = sorted(set(json.loads((directory / weights).read_text())["weight_map"].values()))
                return [resolve(name_or_path, shards, download) / s for s in shards]
            except FileNotFoundError as e:
                errors.append(e)
        if Path(name_or_path).expanduser().is_dir():  # a local directory: nothing to download
            raise FileNotFoundError(f"directory {name_or_path} needs config.json and one of "
                                    f"{', '.join(WEIGHTS)}")
    raise errors[len(WEIGHTS)]  # the first failed download says the most
