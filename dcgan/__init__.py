"""DCGAN on MNIST: the library behind the CLI, the DVC pipeline and the Prefect flow."""
