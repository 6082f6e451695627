"""TOFU data shipped with the package, the strict folder search, model sources and ROUGE-L."""

import json
import os
from pathlib import Path

import pytest

import jaxcl
from jaxcl import hf
from jaxcl.tofu import data as tdata
from jaxcl.tofu import metrics as tm

PACKAGE = Path(jaxcl.__file__).resolve().parent / "datasets" / "tofu"


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("JAXCL_TOFU_DIR", raising=False)


@pytest.fixture
def no_hub(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"the hub was asked for {a} although a local folder was given")

    monkeypatch.setattr(hf, "load_hub_dataset", refuse)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_package_ships_the_data_and_its_licence():
    assert sorted(os.listdir(PACKAGE)) == sorted((*tdata.FILES, "README.md"))
    assert "MIT licence" in (PACKAGE / "README.md").read_text()
    assert Path(tdata.PACKAGE_DIR).resolve() == PACKAGE
    assert not hasattr(tdata, "CANDIDATES")


def test_default_is_the_package_copy_with_the_documented_sizes(no_env, no_hub):
    assert Path(tdata.data_dir()).resolve() == PACKAGE
    f01, f05, f10 = (tdata.load_split(n) for n in ("forget01", "forget05", "forget10"))
    assert (len(f01), len(f05), len(f10)) == (40, 200, 400)
    assert f01 == f10[:40] and f05 == f10[:200]
    retain90 = tdata.load_split("retain90")
    assert len(retain90) == 3600
    assert tdata.load_split("retain95") == retain90 + f10[200:]
    assert len(tdata.load_split("full")) == 4000
    assert len(tdata.load_split("world_facts_perturbed")) == 117
    assert len(tdata.idk_answers()) == 100


def test_explicit_root_is_the_only_place_read(tmp_path, no_env, no_hub):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)]
    write_jsonl(tmp_path / "forget10.jsonl", rows)
    write_jsonl(tmp_path / "forget01.jsonl", rows[:2])
    assert tdata.data_dir(str(tmp_path)) == str(tmp_path)
    assert tdata.load_split("forget01", str(tmp_path)) == rows[:2]
    # a split the folder lacks is an error naming it, not the package's or the hub's copy
    with pytest.raises(FileNotFoundError, match="no retain90.jsonl in") as e:
        tdata.load_split("retain90", str(tmp_path))
    assert str(tmp_path) in str(e.value) and "forget01.jsonl, forget10.jsonl" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no idontknow.txt"):
        tdata.idk_answers(str(tmp_path))


def test_root_without_the_files_names_folder_contents_and_expected_files(tmp_path, no_env, no_hub):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as e:
        tdata.load_split("forget01", str(tmp_path))
    msg = str(e.value)
    assert f"TOFU folder {str(tmp_path)!r} (from root=) has no forget10.jsonl" in msg
    assert "it holds: notes.txt" in msg
    assert "retain_perturbed.jsonl" in msg and "idontknow.txt" in msg
    with pytest.raises(FileNotFoundError, match="it does not exist"):
        tdata.data_dir(str(tmp_path / "missing"))


def test_env_folder_is_as_strict_as_root(tmp_path, monkeypatch, no_hub):
    monkeypatch.setenv("JAXCL_TOFU_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"from \$JAXCL_TOFU_DIR.*it is empty"):
        tdata.load_split("forget01")
    write_jsonl(tmp_path / "forget10.jsonl", [{"question": "q", "answer": "a"}])
    assert tdata.load_split("forget10") == [{"question": "q", "answer": "a"}]
    other = tmp_path / "other"
    other.mkdir()
    write_jsonl(other / "forget10.jsonl", [{"question": "r", "answer": "b"}])
    assert tdata.load_split("forget10", str(other)) == [{"question": "r", "answer": "b"}]  # root wins


def test_hub_only_without_any_local_copy(tmp_path, monkeypatch, no_env):
    calls = []
    monkeypatch.setattr(tdata, "PACKAGE_DIR", str(tmp_path / "stripped"))
    monkeypatch.setattr(hf, "load_hub_dataset", lambda *a: calls.append(a) or [{"question": "h"}])
    assert tdata.data_dir() is None
    assert tdata.load_split("forget05") == [{"question": "h"}]
    assert calls == [("locuslab/TOFU", "forget05")]


# ---- model sources ------------------------------------------------------------------------------


def test_resolve_model_source_accepts_the_valid_forms(tmp_path, monkeypatch):
    assert tdata.resolve_model_source("tiny") == "tiny"
    assert tdata.resolve_model_source("smollm2-135m") == "smollm2-135m"
    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert tdata.resolve_model_source(hub) == hub
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    assert tdata.resolve_model_source(str(gguf)) == str(gguf)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert tdata.resolve_model_source("ckpt") == str(ckpt)  # relative: made absolute
    assert tdata.resolve_model_source("./m.Q4_1.gguf") == str(gguf)


@pytest.mark.parametrize(
    "model", ["/nonexistent.gguf", "missing.gguf", "./x", "../x", "~/no/such/model", "a/b/c", "/abs"]
)
def test_resolve_model_source_missing_paths(model):
    with pytest.raises(FileNotFoundError) as e:
        tdata.resolve_model_source(model)
    msg = str(e.value)
    assert repr(model) in msg and "'tiny'" in msg and "hub id 'owner/name'" in msg and ".gguf file" in msg


def test_resolve_model_source_other_bad_values(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        tdata.resolve_model_source(str(tmp_path / "empty"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file but not a .gguf file"):
        tdata.resolve_model_source(str(weights))
    with pytest.raises(ValueError, match=r"unknown model 'smollm2'\. Valid --model values: 'tiny'"):
        tdata.resolve_model_source("smollm2")
    folder_gguf = tmp_path / "dir.gguf"
    folder_gguf.mkdir()
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        tdata.resolve_model_source(str(folder_gguf))


# ---- ROUGE-L ------------------------------------------------------------------------------------


def test_rouge_l_recall_stems_words():
    # stems: cats -> cat, running -> run, runs -> run; words of 3 letters or fewer are kept.
    # prediction [the cat are run], reference [the cat run]: LCS 3 of 3 (1/3 without stemming)
    assert tm.rouge_l_recall("The cats are running", "the cat runs") == pytest.approx(1.0)


def test_rouge_l_recall_partial_overlap():
    # reference [the author publish book and poem] (authors, publish, books, poems stemmed),
    # prediction [the author publish two book]: LCS "the author publish book" = 4 of 6 words
    # (without stemming only "the ... books": 2 of 6)
    assert tm.rouge_l_recall("The author published two books", "The authors publish books and poems") == (
        pytest.approx(4 / 6)
    )
    # order matters: reference [pari is the capit], prediction [the capit is pari]: LCS 2 of 4
    assert tm.rouge_l_recall("The capital is Paris", "Paris is the capital.") == pytest.approx(0.5)
    # punctuation splits words; recall is over the reference, so extra predicted words are free
    assert tm.rouge_l_recall("Basil Mahfouz Al-Kuwaiti, born 1932", "basil mahfouz al kuwaiti") == 1.0
    assert tm.rouge_l_recall("anything", "") == 0.0
    assert tm.rouge_l_recall("", "a reference") == 0.0
