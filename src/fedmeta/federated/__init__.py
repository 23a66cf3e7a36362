"""Federated meta-learning: clients' local procedures, server strategies, the runtime."""
