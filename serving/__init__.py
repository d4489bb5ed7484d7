"""Serving: a registered model answers requests from the broker (`tidelog serve`) or over
HTTP (`POST /models/{name}/predict`), and every prediction names the model version, the
run, the snapshot and the digest of the data it was trained on. docs/serving.md is the
guide and the contract (topics, message shapes, delivery guarantees)."""

from __future__ import annotations

__all__: list[str] = []
