"""nanoirl/data.py and nanoirl/sources.py: every bad input gives one line naming file:line; the batch
layout; batching."""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanoirl import data, files, sources
from nanoirl.data import (TLDR_PROMPT, batch_indices, fake_tldr, iterate_batches, load_demonstrations,
                          load_preferences, tokenize, write_jsonl)
from nanoirl.policy import ends_with_eos
from nanoirl.sources import DataError


class CharTokenizer:
    """One id per character; 0 = EOS, 1 = pad, as in Pythia."""
    eos_id, pad_id = 0, 1

    def encode(self, text):
        return [0 if ch == "\0" else 2 + ord(ch) for ch in text]


def write(tmp_path, *lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
    return path


def error_of(fn, *args):
    with pytest.raises(DataError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg, "an error must be one line"
    return msg


GOOD = json.dumps({"prompt": "hi", "response": "yo"})


@pytest.mark.parametrize("bad, what", [
    ('{"prompt": "hi", "response": "yo"', "malformed JSON (Expecting ',' delimiter at column 34)"),
    ('{"prompt": "hi"}', "missing field 'response'"),
    ('{"prompt": "hi", "response": 3}', "field 'response' is int, expected a string"),
    ('{"prompt": null, "response": "yo"}', "field 'prompt' is NoneType, expected a string"),
    ('{"prompt": "  ", "response": "yo"}', "field 'prompt' is empty"),
    ('{"prompt": "hi", "response": ""}', "field 'response' is empty"),
    ('["hi", "yo"]', "expected a JSON object, got list"),
    ('{"subreddit": "a", "title": "b", "post": "c", "summary": "d"}', "missing field 'prompt'"),
    (b'{"prompt": "\xff", "response": "yo"}', "not valid UTF-8"),
])
def test_bad_line_names_file_and_line(tmp_path, bad, what):
    path = write(tmp_path, GOOD, "", bad, GOOD)  # a blank line is skipped but still counted
    msg = error_of(load_demonstrations, path)
    assert msg.startswith(f"{path}:3: ") and what in msg, msg


def test_file_level_errors(tmp_path):
    assert "empty file" in error_of(load_demonstrations, write(tmp_path, "", "  "))
    missing = tmp_path / "nope.jsonl"
    assert error_of(load_demonstrations, missing).startswith(f"{missing}: cannot read")
    path = write(tmp_path, '{"text": "hi"}')
    msg = error_of(load_demonstrations, path)
    assert msg.startswith(f"{path}:1: fields ['text'] match no layout") and "prompt, response" in msg
    # a preference file is not demonstrations, and the other way round
    pref = write(tmp_path, json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}), name="p.jsonl")
    assert "missing field 'response'" in error_of(load_demonstrations, pref)
    assert "missing field 'chosen'" in error_of(load_preferences, write(tmp_path, GOOD))


def test_prompt_longer_than_context(tmp_path):
    path = write(tmp_path, GOOD, json.dumps({"prompt": "0123456789", "response": "r"}))
    msg = error_of(tokenize, load_demonstrations(path), CharTokenizer(), 8, 4)
    assert msg == (f"{path}:2: prompt has 10 tokens, more than --max-prompt-len 8 "
                   "(--drop-too-long drops such examples)")
    data = tokenize(load_demonstrations(path), CharTokenizer(), 8, 4, drop_too_long=True)
    assert data["prompts"].shape == (1, 8)  # the long line dropped, the good one kept


def test_response_holding_eos(tmp_path):
    path = write(tmp_path, json.dumps({"prompt": "p", "response": "a\0b"}))
    assert error_of(tokenize, load_demonstrations(path), CharTokenizer(), 8, 4) == \
        f"{path}:1: response contains the EOS token (id 0)"


