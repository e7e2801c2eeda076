"""Reliability: the reproducibility contract, faults survived, and every bad input refused before compute.

- ``parallel_runs`` changes the wall time only: chapters 03 and 04 at the smoke preset write
  byte-identical result tables with one worker and with two;
- a chapter run killed with SIGKILL in the middle of a generation resumes without recomputing its
  finished generations and ends with the numbers of an uninterrupted run;
- an interrupted ``python -m collapse_utils book`` leaves no half-written executed notebook;
- a results folder that cannot be written is refused before any compute;
- the bad-input catalogue (README.md, "Bad input") -- each gets one clear message before compute.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "collapse_utils", *args]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0, what: str = "") -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the process ended (rc={proc.returncode}) before {what}:\n{out[-3000:]}")
        if time.time() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _tables(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.glob("*.csv"))}


# -- the contract: parallel_runs changes only the wall time ----------------------------------------
@pytest.mark.parametrize("chapter,slug", [("03", "03_vae_mnist"), ("04", "04_language_models")])
def test_parallel_runs_change_only_the_wall_time(chapter, slug, smoke_chapter, results_tmp, tmp_path, monkeypatch):
    from collapse_utils.tooling.config import load_preset
    from collapse_utils.tooling.runner import execute_chapter

    assert load_preset("smoke", chapter)["parallel_runs"] == 1 and load_preset("smoke", chapter)["seeds"] >= 2
    smoke_chapter(chapter)  # parallel_runs=1, results in results_tmp
    serial = _tables(results_tmp / slug / "smoke")
    monkeypatch.setenv("COLLAPSE_RESULTS_DIR", str(tmp_path / "results"))
    execute_chapter(chapter, "smoke", ["parallel_runs=2"], output_dir=tmp_path / "out")
    run = tmp_path / "results" / slug / "smoke"  # the same run name: parallel_runs is not part of the result
    parallel = _tables(run)
    assert "metrics.csv" in serial and serial.keys() == parallel.keys()
    for name in serial:
        assert serial[name] == parallel[name], f"{name} differs between parallel_runs=1 and parallel_runs=2"
    assert json.loads((run / "params.json").read_text())["threads_per_run"] == 1


# -- SIGKILL in the middle of a generation --------------------------------------------------------
KILL_PARAMS = ["conditions=['replace/fixed']", "seeds=1", "generations=3", "n_train=1536", "epochs=2"]


def test_sigkill_mid_generation_resumes_without_recomputing(tmp_path):
    """A real subprocess runs chapter 03, is killed with SIGKILL once generation 1 has started, and is
    rerun: the journal shows it resumed at generation >= 1 (generation 0 is not refitted) and its
    metrics equal those of an uninterrupted run, value for value."""
    from collapse_utils.core.engine import Checkpoints

    def command(results: Path, out: Path) -> tuple[list[str], dict]:
        args = _cli("run", "03", "--preset", "smoke", "--output-dir", str(out))
        for p in KILL_PARAMS:
            args += ["-p", p]
        return args, _env(COLLAPSE_RESULTS_DIR=results)

    args, env = command(tmp_path / "full", tmp_path / "out-full")
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=600)

    results = tmp_path / "killed"
    args, env = command(results, tmp_path / "out-killed")
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def journals():
        return [Checkpoints(p.parent) for p in results.glob("**/journal.log")]

    _wait_for(lambda: any("generation 1 started" in j.journal() for j in journals()), proc,
              what="generation 1 to start")
    time.sleep(0.3)  # well inside generation 1's training
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    (ckpt,) = journals()
    before = ckpt.journal()
    assert before[-1].startswith("generation ") and before[-1].endswith(" started"), before  # killed mid-generation
    assert not list(results.glob("03_vae_mnist/*/metrics.csv"))  # nothing was reported as finished

    args, env = command(results, tmp_path / "out-killed")
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=600)
    after = ckpt.journal()[len(before):]
    resumed = [line for line in after if line.startswith("resumed from")]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) >= 1, after
    assert "generation 0 started" not in after  # finished generations are not recomputed
    (full,) = results.parent.joinpath("full").glob("03_vae_mnist/*/metrics.csv")
    (again,) = results.glob("03_vae_mnist/*/metrics.csv")
    pd.testing.assert_frame_equal(pd.read_csv(full), pd.read_csv(again))


# -- an interrupted book build -------------------------------------------------------------------------
def test_interrupted_book_leaves_no_half_written_page(tmp_path):
    book = tmp_path / "book-root"
    book.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, book / name)
    shutil.copytree(ROOT / "book", book / "book", ignore=shutil.ignore_patterns("_generated"))
    gen = book / "book" / "_generated"
    args = _cli("book", "--preset", "smoke", "--chapters", "01", "03", "--root", str(book))
    proc = subprocess.Popen(args, env=_env(COLLAPSE_RESULTS_DIR=tmp_path / "results"), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    partial = gen / ".03_vae_mnist.partial.ipynb"
    _wait_for(partial.exists, proc, what="chapter 03 to start executing")
    time.sleep(1.0)  # papermill has written some executed cells by now
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # chapter 01 finished and is complete; chapter 03 left no page the build would render
    nb = json.loads((gen / "01_gaussian_theory.ipynb").read_text())
    assert nb["cells"] and not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
    assert not (gen / "03_vae_mnist.ipynb").exists()
    assert sorted(p.name for p in gen.glob("[!.]*.ipynb")) == ["01_gaussian_theory.ipynb"]
    # building from what is there refuses, naming the missing chapter, instead of rendering half a book
    r = subprocess.run(_cli("book", "--no-execute", "--root", str(book)), env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "executed notebooks missing" in r.stderr and "03_vae_mnist" in r.stderr
    # Ctrl-C (SIGINT) instead of SIGKILL: the runner removes the partial page itself and says how to resume
    assert partial.exists()  # what the SIGKILL left: hidden, never rendered, removed by the next execution
    started = time.time()
    # a fresh results folder and more generations than smoke's: with warm caches the smoke run can end within
    # papermill's first autosave of the partial page, i.e. before the signal arrives
    # SIGINT back to its default in the child: a process started with SIGINT ignored (as a test runner's
    # children may be) keeps ignoring it, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(_cli("run", "03", "--preset", "smoke", "-p", "generations=8", "--output-dir", str(gen)),
                            env=_env(COLLAPSE_RESULTS_DIR=tmp_path / "results-sigint"), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(lambda: (partial.exists() and partial.stat().st_mtime > started) or time.time() - started > 10, proc,
              what="chapter 03 to start")
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "the same command resumes" in out
    assert not partial.exists() and not (gen / "03_vae_mnist.ipynb").exists(), out


# -- a results folder that cannot be written ----------------------------------------------------------
def _read_only_wrapper(folder: Path) -> list[str] | None:
    """A command prefix under which ``folder`` is read-only (root ignores file modes: a read-only bind
    mount in a private mount namespace), or None when this machine offers neither."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    if shutil.which("unshare"):
        probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                                f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' '{folder}'"
                                f" && ! touch '{folder}/x' 2>/dev/null"], capture_output=True)
        if probe.returncode == 0:
            mount = f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' '{folder}' && "
            return ["unshare", "-rm", "sh", "-c", mount + 'exec "$@"', "sh"]
    return None


