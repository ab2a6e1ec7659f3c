"""Number formats and the units that convert and combine them."""
