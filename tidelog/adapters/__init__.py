"""One module per external system tidelog talks to: the only place its client is built
and its errors are mapped into `tidelog.errors` (MLflow's lives in `trainer.tracking`).

    kafka      confluent-kafka AdminClient / Consumer / Producer, KafkaException
    connect    Kafka Connect's REST API over httpx
    postgres   psycopg connections and psycopg.Error
"""
