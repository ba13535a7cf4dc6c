"""``truncate: none`` with a ``span``: long inputs in windows, combined as Elasticsearch combines them.

Elasticsearch (``NlpTokenizer.tokenize`` with a span) cuts windows of ``max_sequence_length`` tokens that never
end inside a word, each starting ``span`` tokens before the previous end (backed up to a word's start). An input
that is not chunked answers with its first window (text_embedding, text_expansion: ``[0][0]`` of the result);
text_similarity windows the document, repeats the query in every window and scores the document with the
windows' max (default) or mean (``span_score_combination_function``). The references here are computed by hand:
window bounds worked out on paper, and the Hugging Face models run eagerly on Hugging Face's tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import torch
from elastic_helpers import elastic_files

from infernetes.worker.elastic_engine import ENGINES
from infernetes.worker.elastic_format import ElasticFormatError, install, validate_config
from infernetes.worker.elastic_tokenizers import TokenizationError, parse_tokenization, window_bounds
from infernetes.worker.engine import InferRequest, Job
from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow

QUERY = "which unbelievably extraordinary waterfalls"
DOC = ("The unbelievably extraordinary waterfalls of Iguazu thunder between Argentina and Brazil, where "
       "rainforest mist hangs over hundreds of cascades; travellers walk the catwalks above the Devil's Throat, "
       "watching rainbows form in the spray while coatis wander the paths and swifts nest behind the falling water.")
MSL, SPAN = 24, 6


def test_window_bounds_worked_out_by_hand():
    # Words of 2, 1, 3, 1, 1 and 2 tokens; windows of 4 tokens sharing 1.
    words = [0, 0, 1, 2, 2, 2, 3, 4, 5, 5]
    # (0,4) would end inside word 2: back to 3. Next starts at 3-1=2 (word 1's start).
    # (2,6) ends at a word boundary; next at 6-1=5, inside word 2: backed up to 3 (no further than previous+1).
    # (3,7); next at 6. (6,10) reaches the end.
    assert window_bounds(words, 4, 1) == [(0, 3), (2, 6), (3, 7), (6, 10)]
    assert window_bounds(list(range(10)), 4, 0) == [(0, 4), (4, 8), (8, 10)]
    assert window_bounds(list(range(10)), 4, 4) == [(0, 4), (1, 5), (2, 6), (3, 7), (4, 8), (5, 9), (6, 10)]


def test_span_settings_are_checked():
    with pytest.raises(TokenizationError, match="must not be greater than"):
        parse_tokenization({"bert": {"truncate": "none", "span": 600, "max_sequence_length": 512}})
    with pytest.raises(TokenizationError, match="only be set when"):
        parse_tokenization({"bert": {"truncate": "first", "span": 8}})
    body = {"model_type": "pytorch", "input": {"field_names": ["text_field"]},
            "inference_config": {"text_similarity": {"span_score_combination_function": "median"}}}
    with pytest.raises(ElasticFormatError, match="must be one of \\[max, mean\\]"):
        validate_config("m", body)
    body["inference_config"]["text_similarity"]["span_score_combination_function"] = "mean"
    assert validate_config("m", body)["inference_config"]["text_similarity"]["span_score_combination_function"] == "mean"


def hf_windows(tokenizer, ids: list[int], words: list[int], size: int) -> list[list[int]]:
    """The windows' content ids, by Elasticsearch's rule written out step by step on Hugging Face's tokens."""
    out, start, end = [], 0, 0
    while end < len(ids):
        end = min(start + size, len(ids))
        while end < len(ids) and end > start + 1 and words[end] == words[end - 1]:
            end -= 1
        out.append(ids[start:end])
        previous, start = start, end - SPAN
        while start > previous + 1 and words[start] == words[start - 1]:
            start -= 1
    return out


@pytest.fixture(scope="module")
def embedding_files(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, dict, dict]:
    """The tiny BERT traced as Eland traces a text_embedding model, its config and vocabulary (made once)."""
    return elastic_files(tiny_model_dir, tmp_path_factory.mktemp("span-files"), max_sequence_length=MSL)


