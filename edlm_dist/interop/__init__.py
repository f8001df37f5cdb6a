"""Interoperability with other code bases: MDLM's checkpoints in and out of run folders."""
