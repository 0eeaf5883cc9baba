"""The Keras service: our trained CNN behind the shared app."""

from covidxray import create_app

app = create_app(backend="keras")
