"""The matmul engine: processing elements, the systolic array and the tile engine."""
