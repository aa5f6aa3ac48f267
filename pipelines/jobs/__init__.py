"""Asynchronous jobs: their durable store and their runner."""
