"""Weight propagation benchmark on loopback: WeightPublisher/WeightSubscriber against raw gRPC and torch.save.

Run ``python bench/weights.py [--quick]``. A transformer-shaped float32 model (about 250 MB, 63 MB
with ``--quick``; "System 2", 60% of the bytes, frozen) is pushed in full to 1 and to 8 subscribers
(threads in this process; single-subscriber timings are the best of 3 runs), then compared with (a) a raw gRPC server stream of the same bytes in
``chunk_bytes`` messages and (b) torch.save into a BytesIO sent in 2 MiB chunks and torch.load-ed.
Finally a new version with only System 1 changed is pushed as a delta. Progress goes to the log;
the last stdout line is one JSON object of figures.
"""

import argparse
import io
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import torch
from prometheus_client import REGISTRY

from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.learner.publisher import WeightPublisher
from fleetloop.protos import codec

logger = logging.getLogger("bench.weights")

MIB = 1 << 20
CHUNK_BYTES = 1 * MIB
TORCH_SAVE_CHUNK_BYTES = 2 * MIB
_OPTIONS = [("grpc.max_receive_message_length", 16 * MIB), ("grpc.max_send_message_length", 16 * MIB)]
_METHOD = "/bench.Bytes/Stream"
_IDS = itertools.count()
REPEATS = 3
"""Single-subscriber timings take the best of this many runs (loopback timings are noisy)."""


def make_model(width: int, layers: int, frozen_layers: int, seed: int) -> dict[str, torch.Tensor]:
    """Transformer blocks of ``width``; the first ``frozen_layers`` are System 2 (same values for
    every ``seed``), the rest System 1 (values depend on ``seed``)."""
    state_dict = {}
    for layer in range(layers):
        system = "system2" if layer < frozen_layers else "system1"
        gen = torch.Generator().manual_seed(layer if system == "system2" else 1000 * seed + layer)
        prefix = f"{system}.blocks.{layer}"
        for name, shape in (("attn.qkv.weight", (3 * width, width)), ("attn.out.weight", (width, width)),
                            ("mlp.up.weight", (4 * width, width)), ("mlp.down.weight", (width, 4 * width)),
                            ("norm.weight", (width,)), ("mlp.up.bias", (4 * width,))):
            state_dict[f"{prefix}.{name}"] = torch.randn(shape, generator=gen)
    return state_dict


def best(measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(REPEATS))


def nbytes(state_dict: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state_dict.values())


def bytes_sent() -> float:
    return REGISTRY.get_sample_value("fleetloop_weights_bytes_sent_total") or 0.0


def push_ours(publisher: WeightPublisher, version: int, subscribers: int) -> float:
    """Seconds for ``subscribers`` fresh subscribers to connect, pull, verify and apply ``version``."""
    subs = [WeightSubscriber(f"127.0.0.1:{publisher.port}", f"bench-{next(_IDS)}", lambda v, t: None,
                             pull_timeout_s=600) for _ in range(subscribers)]
    started = time.perf_counter()
    for sub in subs:
        sub.start()
    try:
        for sub in subs:
            if not sub.wait_for_version(version, 600):
                raise RuntimeError(f"{sub.subscriber_id} did not apply version {version}")
        elapsed = time.perf_counter() - started
        while any(publisher.applied_versions().get(sub.subscriber_id) != version for sub in subs):
            time.sleep(0.01)  # let the reports land before closing the channels
        return elapsed
    finally:
        for sub in subs:
            sub.stop()


