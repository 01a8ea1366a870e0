"""The response cache: a deterministic request's complete answer, kept and served again."""
