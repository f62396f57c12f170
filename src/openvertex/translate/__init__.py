"""Pure translation between the OpenAI surface and GenerateContent: no I/O, no clock."""