def serve_stream(produce: Callable[[], Iterator[bytes]]) -> tuple[grpc.Server, int]:
    """A plain gRPC server whose one server-streaming method sends the raw messages ``produce`` yields."""
    handler = grpc.unary_stream_rpc_method_handler(lambda request, context: produce())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Bytes", {"Stream": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def time_stream(port: int, consume: Callable[[Iterator[bytes]], object]) -> float:
    """Seconds from calling the stream to ``consume`` returning on its messages."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
        call = channel.unary_stream(_METHOD)
        started = time.perf_counter()
        consume(call(b"", timeout=600))
        return time.perf_counter() - started


def raw_seconds(blobs: list[bytes]) -> float:
    """Raw baseline: the tensors' bytes in ``CHUNK_BYTES`` messages, copied into buffers on arrival."""

    def produce() -> Iterator[bytes]:
        for blob in blobs:
            view = memoryview(blob)
            for offset in range(0, len(blob), CHUNK_BYTES):
                yield bytes(view[offset : offset + CHUNK_BYTES])

    def consume(stream: Iterator[bytes]) -> None:
        buffer, filled = bytearray(sum(len(b) for b in blobs)), 0
        for message in stream:
            buffer[filled : filled + len(message)] = message
            filled += len(message)

    server, port = serve_stream(produce)
    try:
        return time_stream(port, consume)
    finally:
        server.stop(None)


def torch_save_seconds(state_dict: dict[str, torch.Tensor]) -> float:
    """Common approach: torch.save per request, 2 MiB chunks, torch.load on arrival."""

    def produce() -> Iterator[bytes]:
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        view = buffer.getbuffer()
        for offset in range(0, len(view), TORCH_SAVE_CHUNK_BYTES):
            yield bytes(view[offset : offset + TORCH_SAVE_CHUNK_BYTES])

    def consume(stream: Iterator[bytes]) -> dict[str, torch.Tensor]:
        return torch.load(io.BytesIO(b"".join(stream)), weights_only=True)

    server, port = serve_stream(produce)
    try:
        return time_stream(port, consume)
    finally:
        server.stop(None)


def delta_bytes(publisher: WeightPublisher, first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> int:
    """Tensor bytes sent to a subscriber holding ``first`` when ``second`` is published."""
    version = publisher.publish(first)
    sub = WeightSubscriber(f"127.0.0.1:{publisher.port}", "bench-delta", lambda v, t: None, pull_timeout_s=600)
    sub.start()
    try:
        if not sub.wait_for_version(version, 600):
            raise RuntimeError("delta subscriber did not get the base version")
        before = bytes_sent()
        if not sub.wait_for_version(publisher.publish(second), 600):
            raise RuntimeError("delta subscriber did not get the new version")
        return int(bytes_sent() - before)
    finally:
        sub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="63 MB model instead of 250 MB")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("fleetloop").setLevel(logging.WARNING)
    width = 512 if args.quick else 1024
    model = make_model(width, layers=5, frozen_layers=3, seed=1)
    total = nbytes(model)
    mb = total / 1e6
    logger.info("model: %d tensors, %.1f MB", len(model), mb)

    publisher = WeightPublisher(chunk_bytes=CHUNK_BYTES, keep_versions=2)
    publisher.start()
    try:
        version = publisher.publish(model)
        ours_1 = best(lambda: push_ours(publisher, version, 1))
        logger.info("ours, 1 subscriber: %.2fs", ours_1)
        ours_8 = push_ours(publisher, version, 8)
        logger.info("ours, 8 subscribers: %.2fs", ours_8)
        blobs = codec.encode_state_dict(model)[1]
        raw_1 = best(lambda: raw_seconds(blobs))
        logger.info("raw gRPC stream: %.2fs", raw_1)
        torch_save_1 = best(lambda: torch_save_seconds(model))
        logger.info("torch.save stream: %.2fs", torch_save_1)
        delta = delta_bytes(publisher, model, make_model(width, layers=5, frozen_layers=3, seed=2))
        logger.info("delta push: %d of %d bytes", delta, total)
    finally:
        publisher.stop(grace=None)

    figures = {
        "mb": round(mb, 1),
        "ours_mb_per_s_1": round(mb / ours_1, 1),
        "ours_mb_per_s_8": round(8 * mb / ours_8, 1),
        "raw_mb_per_s_1": round(mb / raw_1, 1),
        "ratio_vs_raw_grpc": round(raw_1 / ours_1, 2),
        "torch_save_mb_per_s_1": round(mb / torch_save_1, 1),
        "ratio_vs_torch_save_chunks": round(torch_save_1 / ours_1, 2),
        "fanout8_ratio_vs_single": round(8 * ours_1 / ours_8, 2),
        "delta_bytes": delta,
        "full_bytes": total,
        "delta_bytes_fraction": round(delta / total, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
