"""Effects: the apply engine (the one place that changes image files), restore, export."""
