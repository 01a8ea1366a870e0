"""The API faces: request checks and the translation of each client API to one request form."""
