"""The AutoML service: an AutoML image model on Vertex AI behind the shared app."""

from covidxray import create_app

app = create_app(backend="automl")
