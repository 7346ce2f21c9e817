"""Rules: the bundle format, compiler, engine, signing and the deployment store."""
