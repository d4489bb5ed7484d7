"""`tidelog serve`: argument parsing only; the work is in serving.worker."""

from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["register"]


def _serve(args: argparse.Namespace) -> int:
    from serving.worker import Worker, WorkerConfig
    from tidelog.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = WorkerConfig(model=args.model, alias=args.alias, batch_size=args.batch_size,
                          max_wait_ms=args.max_wait_ms, alias_interval=args.alias_interval,
                          worker_id=args.worker_id, partitions=args.partitions,
                          metrics_host=args.metrics_host, metrics_port=args.metrics_port)
    worker = Worker(load_settings(), config)
    worker.run()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="answer a model's requests topic on its results topic, exactly once",
        description="Consume <prefix>.serving.MODEL.requests, predict with "
                    "models:/MODEL@ALIAS, produce to <prefix>.serving.MODEL.results; each "
                    "batch is one Kafka transaction with its offsets (docs/serving.md).")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--alias", default="champion", help="alias to serve (default: champion)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="most requests per batch / transaction (default: 100)")
    p.add_argument("--max-wait-ms", type=int, default=50,
                   help="longest wait for a batch to fill, in ms (default: 50)")
    p.add_argument("--alias-interval", type=float, default=5.0, metavar="SECONDS",
                   help="look at the alias at most this often, between batches (default: 5)")
    p.add_argument("--worker-id", default="0",
                   help="unique per concurrent worker of one model: part of its Kafka "
                        "transactional id (default: 0)")
    p.add_argument("--partitions", type=int, default=3,
                   help="partitions of the requests/results topics if they must be "
                        "created (default: 3)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address for --metrics-port (default: 127.0.0.1)")
    p.set_defaults(handler=_serve)
