"""mux package."""
