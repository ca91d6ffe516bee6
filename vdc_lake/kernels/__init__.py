"""Kernels: pure array code (k-means, range search, sampling, the built-in descriptor); arrays in, arrays out."""
