"""Scripts the distributed tests run under torchrun (or as a lone process), and how to launch them."""
