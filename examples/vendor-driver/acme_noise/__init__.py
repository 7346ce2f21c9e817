"""ACME SLM-100 sound level meter driver for cityneuron (an example vendor plugin)."""

from acme_noise.driver import AcmeSlmConfig, AcmeSlmDriver

__all__ = ["AcmeSlmConfig", "AcmeSlmDriver"]
