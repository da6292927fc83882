"""`lorakit serve`: an OpenAI-compatible server for one base model and many adapters."""
