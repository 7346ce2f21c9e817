"""On-device inference: model packages, sessions, decoders and tiling (see the issues)."""
