"""openvertex: Vertex AI's OpenAI-compatible Chat Completions API, self-hosted."""

__version__ = "0.1.0"
