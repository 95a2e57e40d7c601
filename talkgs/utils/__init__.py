"""Small shared helpers: configs, media I/O, file staging, console output."""
