"""Predictors: the interface (`base`), our CNN (`keras`, run by `runtime`), the
AutoML backend (`automl`, `automl_wire`, `automl_breaker`), the choice between them (`factory`), the OOD
gate in front of them (`gate`) and `calibration`.

May import imaging and the base modules; never web, the service, backends or ml."""
