"""Output: one view of each document, drawn for a terminal (Rich) or as Markdown."""
