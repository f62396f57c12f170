"""Wire types only: the OpenAI Chat Completions surface and Gemini GenerateContent."""
