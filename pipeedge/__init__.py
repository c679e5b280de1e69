"""PipeEdge."""
