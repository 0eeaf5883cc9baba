"""A local stand-in for the Vertex AI / AutoML prediction service, for development
and tests: `server` answers the Predict protocol with our own model, `emulator` runs it and takes
control calls.

May import predictors, imaging and the base modules."""
