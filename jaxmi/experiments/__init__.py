"""Experiment drivers: each validates a config, loads what it needs, runs a method and writes its workdir."""
