"""Federated runs across machines on Flower's deployment runtime (`flower.py`) and the
loopback launcher that starts a superlink, supernodes and `flwr run` (`launch.py`)."""
