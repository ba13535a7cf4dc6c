"""Elastic-format model files made in tests, without Eland (for the fast upload tests)."""

from __future__ import annotations

from pathlib import Path


def elastic_files(st_dir: Path, target: Path, *, max_sequence_length: int = 128,
                  prefix_strings: dict | None = None) -> tuple[Path, dict, dict]:
    """A sentence-transformers folder traced as Eland traces a text_embedding model (ids, mask, token types and
    position ids in, the pooled embedding out): the TorchScript file, the config and the vocabulary."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(st_dir), device="cpu").eval()

    class Traceable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids, position_ids):  # noqa: ANN001, ANN201
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.st(features)["sentence_embedding"]

    sample = st.preprocess(["This is an example sentence."])
    args = (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"],
            torch.arange(sample["input_ids"].shape[1]).unsqueeze(0))
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(Traceable().eval(), args, strict=False))
    target.mkdir(parents=True, exist_ok=True)
    path = target / "traced_pytorch_model.pt"
    torch.jit.save(traced, str(path))
    vocab = [t for t, _ in sorted(st.tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    dims = st.get_sentence_embedding_dimension()
    config = {"description": "test model", "model_type": "pytorch",
              "inference_config": {"text_embedding": {"tokenization": {"bert": {
                  "do_lower_case": True, "max_sequence_length": max_sequence_length}}, "embedding_size": dims}},
              "input": {"field_names": ["text_field"]}}
    if prefix_strings:
        config["prefix_strings"] = prefix_strings
    return path, config, {"vocabulary": vocab}
