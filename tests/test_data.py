"""The dataset registry (data/registry.yaml), the lookup order, and downloads -- without a network.

Downloads are served by a local HTTP server on 127.0.0.1 or, for Hugging Face ``datasets``, by an
injected row loader; nothing here reaches the internet.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import os
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from collapse_utils.core import data as cu_data
from collapse_utils.core.data import REGISTRY, DataError, dataset_file, load_registry

ROOT = Path(__file__).resolve().parents[1]
#: the offline copies (COLLAPSE_DATA_DIR as the session found it), served or read back by some tests
SHARED = Path(os.environ.get("COLLAPSE_DATA_DIR") or ROOT.parent / "shared" / "data")
GOOD = b"alpha beta gamma\n" * 50
OTHER = b"delta epsilon\n" * 40


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# -- a local HTTP server ------------------------------------------------------------------------------
class _Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                owner.hits.append(self.path)
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def empty_lookup(tmp_path, monkeypatch):
    """No COLLAPSE_DATA_DIR copy, an empty cache in tmp_path, downloads allowed; returns the cache."""
    monkeypatch.setenv("COLLAPSE_DATA_DIR", str(tmp_path / "data-dir"))
    (tmp_path / "data-dir").mkdir()
    monkeypatch.setenv("COLLAPSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("COLLAPSE_OFFLINE", raising=False)
    return tmp_path / "cache"


def _tiny(tmp_path, monkeypatch, sources, files=None) -> cu_data.Dataset:
    """Register a small dataset 'tiny' read from a registry file written here."""
    files = files or {"a.txt": GOOD, "b.txt": OTHER}
    doc = {"datasets": {"tiny": {
        "description": "a tiny test dataset", "licence": "CC0", "how_to_get": "serve it",
        "files": {f: {"sha256": sha(b), "bytes": len(b), "lines": b.count(b"\n")} for f, b in files.items()},
        "sources": sources,
    }}}
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(doc))
    ds = load_registry(path)["tiny"]
    monkeypatch.setitem(REGISTRY, "tiny", ds)
    return ds


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- the registry -------------------------------------------------------------------------------------
def test_package_reads_the_tracked_registry_in_data():
    tracked = ROOT / "data" / "registry.yaml"
    assert tracked.is_file()
    assert cu_data.registry_path().read_bytes() == tracked.read_bytes()
    doc = yaml.safe_load(tracked.read_text())
    assert set(REGISTRY) == set(doc["datasets"]) == {"mnist", "wikitext-2", "wikitext-2-raw", "gpt2-bpe",
                                                      "smollm2-135m"}
    for name, entry in doc["datasets"].items():
        assert {f: m["sha256"] for f, m in entry["files"].items()} == REGISTRY[name].files


def test_every_registered_file_has_a_source_and_a_licence():
    for ds in REGISTRY.values():
        assert ds.licence and ds.description and ds.how_to_get, ds.name
        for fname in ds.files:
            assert any(cu_data._covers(src, fname) for src in ds.sources), f"{ds.name}/{fname} has no source"
    # WikiText-2 comes from Hugging Face datasets first, with one split per file
    for name, config in (("wikitext-2", "wikitext-2-v1"), ("wikitext-2-raw", "wikitext-2-raw-v1")):
        hf = REGISTRY[name].sources[0]
        assert hf["hf_datasets"]["config"] == config
        assert sorted(hf["splits"].values()) == ["test", "train", "validation"]


def test_the_cache_is_ignored_and_the_registry_is_not():
    import subprocess

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(rel: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT).returncode == 0

    assert ignored("data/cache/mnist/t10k-labels-idx1-ubyte.gz")
    assert not ignored("data/registry.yaml") and not ignored("data/README.md")


@pytest.mark.parametrize("entry,message", [
    ({"files": {}}, r"needs a non-empty 'files' mapping"),
    ({"files": {"a": {"sha256": "abc"}}}, r"file 'a' needs a sha256 of 64 lower-case hex digits, got 'abc'"),
    ({"files": {"a": {"sha256": "0" * 64}}, "sources": [{"ftp": "x"}]}, r"exactly one of url, zip, hf_datasets"),
    ({"files": {"a": {"sha256": "0" * 64}}, "sources": [{"url": "http://x/a"}]}, r"needs a '\{file\}' placeholder"),
    ({"files": {"a": {"sha256": "0" * 64}}, "sources": [{"zip": "http://x/a.zip", "members": {"b": "b"}}]},
     r"names no registered file \(unknown: \['b'\]"),
])
def test_bad_registry_entries_are_named(tmp_path, entry, message):
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"broken": entry}}))
    with pytest.raises(DataError, match=message) as err:
        load_registry(path)
    assert str(path) in str(err.value) and "'broken'" in str(err.value)


# -- lookup order -------------------------------------------------------------------------------------
def test_lookup_order_path_then_env_then_cache(tmp_path, monkeypatch, empty_lookup, server):
    _tiny(tmp_path, monkeypatch, [{"url": server.base + "/{file}"}])
    explicit, env_dir = tmp_path / "explicit", tmp_path / "data-dir" / "tiny"
    for folder in (explicit, env_dir, empty_lookup / "tiny"):
        folder.mkdir(parents=True)
        (folder / "a.txt").write_bytes(GOOD)
    assert dataset_file("tiny", "a.txt", explicit, download=True) == explicit / "a.txt"
    assert dataset_file("tiny", "a.txt", download=True) == env_dir / "a.txt"
    (env_dir / "a.txt").unlink()
    assert dataset_file("tiny", "a.txt", download=True) == empty_lookup / "tiny" / "a.txt"
    assert server.hits == []  # found locally: nothing was downloaded


def test_cache_dir_follows_collapse_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_CACHE_DIR", str(tmp_path / "c"))
    assert cu_data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("COLLAPSE_CACHE_DIR")
    assert cu_data.cache_dir() in (ROOT / "data" / "cache", Path.home() / ".cache" / "collapse_utils")


def test_without_download_nothing_is_fetched_and_the_message_says_how(tmp_path, monkeypatch, empty_lookup, server):
    _tiny(tmp_path, monkeypatch, [{"url": server.base + "/{file}"}])
    server.files["/a.txt"] = GOOD
    with pytest.raises(DataError) as err:
        dataset_file("tiny", "a.txt")
    msg = str(err.value)
    assert "a.txt of dataset 'tiny' not found" in msg and sha(GOOD) in msg
    assert "python -m collapse_utils.core.data fetch tiny" in msg and server.base in msg
    monkeypatch.setenv("COLLAPSE_OFFLINE", "1")
    with pytest.raises(DataError, match=r"downloading is switched off \(COLLAPSE_OFFLINE is set\)"):
        dataset_file("tiny", "a.txt", download=True)
    assert server.hits == [] and _leftovers(empty_lookup) == []


# -- downloads ----------------------------------------------------------------------------------------
def test_corrupted_download_is_rejected_and_nothing_is_cached(tmp_path, monkeypatch, empty_lookup, server):
    _tiny(tmp_path, monkeypatch, [{"url": server.base + "/{file}"}])
    bad = bytearray(GOOD)
    bad[10] ^= 0xFF
    server.files["/a.txt"] = bytes(bad)
    with pytest.raises(DataError) as err:
        dataset_file("tiny", "a.txt", download=True)
    msg = str(err.value)
    assert f"{server.base}/a.txt: a.txt arrived with sha256 {sha(bytes(bad))}, expected {sha(GOOD)}" in msg
    assert "rejected, nothing was written" in msg and "not found" in msg
    assert _leftovers(empty_lookup) == []  # no file, no temporary file


def test_good_download_is_verified_cached_and_found_again(tmp_path, monkeypatch, empty_lookup, server):
    # the first mirror is broken (404), the second serves damaged bytes, the third the right ones
    _tiny(tmp_path, monkeypatch, [{"url": server.base + "/gone/{file}"}, {"url": server.base + "/bad/{file}"},
                                  {"url": server.base + "/good/{file}", "names": {"a.txt": "renamed-a.txt"}}])
    server.files["/bad/a.txt"] = GOOD[:-1]
    server.files["/good/renamed-a.txt"] = GOOD
    got = dataset_file("tiny", "a.txt", download=True)
    assert got == empty_lookup / "tiny" / "a.txt" and got.read_bytes() == GOOD
    assert server.hits == ["/gone/a.txt", "/bad/a.txt", "/good/renamed-a.txt"]
    assert _leftovers(empty_lookup) == ["a.txt"]
    cu_data._VERIFIED.clear()  # a fresh process: found in the cache and verified, not downloaded again
    assert dataset_file("tiny", "a.txt", download=True) == got
    assert len(server.hits) == 3
    got.write_bytes(GOOD + b"tampered")  # a damaged cache file is an error, not silently replaced
    with pytest.raises(DataError, match=r"a.txt is corrupt: its sha256 is [0-9a-f]{64}, expected " + sha(GOOD)):
        dataset_file("tiny", "a.txt", download=True)


def test_all_sources_failing_lists_each_reason(tmp_path, monkeypatch, empty_lookup, server):
    _tiny(tmp_path, monkeypatch, [{"url": server.base + "/gone/{file}"},
                                  {"url": "http://127.0.0.1:9/{file}"}])  # port 9: nothing listens
    with pytest.raises(DataError) as err:
        dataset_file("tiny", "b.txt", download=True)
    msg = str(err.value)
    assert "the download failed" in msg and f"{server.base}/gone/b.txt: HTTPError: HTTP 404 Not Found" in msg
    assert "http://127.0.0.1:9/b.txt: ConnectionError" in msg and "Connection refused" in msg
    assert _leftovers(empty_lookup) == []


def test_zip_source_writes_every_verified_member(tmp_path, monkeypatch, empty_lookup, server):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tiny-v1/a.txt", GOOD)
        zf.writestr("tiny-v1/b.txt", OTHER + b"damaged")
    server.files["/tiny.zip"] = buf.getvalue()
    _tiny(tmp_path, monkeypatch, [{"zip": server.base + "/tiny.zip",
                                   "members": {"a.txt": "tiny-v1/a.txt", "b.txt": "tiny-v1/b.txt"}}])
    assert dataset_file("tiny", "a.txt", download=True).read_bytes() == GOOD
    assert _leftovers(empty_lookup) == ["a.txt"]  # the damaged member was not written
    with pytest.raises(DataError, match=r"b.txt arrived with sha256 .*expected " + sha(OTHER)):
        dataset_file("tiny", "b.txt", download=True)


def test_real_mnist_entry_downloads_through_its_registered_layout(tmp_path, monkeypatch, empty_lookup, server):
    """The registry's own MNIST entry, its mirror pointed at the local server."""
    src = SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz"
    if not src.exists():
        pytest.skip("no offline MNIST copy to serve")
    server.files["/mnist/t10k-labels-idx1-ubyte.gz"] = src.read_bytes()
    real = REGISTRY["mnist"]
    monkeypatch.setitem(REGISTRY, "mnist", dataclasses.replace(real, sources=({"url": server.base + "/mnist/{file}"},)))
    from collapse_utils.models.mnist import read_idx

    got = dataset_file("mnist", "t10k-labels-idx1-ubyte.gz", download=True)
    assert got.parent == empty_lookup / "mnist"
    assert read_idx(got, 1, (10_000,)).max() == 9