def test_tokenize_batch_layout(tmp_path):
    path = write(tmp_path, json.dumps({"prompt": "ab", "response": "xyz", "id": 7}),  # extra field ok
                 json.dumps({"prompt": "abcd", "response": "uvwxyz"}))
    tok = CharTokenizer()
    data = tokenize(load_demonstrations(path), tok, max_prompt_len=5, max_response_len=5, max_truncated_share=1)
    enc = tok.encode
    assert data["prompts"].tolist() == [[1, 1, 1] + enc("ab"), [1] + enc("abcd")]
    assert data["prompt_mask"].tolist() == [[False] * 3 + [True] * 2, [False] + [True] * 4]
    # EOS appended then pad; a response longer than R - 1 tokens is truncated and has no EOS
    assert data["responses"].tolist() == [enc("xyz") + [0, 1], enc("uvwxy")]
    assert ends_with_eos(data["responses"], 0).tolist() == [True, False]


def test_tldr_layout(tmp_path):
    rec = {"subreddit": "tifu", "title": "T", "post": "P {x}", "summary": "S", "id": "t3_1"}
    path = write(tmp_path, json.dumps(rec), json.dumps({**rec, "title": ""}))  # a title may be empty
    ex = load_demonstrations(path)
    assert ex[0]["prompt"] == "SUBREDDIT: r/tifu\n\nTITLE: T\n\nPOST: P {x}\n\nTL;DR:"
    assert ex[0]["response"] == " S" and ex[0]["where"] == f"{path}:1"
    assert ex[1]["prompt"].startswith("SUBREDDIT: r/tifu\n\nTITLE: \n\nPOST")
    bad = write(tmp_path, json.dumps(rec), json.dumps({**rec, "summary": " "}), name="b.jsonl")
    assert error_of(load_demonstrations, bad) == f"{bad}:2: field 'summary' is empty"
    bad = write(tmp_path, json.dumps(rec), GOOD, name="c.jsonl")  # layouts must not mix
    assert error_of(load_demonstrations, bad).startswith(f"{bad}:2: missing field 'subreddit' (the tldr")


def test_preferences(tmp_path):
    path = write(tmp_path, json.dumps({"prompt": "p", "chosen": "good", "rejected": "b"}))
    data = tokenize(load_preferences(path), CharTokenizer(), 2, 6)
    assert set(data) == {"prompts", "prompt_mask", "chosen", "rejected"}
    assert data["chosen"].tolist() == [CharTokenizer().encode("good") + [0, 1]]
    assert data["rejected"].tolist() == [CharTokenizer().encode("b") + [0, 1, 1, 1, 1]]


