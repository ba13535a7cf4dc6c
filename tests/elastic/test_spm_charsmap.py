"""SentencePiece's precompiled character map (nmt_nfkc) for the xlm_roberta and deberta_v2 tokenizers.

No XLM-R or DeBERTa tokenizer exists offline here, so the reference is made in the Eland venv with the
sentencepiece library: two Unigram models trained with SentencePiece's default normalization, converted to
Hugging Face's fast tokenizers (tests/elastic/spm_reference.py). Their vocabulary and scores are what Eland
uploads; the ids of texts full of full-width forms, ligatures, compatibility characters, combining marks,
zero-width and control characters must equal Hugging Face's.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from infernetes.worker.elastic_tokenizers import ElasticTokenizer, parse_tokenization, precompiled_charsmap

TEXTS = ["ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ１２３！", "ﬁne ﬂower ﬀ", "① ™ ½ ㎏ Ⅻ ℃", "cafe\u0301 naïve", "zero\u200bwidth",
         "ｶﾀｶﾅ テスト", "a\u00a0b", "bell\u0007char", "two    spaces", "trailing  ", "  leading", "tab\there\nnewline",
         "Straße ǅ ĳ", "“quotes” ‘single’ …", "\u3000ideographic space"]


@pytest.fixture(scope="module")
def reference(eland_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("spm")
    proc = subprocess.run([str(eland_venv / "bin" / "python"), "-I", str(Path(__file__).with_name("spm_reference.py")),
                           str(out)], input=json.dumps(TEXTS), capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_the_shipped_map_is_sentencepieces_nmt_nfkc(reference):
    for kind in ("xlm_roberta", "deberta_v2"):
        assert base64.b64decode(reference[kind]["charsmap"]) == precompiled_charsmap()


@pytest.mark.parametrize("kind", ["xlm_roberta", "deberta_v2"])
def test_unusual_characters_tokenize_as_hugging_face(reference, kind):
    ref = reference[kind]
    tok = ElasticTokenizer(parse_tokenization({kind: {"max_sequence_length": 128}}),
                           {"vocabulary": ref["vocabulary"], "scores": ref["scores"]})
    for text, want in zip(TEXTS, ref["ids"]):
        got = tok.tokenizer.encode(text).ids
        assert got == want, (text, got, want)
