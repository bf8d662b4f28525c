"""Stage 2: training patches cut from an input stack inside training areas, and the patch
file (HDF5) the training package reads."""