def test_batches_cover_each_epoch_and_resume_exactly():
    n, bs = 10, 4
    stream = torch.cat([batch_indices(n, bs, s, seed=3) for s in range(10)])  # 4 epochs
    for e in range(4):
        assert sorted(stream[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(stream[:n], stream[n:2 * n])                # reshuffled every epoch
    assert torch.equal(stream, torch.cat([batch_indices(n, bs, s, 3) for s in range(10)]))
    assert not torch.equal(stream, torch.cat([batch_indices(n, bs, s, 4) for s in range(10)]))
    assert len(batch_indices(3, 7, 5, seed=0)) == 7                    # a batch larger than the data
    data = {"x": torch.arange(n) * 10, "y": torch.arange(n)}
    full = iterate_batches(data, bs, seed=3)
    batches = [next(full) for _ in range(6)]
    resumed = iterate_batches(data, bs, seed=3, start=4)               # as after a resume at step 4
    for b in batches[4:]:
        r = next(resumed)
        assert torch.equal(b["x"], r["x"]) and torch.equal(b["x"], r["y"] * 10)


def test_fake_tldr(tmp_path):
    assert list(fake_tldr(5, seed=1)) == list(fake_tldr(5, seed=1)) != list(fake_tldr(5, seed=2))
    write_jsonl(tmp_path / "t.jsonl", fake_tldr(20))
    ex = load_demonstrations(tmp_path / "t.jsonl")
    assert len(ex) == 20 and ex[0]["prompt"].startswith("SUBREDDIT: r/")
    tokenize(ex, CharTokenizer(), 2048, 53)
    write_jsonl(tmp_path / "p.jsonl", fake_tldr(4, preferences=True))
    assert load_preferences(tmp_path / "p.jsonl")[0]["prompt"].endswith("TL;DR:")
    out = tmp_path / "cli.jsonl"
    subprocess.run([sys.executable, "-m", "nanoirl.data", str(out), "--n", "3"], check=True,
                   capture_output=True, cwd=Path(__file__).parents[1])
    assert len(load_demonstrations(out)) == 3


def reference_truncation(info, encode, length):
    """The TL;DR reference code's process_query loop (truncate_field "post", truncate_text "\\n"),
    written out as it is there: cut at the last newline, else drop one character."""
    info = dict(info)
    tokens = encode(TLDR_PROMPT.format(**info))
    while len(tokens) > length:
        i = -1
        try:
            i = info["post"].rindex("\n")
        except ValueError:
            pass
        info["post"] = info["post"][:i]
        tokens = encode(TLDR_PROMPT.format(**info))
    return tokens


def test_tldr_posts_are_truncated_as_the_reference_code(tmp_path, capsys):
    tok = CharTokenizer()
    paragraphs = "First paragraph here.\nSecond one, longer than that.\nThird.\nFourth and last."
    records = [{"subreddit": "tifu", "title": "T", "post": paragraphs, "summary": "s"},
               {"subreddit": "tifu", "title": "T", "post": "no newline at all " * 4, "summary": "s"},
               {"subreddit": "tifu", "title": "T", "post": "short", "summary": "s"}]
    write_jsonl(tmp_path / "t.jsonl", records)
    header = len(TLDR_PROMPT.format(subreddit="tifu", title="T", post=""))
    length = header + 40
    data = tokenize(load_demonstrations(tmp_path / "t.jsonl"), tok, length, 8)
    for row, r in zip(data["prompts"], records):
        expected = reference_truncation(r, tok.encode, length)
        real = row[row != tok.pad_id].tolist()
        assert real == expected and len(real) <= length
        assert real[:header - len("\n\nTL;DR:")] == tok.encode(TLDR_PROMPT.format(**r))[:header - len("\n\nTL;DR:")]
        assert real[-len("\n\nTL;DR:"):] == tok.encode("\n\nTL;DR:")
    first = TLDR_PROMPT.format(subreddit="tifu", title="T", post="First paragraph here.")
    assert data["prompts"][0][-len(first):].tolist() == tok.encode(first)  # cut at a newline
    out = capsys.readouterr().out
    assert "2 of 3 TL;DR posts truncated to fit --max-prompt-len" in out and "(1 at a newline, 1 by characters" in out
    assert data["responses"][0].tolist() == tok.encode(" s") + [0] + [1] * 5  # leading space and EOS


def test_long_responses_are_counted_and_refused_above_a_share(tmp_path, capsys):
    tok = CharTokenizer()
    records = [{"prompt": "p", "response": "x" * (10 if i < 3 else 2)} for i in range(40)]
    path = tmp_path / "d.jsonl"
    write_jsonl(path, records)
    ex = load_demonstrations(path)
    msg = error_of(tokenize, ex, tok, 4, 6)  # 3 of 40 = 7.5%, above the 5% default
    assert msg.startswith(f"{path}: 3 of 40 responses (7.5%, above 5%) have more than --max-response-len 6")
    data = tokenize(ex, tok, 4, 6, max_truncated_share=0.1)
    assert "3 of 40 responses have more than --max-response-len 6" in capsys.readouterr().out
    assert not ends_with_eos(data["responses"], 0)[:3].any() and ends_with_eos(data["responses"], 0)[3:].all()
    data = tokenize(ex, tok, 4, 6, drop_too_long=True)
    assert len(data["responses"]) == 37 and "dropped 3 of 40 examples" in capsys.readouterr().out


def test_dataset_sources(tmp_path, monkeypatch):
    """A save_to_disk directory (with :split and [:n]), a parquet file and a Hub name found under
    $NANOIRL_DATA read as the same records as JSONL; the reference's preference layout
    (query, chosen and rejected ending in <|endoftext|>) reads as prompt, chosen, rejected."""
    datasets = pytest.importorskip("datasets", reason="datasets writes the local data sets")
    records = list(fake_tldr(6, seed=1))
    sets = datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:4]),
                                 "validation": datasets.Dataset.from_list(records[4:])})
    sets.save_to_disk(str(tmp_path / "data" / "owner" / "tldr"))
    sets["train"].to_parquet(str(tmp_path / "train.parquet"))
    write_jsonl(tmp_path / "t.jsonl", records[:4])
    strip = lambda ex: [{k: v for k, v in e.items() if k not in ("where", "source")} for e in ex]
    jsonl = strip(load_demonstrations(tmp_path / "t.jsonl"))
    monkeypatch.setenv("NANOIRL_DATA", str(tmp_path / "data"))
    for source in [tmp_path / "data" / "owner" / "tldr", f"{tmp_path / 'data' / 'owner' / 'tldr'}:train",
                   tmp_path / "train.parquet", "owner/tldr", "owner/tldr:train"]:
        ex = load_demonstrations(str(source))
        assert strip(ex) == jsonl, source
    assert len(load_demonstrations("owner/tldr:validation")) == 2
    assert len(load_demonstrations("owner/tldr:train[:3]")) == 3
    assert load_demonstrations("owner/tldr:validation")[1]["where"] == "owner/tldr:validation row 1"
    assert "no split 'test'; the splits are train, validation" in error_of(load_demonstrations, "owner/tldr:test")
    prefs = [{"query": r["prompt"], "chosen": r["chosen"] + "<|endoftext|>",
              "rejected": r["rejected"] + "<|endoftext|>", "query_token": [1, 2]}
             for r in fake_tldr(3, preferences=True)]
    datasets.Dataset.from_list(prefs).save_to_disk(str(tmp_path / "prefs"))
    got = load_preferences(str(tmp_path / "prefs"))
    assert [(e["prompt"], e["chosen"], e["rejected"]) for e in got] == \
        [(r["prompt"], r["chosen"], r["rejected"]) for r in fake_tldr(3, preferences=True)]


