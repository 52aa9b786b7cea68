"""Triton kernels for the long-context reader, each with a plain PyTorch reference.

Imports only torch and triton: this package must load on the GPU machine, which has no Java.
"""
