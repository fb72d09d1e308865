"""Worker lifecycle in the main process: spawn through a template, monitor, recycle, reload."""