def test_hub_dataset_without_datasets_is_one_line(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    monkeypatch.setenv("NANOIRL_DATA", str(tmp_path))
    msg = error_of(load_demonstrations, "vwxyzjn/summarize_from_feedback_tldr_3_filtered:train")
    assert msg.startswith("vwxyzjn/summarize_from_feedback_tldr_3_filtered:train: reading it needs the "
                          "`datasets` package: pip install datasets; then python -m nanoirl.data --download")
    assert str(tmp_path / "vwxyzjn" / "summarize_from_feedback_tldr_3_filtered") in msg


def test_fake_tldr_fits_a_dry_run(tmp_path):
    """The documented dry runs keep the default --max-response-len 53 and pass --max-prompt-len
    256: every fake prompt and summary fits them in byte tokens (nothing cut, nothing refused)."""
    from nanoirl.tokenizer import ByteTokenizer
    write_jsonl(tmp_path / "f.jsonl", (r for seed in range(3) for r in fake_tldr(2000, seed)))
    tok = tokenize(load_demonstrations(tmp_path / "f.jsonl"), ByteTokenizer(), 256, 53)
    assert ends_with_eos(tok["responses"], 0).all()


def test_bad_text_and_bad_paths_are_one_line(tmp_path):
    """A lone surrogate escaped in the JSON (no UTF-8 text can hold it) is file:line; a directory
    or a FIFO given as a JSONL file is named as what it is (a FIFO would block the run)."""
    path = write(tmp_path, GOOD, '{"prompt": "a\\ud800b", "response": "yo"}')
    assert error_of(load_demonstrations, path) == \
        f"{path}:2: field 'prompt' holds a lone surrogate '\\ud800' at character 1, which is not text"
    assert error_of(load_demonstrations, tmp_path).startswith(
        f"{tmp_path}: is a directory, not a JSONL file or a saved dataset")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert error_of(load_preferences, fifo) == f"{fifo}: is a FIFO (named pipe), not a JSONL file"


def test_data_cli_checks_its_flags_and_never_overwrites(tmp_path, capsys):
    """python -m nanoirl.data (in-process: data.main): --n checked, an existing file refused
    without --force, a directory or a missing parent one line (argparse's exit 2), nothing
    written on a refusal."""
    out = tmp_path / "f.jsonl"
    out.write_text("mine\n")
    cases = [(["--n", "-5", tmp_path / "g.jsonl"], "argument --n: expected a positive integer, got '-5'"),
             ([out, "--n", 3], f"{out} exists; pass --force to overwrite it"),
             ([tmp_path, "--n", 3], f"{tmp_path} is a directory; give the path of the JSONL file to write"),
             ([tmp_path / "no" / "f.jsonl"],
              f"cannot write {tmp_path / 'no' / 'f.jsonl'}: No such file or directory; nothing was written")]
    for argv, error in cases:
        assert cli(capsys, *argv) == (2, "python -m nanoirl.data: error: " + error)
    assert out.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["f.jsonl"]
    data.main([str(out), "--n", "3", "--force"])
    assert len(load_demonstrations(out)) == 3


def test_data_cli_streams_its_records(tmp_path):
    """Records are written as they are made, into the temp file that becomes the output at the
    end: a run asked for 10^9 records has written thousands after a few seconds (built in memory
    first, it would have written nothing), and the output itself does not exist yet."""
    out = tmp_path / "big.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "nanoirl.data", str(out), "--n", str(10 ** 9)],
                            cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    size = lambda: sum(p.stat().st_size for p in tmp_path.glob(".big.jsonl.*.tmp"))
    try:
        deadline = time.time() + 30
        while time.time() < deadline and size() < 10 ** 6:
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert size() >= 10 ** 6 and not out.exists()


# ---- faults: a full disk, Ctrl-C, the Hub offline, names that were meant as files (in-process) ---
class FullDisk:
    """open() for a module (monkeypatched as its `open`) whose files take `room` more bytes or
    characters, then fail with ENOSPC (half a write lands first, as on a real full disk)."""

    def __init__(self, room):
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "r" in mode:
            return f
        write, disk = f.write, self

        def full_write(b):
            if len(b) > disk.room:
                write(b[:len(b) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            disk.room -= len(b)
            return write(b)
        f.write = full_write
        return f


def cli(capsys, *argv):
    """python -m nanoirl.data in-process: (exit status, the last line of stderr)."""
    with pytest.raises(SystemExit) as e:
        data.main(list(map(str, argv)))
    return e.value.code, capsys.readouterr().err.splitlines()[-1]


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """ENOSPC in the middle: write_jsonl leaves no file (it used to leave a partial one, which
    then blocked the rerun with 'exists; pass --force'); the CLI says it in one line, exit 2, and
    with --force the old file is kept byte for byte; no temp file is left."""
    out = tmp_path / "f.jsonl"
    monkeypatch.setattr(files, "open", FullDisk(2000), raising=False)
    with pytest.raises(OSError):
        write_jsonl(out, fake_tldr(100))
    assert list(tmp_path.iterdir()) == []
    assert cli(capsys, out, "--n", 100) == (2, f"python -m nanoirl.data: error: cannot write {out}: "
                                               "no space left on the device; nothing was written")
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"mine\n")
    assert cli(capsys, out, "--n", 100, "--force")[0] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["f.jsonl"] and out.read_bytes() == b"mine\n"
    monkeypatch.undo()
    data.main([str(tmp_path / "g.jsonl"), "--n", "100"])  # the rerun is not blocked
    assert len(load_demonstrations(tmp_path / "g.jsonl")) == 100


def test_ctrl_c_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle: no file, one line, exit 130 (it used to be a traceback and a partial file)."""
    def interrupted(n, seed=0, preferences=False):
        yield from fake_tldr(10)
        raise KeyboardInterrupt
    out = tmp_path / "f.jsonl"
    with pytest.raises(KeyboardInterrupt):
        write_jsonl(out, interrupted(10))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(data, "fake_tldr", interrupted)
    assert cli(capsys, out, "--n", 100) == (130, f"error: interrupted; nothing was written to {out}")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """The Hub as an offline machine sees it: nothing listens at $HF_ENDPOINT, no offline flag set."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("NANOIRL_DATA", str(tmp_path / "data"))


def test_hub_dataset_offline_is_one_fast_line(offline, tmp_path, capsys):
    """--data owner/name and --download owner/name, offline: one line within a second or two
    (they used to take 27 s of retries, and --download ended in a ConnectionError traceback)."""
    pytest.importorskip("datasets", reason="the Hub path needs datasets")
    import datasets  # noqa: F401  (imported once: not part of the time below)
    t = time.time()
    get = f"python -m nanoirl.data --download owner/name saves it to {tmp_path / 'data' / 'owner' / 'name'}"
    assert error_of(load_demonstrations, "owner/name:train") == (
        f"owner/name:train: not in {tmp_path / 'data' / 'owner' / 'name'}, and 127.0.0.1 is not reachable "
        f"(Connection refused); with the network, {get} ($NANOIRL_DATA moves that folder); or pass a JSONL file")
    assert cli(capsys, "--download", "owner/name") == (
        2, "python -m nanoirl.data: error: cannot download owner/name: 127.0.0.1 is not reachable (Connection refused)")
    assert time.time() - t < 10 and not (tmp_path / "data").exists()  # not 27 s of retries (a margin for a busy CI)


def test_names_meant_as_files_are_said_to_be_missing(offline, tmp_path, monkeypatch):
    """A typo of a local file, a file extension, a local directory before the '/': 'no such file',
    at once, never the Hub (they used to wait for it and then advise --download of a path)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "reachable", lambda *a, **k: pytest.fail("a name meant as a file went to the Hub"))
    (tmp_path / "d").mkdir()
    write(tmp_path / "d", GOOD, name="fake.jsonl")
    assert error_of(load_demonstrations, "d/fake.json") == "d/fake.json: no such file; did you mean d/fake.jsonl?"
    assert error_of(load_demonstrations, "d/fake.json:train") == "d/fake.json: no such file; did you mean d/fake.jsonl?"
    assert error_of(load_demonstrations, "d/other") == "d/other: no such file in the directory d"
    assert error_of(load_demonstrations, "x/notes.csv") == "x/notes.csv: no such file"


def test_local_files_get_messages_about_themselves(tmp_path):
    """An int64 column is named as not a string (it was 'missing field'); a garbage .parquet, or
    a split after a JSONL file, is said to be what it is, never advised to be downloaded."""
    datasets = pytest.importorskip("datasets", reason="datasets reads parquet")
    records = [{**r, "summary": i} for i, r in enumerate(fake_tldr(3))]
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "int.parquet"))
    assert error_of(load_demonstrations, str(tmp_path / "int.parquet")) == \
        f"{tmp_path / 'int.parquet'} row 0: field 'summary' is int, expected a string"
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all\n" * 10)
    assert error_of(load_demonstrations, str(tmp_path / "bad.parquet")) == (
        f"{tmp_path / 'bad.parquet'}: cannot read it as a parquet file (Parquet magic bytes not found in footer. "
        "Either the file is corrupted or this is not a parquet file.)")
    path = write(tmp_path, GOOD)
    assert error_of(load_demonstrations, f"{path}:train") == (
        f"{path}:train: {path} is a file; a split ':train' applies to a saved dataset, a parquet file "
        "or a Hub dataset only")
