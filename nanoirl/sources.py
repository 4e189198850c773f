"""
Where the records of --data and --eval-pairs come from, one dict at a time: a JSONL file (one JSON
object per line), a parquet file, a directory written by `datasets`' save_to_disk, or a Hub
dataset "owner/name[:split]", looked up first as a save_to_disk directory under $NANOIRL_DATA
(default ./data), then fetched with the optional `datasets` package (`python -m nanoirl.data
--download owner/name` saves one there: download). What the records mean (their layouts, the
checks of their fields, tokenisation) is nanoirl/data.py's.

Every problem raises DataError, whose message is one line "file:line: what is wrong", so that a
script can print it and exit without a traceback. A name meant as a file (a typo of one) is said
to be missing, never looked up on the Hub; offline, the Hub is given up after a 3 s reachability
check (nanoirl/hub.py), as for models. A download is whole or not at all: a temp directory
renamed at the end.
"""
import difflib
import json
import os
import re
import shutil
import stat
from pathlib import Path

from nanoirl.files import why_not_written
from nanoirl.hub import reachable

# names that are files, never Hub datasets "owner/name" (a typo of a local file must not go to the Hub)
FILE_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zip"}


class DataError(ValueError):
    """A bad input file. str(error) is one line: 'file:line: what is wrong'."""


def read_jsonl(path):
    """Yield (line number, dict) for each non-blank line of a JSONL file."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise DataError(f"{path}: is a directory, not a JSONL file")
        if not stat.S_ISREG(mode):  # a FIFO would block, and be gone on --resume
            raise DataError(f"{path}: is {'a FIFO (named pipe)' if stat.S_ISFIFO(mode) else 'not a regular file'}, "
                            "not a JSONL file")
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{n}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            for k, v in record.items():  # JSON may escape a lone surrogate, which no text encodes
                if isinstance(v, str) and not v.isascii():
                    try:
                        v.encode("utf-8")
                    except UnicodeEncodeError as e:
                        raise DataError(f"{path}:{n}: field {k!r} holds a lone surrogate "
                                        f"{v[e.start]!r} at character {e.start}, which is not text") from None
            yield n, record


def data_dir():
    return Path(os.environ.get("NANOIRL_DATA", "data"))


def hub_offline():
    """Whether the user asked for no network (then `datasets` reads only its own cache, fast)."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def missing_file(name):
    """For a name that is no existing path but was meant as a file (a file extension, an existing
    directory before its last '/', or a near-miss of an existing file): the one-line error that
    says so; None for a name that can only be a Hub dataset."""
    path = Path(name)
    if not path.parent.is_dir():
        return None if path.suffix.lower() not in FILE_SUFFIXES else f"{name}: no such file"
    near = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=1, cutoff=0.8)
    if near:
        return f"{name}: no such file; did you mean {path.parent / near[0]}?"
    return f"{name}: no such file in the directory {path.parent}"


def read_dataset(source, fields=()):
    """The rows of a parquet file, a save_to_disk directory or a Hub dataset, "source[:split]"
    (split "train" by default, "validation[:2048]" slices): its text columns and the columns
    named in `fields` (whatever their type). Needs the optional `datasets`."""
    name, split = source, None
    m = re.fullmatch(r"(.+?):(\w+(?:\[:\d+\])?)", source)  # name:split or name:split[:n]
    if m and not Path(source).exists():
        name, split = m.groups()
    local = Path(name) if Path(name).exists() else data_dir() / name
    get = (f"python -m nanoirl.data --download {name} saves it to {data_dir() / name} "
           "($NANOIRL_DATA moves that folder); or pass a JSONL file")
    if not Path(name).exists() and not re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name):
        raise DataError(f"{source}: no such file, directory or Hub dataset owner/name")
    if not local.exists() and (why := missing_file(name)):
        raise DataError(why)
    if split and local.is_file() and local.suffix != ".parquet":
        raise DataError(f"{source}: {name} is a file; a split ':{split}' applies to a saved dataset, "
                        f"a parquet file or a Hub dataset only")
    if local.is_dir() and not any((local / f).exists() for f in ("dataset_dict.json", "state.json")):
        raise DataError(f"{local}: is a directory, not a JSONL file or a saved dataset "
                        "(datasets' save_to_disk writes dataset_dict.json or state.json)")
    try:
        import datasets  # optional: only for sources other than JSONL
    except ImportError:
        raise DataError(f"{source}: reading it needs the `datasets` package: pip install datasets; "
                        f"then {get}") from None
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a failure is one DataError line below
    datasets.disable_progress_bars()
    if not local.exists() and not hub_offline() and (offline := reachable()):  # datasets would retry ~30 s
        raise DataError(f"{source}: not in {local}, and {offline}; with the network, {get}")
    try:
        if local.suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(local))
        elif local.is_dir():
            ds = datasets.load_from_disk(str(local))
        else:  # the Hub (or datasets' own cache)
            ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline, no such dataset, a broken file or directory, ...
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if local.exists():  # a local file or directory: nothing to download
            kind = "a parquet file" if local.suffix == ".parquet" else "a saved dataset"
            raise DataError(f"{local}: cannot read it as {kind} ({why})") from None
        raise DataError(f"{source}: not in {local} and not loadable ({why}); with the network, {get}") from None
    m = re.fullmatch(r"(\w+)(?:\[:(\d+)\])?", split or "train")
    if isinstance(ds, datasets.DatasetDict):  # a saved Dataset is one split already
        if not m or m.group(1) not in ds:
            raise DataError(f"{source}: no split {split!r}; the splits are {', '.join(ds)}")
        ds = ds[m.group(1)]
    if local.exists() and m.group(2):  # (load_dataset slices by itself)
        ds = ds.select(range(min(int(m.group(2)), len(ds))))
    # the text columns and any field of a layout (one that is not text is then named as such by
    # nanoirl/data.py);
    # the preprocessed sets also hold token lists: not read here
    text = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")
            or c in fields]
    return ds.select_columns(text)


def read_records(source, fields=()):
    """Yield (where, dict): "file:line" of a JSONL file, "source row i" of a dataset (its text
    columns and `fields`: read_dataset)."""
    path = Path(source)
    if path.suffix == ".jsonl" or (path.exists() and not path.is_dir() and path.suffix != ".parquet"):
        for n, record in read_jsonl(path):
            yield f"{path}:{n}", record
        return
    for i, record in enumerate(read_dataset(str(source), fields)):
        yield f"{source} row {i}", record


def download(name):
    """Save the Hub dataset `name` (every split) under $NANOIRL_DATA, where --data name finds it.
    Saved into a temp directory that is renamed at the end: a failure leaves no partial dataset."""
    if not hub_offline() and (offline := reachable()):  # datasets would retry ~30 s, then a traceback
        raise DataError(f"cannot download {name}: {offline}")
    import datasets
    datasets.logging.set_verbosity_error()
    path = data_dir() / name
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        datasets.load_dataset(name).save_to_disk(str(tmp))
        shutil.rmtree(path, ignore_errors=True)  # an earlier download of it
        os.replace(tmp, path)
    except Exception as e:  # no such dataset, a full disk, ...
        why = why_not_written(e) if isinstance(e, OSError) and e.errno else (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot download {name} to {path}: {why}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
