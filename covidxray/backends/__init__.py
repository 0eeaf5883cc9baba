"""Where images and request records are kept: the interfaces with their embedded
implementations (`storage`, `requestlog`), the cloud ones (`gcs`, `bigquery`, `bigquery_schema`), the
durable outbox in front of those (`outbox`, `shipping`, `buffered`), and `registry`, the one place that
maps URI schemes to implementations.

May import only each other and the base modules."""
