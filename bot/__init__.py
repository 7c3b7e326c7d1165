"""Palette: AI image generation for Discord."""