def engine_for(tmp_path: Path, files: tuple[Path, dict, dict], task: str, settings: dict,
               extra: dict | None = None):
    """An Elastic-format model from the files, with the given tokenization settings."""
    import shutil

    path, config, vocab = files
    tokenization = {"bert": {"do_lower_case": True, "max_sequence_length": MSL, **settings}}
    config = {**config, "inference_config": {task: {"tokenization": tokenization, **(extra or {})}}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    definition = shutil.copy(path, tmp_path / "definition.pt")  # install moves the file it is given
    info = install(ModelStore(tmp_path / "models"), "m", config, Path(definition), vocab, source="test")
    engine = ENGINES[info.task_type](info, 1)
    engine.load()
    return engine


def run(engine, request: InferRequest) -> dict:
    job = Job(request=request, rows=engine.rows(request), loop=None, future=None)  # type: ignore[arg-type]
    for seg in engine.prepare(job, 1 << 20, 1 << 20):
        engine.store(seg, engine.forward(seg.features))
    return orjson.loads(engine.render(job))


class Scorer(torch.nn.Module):
    """A small cross-encoder: the tiny BERT reads [CLS] query [SEP] document [SEP], a linear head scores its mean
    token state. (A random classification head on [CLS] scores every window nearly alike; this one does not.)"""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModel

        super().__init__()
        self.bert = AutoModel.from_pretrained(str(path))
        generator = torch.Generator().manual_seed(3)
        self.head = torch.nn.Parameter(torch.randn(self.bert.config.hidden_size, 1, generator=generator) * 3)

    def forward(self, input_ids, attention_mask, token_type_ids, position_ids):  # noqa: ANN001, ANN201
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           position_ids=position_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return ((states * mask).sum(1) / mask.sum(1)) @ self.head


@pytest.fixture(scope="module")
def cross_encoder(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return Scorer(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(str(tiny_model_dir))


def trace_similarity(model):
    """The cross-encoder traced as Eland traces a text_similarity model (ids, mask, types, positions in; logits out)."""
    def save(path: Path) -> Path:
        ids = torch.ones((1, 8), dtype=torch.long)
        with torch.no_grad():
            traced = torch.jit.trace(model, (ids, ids, torch.zeros_like(ids), torch.arange(8)[None]), strict=False)
        torch.jit.save(traced, str(path))
        return path
    return save


@pytest.mark.parametrize("combine", ["max", "mean"])
def test_text_similarity_scores_a_long_document_by_its_windows(tmp_path, embedding_files, cross_encoder, combine):
    model, tok = cross_encoder
    _, config, vocab = embedding_files
    files = (trace_similarity(model)(tmp_path / "similarity.pt"), config, vocab)
    engine = engine_for(tmp_path, files, "text_similarity", {"truncate": "none", "span": SPAN},
                        {"span_score_combination_function": combine})
    query = tok(QUERY, add_special_tokens=False)["input_ids"]
    doc = tok(DOC, add_special_tokens=False)
    windows = hf_windows(tok, doc["input_ids"], doc.word_ids(), MSL - 3 - len(query))
    assert len(windows) > 3
    scores = []
    with torch.no_grad():
        for w in windows:  # [CLS] query [SEP] window [SEP], token types 0 then 1: BERT's pair layout
            ids = torch.tensor([[tok.cls_token_id, *query, tok.sep_token_id, *w, tok.sep_token_id]])
            types = torch.tensor([[0] * (len(query) + 2) + [1] * (len(w) + 1)])
            scores.append(float(model(ids, torch.ones_like(ids), types, torch.arange(ids.shape[1])[None])))
        pair = tok(QUERY, "Iguazu falls", return_tensors="pt")
        short = float(model(pair["input_ids"], pair["attention_mask"], pair["token_type_ids"],
                            torch.arange(pair["input_ids"].shape[1])[None]))
    assert max(scores) - min(scores) > 0.5  # windows that score differently, so max and mean are seen
    want = max(scores) if combine == "max" else sum(scores) / len(scores)
    got = run(engine, InferRequest(inputs=[DOC, "Iguazu falls"], query=QUERY, return_documents=False))["rerank"]
    by_index = {r["index"]: r["relevance_score"] for r in got}
    assert by_index[0] == pytest.approx(want, abs=1e-4, rel=1e-4)
    assert by_index[1] == pytest.approx(short, abs=1e-4, rel=1e-4)  # a document that fits is one window, as before


def test_text_embedding_answers_with_the_first_window(tmp_path, tiny_model_dir, embedding_files):
    from sentence_transformers import SentenceTransformer

    engine = engine_for(tmp_path, embedding_files, "text_embedding", {"truncate": "none", "span": SPAN})
    st = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()
    doc = st.tokenizer(DOC, add_special_tokens=False)
    first = hf_windows(st.tokenizer, doc["input_ids"], doc.word_ids(), MSL - 2)[0]
    ids = torch.tensor([[st.tokenizer.cls_token_id, *first, st.tokenizer.sep_token_id]])
    with torch.no_grad():
        want = st({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                   "token_type_ids": torch.zeros_like(ids)})["sentence_embedding"][0]
    out = run(engine, InferRequest(inputs=[DOC]))["text_embedding"][0]
    got = torch.tensor(out["embedding"])
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) > 0.9999
    assert not out.get("is_truncated")  # Elasticsearch does not flag windows as truncation
    # Without a span the same input is refused (truncate: none), as before.
    refusing = engine_for(tmp_path / "b", embedding_files, "text_embedding", {"truncate": "none"})
    with pytest.raises(TokenizationError, match="Input too large"):
        run(refusing, InferRequest(inputs=[DOC]))
    assert json.dumps(out)  # the rendered body is plain JSON
