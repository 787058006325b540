"""Shared building blocks that several models compose (one topic a module)."""