def test_read_only_results_folder_is_refused_before_compute(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    prefix = _read_only_wrapper(folder)
    if prefix is None:
        pytest.skip("cannot make a read-only folder here (root without user namespaces); the catalogue "
                    "covers an unwritable one")
    out = tmp_path / "out"
    t0 = time.time()
    r = subprocess.run(prefix + _cli("run", "03", "--preset", "smoke", "--output-dir", str(out)),
                       env=_env(COLLAPSE_RESULTS_DIR=folder), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: the results folder ") and "cannot be written" in r.stderr
    assert "COLLAPSE_RESULTS_DIR" in r.stderr and "Traceback" not in r.stderr
    assert not list(out.glob("*.ipynb*")) and not list(folder.iterdir())  # no kernel ran, nothing written
    assert time.time() - t0 < 120


# -- the bad-input catalogue -------------------------------------------------------------------------
def _damaged(tmp: Path, dataset: str, damage) -> Path:
    """A data folder like the offline one (every other dataset linked in) whose ``dataset`` folder is made by
    ``damage(folder, original)``."""
    from collapse_utils.core.data import find_dataset

    shared = find_dataset("wikitext-2").parent
    d = tmp / f"damaged-{dataset}"
    d.mkdir()
    for sub in shared.iterdir():
        if sub.is_dir() and sub.name != dataset:
            (d / sub.name).symlink_to(sub)
    damage(d / dataset, shared / dataset)
    return d


def _corrupt_data(tmp: Path) -> Path:
    """MNIST with the last 100 bytes of one file zeroed."""
    def damage(folder: Path, original: Path) -> None:
        shutil.copytree(original, folder)
        f = folder / "t10k-labels-idx1-ubyte.gz"
        f.write_bytes(f.read_bytes()[:-100] + b"\0" * 100)

    return _damaged(tmp, "mnist", damage)


def _corrupt_model(tmp: Path) -> Path:
    """The pretrained-model folder with a damaged file (a GGUF header and nothing else)."""
    from collapse_utils.core.data import REGISTRY

    def damage(folder: Path, original: Path) -> None:
        folder.mkdir()
        (name,) = REGISTRY["smollm2-135m"].files
        (folder / name).write_bytes(b"GGUF" + b"\0" * 4096)

    return _damaged(tmp, "smollm2-135m", damage)


#: (input as a reader would describe it, command-line arguments, environment, what the message must say)
CATALOGUE = [
    ("unknown chapter", ["run", "99"], {}, r"unknown chapter '99'; valid chapters: 01 \(01_gaussian_theory\)"),
    ("unknown chapter in `book --chapters`", ["book", "--chapters", "8"], {}, r"unknown chapter '8'; valid chapters"),
    ("unknown preset", ["run", "01", "--preset", "huge"], {}, r"unknown preset 'huge'; valid presets: smoke, cpu, pretrained, paper"),
    ("unknown parameter", ["run", "01", "-p", "nope=1"], {}, r"unknown parameter 'nope' for chapter 01; valid parameters: .*seeds"),
    ("`-p` without `=`", ["run", "01", "-p", "seeds"], {}, r"parameter override 'seeds' must look like name=value"),
    ("`-p` with an empty name", ["run", "01", "-p", "=3"], {}, r"unknown parameter '' for chapter 01; valid parameters"),
    ("`-p` with an unclosed list", ["run", "01", "-p", "sample_sizes=[100,"], {}, r"sample_sizes='\[100,' has the wrong type; expected list"),
    ("wrong type (text for a number)", ["run", "01", "-p", "seeds=many"], {}, r"seeds='many' has the wrong type; expected int"),
    ("wrong type (true for a number)", ["run", "02", "-p", "seeds=true"], {}, r"seeds=True has the wrong type; expected int"),
    ("wrong type (number for a list)", ["run", "03", "-p", "conditions=3"], {}, r"conditions=3 has the wrong type; expected list"),
    ("out of range (integer)", ["run", "01", "-p", "seeds=0"], {}, r"seeds must lie in \[\d+, \d+\], got 0"),
    ("out of range (fraction)", ["run", "04", "-p", "keep_fraction=1.5"], {}, r"keep_fraction must lie in \(0.0, 1.0\), got 1.5"),
    ("out of range (threads per run)", ["run", "03", "-p", "threads_per_run=0"], {}, r"threads_per_run must lie in \[1, 256\], got 0"),
    ("not one of the choices", ["run", "01", "-p", "sampler=magic"], {}, r"sampler must be one of \['exact', 'draws'\], got 'magic'"),
    ("unknown data regime", ["run", "02", "-p", "regimes=[keep_real(2)]"], {}, r"regimes: .*keep_real"),
    ("unknown regime/mode pair", ["run", "03", "-p", "conditions=['replace/stale']"], {}, r"conditions: .*stale"),
    ("conflicting: repeated conditions", ["run", "03", "-p", "conditions=['replace/fixed', 'replace/fixed']"], {}, r"conditions must not repeat"),
    ("conflicting: more comparison seeds than seeds", ["run", "04", "-p", "comparison_seeds=4"], {}, r"comparison_seeds \(4\) cannot exceed seeds \(3\)"),
    ("conflicting: local model with the raw text", ["run", "04", "-p", "data_config=wikitext-2-raw-v1"], {}, r"set data_config='wikitext-2-v1'"),
    ("conflicting: heads do not divide the width", ["run", "04", "-p", "num_heads=3"], {}, r"hidden_size \(\d+\) must be divisible by num_heads \(3\)"),
    ("run name with a path in it", ["run", "01", "-p", "run_name=../elsewhere"], {}, r"run_name '../elsewhere' may contain only letters"),
    ("data folder that does not exist", ["run", "04"], {"COLLAPSE_DATA_DIR": "/nonexistent/data", "COLLAPSE_CACHE_DIR": "{tmp}/empty-cache"}, r"COLLAPSE_DATA_DIR=/nonexistent/data is not a folder \(point it at the folder that holds the dataset folders: gpt2-bpe, mnist, smollm2-135m, wikitext-2, wikitext-2-raw, or unset it\); wiki.train.tokens of dataset 'wikitext-2' not found"),
    ("data folder without the dataset", ["run", "04"], {"COLLAPSE_DATA_DIR": "{tmp}", "COLLAPSE_CACHE_DIR": "{tmp}/empty-cache"}, r"wiki.train.tokens of dataset 'wikitext-2' not found .*expected sha256 9e9fa1ad.*To provide it"),
    ("corrupted dataset file", ["run", "03"], {"COLLAPSE_DATA_DIR": "{corrupt}"}, r"t10k-labels-idx1-ubyte.gz is corrupt: its sha256 is [0-9a-f]{64}, expected f7ae60f9"),
    ("Hugging Face model name while offline", ["run", "04", "-p", "model_name=facebook/opt-125m"], {"HF_HUB_OFFLINE": "1"}, r"model_name='facebook/opt-125m' is a Hugging Face hub name, but HF_HUB_OFFLINE.* is set .*'local-opt'"),
    ("paper preset offline (raw WikiText-2 training split)", ["run", "04", "--preset", "paper"], {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLLAPSE_CACHE_DIR": "{tmp}/empty-cache"}, r"wiki.train.raw of dataset 'wikitext-2-raw' not found.*cannot fetch 'wikitext'/'wikitext-2-raw-v1'"),
    ("model folder without a model", ["run", "04", "-p", "model_name={tmp}"], {}, r"is a folder without config.json"),
    ("pretrained study with a parameter it cannot take", ["run", "04", "-p", "pretrained={model_name: smollm2-135m, size_blocks: [8]}"], {}, r"pretrained sets \['size_blocks'\], which the pretrained study cannot change"),
    ("corrupted pretrained model file", ["run", "04", "--preset", "pretrained"], {"COLLAPSE_DATA_DIR": "{corrupt_model}", "COLLAPSE_CACHE_DIR": "{tmp}/empty-cache"}, r"SmolLM2-135M-Instruct.Q4_1.gguf is corrupt: its sha256 is [0-9a-f]{64}, expected b179c952"),
    ("results folder that cannot be written", ["run", "01"], {"COLLAPSE_RESULTS_DIR": "/sys/collapse-results"}, r"the results folder /sys/collapse-results/01_gaussian_theory cannot be written"),
    ("output folder that cannot be written", ["run", "01", "--output-dir", "/sys/collapse-out"], {}, r"folder for executed notebooks /sys/collapse-out cannot be written .*--output-dir"),
    ("`book --root` that is not a book", ["book", "--root", "{tmp}"], {}, r"is not a book folder \(no _config.yml\)"),
]


@pytest.mark.parametrize("what,argv,env,message", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_gets_one_clear_message_before_compute(what, argv, env, message, tmp_path, monkeypatch, capsys):
    import re

    import papermill

    from collapse_utils.tooling import runner

    def no_compute(*a, **k):
        raise AssertionError("a kernel was started for a bad input")

    monkeypatch.setattr(papermill, "execute_notebook", no_compute)
    subs = {"{tmp}": str(tmp_path)}
    if any("{corrupt}" in v for v in env.values()):
        subs["{corrupt}"] = str(_corrupt_data(tmp_path))
    if any("{corrupt_model}" in v for v in env.values()):
        subs["{corrupt_model}"] = str(_corrupt_model(tmp_path))

    def fill(text: str) -> str:
        for key, value in subs.items():
            text = text.replace(key, value)
        return text

    argv = [fill(a) for a in argv]
    for k, v in env.items():
        monkeypatch.setenv(k, fill(v))
    rc = runner.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err, re.S), err
    assert not list(tmp_path.glob("**/*.ipynb"))


def test_catalogue_is_published_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ")]
    for what, argv, env, message in CATALOGUE:
        row = next((line for line in rows if line.startswith(f"| {what} |")), None)
        assert row is not None, f"README's bad-input table lacks {what!r}"
        _, example, shown = [c.strip() for c in row.strip().strip("|").split(" | ")][:3]
        # the example, as a shell would split it, is the tested command (environment prefixes aside)
        lex = shlex.shlex(example.strip("`"), posix=True, punctuation_chars=True)  # ( ) ; & | as bash sees them
        lex.whitespace_split = True
        words = list(lex)
        words = words[words.index("python"):]
        if not any("{" in a for a in argv):
            assert words == ["python", "-m", "collapse_utils", *argv], f"README example for {what!r}: {example}"
        # and the message shown is one the test accepts (multi-line messages are joined with " — ")
        if not shown.endswith("…") and not any("{" in v for v in env.values()) and "<" not in shown:
            assert re.search(message, shown.replace(" — ", "\n  - "), re.S), f"README message for {what!r}: {shown}"


# -- hostile files in a results folder: refused like damaged ones, and no code runs ----------------------
class _Plant:
    """A pickle payload: unpickling it calls open(marker, "w"), creating the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps(_Plant(marker)))


def test_hostile_checkpoints_in_a_chapter_results_folder_run_no_code(tmp_path):
    """Chapter 01 (tiny) checkpoints every study; then, in every checkpoint folder, the newest checkpoint is
    replaced by a pickle that would create a marker file and an older-format ``state-99999.pkl`` pickle is
    planted.  The rerun names every planted file in a warning, removes it, recomputes from the checkpoint
    before, ends with the first run's numbers -- and the marker never appears."""
    import pickle
    import warnings

    from collapse_utils.chapters import gaussian_theory as ch
    from collapse_utils.tooling.config import load_preset

    p = ch.Params.from_values({**load_preset("smoke", "01"), "preset": "smoke", "run_name": ""}).replace(
        seeds=20, generations=20, draws_check_seeds=20, draws_check_generations=10, schedule_generations=20,
        accumulate_seeds=20, accumulate_generations=20, discrete_seeds=40, discrete_max_generations=400)
    root, marker = tmp_path / "checkpoints", tmp_path / "marker"
    first = ch.run(p, checkpoint_root=root, progress=False)
    pickle.loads(pickle.dumps(_Plant(tmp_path / "live")))  # the payload is live: unpickled, it writes a file
    assert (tmp_path / "live").exists()
    planted = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        newest = sorted(folder.glob("state-*.npz"))[-1]
        _plant(newest, marker)
        _plant(folder / "state-99999.pkl", marker)
        planted += [newest, folder / "state-99999.pkl"]
    assert len(planted) >= 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = ch.run(p, checkpoint_root=root, progress=False)
    shown = "\n".join(str(w.message) for w in caught)
    for path in planted:
        assert f"checkpoint {path} is unreadable" in shown and "removing" in shown, path
        # the pickle is gone (the newest checkpoint was recomputed and written again, as a state file)
        assert not path.exists() if path.suffix == ".pkl" else path.read_bytes()[:4] == b"PK\x03\x04"
    assert not marker.exists()
    for name in ("gaussian", "discrete", "extinction"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(again, name))


def test_hostile_calibration_cache_runs_no_code(tmp_path, monkeypatch):
    """Chapter 06's calibration cache (tiny run, one arm, one seed): a pickle planted in its place is named
    in a warning, removed and recomputed -- the same numbers, and the marker never appears."""
    import warnings

    from collapse_utils.chapters import provenance as ch
    from collapse_utils.core.engine import Loop
    from collapse_utils.models import provenance as pv
    from collapse_utils.tooling.config import load_preset

    tiny = {**load_preset("smoke", "06"), "preset": "smoke", "run_name": "", "seeds": 1, "generations": 1,
            "arms": ["none"], "crawl_blocks": 10, "calibration_blocks": 6, "probe_prompts": 4, "base_blocks": 48,
            "hidden_size": 16, "num_beams": 2, "gen_batch_size": 16, "test_blocks": 8, "valid_blocks": 8,
            "tokens": [8, 64]}
    p = ch.Params.from_values(tiny)
    data = ch.prepare_data(p)
    base = ch.prepare_base(p, data, tmp_path / "base", progress=False)
    loop = Loop(experiment=ch.experiment(p, data, base), regime="replace", generations=p.generations)
    root, marker = tmp_path / "checkpoints", tmp_path / "marker"
    first = ch.run(p, loop, checkpoint_root=root, progress=False)
    (cal,) = root.glob("**/calibration-*.npz")
    _plant(cal, marker)
    for state in root.glob("**/state-*.npz"):  # so that the rerun needs the calibration again
        state.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = ch.run(p, loop, checkpoint_root=root, progress=False)
    assert any(f"cached calibration {cal} is unreadable" in str(w.message) for w in caught)
    assert not marker.exists() and cal.exists()  # recomputed and written again, as a state file
    pd.testing.assert_frame_equal(first.metrics, again.metrics)
    # and read back from that file (its detectors rebuilt from their arrays), the same numbers again
    for state in root.glob("**/state-*.npz"):
        state.unlink()
    reads = []
    read = pv.ProvenanceCollapse._read_calibration
    monkeypatch.setattr(pv.ProvenanceCollapse, "_read_calibration", staticmethod(lambda f: reads.append(f) or read(f)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        third = ch.run(p, loop, checkpoint_root=root, progress=False)
    assert reads and set(reads) == {cal}  # the detectors came from the file
    pd.testing.assert_frame_equal(first.metrics, third.metrics)
