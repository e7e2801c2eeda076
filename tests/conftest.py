"""Shared fixtures: offline data, results in a temporary folder, chapters executed once per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("COLLAPSE_OFFLINE", "1")  # tests never download (make test fetches data first)
if "COLLAPSE_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["COLLAPSE_DATA_DIR"] = str(ROOT.parent / "shared" / "data")


# -- the fast lane (`make test-fast` = `pytest -m "not slow"`): tests are marked by what they cost ----------
#: fixtures whose use means executing a chapter's notebook or building the book
EXECUTING_FIXTURES = {"smoke_chapter", "book_tmp"}
#: tests that cost more than a second or two of CPU each, whatever they test (measured per test): node
#: ids, without parameters for every case or with them for one case. Everything else is the fast lane.
SLOW_TESTS = {
    # the CLI, papermill, accelerate or a chapter in a subprocess
    "tests/test_reliability.py::test_sigkill_mid_generation_resumes_without_recomputing",
    "tests/test_reliability.py::test_interrupted_book_leaves_no_half_written_page",
    "tests/test_reliability.py::test_read_only_results_folder_is_refused_before_compute",
    "tests/test_config.py::test_cli_reports_errors_without_traceback",
    "tests/test_htmlcheck.py::test_cli_exit_status_and_lines",
    "tests/test_notebooks.py::test_plain_papermill_on_the_committed_notebook_applies_the_preset",
    "tests/test_lm.py::test_two_process_accelerate_launch_on_cpu",
    "tests/test_distributed.py::test_a_chapter_study_is_identical_on_dask_and_in_the_local_pool",
    "tests/test_distributed.py::test_a_worker_killed_mid_run_resumes_from_its_checkpoint_with_the_same_numbers",
    # a headless Chromium per test (the browser-mode cases of the parametrized tests are marked below)
    "tests/test_htmlcheck.py::test_browser_reports_maths_left_untypeset_without_mathjax",
    "tests/test_htmlcheck.py::test_browser_sees_what_parsing_cannot",
    "tests/test_htmlcheck.py::test_browser_follows_redirects_and_a_failed_one_stays_on_its_page",
    # chapter-sized studies and model training in process
    "tests/test_chapter06.py::test_serial_and_parallel_runs_give_identical_numbers",
    "tests/test_chapter06.py::test_a_loop_with_a_swapped_experiment_runs_through_the_chapter",
    "tests/test_lm.py::test_recursion_is_deterministic_under_a_seed_and_resumes",
    "tests/test_lm.py::test_keep_real_bookkeeping",
    "tests/test_lm.py::test_original_prompts_are_original_blocks_and_chained_ones_are_not",
    "tests/test_lm.py::test_seeds_in_worker_processes_give_the_same_results",
    "tests/test_lm.py::test_offline_by_name_path_loads_a_saved_opt",
    "tests/test_lm.py::test_raw_wikitext_with_the_hf_recipe_and_an_opt_saved_by_save_pretrained",
    "tests/test_lm.py::test_generation_gives_exactly_64_new_tokens_even_when_eos_is_likely",
    "tests/test_lm.py::test_blocks_are_exact_and_splits_do_not_leak",
    "tests/test_watermark.py::test_watermarked_beam_search_of_the_smoke_model_scores_high",
    "tests/test_vae.py::test_run_study_is_deterministic_and_shares_generation_zero",
    "tests/test_vae.py::test_another_thread_count_differs_by_less_than_another_seed",
    "tests/test_vae.py::test_training_lowers_the_loss",
    "tests/test_vae.py::test_interrupted_run_resumes_to_the_same_result",
    "tests/test_vae.py::test_classifier_training_is_deterministic_and_entropy",
    "tests/test_vae.py::test_classifier_accuracy_above_97_percent",
    "tests/test_gmm.py::test_em_matches_sklearn_from_the_same_initial_labels[3-full]",
    "tests/test_gmm.py::test_l2_closed_form_matches_numerical_integration",
    "tests/test_chapter02.py::test_noise_without_a_difference_is_not_visible",
    "tests/test_chapter05.py::test_the_stable_share_sentence_follows_the_verdict",
    "tests/test_chapter05.py::test_settings_that_cannot_tell_are_not_visible",
    "tests/test_discrete.py::test_tail_states_vanish_first",
    # above about 2 s of CPU each (measured as the process's CPU time per test, which load does not change)
    "tests/test_watermark.py::test_watermarked_sampling_matches_its_exact_expectations",
    "tests/test_vae.py::test_bookkeeping_of_each_mode",
    "tests/test_vae.py::test_deepcopy_of_experiment_state_roundtrip",
    "tests/test_gmm.py::test_kmeans_agrees_with_sklearn",
    "tests/test_gmm.py::test_em_generic_dimension_matches_sklearn",
    "tests/test_gmm.py::test_em_matches_sklearn_from_the_same_initial_labels[3-tied]",
    "tests/test_reliability.py::test_hostile_calibration_cache_runs_no_code",
    "tests/test_lm.py::test_a_piece_of_the_loop_swapped_on_the_page_runs",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (EXECUTING_FIXTURES & set(getattr(item, "fixturenames", ()))
                or item.nodeid in SLOW_TESTS or item.nodeid.split("[", 1)[0] in SLOW_TESTS
                or params.get("mode") == "browser"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def book_tmp(tmp_path_factory) -> Path:
    """A scratch copy of the book's sources; executed chapters land in its book/_generated/."""
    d = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, d / name)
    shutil.copytree(ROOT / "book", d / "book", ignore=shutil.ignore_patterns("_generated"))
    (d / "book" / "_generated").mkdir()
    return d


@pytest.fixture(scope="session", autouse=True)
def results_tmp(tmp_path_factory):
    """Never write into the repository's results/ during tests."""
    d = tmp_path_factory.mktemp("results")
    old = os.environ.get("COLLAPSE_RESULTS_DIR")
    os.environ["COLLAPSE_RESULTS_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("COLLAPSE_RESULTS_DIR", None)
    else:
        os.environ["COLLAPSE_RESULTS_DIR"] = old


_EXECUTED: dict[str, Path] = {}


@pytest.fixture(scope="session")
def smoke_chapter(book_tmp):
    """smoke_chapter("02") executes chapter 02 at the smoke preset once per session; returns the notebook path."""
    from collapse_utils.tooling.runner import execute_chapter

    def run(chapter: str) -> Path:
        if chapter not in _EXECUTED:
            _EXECUTED[chapter] = execute_chapter(chapter, "smoke", output_dir=book_tmp / "book" / "_generated")
        return _EXECUTED[chapter]

    return run


@pytest.fixture(scope="session")
def read_executed():
    """read_executed(path) -> (notebook JSON text, number of PNG figures), asserting no cell raised an error."""
    import json

    def read(path: Path) -> tuple[str, int]:
        nb = json.loads(Path(path).read_text())
        outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
        errors = [o for o in outputs if o.get("output_type") == "error"]
        assert not errors, errors[0].get("evalue")
        return json.dumps(nb), sum("image/png" in o.get("data", {}) for o in outputs)

    return read


@pytest.fixture(scope="module")
def mnist_ok():
    """Skip a test that needs MNIST where the dataset is not available (offline, no COLLAPSE_DATA_DIR)."""
    from collapse_utils.core.data import DataError, find_dataset

    try:
        find_dataset("mnist")
    except DataError as e:
        pytest.skip(f"MNIST not available: {e}")