# -- Hugging Face datasets: rows back to the original files -------------------------------------------
def _hf_rows_from(file: Path) -> list[str]:
    """What Hugging Face's wikitext builder made of an original file: one row per line, the line with
    its newline, an empty row for a blank line."""
    with open(file, encoding="utf-8") as fh:
        return [line if line.strip() else "" for line in fh]


def _shared(name: str, fname: str) -> Path:
    if (SHARED / name / fname).exists():
        return SHARED / name / fname
    pytest.skip(f"no offline copy of {name}/{fname}")


@pytest.mark.parametrize("name,fname", [
    ("wikitext-2", "wiki.train.tokens"), ("wikitext-2", "wiki.valid.tokens"), ("wikitext-2", "wiki.test.tokens"),
    ("wikitext-2-raw", "wiki.valid.raw"), ("wikitext-2-raw", "wiki.test.raw"),
])
def test_hf_rows_rebuild_the_original_file_byte_for_byte(name, fname, empty_lookup, monkeypatch):
    original = _shared(name, fname)
    rows = _hf_rows_from(original)
    calls = []

    def fake_rows(path, config, split):
        calls.append((path, config, split))
        return rows

    monkeypatch.setattr(cu_data, "_hf_rows", fake_rows)
    got = dataset_file(name, fname, download=True)
    assert got == empty_lookup / name / fname
    assert got.read_bytes() == original.read_bytes()
    split = {"train": "train", "valid": "validation", "test": "test"}[fname.split(".")[1]]
    config = "wikitext-2-v1" if name == "wikitext-2" else "wikitext-2-raw-v1"
    assert calls == [("Salesforce/wikitext", config, split)]


