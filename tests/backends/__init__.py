"""Tests of image stores, request logs, the outbox and cloud failures."""
