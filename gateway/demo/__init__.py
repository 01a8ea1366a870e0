"""`tollgate demo`: replayed real answers of real models routed through a real gateway."""
