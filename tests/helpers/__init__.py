"""What tests share: synthetic inputs, an in-process Hub stand-in."""
