"""Building blocks shared by every stage: configs, I/O, progress, errors."""
