"""What several test modules share: paths, tiny runs, fixtures, DDP callbacks, EGL by hand."""
