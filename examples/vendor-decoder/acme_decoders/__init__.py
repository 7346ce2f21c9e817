"""Example output decoder plugins for cityneuron."""
