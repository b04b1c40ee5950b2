"""Programs that use the gateway the way real applications do."""
