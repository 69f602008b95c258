"""Federated training of detectors across sites: robust aggregation maths and Flower wiring."""
