"""Deconv Lab: a deconvolutional network for CIFAR-10 you design, train live and inspect."""
