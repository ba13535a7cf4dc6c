"""Run in the Eland venv (transformers<5 with sentencepiece): trains two tiny SentencePiece Unigram models with
SentencePiece's default normalization (nmt_nfkc, whose precompiled character map real XLM-R and DeBERTa-v2
models carry), converts them to Hugging Face's fast tokenizers, and prints, per kind, the vocabulary and scores
(what Eland uploads), the precompiled map, and Hugging Face's ids for the texts given on stdin (JSON list)."""

import base64
import io
import json
import random
import sys

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from transformers import DebertaV2TokenizerFast, XLMRobertaTokenizerFast

texts = json.load(sys.stdin)
random.seed(7)
letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789éüßçñ日本語テスト\"',.!?-"
words = ["".join(random.choice(letters) for _ in range(random.randint(1, 7))) for _ in range(4000)]
corpus = [" ".join(random.choice(words) for _ in range(14)) for _ in range(4000)] + texts
out = {}
for kind, special in (("xlm_roberta", {}),
                      ("deberta_v2", {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3, "pad_piece": "[PAD]",
                                      "bos_piece": "[CLS]", "eos_piece": "[SEP]", "unk_piece": "[UNK]"})):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=600,
                                   model_type="unigram", normalization_rule_name="nmt_nfkc", minloglevel=2,
                                   hard_vocab_limit=False, **special)
    path = f"{sys.argv[1]}/{kind}.model"
    with open(path, "wb") as f:
        f.write(model.getvalue())
    proto = pb.ModelProto()
    proto.ParseFromString(model.getvalue())
    cls = XLMRobertaTokenizerFast if kind == "xlm_roberta" else DebertaV2TokenizerFast
    tok = cls(vocab_file=path, from_slow=True)
    state = json.loads(tok.backend_tokenizer.to_str())
    out[kind] = {"vocabulary": [p for p, _ in state["model"]["vocab"]],
                 "scores": [s for _, s in state["model"]["vocab"]],
                 "charsmap": base64.b64encode(proto.normalizer_spec.precompiled_charsmap).decode(),
                 "ids": [tok(t)["input_ids"] for t in texts]}
json.dump(out, sys.stdout)
