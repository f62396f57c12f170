"""Model backends: each turns a GenerateContentRequest into GenerateContentResponse(s)."""
