"""Dynamic batching: budgets, grouping, cancellation, back-pressure, and equality with encode()."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from infernetes.worker.batcher import Batcher, QueueFull
from infernetes.worker.engine import InferRequest, Job, Segment, TextEmbeddingEngine
from infernetes.worker.metrics import WorkerMetrics
from infernetes.worker.modelstore import ModelStore


class FakeEngine:
    """Rows of `width` tokens each; the model returns the row's first token id, and records batch shapes."""

    num_threads = 1
    pad_id = 0
    max_batch_tokens: int | None = None

    def __init__(self, width: int = 4, gate: threading.Event | None = None) -> None:
        self.width = width
        self.batches: list[tuple[int, int]] = []
        self.rows_seen: list[int] = []  # the row values (first token ids) of every row the model ran
        self.gate = gate

    def prepare(self, job: Job, max_tokens: int, max_rows: int) -> list[Segment]:
        ids = torch.tensor([[int(r)] * self.width for r in job.rows])
        features = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        segs = []
        per = max(1, min(max_rows, max_tokens // self.width))
        for start in range(0, len(job.rows), per):
            idx = list(range(start, min(start + per, len(job.rows))))
            segs.append(Segment(job, idx, {k: v[idx] for k, v in features.items()}, self.width * len(idx),
                                job.request.input_type))
        job.segments_left = len(segs)
        return segs

    def forward(self, features):
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(tuple(features["input_ids"].shape))
        self.rows_seen.extend(features["input_ids"][:, 0].tolist())
        return features["input_ids"][:, 0].numpy()

    def store(self, segment, output):
        for i, row in enumerate(segment.rows):
            segment.job.outputs[row] = int(output[i])


def make_job(loop, rows, input_type=None):
    return Job(request=InferRequest(inputs=[str(r) for r in rows], input_type=input_type), rows=list(rows),
               loop=loop, future=loop.create_future())


def run(coro):
    return asyncio.run(coro)


def test_rows_come_back_in_order_across_segments():
    async def main():
        engine = FakeEngine()
        b = Batcher(engine, WorkerMetrics("d", "0"), capacity=100, max_batch_tokens=8, max_batch_size=100)
        b.start()
        loop = asyncio.get_running_loop()
        job = make_job(loop, range(10, 15))
        await b.submit(job)
        b.stop()
        assert job.outputs == [10, 11, 12, 13, 14]
        assert all(rows * width <= 8 for rows, width in engine.batches)  # the token budget cut the batches

    run(main())


def test_a_model_cap_on_batch_tokens_wins_over_a_larger_budget():
    async def main():
        gate = threading.Event()
        engine = FakeEngine(gate=gate)
        engine.max_batch_tokens = 8  # what a SPLADE engine sets: its logits outgrow the cache
        b = Batcher(engine, WorkerMetrics("d", "0"), capacity=100, max_batch_tokens=1000, max_batch_size=100)
        b.start()
        loop = asyncio.get_running_loop()
        first = make_job(loop, [1])
        task = asyncio.create_task(b.submit(first))
        await asyncio.sleep(0.05)  # the model thread holds the first batch; the rest queue up
        jobs = [make_job(loop, [i]) for i in range(2, 8)] + [make_job(loop, range(10, 15))]
        tasks = [asyncio.create_task(b.submit(j)) for j in jobs]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(task, *tasks)
        b.stop()
        assert jobs[-1].outputs == [10, 11, 12, 13, 14]
        assert max(rows for rows, _ in engine.batches) == 2  # 8 tokens: two rows of 4, not everything queued

    run(main())


def test_waiting_requests_are_batched_together_and_grouped_by_key():
    async def main():
        gate = threading.Event()
        engine = FakeEngine(gate=gate)
        b = Batcher(engine, WorkerMetrics("d", "0"), capacity=100, max_batch_tokens=1000, max_batch_size=100)
        b.start()
        loop = asyncio.get_running_loop()
        first = make_job(loop, [1])
        jobs = [make_job(loop, [i], "SEARCH" if i % 2 else "INGEST") for i in range(2, 8)]
        tasks = [asyncio.create_task(b.submit(first))]
        await asyncio.sleep(0.05)  # the model thread is now busy with the first job (gate closed)
        tasks += [asyncio.create_task(b.submit(j)) for j in jobs]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*tasks)
        b.stop()
        assert [j.outputs for j in jobs] == [[i] for i in range(2, 8)]
        assert engine.batches[0] == (1, 4)
        assert sorted(rows for rows, _ in engine.batches[1:]) == [3, 3]  # one batch per input type

    run(main())


def test_capacity_is_enforced_before_any_work():
    async def main():
        gate = threading.Event()
        b = Batcher(FakeEngine(gate=gate), WorkerMetrics("d", "0"), capacity=4, max_batch_tokens=100,
                    max_batch_size=100)
        b.start()
        loop = asyncio.get_running_loop()
        running = asyncio.create_task(b.submit(make_job(loop, [1, 2, 3])))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await b.submit(make_job(loop, [4, 5]))
        assert b.rejected_count == 1 and b.pending == 3
        gate.set()
        await running
        await b.submit(make_job(loop, [4, 5]))  # room again
        b.stop()
        assert b.pending == 0

    run(main())


def test_cancelled_jobs_never_reach_the_model():
    async def main():
        gate = threading.Event()
        engine = FakeEngine(gate=gate)
        b = Batcher(engine, WorkerMetrics("d", "0"), capacity=100, max_batch_tokens=100, max_batch_size=100)
        b.start()
        loop = asyncio.get_running_loop()
        busy = asyncio.create_task(b.submit(make_job(loop, [1])))
        await asyncio.sleep(0.05)
        gone = make_job(loop, [99])
        pending = asyncio.create_task(b.submit(gone))
        await asyncio.sleep(0.05)
        b.cancel(gone)
        gate.set()
        await asyncio.gather(busy, pending)
        b.stop()
        assert engine.rows_seen == [1] and len(engine.batches) == 1  # the cancelled row 99 never ran

    run(main())


def test_engine_matches_encode(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    info = ModelStore(tmp_path).import_folder(tiny_model_dir, "tiny")
    engine = TextEmbeddingEngine(info, num_threads=1)
    engine.load()
    texts = ["short", "a somewhat longer sentence with more words in it", "mid length text here"] * 5

    async def main():
        b = Batcher(engine, WorkerMetrics("d", "0"), capacity=100, max_batch_tokens=64, max_batch_size=4)
        b.start()
        loop = asyncio.get_running_loop()
        job = make_job(loop, texts)
        job.rows = texts
        await b.submit(job)
        b.stop()
        return np.stack(job.outputs)

    ours = run(main())
    reference = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_a_small_request_does_not_wait_for_all_of_a_long_one():
    """Jobs take turns leading a batch: a small request queued behind a long one runs in the next batch."""

    async def main():
        gate = threading.Event()
        engine = FakeEngine(gate=gate)
        b = Batcher(engine, WorkerMetrics("d", "0"), capacity=100, max_batch_tokens=8, max_batch_size=100)
        b.start()
        loop = asyncio.get_running_loop()
        long = make_job(loop, range(100, 120))  # 10 segments of 2 rows
        small = make_job(loop, [7])
        tasks = [asyncio.create_task(b.submit(long))]
        while not long.segments_left:
            await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(b.submit(small)))
        while b._queued_rows < 21 - 2:  # the small row is queued behind the long job's (one batch is running)
            await asyncio.sleep(0.01)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        b.stop()
        assert small.outputs == [7] and long.outputs == list(range(100, 120))
        assert engine.rows_seen.index(7) <= 2, engine.rows_seen  # right after the batch that was running

    run(main())
