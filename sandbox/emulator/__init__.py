"""The Google Cloud API emulator: one ASGI app speaking the REST JSON of the official clients."""
