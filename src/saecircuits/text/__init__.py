"""Text sources: corpora streamed as token contexts, and character alignment of two tokenizers."""
