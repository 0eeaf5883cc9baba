"""Tests of the Flask app: pages, API, auth, limits and hostile input."""
