"""Using a trained network on new inputs: `distnn predict` (image files, folders, arrays)."""
