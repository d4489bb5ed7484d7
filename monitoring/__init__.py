"""Monitoring of a served model against the data it was trained on: drift per feature and
of the predictions, serving latency, distance from the training data, decay on labelled
requests — as a report (HTML, JSON), Prometheus gauges, MLflow metrics on the model
version's run, and `drift.detected` events the pipelines' drift triggers consume.
docs/monitoring.md describes the methods, thresholds and the results-topic contract."""
