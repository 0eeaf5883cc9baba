"""Scoring a whole archive on Apache Beam (`covidxray score-archive`): `records` (decode one file through
`prepare`, score it with the serving code, the JSON lines; no Beam), `handler` (the RunInference model
handler over our ONNX twin), `sinks` (deterministic JSON Lines shards, BigQuery) and `pipeline`.

Sits beside the use case: may import imaging, predictors, backends and the base modules; never web or
the service. Only `records` imports without Beam; the command line imports the rest lazily.
"""
