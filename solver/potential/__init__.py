"""The fitted potential: singular set, extended map T~ and interpolation."""