def test_hf_rows_that_differ_are_rejected_with_line_counts(tmp_path, monkeypatch, empty_lookup):
    rows = _hf_rows_from(_shared("wikitext-2", "wiki.valid.tokens"))
    monkeypatch.setattr(cu_data, "_hf_rows", lambda *a: rows[:-1])  # one line short
    monkeypatch.setitem(REGISTRY, "wikitext-2", dataclasses.replace(
        REGISTRY["wikitext-2"], sources=REGISTRY["wikitext-2"].sources[:1]))
    with pytest.raises(DataError) as err:
        dataset_file("wikitext-2", "wiki.valid.tokens", download=True)
    msg = str(err.value)
    assert "Hugging Face datasets 'Salesforce/wikitext'/'wikitext-2-v1': wiki.valid.tokens arrived with sha256" in msg
    assert "3,759 lines where 3,760 are expected" in msg
    assert _leftovers(empty_lookup) == []


def test_rows_to_text_writes_blank_rows_as_the_original_blank_lines():
    assert cu_data.rows_to_text(["", " = Title = \n", "", " text \n"]) == b" \n = Title = \n \n text \n"
    assert cu_data.rows_to_text([" no newline"]) == b" no newline\n"


def test_missing_datasets_package_is_a_reason_not_a_crash(tmp_path, monkeypatch, empty_lookup):
    def no_datasets(*a):
        raise ImportError("No module named 'datasets'", name="datasets")

    monkeypatch.setattr(cu_data, "_hf_rows", no_datasets)
    monkeypatch.setitem(REGISTRY, "wikitext-2", dataclasses.replace(
        REGISTRY["wikitext-2"], sources=REGISTRY["wikitext-2"].sources[:1]))
    with pytest.raises(DataError, match=r"needs the package datasets \(pip install datasets\)"):
        dataset_file("wikitext-2", "wiki.test.tokens", download=True)


# -- the command line ---------------------------------------------------------------------------------
def test_fetch_command(tmp_path, monkeypatch, empty_lookup, server, capsys):
    _tiny(tmp_path, monkeypatch, [{"url": server.base + "/{file}"}])
    server.files.update({"/a.txt": GOOD, "/b.txt": OTHER})
    assert cu_data.main(["fetch", "tiny"]) == 0
    assert f"tiny: {empty_lookup / 'tiny'} (verified)" in capsys.readouterr().out
    assert _leftovers(empty_lookup) == ["a.txt", "b.txt"]
    assert cu_data.main(["fetch", "nope"]) == 2
    assert "error: unknown dataset 'nope'; registered:" in capsys.readouterr().err


def test_unwritable_cache_is_said_not_taken_for_a_network_fault(tmp_path, monkeypatch, empty_lookup, server):
    _tiny(tmp_path, monkeypatch, [{"url": server.base + "/{file}"}])
    server.files["/a.txt"] = GOOD
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("COLLAPSE_CACHE_DIR", str(blocker))
    with pytest.raises(DataError, match=r"cannot write a.txt of dataset 'tiny' into the cache .*COLLAPSE_CACHE_DIR"):
        dataset_file("tiny", "a.txt", download=True)
